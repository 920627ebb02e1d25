"""A feature cache on disk, of either layout: open it (``load_cache``), check it (``verify_cache``), read its
attributes and folds. Stage 1 writes it; stage 2, ``tgdfer info`` and ``tgdfer verify`` read it through here.

Two layouts share one store (``tgdfer.features.store``: shards, digests, integrity): the view cache
(``tgdfer.features.views``, attribute ``layout`` "views" or absent) and the per-frame cache
(``tgdfer.features.frames``, ``layout`` "frames").
"""

from __future__ import annotations

from pathlib import Path

from tgdfer.errors import CacheError
from tgdfer.features.frames import FRAME_SHARDS, FrameCache, load_frames
from tgdfer.features.store import FRAME_LAYOUT, VIEW_LAYOUT, attr_value, layout_of, open_entry, verify_entry
from tgdfer.features.views import VIEW_SHARDS, FeatureCache, load_views

SCHEMAS = (VIEW_SHARDS, FRAME_SHARDS)  # the shards of every layout, for ``store.shard_data_problem``


def load_cache(path: str | Path) -> FeatureCache | FrameCache:
    """Open an entry file, check it and its shards, and read everything into memory: a ``FeatureCache`` for a view
    cache, a ``FrameCache`` for a per-frame one."""
    path = Path(path)
    with open_entry(path) as f:
        layout = layout_of(f.attrs)
    if layout == FRAME_LAYOUT:
        return load_frames(path)
    if layout == VIEW_LAYOUT:
        return load_views(path)
    raise CacheError(f"{path}: expected a cache of layout {VIEW_LAYOUT!r} or {FRAME_LAYOUT!r}, found {layout!r}")


def verify_cache(path: str | Path) -> dict:
    """``tgdfer verify``: the full check of a cache of either layout, shard by shard, without loading it whole.

    Returns {"entry", "layout", "shards", "rows" (views or frames, as ``layout`` says), "bytes"}; see
    ``tgdfer.features.store.verify_entry``."""
    return verify_entry(Path(path), SCHEMAS)


def read_attrs(path: str | Path) -> dict:
    """The entry's attributes only (cheap)."""
    with open_entry(Path(path)) as f:
        return {k: attr_value(v) for k, v in f.attrs.items()}


def folds_of(path: str | Path, fold: str) -> list[str]:
    """--fold all -> every split of the cache ("1".."5" for DFEW/MAFW, "1" otherwise); else [fold]."""
    if str(fold).strip().lower() != "all":
        return [str(fold)]
    return [str(i + 1) for i in range(len(read_attrs(path)["split_names"]))]
