"""Stage-2 speed: seconds per epoch and steps/s on a DFEW-sized generated cache, and the ratio to an epoch that
runs the CLIP image encoder in the loop as DFER-CLIP does; one step's time split into text tower / temporal
network / the rest; R folds trained as one batched model against the same R folds one at a time (runs/min);
and the peak memory of `tgdfer train` against the cache's size at 1k/4k/16k clips.

Cache: 11,697 clips (DFEW), T=16, D=512, 4 train views, generated features; fold 1 trains on 4/5 of the clips.
Text tower: the real ViT-B/32 architecture with random weights (speed does not depend on the weights).
In-loop epoch: each step encodes its B x T frames (random pixels already in memory, so decoding costs nothing,
which favours the in-loop side) with the ViT-B/32 image encoder, forward and backward as DFER-CLIP fine-tunes it
(and forward only, for a frozen encoder), then takes the same TG-DFER step.

    python bench/train.py                          # sizes chosen for the device found
    python bench/train.py --clips 11697 --epochs 3 --device cuda

One step in fp32 against bf16 autocast (median of --amp-steps, interleaved), and whether this CPU has AMX, on which
train.amp=auto trains in bf16 (issue 25: 1.55x on an AMX CPU; an AMD EPYC with AVX-512 BF16 but no AMX: 0.97x, so
auto keeps fp32 there).

Targets (issue 4, one H100): one fold of 50 epochs in 30 s or less; ratio (in-loop / cached epoch) >= 100.
Issue 14: batched / one-at-a-time runs/min >= 3 for 5 folds on the CPU; peak memory <= 1.5x cache + a constant.

Memory: each size's cache is generated in a separate process first, then `tgdfer train` (1 epoch, CPU) runs in a
fresh process whose peak RSS is its VmHWM (getrusage's maximum would carry this process's over fork and exec),
so neither generation nor this process is counted. That
`train` uses fixed prompts and no temporal layers (model.fine_depth=0 coarse_depth=0 fine_learnable=false
coarse_learnable=false) so a 16k-clip epoch takes a minute on a CPU: what scales with the cache (loading,
the split, the centring mean, the epoch's batches, evaluation) is the same code; the model's activations are a
constant either way.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _breakdown(model, data, cfg, device, steps: int) -> dict[str, float]:
    """Mean seconds of one training step, and of its text tower and temporal network forward+backward."""
    import torch.nn.functional as F

    from tgdfer.devices import autocast

    model.train()
    x = data.features[data.train_choices[: cfg.train.batch_size, 0]].float()  # (B, T, D)
    y = data.train_labels[: cfg.train.batch_size]

    def step() -> None:
        with autocast(device, cfg.train.amp):
            out = model(x)
        F.cross_entropy(out.logits.float(), y).backward()

    def tower() -> None:
        with autocast(device, cfg.train.amp):
            feats = [f for f in model.prompts() if f is not None and f.requires_grad]
        if feats:
            sum(f.float().sum() for f in feats).backward()

    def temporal() -> None:
        with autocast(device, cfg.train.amp):
            model.temporal(x).float().sum().backward()

    out = {}
    for name, fn in (("step", step), ("text tower", tower), ("temporal", temporal)):
        fn()  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
            model.zero_grad(set_to_none=True)
        _sync(device)
        out[name] = (time.perf_counter() - t0) / steps
    out["rest"] = out["step"] - out["text tower"] - out["temporal"]
    return out


def _amp_ratio(model, data, cfg, device, steps: int) -> None:
    """Median time of one training step (forward + backward) in fp32 and under bf16 autocast, and their ratio.

    The two alternate step by step, so a load that changes during the measurement weighs on both alike."""
    import statistics

    import torch.nn.functional as F

    from tgdfer.devices import amp_enabled, autocast, cpu_has_amx

    model.train()
    x = data.features[data.train_choices[: cfg.train.batch_size, 0]].float()  # (B, T, D)
    y = data.train_labels[: cfg.train.batch_size]
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(steps + 1):  # the first of each is a warm-up
        for amp in ("off", "on"):
            _sync(device)
            t0 = time.perf_counter()
            with autocast(device, amp):
                out = model(x)
            F.cross_entropy(out.logits.float(), y).backward()
            model.zero_grad(set_to_none=True)
            _sync(device)
            times[amp].append(time.perf_counter() - t0)
    off, on = (statistics.median(times[amp][1:]) for amp in ("off", "on"))
    where = "CUDA" if device.type == "cuda" else f"CPU {'with' if cpu_has_amx() else 'without'} AMX"
    print(
        f"amp: one step fp32 {off * 1000:.1f} ms, bf16 {on * 1000:.1f} ms (median of {steps}, interleaved); "
        f"fp32 / bf16 = {off / on:.2f}x on this {where}; train.amp=auto uses "
        f"{'bf16' if amp_enabled('auto', device) else 'fp32'} here (issue 25, an AMX CPU: 1.55x)",
        flush=True,
    )


def _batched_vs_alone(cache_path: Path, clip, work: Path, runs: int, epochs: int, device, overrides) -> None:
    """R folds of one row: trained one at a time (engine.fit_fold) and as one batched model (fit_batched)."""
    from tgdfer.config import RunConfig, apply_overrides
    from tgdfer.features.cache import load_cache
    from tgdfer.train.batched import fit_batched
    from tgdfer.train.engine import fit_fold

    cache = load_cache(cache_path)

    def cfg(fold: int, tag: str) -> RunConfig:
        base = RunConfig(features=str(cache_path), fold=str(fold), out=str(work / f"{tag}{fold}"), device=str(device))
        return apply_overrides(base, [f"train.epochs={epochs}", *overrides])

    folds = range(1, runs + 1)
    t0 = time.perf_counter()
    alone = [fit_fold(cfg(f, "alone"), cache=cache, clip=clip, log=lambda _: None) for f in folds]
    alone_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = fit_batched([cfg(f, "batched") for f in folds], cache=cache, clip=clip, log=lambda _: None)
    batched_s = time.perf_counter() - t0
    bad = [o for o in together if isinstance(o, Exception)]
    if bad:
        raise SystemExit(f"a batched run failed: {bad[0]}")
    wars = [(a["war"], b["war"]) for a, b in zip(alone, together, strict=True)]
    print(
        f"{runs} folds x {epochs} epochs, one at a time: {alone_s:8.1f} s = {runs / alone_s * 60:6.2f} runs/min\n"
        f"{runs} folds x {epochs} epochs, batched      : {batched_s:8.1f} s = {runs / batched_s * 60:6.2f} runs/min\n"
        f"batched / one at a time: {alone_s / batched_s:.2f}x runs/min (target on the CPU: >= 3x for 5 folds); "
        f"WAR alone vs batched per fold: {', '.join(f'{a:.1f}/{b:.1f}' for a, b in wars)}"
    )


def _memory(work: Path, clip_file: Path, sizes: list[int]) -> None:
    """Peak RSS of `tgdfer train` (1 epoch, CPU, a fresh process) against the cache's size on disk."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    here = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), env.get("PYTHONPATH")]))
    generate = (
        "import sys; from tgdfer.backbone import load_clip; from tgdfer.testing.synthetic import write_feature_cache; "
        "c = load_clip(sys.argv[2]); write_feature_cache(sys.argv[1], sys.argv[2], c.sha256, n_clips=int(sys.argv[3]), "
        "dim=c.dim, views=4, shard_clips=1024)"
    )
    cheap = ["model.fine_depth=0", "model.coarse_depth=0", "model.fine_learnable=false", "model.coarse_learnable=false"]
    rows = []
    for n in sizes:
        cache = work / f"memory-{n}.h5"
        if not cache.exists():
            subprocess.run([sys.executable, "-c", generate, str(cache), str(clip_file), str(n)], check=True, env=env)
        size = sum(f.stat().st_size for f in (work / f"memory-{n}.shards").iterdir()) + cache.stat().st_size
        script = (
            "import sys; from tgdfer.cli import main; code = main(sys.argv[1:]); "  # VmHWM: this process's own peak
            "print('PEAK', open('/proc/self/status').read().split('VmHWM:')[1].split()[0]); sys.exit(code)"
        )
        run_dir = work / f"memory-run-{n}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (train refuses to overwrite one)
        cmd = [sys.executable, "-c", script, "train", "--features", str(cache), "--out", str(run_dir)]
        cmd += ["--device", "cpu", "--set", "train.epochs=1", *[a for c in cheap for a in ("--set", c)]]
        done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        peak = int(next(line for line in done.stdout.splitlines() if line.startswith("PEAK")).split()[1]) * 1024
        rows.append((n, size, peak))
        line = f"memory: {n:6d} clips, cache {size / 2**30:6.3f} GiB, peak RSS of train {peak / 2**30:6.2f} GiB"
        print(line, flush=True)
    if len(rows) > 1:
        (n0, c0, p0), (n1, c1, p1) = rows[0], rows[-1]
        slope = (p1 - p0) / (c1 - c0)
        constant = p0 - slope * c0
        print(
            f"memory: peak grows {slope:.2f}x as fast as the cache ({n0} -> {n1} clips); constant "
            f"{constant / 2**30:.2f} GiB (torch, CLIP weights, the model); target <= 1.5x + a constant"
        )


