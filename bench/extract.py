"""Stage-1 throughput: frames/s end to end, decode only, and encode only, on generated DFEW-like data.

Data: folders of 224x224 JPEG face crops, about 77 frames per clip (DFEW's mean), written once under --data.
Model: the real ViT-B/32 architecture with random weights (speed does not depend on the weights).
Frames/s counts encoded frames: clips x (1 test + views train views) x T.

    python bench/extract.py                       # sizes chosen for the device found
    python bench/extract.py --clips 512 --workers 15 --device cuda

Targets (issue 3, one H100): end to end >= 25k frames/s and >= half the encode-only figure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader


def main() -> None:
    from tgdfer.backbone import load_clip, save_random_clip
    from tgdfer.config import AugmentConfig, ExtractConfig
    from tgdfer.data.views import ClipJob, ClipViews, decode_workers, encode_frames, worker_init
    from tgdfer.devices import resolve_device, resolve_dtype
    from tgdfer.extract import extract
    from tgdfer.testing.synthetic import make_dfew_tree

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=512 if cuda else 8, help="generated clips")
    p.add_argument("--views", type=int, default=4, help="train views per clip (plus the test view)")
    p.add_argument("--frames", type=int, default=16, help="T")
    p.add_argument("--batch-size", type=int, default=1024 if cuda else 64, help="frames per encoder call")
    p.add_argument("--workers", type=int, default=-1, help="decode processes (-1: cores - 1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", default="ViT-B/32", choices=["ViT-B/32", "tiny"])
    p.add_argument("--data", default=None, help="folder for the generated data (kept between runs)")
    args = p.parse_args()
    if args.clips < 5:
        p.error(f"--clips: expected at least 5 (one test clip per DFEW fold), found {args.clips}")

    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    workers = decode_workers(args.workers, args.clips)
    work = Path(args.data or tempfile.mkdtemp(prefix="tgdfer-bench-"))
    root = work / f"dfew-{args.clips}"
    if not (root / "EmoLabel_DataSplit").exists():
        t0 = time.perf_counter()
        make_dfew_tree(root, args.clips, frames=(60, 94), size=224, seed=0)
        print(f"generated {args.clips} clips (mean 77 frames, 224x224 JPEG) in {time.perf_counter() - t0:.1f} s")
    clip_file = save_random_clip(work / f"random-{args.arch.replace('/', '-')}.pt", args.arch)
    clip = load_clip(str(clip_file), device, dtype)
    per_clip = (1 + args.views) * args.frames
    total = args.clips * per_clip
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if cuda else os.cpu_count()} "
        f"{'GPU' if cuda else 'CPU cores'}), dtype {dtype}, {args.arch} random weights, {workers} decode workers, "
        f"{args.clips} clips x {1 + args.views} views x {args.frames} frames = {total} frames"
    )

    # decode only: the DataLoader of extraction, frames thrown away
    from tgdfer.data.datasets import read_dfew

    ann = read_dfew(root)
    jobs = [ClipJob(i, c.id, c.path) for i, c in enumerate(ann.clips)]
    dataset = ClipViews(jobs, args.frames, args.views, 0, clip.image_size, AugmentConfig())
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=worker_init,
        prefetch_factor=4 if workers else None,
    )
    t0 = time.perf_counter()
    decoded = sum(len(item["frames"]) for item in loader)
    decode = decoded / (time.perf_counter() - t0)

    # encode only: uint8 frames already in (pinned) memory, normalised and encoded on the device
    frames = torch.randint(0, 256, (min(total, 8 * args.batch_size), 224, 224, 3), dtype=torch.uint8)
    if cuda:
        frames = frames.pin_memory()
    encode_frames(clip, frames[: args.batch_size], args.batch_size)  # warm-up
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = encode_frames(clip, frames, args.batch_size)
    out.cpu()
    encode = len(frames) / (time.perf_counter() - t0)

    # end to end: the extract command itself (annotations, decode workers, encode, shards, entry)
    cache = work / "bench-cache.h5"
    cfg = ExtractConfig(
        dataset="dfew",
        root=str(root),
        out=str(cache),
        clip=str(clip_file),
        views=args.views,
        frames=args.frames,
        batch_size=args.batch_size,
        workers=args.workers,
        device=str(device),
        overwrite=True,
    )
    t0 = time.perf_counter()
    summary = extract(cfg)
    wall = time.perf_counter() - t0
    e2e = summary["frames"] / wall

    print(f"decode only : {decode:10.0f} frames/s   ({workers} workers)")
    print(f"encode only : {encode:10.0f} frames/s   (batch {args.batch_size})")
    print(
        f"end to end  : {e2e:10.0f} frames/s   ({summary['frames']} frames in {wall:.1f} s, incl. model load "
        f"and writing; ratio to encode only {e2e / encode:.2f})"
    )
    print("targets on one H100: end to end >= 25000 frames/s and >= 0.5 x encode only")


if __name__ == "__main__":
    main()
