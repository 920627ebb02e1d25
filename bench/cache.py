"""The per-frame cache against the view cache, printed in one run: storage, stage-2 speed, and what it buys.

1. Storage: frames encoded per clip and bytes on disk, for a DFEW-like length distribution (11-847 frames, mean
   about 77: log-normal, clipped) and a FERV39k-like one (8-47, mean about 28). View cache: 1 test + 4 train views
   of 16 frames (80 frames a clip at any length); per-frame cache: every frame once (one plain pass). Bytes are
   measured on caches written through the real writers (D=512 fp16), per clip.
2. Stage-2 step time: ``train_one_epoch`` on a view cache (fixed views) and on a per-frame cache of as many clips
   (a fresh TSN sample per clip each epoch, gathered on the device), same model and batch; median of repeats, and
   the device bytes of each cache. Target: per-epoch sampling within 10% of fixed views.
3. Test WAR of 4 fixed views vs fresh per-epoch samples of the same clips, over seeds: per-frame features with the
   class signal over an apex stretch of each clip and fresh noise in every frame
   (``tgdfer.testing.synthetic.write_frame_feature_cache``); the view cache is cut from those very frames (test view
   = segment centres, 4 train views = random frame per segment, stage 1's rules), so both runs test on identical
   inputs and differ only in how many temporal samples training sees. No spatial augmentation on either side.

    python bench/cache.py                      # CPU-sized defaults
    python bench/cache.py --clips 4000 --device cuda --arch ViT-B/32
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _lengths(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "DFEW":  # 11-847, mean ~77, long right tail
        return np.clip(np.round(rng.lognormal(np.log(62), 0.62, n)), 11, 847).astype(int)
    return np.clip(np.round(rng.normal(28, 9, n)), 8, 47).astype(int)  # FERV39k: 8-47, mean ~28


def _disk(entry: Path) -> int:
    from tgdfer.features.store import shard_dir

    return entry.stat().st_size + sum(p.stat().st_size for p in shard_dir(entry).iterdir())


def _annotations(n: int, rng: np.random.Generator, folds: int = 1):
    from tgdfer.data.datasets import TEST, TRAIN, Annotations, ClipRecord

    labels = rng.integers(0, 7, n)
    clips = tuple(ClipRecord(f"{c:05d}", int(labels[c]), f"generated/{c:05d}") for c in range(n))
    names = tuple(f"fold{k + 1}" for k in range(folds)) if folds > 1 else ("default",)
    membership = np.full((n, len(names)), TRAIN, np.int8)
    membership[np.arange(n), np.arange(n) % len(names)] = TEST
    return Annotations(
        "synthetic",
        ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear"),
        names,
        clips,
        membership,
        (),
    )


def _view_cache_from(cache, out: Path, views: int, seed: int) -> None:
    """A view cache cut from a loaded per-frame cache's frames by stage 1's sampling rules (pass 0)."""
    from tgdfer.data.datasets import Annotations, ClipRecord
    from tgdfer.data.sampling import TEST_VIEW, TRAIN_VIEW, centre_indices, train_indices, view_rng
    from tgdfer.features.store import shard_path
    from tgdfer.features.views import ShardData, write_entry, write_shard

    n, t = len(cache.clip_ids), 16
    feats, idx = [], []
    for c in range(n):
        x = cache.clip_frames(c, 0)
        picks = [centre_indices(len(x), t)]
        picks += [train_indices(len(x), t, view_rng(seed, cache.clip_ids[c], k)) for k in range(views)]
        feats += [x[p] for p in picks]
        idx += picks
    clips = tuple(
        ClipRecord(i, int(lab), p) for i, lab, p in zip(cache.clip_ids, cache.labels, cache.clip_paths, strict=True)
    )
    ann = Annotations("synthetic", cache.class_names, cache.split_names, clips, cache.membership, ())
    data = ShardData(
        index=0,
        features=np.stack(feats).astype(np.float16),
        view_row=np.repeat(np.arange(n), 1 + views).astype(np.int32),
        view_kind=np.tile(np.array([TEST_VIEW] + [TRAIN_VIEW] * views, np.int8), n),
        view_index=np.tile(np.array([0, *range(views)], np.int16), n),
        view_frames=np.stack(idx).astype(np.int32),
        clip_rows=np.arange(n, dtype=np.int32),
        num_frames=cache.counts.astype(np.int32),
        failed_rows=np.empty(0, np.int32),
        failed_reasons=(),
    )
    write_shard(shard_path(out, 0), data, "bench", {})
    write_entry(
        out,
        ann,
        [shard_path(out, 0)],
        {
            **{k: cache.attrs[k] for k in ("clip_model", "clip_sha256")},
            "train_views": views,
            "fingerprint": f"bench-views-{seed}",
        },
    )


def storage(work: Path, clips: int) -> None:
    from tgdfer.features.frames import FrameShardData, write_frame_entry, write_frame_shard
    from tgdfer.features.store import shard_path
    from tgdfer.features.views import ShardData, write_entry, write_shard

    rng = np.random.default_rng(0)
    print(f"1. storage ({clips} generated clips per distribution, D=512 fp16, measured on disk)")
    print(f"   {'lengths':<20} {'layout':<28} {'frames/clip':>11} {'bytes/clip':>11} {'vs views':>9}")
    for kind in ("DFEW", "FERV39k"):
        lengths = _lengths(kind, clips, rng)
        ann = _annotations(clips, rng)
        v = work / f"{kind}-views.h5"
        data = ShardData(  # 1 test + 4 train views of 16 frames per clip
            index=0,
            features=rng.normal(size=(5 * clips, 16, 512)).astype(np.float16),
            view_row=np.repeat(np.arange(clips), 5).astype(np.int32),
            view_kind=np.tile(np.array([0, 1, 1, 1, 1], np.int8), clips),
            view_index=np.tile(np.array([0, 0, 1, 2, 3], np.int16), clips),
            view_frames=np.zeros((5 * clips, 16), np.int32),
            clip_rows=np.arange(clips, dtype=np.int32),
            num_frames=lengths.astype(np.int32),
            failed_rows=np.empty(0, np.int32),
            failed_reasons=(),
        )
        write_shard(shard_path(v, 0), data, "bench", {})
        write_entry(v, ann, [shard_path(v, 0)], {})
        f = work / f"{kind}-frames.h5"
        total = int(lengths.sum())
        fdata = FrameShardData(  # every frame once, one plain pass
            index=0,
            features=rng.normal(size=(total, 1, 512)).astype(np.float16),
            counts=lengths.astype(np.int32),
            source_frames=np.concatenate([np.arange(n) for n in lengths]).astype(np.int32),
            timestamps_ms=np.full(total, np.nan),
            pass_kind=np.array([0], np.int8),
            clip_rows=np.arange(clips, dtype=np.int32),
            num_frames=lengths.astype(np.int32),
            failed_rows=np.empty(0, np.int32),
            failed_reasons=(),
        )
        write_frame_shard(shard_path(f, 0), fdata, "bench", {})
        write_frame_entry(f, ann, [shard_path(f, 0)], {})
        vb, fb = _disk(v) / clips, _disk(f) / clips
        label = f"{kind} {lengths.min()}-{lengths.max()} mean {lengths.mean():.0f}"
        print(f"   {label:<20} {'views (1 test + 4 train x16)':<28} {80:>11} {vb:>11,.0f} {1:>9.2f}")
        print(f"   {'':<20} {'per-frame (every frame once)':<28} {lengths.mean():>11.1f} {fb:>11,.0f} {fb / vb:>9.2f}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time(work: Path, clip_file: Path, clip, clips: int, device: torch.device, repeats: int, overrides) -> None:
    from tgdfer.config import RunConfig, apply_overrides
    from tgdfer.features.cache import load_cache
    from tgdfer.testing.synthetic import write_feature_cache, write_frame_feature_cache
    from tgdfer.train.engine import epoch_generator, make_optimizer, train_one_epoch
    from tgdfer.train.runs import build_model, cache_identity
    from tgdfer.train.splits import fold_data

    views, frames = work / "speed-views.h5", work / "speed-frames.h5"
    write_feature_cache(views, str(clip_file), clip.sha256, n_clips=clips, dim=clip.dim, views=4)
    write_frame_feature_cache(frames, str(clip_file), clip.sha256, n_clips=clips, lengths=(11, 143), dim=clip.dim)
    setups, memory = {}, {}
    for name, path in (("fixed views", views), ("per-epoch TSN samples", frames)):
        cache = load_cache(path)
        cfg = apply_overrides(RunConfig(features=str(path), out=str(work / "run"), device=str(device)), overrides)
        data = fold_data(cache, "1", device)
        memory[name] = data.features.numel() * data.features.element_size()
        model, _ = build_model(cfg, cache_identity(cache), device, clip)
        optimizer, _ = make_optimizer(model, cfg)
        train_one_epoch(model, optimizer, data, cfg.train, 0)  # warm-up
        setups[name] = (cfg, data, model, optimizer)
    times = {name: [] for name in setups}
    data_path = {name: [] for name in setups}
    for epoch in range(1, 1 + repeats):  # interleaved, so drift in a shared machine's load hits both alike
        for name, (cfg, data, model, optimizer) in setups.items():
            steps = -(-len(data.train_choices) // cfg.train.batch_size)
            _sync(device)
            t0 = time.perf_counter()
            train_one_epoch(model, optimizer, data, cfg.train, epoch)
            _sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
            # the data path alone: the epoch's draw and every batch's gather, as train_one_epoch does them
            t0 = time.perf_counter()
            g = epoch_generator(cfg.train.seed, epoch)
            n, k = data.train_choices.shape
            choice = torch.randint(0, k, (n,), generator=g).to(device)
            order = torch.randperm(n, generator=g).to(device)
            rows = data.epoch_rows(choice, g)
            for step in range(steps):
                data.features[rows[order[step * cfg.train.batch_size : (step + 1) * cfg.train.batch_size]]].float()
            _sync(device)
            data_path[name].append((time.perf_counter() - t0) / steps)
    base = statistics.median(times["fixed views"])
    print(
        f"2. stage-2 step time on {device} ({clips} clips, fold 1, batch {cfg.train.batch_size}, median of {repeats} "
        "interleaved epochs; the data path alone (draw + gather); device bytes of the whole cache)"
    )
    for name in setups:
        t, d = statistics.median(times[name]), statistics.median(data_path[name])
        print(
            f"   {name:<24} {t * 1000:8.2f} ms/step  x{t / base:5.3f}  data path {d * 1000:6.3f} ms/step  "
            f"cache {memory[name] / 2**20:8.1f} MiB"
        )
    print("   target: per-epoch sampling within 10% of fixed views (x <= 1.10)")


def learning(work: Path, clip_file: Path, clip, args) -> None:
    from tgdfer.config import RunConfig, apply_overrides
    from tgdfer.features.cache import load_cache
    from tgdfer.testing.synthetic import write_frame_feature_cache
    from tgdfer.train.engine import fit_fold

    rows = []
    for seed in range(args.seeds):
        frames = work / f"learn-frames-{seed}.h5"
        views = work / f"learn-views-{seed}.h5"
        write_frame_feature_cache(
            frames,
            str(clip_file),
            clip.sha256,
            n_clips=args.learn_clips,
            lengths=(16, 120),
            dim=clip.dim,
            signal=args.signal,
            noise=args.noise,
            folds=5,
            seed=seed,
        )
        _view_cache_from(load_cache(frames), views, views=4, seed=seed)
        war = {}
        for name, path in (("4 fixed views", views), ("fresh per-epoch", frames)):
            base = RunConfig(features=str(path), out=str(work / f"run-{name[:5]}-{seed}"), device=args.device)
            cfg = apply_overrides(
                base,
                [
                    f"train.seed={seed}",
                    f"train.epochs={args.epochs}",
                    "train.batch_size=32",
                    f"optim.milestones={max(1, int(args.epochs * 0.6))},{max(1, int(args.epochs * 0.8))}",
                    *args.overrides,
                ],
            )
            war[name] = fit_fold(cfg, log=lambda s: None)["war"]
        rows.append(war)
        print(
            f"   seed {seed}: 4 fixed views WAR {war['4 fixed views']:6.2f}   fresh per-epoch WAR "
            f"{war['fresh per-epoch']:6.2f}"
        )
    a = np.array([r["4 fixed views"] for r in rows])
    b = np.array([r["fresh per-epoch"] for r in rows])
    print(
        f"   mean over {args.seeds} seeds: 4 fixed views {a.mean():.2f} ± {a.std():.2f}, fresh per-epoch "
        f"{b.mean():.2f} ± {b.std():.2f}; difference {np.mean(b - a):+.2f} (per seed {np.round(b - a, 2).tolist()})"
    )


def main() -> None:
    from tgdfer.backbone import load_clip, save_random_clip
    from tgdfer.devices import resolve_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage-clips", type=int, default=500)
    p.add_argument("--clips", type=int, default=800, help="clips of the step-time caches")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per layout")
    p.add_argument("--learn-clips", type=int, default=300, help="clips of the learning comparison (fold 1: 4/5 train)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--signal", type=float, default=0.5, help="class signal at the apex, per coordinate")
    p.add_argument("--noise", type=float, default=1.0, help="per-frame noise, per coordinate")
    p.add_argument("--arch", default="tiny", choices=["ViT-B/32", "tiny"])
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--skip", default="", help="comma-separated parts to skip: storage,speed,learning")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="tgdfer-bench-cache-"))
    device = resolve_device(args.device)
    args.device = str(device)
    clip_file = save_random_clip(work / f"random-{args.arch.replace('/', '-')}.pt", args.arch)
    clip = load_clip(str(clip_file), "cpu", torch.float32)
    if "storage" not in skip:
        storage(work, args.storage_clips)
    if "speed" not in skip:
        step_time(work, clip_file, clip, args.clips, device, args.repeats, args.overrides)
    if "learning" not in skip:
        print(
            f"3. test WAR, fold 1 of {args.learn_clips} generated clips of 16-120 frames (signal {args.signal} over "
            f"an apex stretch, per-frame noise {args.noise}), {args.epochs} epochs, {args.arch} text tower "
            f"(D={clip.dim}); chance 14.3"
        )
        learning(work, clip_file, clip, args)


if __name__ == "__main__":
    main()
