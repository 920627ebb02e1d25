"""``tgdfer info``: what a feature cache holds and how it was made, as lines of text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tgdfer.data.datasets import TEST, TRAIN, VAL
from tgdfer.features.cache import load_cache
from tgdfer.features.frames import PLAIN_PASS, FrameCache
from tgdfer.features.store import shard_dir
from tgdfer.features.views import FeatureCache

_ROLES = ((TRAIN, "train"), (VAL, "val"), (TEST, "test"))  # membership codes, in the order they are printed


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
        val = f", {int((col == 3).sum())} val" if (col == 3).any() else ""
        lines.append(f"  split {name}: {int((col == 1).sum())} train{val}, {int((col == 2).sum())} test clips")
    counts = np.bincount(cache.labels, minlength=len(cache.class_names))
    per_class = [f"{c} {n}" for c, n in zip(cache.class_names, counts, strict=True)]
    if len(cache.split_names) == 1:  # one split (FERV39k, CSV): where each class's clips went
        col = cache.membership[:, 0]
        for k in range(len(cache.class_names)):
            roles = [(name, int(((col == code) & (cache.labels == k)).sum())) for code, name in _ROLES]
            per_class[k] += " (" + ", ".join(f"{n} {name}" for name, n in roles if n or name != "val") + ")"
    lines.append("  clips per class: " + ", ".join(per_class))
    lines += _faces(cache)
    return lines


def _faces(cache: FeatureCache) -> list[str]:
    """How many sampled frames had a face, when the cache was made with face crops and recorded it."""
    if not cache.attrs.get("face_crop"):
        return ["  faces: not cropped (extracted without --face-crop)"]
    if cache.face_frames is None or cache.sampled_frames is None:
        return ["  faces: cropped; frames with a face not recorded (a cache from an older tgdfer)"]
    found, sampled = int(cache.face_frames.sum()), int(cache.sampled_frames.sum())
    none = np.flatnonzero(cache.face_frames == 0)
    lines = [
        f"  faces: found in {found} of {sampled} sampled frames ({100 * found / max(sampled, 1):.1f}%); "
        f"{len(none)} clips with no face (their full frames were encoded)"
    ]
    shown = ", ".join(str(cache.clip_ids[r]) for r in none[:5]) + (", ..." if len(none) > 5 else "")
    return lines + ([f"  no face: {shown}"] if len(none) else [])


def info(path: str) -> str:
    """``tgdfer info PATH``: the description of the cache at ``path`` (it is loaded and checked)."""
    return "\n".join(describe(load_cache(path)))
