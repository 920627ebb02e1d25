"""Benchmark ``tgdfer ablate``: Table 3 on a DFEW-sized generated cache, with 1 and with N workers.

Target on one H100: all of Table 3 over five folds (60 runs of 50 epochs) in 10 minutes or less. The cache is
generated (``synthetic.write_feature_cache``) at DFEW's size, 11,697 clips of T=16 frames, four train views each,
D=512; the text tower is ViT-B/32's architecture with random weights, so costs are real and nothing downloads.
Both sweeps train the same rows and folds from scratch into separate folders. Prints the device, runs, seconds
and runs/min of each, the speed-up, and the projected time of the full table. Scale it down on a CPU, e.g.

    .venv/bin/python bench/ablate.py --clips 600 --epochs 2 --folds 1 --rows a,e --arch tiny
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from tgdfer.apps.synthetic import write_feature_cache
from tgdfer.backbone import load_clip, save_random_clip
from tgdfer.config import SweepConfig
from tgdfer.devices import resolve_device
from tgdfer.sweep.runner import run_table
from tgdfer.sweep.tables import TABLES

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
    parser.add_argument("--workers", type=int, default=4 if cuda else 2, help="N of the second sweep")
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
        for workers in dict.fromkeys([1, args.workers]):
            t0 = time.perf_counter()
            sweep = SweepConfig(
                table="3",
                features=str(cache),
                folds=tuple(folds),
                workers=workers,
                out=str(work / f"workers{workers}"),
                overrides=(f"train.epochs={args.epochs}",),
                device=args.device,
                rows=tuple(rows),
            )
            result = run_table(
                sweep,
                log=lambda line: print(f"  {line}", flush=True) if line.startswith(("[", "FAILED")) else None,
            )
            seconds = time.perf_counter() - t0
            results[workers] = (result["ran"], seconds, len(result["failed"]))
            if result["failed"]:
                raise SystemExit(f"{len(result['failed'])} runs failed, no timing to report: {result['failed'][0]}")
            print(
                f"workers {workers}: {result['ran']} runs in {seconds:.1f} s = {result['ran'] / seconds * 60:.2f} "
                "runs/min",
                flush=True,
            )

    runs1, sec1, _ = results[1]
    runsn, secn, _ = results[args.workers]
    speedup = (runsn / secn) / (runs1 / sec1)
    # Linear in epochs and clips: exact only at the defaults (DFEW size, 50 epochs, all 12 rows, which differ
    # in cost: depth-7 rows take longer than the mean, row a less).
    scale = (PAPER_EPOCHS / args.epochs) * (DFEW_CLIPS / args.clips)
    projected = 60 * secn / runsn * scale
    print(f"speed-up with {args.workers} workers: {speedup:.2f}x")
    print(
        f"projected all of Table 3 (60 runs, 50 epochs, {DFEW_CLIPS} clips) on this device, {args.workers} workers: "
        f"{projected / 60:.1f} min (target on one H100: <= 10 min"
        + (")" if scale == 1 else f"; extrapolated ×{scale:.0f} from this scaled-down run)")
    )


if __name__ == "__main__":  # workers are spawned processes: they import this file and must not rerun it
    main()
