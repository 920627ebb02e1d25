"""Stage-2 speed: seconds per epoch and steps/s on a DFEW-sized generated cache, and the ratio to an epoch that
runs the CLIP image encoder in the loop as DFER-CLIP does.

Cache: 11,697 clips (DFEW), T=16, D=512, 4 train views, generated features; fold 1 trains on 4/5 of the clips.
Text tower: the real ViT-B/32 architecture with random weights (speed does not depend on the weights).
In-loop epoch: each step encodes its B x T frames (random pixels already in memory, so decoding costs nothing,
which favours the in-loop side) with the ViT-B/32 image encoder, forward and backward as DFER-CLIP fine-tunes it
(and forward only, for a frozen encoder), then takes the same TG-DFER step.

    python bench/train.py                          # sizes chosen for the device found
    python bench/train.py --clips 11697 --epochs 3 --device cuda

Targets (issue 4, one H100): one fold of 50 epochs in 30 s or less; ratio (in-loop / cached epoch) >= 100.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    from tgdfer.apps.synthetic import write_feature_cache
    from tgdfer.backbone import load_clip, save_random_clip
    from tgdfer.config import RunConfig, apply_overrides
    from tgdfer.data.preprocess import normalize
    from tgdfer.devices import autocast, resolve_device
    from tgdfer.features.cache import load_cache
    from tgdfer.train.engine import make_optimizer, train_one_epoch
    from tgdfer.train.runs import build_model, cache_identity
    from tgdfer.train.splits import fold_data

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=11697 if cuda else 600)
    p.add_argument("--epochs", type=int, default=3 if cuda else 1, help="cached epochs timed (after one warm-up)")
    p.add_argument("--inloop-steps", type=int, default=10 if cuda else 1, help="in-loop steps timed")
    p.add_argument(
        "--inloop-clips",
        type=int,
        default=0,
        help="clips encoded per timed in-loop step (0: the whole batch); the encoder's time is scaled "
        "linearly to the batch, for machines without the memory to back-propagate through 768 images",
    )
    p.add_argument("--arch", default="ViT-B/32", choices=["ViT-B/32", "tiny"])
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. train.amp=false")
    p.add_argument("--work", default=None, help="folder for the generated cache (kept between runs)")
    args = p.parse_args()

    device = resolve_device(args.device)
    work = Path(args.work or tempfile.mkdtemp(prefix="tgdfer-bench-"))
    clip_file = save_random_clip(work / f"random-{args.arch.replace('/', '-')}.pt", args.arch)
    clip = load_clip(str(clip_file), "cpu", torch.float32)
    cache_path = work / f"gen-{args.arch.replace('/', '-')}-{args.clips}.h5"
    if not cache_path.exists():
        t0 = time.perf_counter()
        write_feature_cache(cache_path, str(clip_file), clip.sha256, n_clips=args.clips, dim=clip.dim, views=4)
        print(f"generated cache: {args.clips} clips x 5 views x 16 x {clip.dim} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    cache = load_cache(cache_path)
    cfg = apply_overrides(
        RunConfig(features=str(cache_path), out=str(work / "run"), device=str(device)), args.overrides
    )
    data = fold_data(cache, "1", device)
    print(f"cache loaded to {device} in {time.perf_counter() - t0:.1f} s")
    model, _ = build_model(cfg, cache_identity(cache), device, clip)
    optimizer, _ = make_optimizer(model, cfg)
    n_train = len(data.train_views)
    steps = math.ceil(n_train / cfg.train.batch_size)
    name = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} CPU threads"
    print(
        f"device {device} ({name}), text tower {args.arch} random weights, {n_train} train clips, "
        f"batch {cfg.train.batch_size}, {steps} steps/epoch, amp {cfg.train.amp and cuda}"
    )

    train_one_epoch(model, optimizer, data, cfg.train, 0)  # warm-up (allocator, kernels)
    _sync(device)
    t0 = time.perf_counter()
    for epoch in range(1, 1 + args.epochs):
        train_one_epoch(model, optimizer, data, cfg.train, epoch)
    _sync(device)
    cached_epoch = (time.perf_counter() - t0) / args.epochs
    cached_step = cached_epoch / steps

    # In the loop: encode the step's frames with the image encoder, then the same model step.
    visual = load_clip(str(clip_file), device, torch.float32).model.visual.train()
    b, t = args.inloop_clips or cfg.train.batch_size, cache.frames
    scale = cfg.train.batch_size / b  # the encoder's share of a step grows linearly with the frames it encodes
    pixels = torch.randint(0, 256, (b * t, 224, 224, 3), dtype=torch.uint8, device=device)
    timings = {}
    for mode in ("frozen", "finetune"):
        visual.requires_grad_(mode == "finetune")
        extra = [{"params": list(visual.parameters()), "lr": 1e-5}] if mode == "finetune" else []
        opt = torch.optim.SGD(list(optimizer.param_groups) + extra, lr=1e-3, momentum=0.9) if extra else optimizer
        encoder = 0.0
        for i in range(args.inloop_steps + 1):
            _sync(device)
            t0 = time.perf_counter()
            with autocast(device, cfg.train.amp), torch.set_grad_enabled(mode == "finetune"):
                feats = visual(normalize(pixels, torch.float32)).float().view(b, t, -1)  # (B*T, D) -> (B, T, D)
                if mode == "finetune":
                    feats.sum().backward()  # the encoder's backward; the model's step is timed as "cached" below
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            _sync(device)
            if i:  # the first step is a warm-up
                encoder += time.perf_counter() - t0
        timings[mode] = encoder / args.inloop_steps * scale + cached_step

    fold_50 = cached_epoch * 50
    print(
        f"cached      : {cached_epoch:8.2f} s/epoch  {steps / cached_epoch:8.1f} steps/s  -> 50 epochs of this "
        f"fold {fold_50:.1f} s ({fold_50 * 11697 / max(args.clips, 1):.1f} s scaled to DFEW's 11,697 clips)"
    )
    for mode, label in (
        ("frozen", "in-loop, frozen image encoder (forward)"),
        ("finetune", "in-loop, fine-tuned image encoder (DFER-CLIP)"),
    ):
        epoch = timings[mode] * steps
        print(
            f"{label}: {timings[mode]:8.3f} s/step -> {epoch:8.1f} s/epoch; ratio to cached {epoch / cached_epoch:8.1f}"
        )
    print("targets on one H100: 50 epochs of one DFEW fold <= 30 s; ratio >= 100")
    if scale != 1:
        print(f"(in-loop encoder timed on {b} clips x {t} frames per step, scaled x{scale:.0f} to the batch)")


if __name__ == "__main__":
    main()
