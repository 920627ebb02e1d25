"""``tgdfer info``: what a feature cache holds and how it was made, as lines of text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tgdfer.features.cache import FeatureCache, load_cache, shard_dir
from tgdfer.features.frames import PLAIN_PASS, FrameCache


def _bytes_on_disk(entry: str) -> int:
    """The entry file and every file of its shard folder."""
    folder = shard_dir(entry)
    shards = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0
    return Path(entry).stat().st_size + shards


def _frame_lines(cache: FrameCache) -> list[str]:
    counts = cache.counts
    plain = int((cache.pass_kind == PLAIN_PASS).sum())
    lines = [
        f"{cache.path}: per-frame cache: {len(cache.clip_ids)} clips, {len(cache.features)} frames x "
        f"{cache.passes} passes (T={cache.frames} per sample, D={cache.dim}), {len(cache.failures)} failures",
        f"  frames per clip min {counts.min()} / median {int(np.median(counts))} / max {counts.max()}; "
        f"{cache.passes} passes ({plain} plain, {cache.passes - plain} augmented); "
        f"{_bytes_on_disk(cache.path):,} bytes on disk",
    ]
    if cache.attrs.get("imported_from"):
        lines.append(f"  imported from {cache.attrs['imported_from']} ({cache.attrs.get('input_note', '')})")
    return lines


def describe(cache: FeatureCache | FrameCache) -> list[str]:
    """Lines describing a loaded cache: size, provenance, splits, clips per class, failures."""
    a = cache.attrs
    if isinstance(cache, FrameCache):
        lines = _frame_lines(cache)
    else:
        lines = [
            f"{cache.path}: {len(cache.clip_ids)} clips, {len(cache.view_kind)} views (T={cache.frames}, "
            f"D={cache.dim}), {len(cache.failures)} failures",
        ]
    lines += [
        f"  dataset {a.get('dataset')}, classes {list(cache.class_names)}",
        f"  CLIP {a.get('clip_model')} sha256 {str(a.get('clip_sha256'))[:16]}..., dtype {a.get('dtype')}, "
        f"{a.get('train_views')} train views per clip, seed {a.get('seed')}, tgdfer {a.get('tgdfer_version')}",
    ]
    for k, name in enumerate(cache.split_names):
        col = cache.membership[:, k]
        lines.append(f"  split {name}: {int((col == 1).sum())} train, {int((col == 2).sum())} test clips")
    counts = np.bincount(cache.labels, minlength=len(cache.class_names))
    lines.append("  clips per class: " + ", ".join(f"{c} {n}" for c, n in zip(cache.class_names, counts, strict=True)))
    return lines


def info(path: str) -> str:
    """``tgdfer info PATH``: the description of the cache at ``path`` (it is loaded and checked)."""
    return "\n".join(describe(load_cache(path)))
