"""The GPU checklist in one call: everything tgdfer must show on a GPU, in one table, each figure against its target.

GPU time comes in short slots (about 15 minutes, start-up included), so this runs in 8 minutes or less on one
H100 and prints whatever it has when a step runs out of time. Nothing downloads: CLIP is the real ViT-B/32
architecture with random weights (speed does not depend on the weights); clips, caches and video are generated.

Checks and targets (the README's, from the issues named):
- stage 1: encode only (uint8 frames in memory -> features) against `tgdfer extract` end to end on generated
  224x224 JPEG folders; end to end >= 25k frames/s and >= 0.5x encode only (issue 3);
- one fold: `tgdfer train` on one DFEW-sized fold (11,697 clips: 9,357 train / 2,340 test, T 16, D 512, four train
  views), 50 epochs, the default settings; <= 30 s (issue 4);
- Table 3 row e: `tgdfer ablate --rows e` over 5 folds x 50 epochs, one at a time (`--no-batch`) and batched
  (`--batch`); batched <= 50 s (Table 3's 60 runs in <= 10 min) and >= 3x one at a time (issue 14);
- timeline: `tgdfer timeline --face-crop` on a generated 3-minute 640x360 25 fps video with the fold's run;
  >= 100x real time (issue 18);
- peak GPU memory: the largest `torch.cuda.max_memory_allocated` of this process and of each command; <= 16 GiB,
  so a 16 GB card runs every step.

Each command runs as the CLI in a child process (so moves inside tgdfer do not break this script) and times itself
from after its imports; its peak GPU memory is its own (the worker processes of a sweep are not counted). A
`tgdfer ablate` without `--batch` prints the batched row as "n/a: no batched runs".

    python bench/gpu.py                 # on a CUDA machine
    python bench/gpu.py --smoke         # the same code paths on the CPU, tiny sizes (tests/test_bench_gpu.py)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

BUDGET_S = 480  # the whole checklist on one H100, so it fits a 15-minute slot with the machine's start-up
GIB = 2**30


@dataclass(frozen=True)
class Sizes:
    """How much each check does: the real checklist on a GPU, or a smoke run of the same code on the CPU."""

    arch: str  # random CLIP architecture
    device: str
    jpeg_clips: int  # generated JPEG-folder clips of stage 1 (about 77 frames each, as DFEW)
    jpeg_frames: tuple[int, int]  # frame count range of those clips
    encode_frames: int  # frames of the encode-only measurement
    batch_size: int  # frames per encoder call
    cache_clips: int  # clips of the generated feature cache (DFEW: 11,697; fold 1 tests on 1/5)
    epochs: int
    folds: int  # Table 3 row e's folds
    video_s: int  # seconds of generated video for the timeline
    video_size: tuple[int, int]  # width, height


FULL = Sizes("ViT-B/32", "cuda", 512, (60, 94), 8192, 1024, 11_697, 50, 5, 180, (640, 360))
SMOKE = Sizes("tiny", "cpu", 5, (16, 20), 64, 64, 60, 1, 2, 4, (160, 120))


@dataclass(frozen=True)
class Row:
    check: str
    figure: str
    target: str
    met: bool | None  # None: nothing to hold against the target (not run, timed out, or a reference)


@dataclass(frozen=True)
class Done:
    """A child command's outcome: seconds from after its imports, its peak GPU bytes, or why it failed."""

    seconds: float = 0.0
    peak: int = 0
    error: str | None = None