def main() -> None:
    from tgdfer.backbone import load_clip, save_random_clip
    from tgdfer.config import RunConfig, apply_overrides
    from tgdfer.data.preprocess import normalize
    from tgdfer.devices import amp_enabled, autocast, resolve_device
    from tgdfer.features.cache import load_cache
    from tgdfer.testing.synthetic import write_feature_cache
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
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. train.amp=off")
    p.add_argument("--work", default=None, help="folder for the generated cache (kept between runs)")
    p.add_argument("--breakdown-steps", type=int, default=10 if cuda else 2, help="steps timed per part of a step")
    p.add_argument("--amp-steps", type=int, default=3, help="steps timed in fp32 and in bf16 (0: skip)")
    p.add_argument("--runs", type=int, default=5, help="folds of the batched vs one-at-a-time comparison (0: skip)")
    p.add_argument("--runs-epochs", type=int, default=50 if cuda else 1, help="epochs of each of those runs")
    p.add_argument(
        "--memory", default="1000,4000,16000", help="cache sizes (clips) of the memory measurement; '' to skip"
    )
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
    n_train = len(data.train_choices)
    steps = math.ceil(n_train / cfg.train.batch_size)
    name = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} CPU threads"
    print(
        f"device {device} ({name}), text tower {args.arch} random weights, {n_train} train clips, "
        f"batch {cfg.train.batch_size}, {steps} steps/epoch, train.amp={cfg.train.amp}: "
        f"{'bf16' if amp_enabled(cfg.train.amp, device) else 'fp32'}"
    )

    parts = _breakdown(model, data, cfg, device, args.breakdown_steps)
    print(
        f"one step: {parts['step'] * 1000:8.1f} ms = text tower {parts['text tower'] * 1000:.1f} ms "
        f"({parts['text tower'] / parts['step']:.0%}) + temporal {parts['temporal'] * 1000:.1f} ms "
        f"({parts['temporal'] / parts['step']:.0%}) + rest {parts['rest'] * 1000:.1f} ms "
        f"({parts['rest'] / parts['step']:.0%}) (forward + backward; the optimizer step is not included)",
        flush=True,
    )
    if args.amp_steps:
        _amp_ratio(model, data, cfg, device, args.amp_steps)
    optimizer.zero_grad(set_to_none=True)
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
    del visual, pixels, data, model, optimizer
    if args.runs:
        _batched_vs_alone(cache_path, clip, work, args.runs, args.runs_epochs, device, args.overrides)
    sizes = [int(x) for x in args.memory.split(",") if x.strip()]
    if sizes:
        _memory(work, clip_file, sizes)


if __name__ == "__main__":
    main()
