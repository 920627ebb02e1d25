"""``tgdfer info``: what a feature cache holds and how it was made, as lines of text."""

from __future__ import annotations

import numpy as np

from tgdfer.features.cache import FeatureCache, load_cache


def describe(cache: FeatureCache) -> list[str]:
    """Lines describing a loaded cache: size, provenance, splits, clips per class, failures."""
    a = cache.attrs
    lines = [
        f"{cache.path}: {len(cache.clip_ids)} clips, {len(cache.view_kind)} views (T={cache.frames}, D={cache.dim}), "
        f"{len(cache.failures)} failures",
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