# The child: tgdfer's CLI as `python -m tgdfer` runs it, timed from after the imports, then its time and peak GPU
# memory as stderr's last line.
_CHILD = (
    "import json, sys, time\n"
    "import torch\n"
    "from tgdfer.cli import main\n"
    "t0 = time.perf_counter()\n"
    "code = main(sys.argv[1:])\n"
    "seconds = time.perf_counter() - t0\n"
    "peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0\n"
    "print('BENCH ' + json.dumps({'seconds': seconds, 'peak': peak}), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


class Checklist:
    """Runs the checks in order of importance within one deadline, gathering rows and peak GPU memory."""

    def __init__(self, sizes: Sizes, work: Path, budget_s: float):
        self.sizes, self.work, self.budget_s = sizes, work, budget_s
        self.deadline = time.monotonic() + budget_s
        self.peaks: list[int] = []
        self.rows: list[Row] = []
        self.errors: list[str] = []  # commands that failed or ran out of time

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cli(self, *args: str) -> Done:
        """``tgdfer <args>`` in a child process, stopped at the deadline."""
        done = self._child(args)
        if done.error:
            self.errors.append(done.error)
        return done

    def _child(self, args: tuple[str, ...]) -> Done:
        here = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
        if self.left() < 5:
            return Done(error="skipped: no time left")
        try:
            child = subprocess.run(
                [sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True, timeout=self.left()
            )
        except subprocess.TimeoutExpired:
            return Done(error=f"timed out at the {self.budget_s:.0f} s budget")
        head, _, last = child.stderr.rstrip().rpartition("\n")
        if child.returncode != 0 or not last.startswith("BENCH "):
            tail = (head + "\n" + last).strip().splitlines()[-3:]
            return Done(error=f"`tgdfer {args[0]}` failed ({child.returncode}): {' | '.join(tail)}")
        result = json.loads(last[len("BENCH ") :])
        self.peaks.append(result["peak"])
        return Done(result["seconds"], result["peak"])

    def add(self, check: str, figure: str, target: str, met: bool | None) -> None:
        """A row of the table; under --smoke (tiny sizes on the CPU) no figure is held against a GPU's target."""
        self.rows.append(Row(check, figure, target, met if self.sizes.device == "cuda" else None))
        print(f"  {check}: {figure}", flush=True)


def stage_one(c: Checklist, clip_file: Path) -> None:
    """Encode-only frames/s in this process, then `tgdfer extract` end to end on generated JPEG folders."""
    from tgdfer.backbone import load_clip
    from tgdfer.data.views import encode_frames
    from tgdfer.devices import resolve_dtype
    from tgdfer.testing.synthetic import make_dfew_tree

    s = c.sizes
    device = torch.device(s.device)
    clip = load_clip(str(clip_file), device, resolve_dtype("auto", device))
    frames = torch.randint(0, 256, (s.encode_frames, 224, 224, 3), dtype=torch.uint8)
    frames = frames.pin_memory() if device.type == "cuda" else frames
    encode_frames(clip, frames[: s.batch_size], s.batch_size)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    encode_frames(clip, frames, s.batch_size).cpu()
    encode = len(frames) / (time.perf_counter() - t0)
    del clip, frames

    root = make_dfew_tree(c.work / "dfew", s.jpeg_clips, frames=s.jpeg_frames, size=224, seed=0)
    args = ["extract", "--dataset", "dfew", "--root", str(root), "--out", str(c.work / "jpeg-cache.h5")]
    args += ["--clip", str(clip_file), "--device", s.device, "--batch-size", str(s.batch_size), "--views", "4"]
    done = c.cli(*args)
    target = ">= 25,000 frames/s and >= 0.5x encode only"
    if done.error:
        c.add("stage 1, end to end", f"{done.error}; encode only {encode:,.0f} frames/s", target, None)
        return
    e2e = s.jpeg_clips * 5 * 16 / done.seconds  # clips x (1 test + 4 train views) x T frames encoded
    figure = f"{e2e:,.0f} frames/s = {e2e / encode:.2f}x encode only ({encode:,.0f} frames/s)"
    c.add("stage 1, end to end", figure, target, e2e >= 25_000 and e2e >= 0.5 * encode)


def one_fold(c: Checklist, cache: Path) -> Path | None:
    """`tgdfer train` on fold 1 of the DFEW-sized cache, the defaults but the epochs; -> the run, for the timeline."""
    run = c.work / "fold1"
    s = c.sizes
    done = c.cli("train", "--features", str(cache), "--out", str(run), "--device", s.device, "--set", _epochs(s))
    n_test = len(range(1, s.cache_clips, 5))  # fold k tests on the clips k, k + 5, ... (synthetic's folds)
    check = f"one fold ({s.cache_clips - n_test:,} train / {n_test:,} test clips), {s.epochs} epochs"
    if done.error:
        c.add(check, done.error, "<= 30 s", None)
        return None
    c.add(check, f"{done.seconds:.1f} s", "<= 30 s", done.seconds <= 30)
    return run


def row_e(c: Checklist, cache: Path) -> None:
    """Table 3 row e over the folds through `tgdfer ablate`: batched first (the shorter), then one at a time."""
    from tgdfer.cli import main

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        main(["ablate", "--help"])
    flags = text.getvalue()
    s = c.sizes
    args = ["ablate", "--table", "3", "--rows", "e", "--folds", f"1-{s.folds}", "--features", str(cache)]
    args += ["--device", s.device, "--set", _epochs(s)]
    check = f"Table 3 row e, {s.folds} folds x {s.epochs} epochs"
    batched = c.cli(*args, "--out", str(c.work / "ablate-batched"), "--batch") if "--batch" in flags else None
    alone = c.cli(*args, "--out", str(c.work / "ablate-alone"), *(["--no-batch"] if "--no-batch" in flags else []))
    c.add(f"{check}, one at a time", alone.error or f"{alone.seconds:.1f} s", "(reference for batched)", None)
    target = "<= 50 s and >= 3x one at a time"
    if batched is None or batched.error:
        c.add(f"{check}, batched", batched.error if batched else "n/a: no batched runs", target, None)
        return
    ratio = f" = {alone.seconds / batched.seconds:.2f}x one at a time" if not alone.error else ""
    met = batched.seconds <= 50 and (not alone.error and alone.seconds >= 3 * batched.seconds)
    c.add(f"{check}, batched", f"{batched.seconds:.1f} s{ratio}", target, met)


def timeline(c: Checklist, run: Path | None) -> None:
    """`tgdfer timeline --face-crop` on a generated video with a face, with the fold's run."""
    import numpy as np
    from skimage import data

    from tgdfer.testing.synthetic import face_scene, write_video_pts

    s = c.sizes
    check = f"timeline, {s.video_s} s of {s.video_size[0]}x{s.video_size[1]} video"
    if run is None:
        c.add(check, "not run: the fold's run failed", ">= 100x real time", None)
        return
    n, fps = s.video_s * 25, 25
    video = c.work / "face.mp4"
    frames = face_scene(np.ascontiguousarray(data.astronaut()), n, *s.video_size)
    write_video_pts(video, frames, (round(i * 1000 / fps) for i in range(n)), codec="libx264")
    args = ["timeline", str(video), "--run", str(run), "--out", str(c.work / "timeline"), "--device", s.device]
    done = c.cli(*args, "--face-crop", "--json")
    if done.error:
        c.add(check, done.error, ">= 100x real time", None)
        return
    speed = s.video_s / done.seconds
    c.add(check, f"{speed:.1f}x real time ({done.seconds:.1f} s)", ">= 100x real time", speed >= 100)


def _epochs(s: Sizes) -> str:
    return f"train.epochs={s.epochs}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_checklist(sizes: Sizes, work: Path, budget_s: float) -> tuple[list[Row], list[str]]:
    """Every check in order of importance (the longest last), then peak GPU memory and the total time."""
    from tgdfer.backbone import load_clip, save_random_clip
    from tgdfer.testing.synthetic import write_feature_cache

    t0 = time.monotonic()
    c = Checklist(sizes, work, budget_s)
    clip_file = save_random_clip(work / "clip.pt", sizes.arch)
    stage_one(c, clip_file)
    clip = load_clip(str(clip_file))
    cache = work / "cache.h5"
    write_feature_cache(cache, str(clip_file), clip.sha256, sizes.cache_clips, dim=clip.dim, views=4, folds=5)
    run = one_fold(c, cache)
    timeline(c, run)
    row_e(c, cache)
    if sizes.device == "cuda":
        peak = max([torch.cuda.max_memory_allocated(), *c.peaks])
        c.add("peak GPU memory", f"{peak / GIB:.2f} GiB", "<= 16 GiB", peak <= 16 * GIB)
    else:
        c.add("peak GPU memory", "n/a: no GPU (--smoke)", "<= 16 GiB", None)
    total = time.monotonic() - t0
    c.add("the whole checklist", f"{total:.0f} s", f"<= {BUDGET_S} s", total <= BUDGET_S)
    return c.rows, c.errors


def table(rows: list[Row]) -> str:
    mark = {True: "yes", False: "**no**", None: "-"}
    lines = ["| check | figure | target | met |", "|---|---|---|---|"]
    lines += [f"| {r.check} | {r.figure} | {r.target} | {mark[r.met]} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the same code paths on the CPU with tiny sizes")
    p.add_argument("--work", default=None, help="an empty folder to keep (default: a temporary one)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds before the remaining steps are cut")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        p.error("expected a CUDA machine, found none: run on a GPU, or --smoke for the CPU code-path check")
    name = torch.cuda.get_device_name() if sizes.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"bench/gpu.py{' --smoke' if args.smoke else ''}: {name}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tgdfer-gpu-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows, errors = run_checklist(sizes, work, args.budget)
    print(table(rows))
    return 1 if errors else 0  # a command that failed or ran out of time; unmet targets show in the table


if __name__ == "__main__":
    sys.exit(main())
