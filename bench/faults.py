"""Crash-resume under random SIGKILLs: extraction and training, each killed N times and resumed, then compared
bit for bit with an uninterrupted run.

Data: a generated DFEW tree (frame folders) and the tiny random CLIP, so it runs anywhere in a few minutes on two
CPU cores. Each kill lands at a random moment of a run (uniform over the uninterrupted run's duration, less
process start-up), the same command is then rerun (``--resume`` for training) until it finishes; a run that
finishes before its kill is compared and the next kill goes to a fresh run from nothing. Extraction is
compared on every array of the cache; training on every tensor of the final checkpoint, the metrics and the
per-epoch losses.

    python bench/faults.py                    # 5 kills each
    python bench/faults.py --kills 20 --clips 48 --seed 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _run(args: list[str]) -> float:
    """Run ``tgdfer args`` to the end; seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tgdfer", *args], env=_env(), check=True, capture_output=True)
    return time.perf_counter() - t0


def _killed_runs(
    args: list[str], kills: int, window: tuple[float, float], rng: random.Random, progress, same, clean
) -> dict:
    """Start ``tgdfer args`` and SIGKILL it at a random moment in ``window`` seconds; rerun the same command until
    it finishes, then compare its outputs with ``same()`` -> (identical, text). A run that finishes before its kill
    starts a new cycle from nothing (``clean()``) until ``kills`` kills landed on a live process."""
    landed, launches, at_kill, cycles, identical, what = 0, 0, [], 0, True, ""
    started = time.perf_counter()
    while landed < kills:
        clean()
        cycles += 1
        while True:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tgdfer", *args], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            launches += 1
            try:
                proc.wait(timeout=rng.uniform(*window) if landed < kills else None)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                landed += 1
                at_kill.append(progress())
                continue
            if proc.returncode != 0:
                raise SystemExit(f"tgdfer {' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
            break
        ok, what = same()
        identical &= ok
    return {
        "kills": landed,
        "launches": launches,
        "cycles": cycles,
        "progress_at_kills": at_kill,
        "identical": identical,
        "what": what,
        "seconds": time.perf_counter() - started,
    }


def _same_cache(a: Path, b: Path) -> tuple[bool, str]:
    from tgdfer.features.cache import load_cache

    x, y = load_cache(a), load_cache(b)
    arrays = ("features", "view_clip", "view_kind", "view_index", "view_frames", "labels", "num_frames", "membership")
    differ = [n for n in arrays if not np.array_equal(getattr(x, n), getattr(y, n))]
    differ += [n for n in ("clip_ids", "clip_paths", "failures") if list(getattr(x, n)) != list(getattr(y, n))]
    return not differ, f"{len(x.clip_ids)} clips, {len(x.view_kind)} views" + (f"; differ: {differ}" if differ else "")


def _same_run(a: Path, b: Path) -> tuple[bool, str]:
    from tgdfer.train.runs import load_checkpoint

    x, y = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    differ = [k for k in x["model"] if not torch.equal(x["model"][k], y["model"][k])]
    mx, my = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    for key in ("war", "uar", "confusion"):
        if mx[key] != my[key]:
            differ.append(f"metrics.{key}")

    def losses(run: Path) -> list[str]:
        with open(run / "log.csv") as fh:
            return [row["loss"] for row in csv.DictReader(fh)]

    if losses(a) != losses(b):
        differ.append("log.csv losses")
    what = f"{len(x['model'])} tensors, {x['epoch']} epochs, WAR {mx['war']:.2f} vs {my['war']:.2f}"
    return not differ, what + (f"; differ: {differ}" if differ else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs per stage")
    p.add_argument("--clips", type=int, default=24, help="generated clips (shards of 2)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--work", default=None, help="folder for the generated data (default: a temporary one)")
    args = p.parse_args()

    from tgdfer.backbone import save_random_clip
    from tgdfer.features.store import shard_dir
    from tgdfer.testing.synthetic import make_dfew_tree

    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="tgdfer-faults-"))
    clip = save_random_clip(work / "tiny.pt", "tiny", seed=0)
    root = make_dfew_tree(work / "dfew", args.clips, frames=(30, 40), size=96, seed=3)
    t0 = time.perf_counter()  # start-up of a tgdfer process (torch's import): no kill lands before it
    subprocess.run([sys.executable, "-c", "import tgdfer.extract, tgdfer.train.engine"], env=_env(), check=True)
    startup = time.perf_counter() - t0
    common = ["--dataset", "dfew", "--root", str(root), "--clip", str(clip), "--views", "2", "--workers", "0"]
    common += ["--shard-clips", "2", "--batch-size", "32"]

    ref_cache, killed_cache = work / "ref.h5", work / "killed.h5"
    ref_s = _run(["extract", *common, "--out", str(ref_cache)])

    def clean_cache() -> None:
        killed_cache.unlink(missing_ok=True)
        shutil.rmtree(shard_dir(killed_cache), ignore_errors=True)

    ex = _killed_runs(
        ["extract", *common, "--out", str(killed_cache)],
        args.kills,
        (startup, ref_s),
        rng,
        lambda: len(list(shard_dir(killed_cache).glob("shard-*.h5"))),
        lambda: _same_cache(ref_cache, killed_cache),
        clean_cache,
    )
    print(
        f"extraction: {ex['kills']} kills, identical: {'yes' if ex['identical'] else 'no'} ({ex['what']}; shards "
        f"committed at each kill {ex['progress_at_kills']} of {-(-args.clips // 2)}; {ex['launches']} launches in "
        f"{ex['cycles']} cycles, {ex['seconds']:.1f} s; uninterrupted {ref_s:.1f} s, start-up {startup:.1f} s)",
        flush=True,
    )

    train = ["train", "--features", str(ref_cache), "--fold", "1", "--device", "cpu"]
    train += ["--set", f"train.epochs={args.epochs}", "--set", "train.batch_size=8", "--set", "train.eval_every=0"]
    ref_run, killed_run = work / "run-ref", work / "run-killed"
    ref_t = _run([*train, "--out", str(ref_run)])

    def epochs_done() -> int:
        log = killed_run / "log.csv"
        return max(0, len(log.read_text().splitlines()) - 1) if log.exists() else 0

    tr = _killed_runs(
        [*train, "--out", str(killed_run), "--resume"],
        args.kills,
        (startup, ref_t),
        rng,
        epochs_done,
        lambda: _same_run(ref_run, killed_run),
        lambda: shutil.rmtree(killed_run, ignore_errors=True),
    )
    print(
        f"training: {tr['kills']} kills, identical: {'yes' if tr['identical'] else 'no'} ({tr['what']}; epochs "
        f"logged at each kill {tr['progress_at_kills']} of {args.epochs}; {tr['launches']} launches in "
        f"{tr['cycles']} cycles, {tr['seconds']:.1f} s; uninterrupted {ref_t:.1f} s)",
        flush=True,
    )
    total = ex["kills"] + tr["kills"]
    print(f"{total} kills, identical: {'yes' if ex['identical'] and tr['identical'] else 'no'}")


if __name__ == "__main__":
    main()
