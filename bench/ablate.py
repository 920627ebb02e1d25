"""Benchmark ``tgdfer ablate``: Table 3 on a DFEW-sized generated cache: runs one at a time (``--no-batch``),
batched by model shape (``--batch``: a row's folds train as one model), and batched with N workers.

Target on one H100: all of Table 3 over five folds (60 runs of 50 epochs) in 10 minutes or less. The cache is
generated (``synthetic.write_feature_cache``) at DFEW's size, 11,697 clips of T=16 frames, four train views each,
D=512; the text tower is ViT-B/32's architecture with random weights, so costs are real and nothing downloads.
Every sweep trains the same rows and folds from scratch into its own folder. Prints the device, runs, seconds
and runs/min of each, the speed-ups (issue 14's CPU target: batched >= 3x one at a time for a row's 5 folds),
the largest WAR difference between a run batched and the same run alone, and the projected time of the full
table. Scale it down on a CPU, e.g.

    .venv/bin/python bench/ablate.py --clips 600 --epochs 2 --folds 5 --rows e --arch tiny --workers 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from tgdfer.backbone import load_clip, save_random_clip
from tgdfer.config import SweepConfig
from tgdfer.devices import resolve_device
from tgdfer.sweep.runner import run_table
from tgdfer.sweep.tables import TABLES
from tgdfer.testing.synthetic import write_feature_cache

DFEW_CLIPS, PAPER_EPOCHS = 11_697, 50


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device}, {torch.cuda.device_count()} GPU(s))"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=DFEW_CLIPS, help="clips in the generated cache (DFEW: 11697)")
    parser.add_argument("--epochs", type=int, default=PAPER_EPOCHS, help="epochs per run (paper: 50)")
    parser.add_argument("--folds", type=int, default=5, help="how many of the cache's five DFEW-like folds to train")
    parser.add_argument("--workers", type=int, default=4 if cuda else 2, help="N of the third sweep (1: no third)")
    parser.add_argument("--rows", default=",".join(r.label for r in TABLES["3"].rows), help="Table 3 rows")
    parser.add_argument("--arch", default="ViT-B/32", choices=["ViT-B/32", "tiny"], help="random CLIP architecture")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--out", default=None, help="an empty work folder to keep (default: a temporary one)")
    args = parser.parse_args(argv)
    if not 1 <= args.folds <= 5:
        parser.error(f"--folds: expected 1..5 (the generated cache has DFEW's five folds), found {args.folds}")
    if args.out and Path(args.out).exists() and any(Path(args.out).iterdir()):
        parser.error(f"--out: expected an empty or new folder (finished runs would be skipped), found {args.out}")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    folds = [str(k + 1) for k in range(args.folds)]

    with tempfile.TemporaryDirectory(prefix="tgdfer-bench-") as tmp:
        work = Path(args.out or tmp)
        clip_path = save_random_clip(work / "clip.pt", args.arch)
        clip = load_clip(str(clip_path))
        t0 = time.perf_counter()
        cache = work / "cache.h5"
        write_feature_cache(cache, str(clip_path), clip.sha256, args.clips, dim=clip.dim, views=4, folds=5)
        device = resolve_device(args.device)
        print(
            f"device: {_device_name(device)}\ncache: {args.clips} clips × (1 test + 4 train views) × 16 × {clip.dim}, "
            f"5 folds, written in {time.perf_counter() - t0:.1f} s; CLIP {args.arch} (random weights)\n"
            f"table 3 rows {','.join(rows)} × {args.folds} folds, {args.epochs} epochs each",
            flush=True,
        )
        results = {}
        sweeps = [("one at a time", False, 1), ("batched", True, 1)]
        if args.workers > 1:
            sweeps.append((f"batched, {args.workers} workers", True, args.workers))
        for name, batch, workers in sweeps:
            t0 = time.perf_counter()
            sweep = SweepConfig(
                table="3",
                features=str(cache),
                folds=tuple(folds),
                workers=workers,
                out=str(work / name.replace(" ", "-").replace(",", "")),
                overrides=(f"train.epochs={args.epochs}",),
                device=args.device,
                rows=tuple(rows),
                batch=batch,
            )
            result = run_table(
                sweep,
                log=lambda line: print(f"  {line}", flush=True) if line.startswith(("[", "FAILED")) else None,
            )
            seconds = time.perf_counter() - t0
            if result["failed"]:
                raise SystemExit(f"{len(result['failed'])} runs failed, no timing to report: {result['failed'][0]}")
            results[name] = (result["ran"], seconds, result["rows"])
            print(
                f"{name}: {result['ran']} runs in {seconds:.1f} s = {result['ran'] / seconds * 60:.2f} runs/min",
                flush=True,
            )

    runs1, sec1, rows1 = results["one at a time"]
    for name, (runs, sec, rows_n) in list(results.items())[1:]:
        gap = max(
            abs(a - b) for r1, rn in zip(rows1, rows_n, strict=True) for a, b in zip(r1["war"], rn["war"], strict=True)
        )
        print(
            f"{name} / one at a time: {(runs / sec) / (runs1 / sec1):.2f}x runs/min; largest WAR gap {gap:.2f} points"
        )
    name, (runs_n, sec_n, _) = list(results.items())[-1]
    # Linear in epochs and clips: exact only at the defaults (DFEW size, 50 epochs, all 12 rows, which differ
    # in cost: depth-7 rows take longer than the mean, row a less).
    scale = (PAPER_EPOCHS / args.epochs) * (DFEW_CLIPS / args.clips)
    projected = 60 * sec_n / runs_n * scale
    print(
        f"projected all of Table 3 (60 runs, 50 epochs, {DFEW_CLIPS} clips) on this device, {name}: "
        f"{projected / 60:.1f} min (target on one H100: <= 10 min"
        + (")" if scale == 1 else f"; extrapolated ×{scale:.0f} from this scaled-down run)")
    )


if __name__ == "__main__":  # workers are spawned processes: they import this file and must not rerun it
    main()
