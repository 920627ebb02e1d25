"""The view cache: each clip's test view and K augmented train views, T frames each, encoded once by stage 1.

Layout of an entry file (``cache/dfew.h5``); V views, C clips, S splits, T frames, D feature width::

    features          (V, T, D) float16   virtual dataset over the shards, fill value NaN
    views/clip        (V,)      int32     row in clips/* of the view's clip
    views/kind        (V,)      int8      0 test view (segment centres), 1 augmented train view
    views/index       (V,)      int16     which train view of its clip (0 for the test view)
    views/frames      (V, T)    int32     frame indices the view sampled
    clips/id, clips/path      (C,) str;   clips/label (C,) int16; clips/num_frames (C,) int32
    clips/face_frames, clips/sampled_frames  (C,) int32   distinct sampled frames with a face found / sampled
    clips/membership  (C, S)    int8      0 absent, 1 train, 2 test, 3 val, per split (DFEW: the five folds)
    failures/id, failures/path, failures/reason   clips skipped, with why
    shards/file, shards/digest, shards/views, shards/size   the shards behind ``features``, checked on every open
    attrs: layout "views", model, weights hash, T, D, sampling, preprocessing, augmentation, dataset, classes,
           splits, version, entry_digest (SHA-256 of every other dataset and attribute of the entry)

Shards (``<entry stem>.shards/shard-00012.h5``) hold a fixed slice of the annotation rows each; how they are
committed and checked (``load_views`` refuses damaged entries and shards, then non-finite features, naming the view)
is ``tgdfer.features.store``'s. ``tgdfer.features.cache.load_cache`` opens this layout or the per-frame one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tgdfer.errors import CacheError
from tgdfer.features.store import (
    VIEW_LAYOUT,
    ClipTable,
    EntryRows,
    ShardSchema,
    checked_entry,
    clip_fields,
    commit_entry,
    commit_shard,
    entry_summary,
    failed_of,
    first_non_finite,
    read_shard_fields,
    shard_of,
)


@dataclass(frozen=True, eq=False)
class ShardData:
    """What one view shard holds. Rows index the annotation table of the extraction."""

    index: int
    features: np.ndarray  # (V, T, D) float16
    view_row: np.ndarray  # (V,) int32 annotation row of each view's clip
    view_kind: np.ndarray  # (V,) int8
    view_index: np.ndarray  # (V,) int16
    view_frames: np.ndarray  # (V, T) int32
    clip_rows: np.ndarray  # (C,) int32 annotation rows extracted
    num_frames: np.ndarray  # (C,) int32 frame count of each of those clips
    failed_rows: np.ndarray  # (F,) int32 annotation rows that failed
    failed_reasons: tuple[str, ...]  # (F,) why
    face_frames: np.ndarray | None = None  # (C,) int32 distinct sampled frames of each clip with a face found
    sampled_frames: np.ndarray | None = None  # (C,) int32 distinct frames sampled over all views of each clip


VIEW_SHARDS = ShardSchema(
    layout=VIEW_LAYOUT,
    arrays=("features", "view_row", "view_kind", "view_index", "view_frames", "clip_rows", "num_frames", "failed_rows"),
    optional=("face_frames", "sampled_frames"),  # caches written before they existed lack them
)


def write_shard(path: str | Path, data: ShardData, fingerprint: str, settings: dict) -> str:
    """Commit one view shard atomically; returns its digest."""
    return commit_shard(path, VIEW_SHARDS, data, fingerprint, settings)


def read_shard(path: str | Path, features: bool = True) -> ShardData:
    return ShardData(**read_shard_fields(path, VIEW_SHARDS, features))


def write_entry(entry: str | Path, annotations, shard_files: list[Path], attrs: dict) -> dict:
    """Write the view entry file over committed shards, atomically. Returns counts and the failed (id, path, reason).

    ``annotations`` is the extraction's ``tgdfer.data.datasets.Annotations``; ``attrs`` how the features were made.
    """
    shards = [read_shard(p, features=False) for p in shard_files]
    _, frames, dim = np.asarray(shards[0].features).shape
    ok_rows = np.concatenate([s.clip_rows for s in shards]).astype(np.int64)
    row_to_clip = np.full(len(annotations.clips), -1, dtype=np.int64)
    row_to_clip[ok_rows] = np.arange(len(ok_rows))
    view_rows = np.concatenate([s.view_row for s in shards]).astype(np.int64)
    clip_datasets = {"clips/num_frames": np.concatenate([s.num_frames for s in shards]).astype(np.int32)}
    if all(s.face_frames is not None and s.sampled_frames is not None for s in shards):
        clip_datasets["clips/face_frames"] = np.concatenate([s.face_frames for s in shards]).astype(np.int32)
        clip_datasets["clips/sampled_frames"] = np.concatenate([s.sampled_frames for s in shards]).astype(np.int32)
    rows = EntryRows(
        layout=VIEW_LAYOUT,
        clip_rows=ok_rows,
        failed=failed_of(shards),
        datasets={
            "views/clip": row_to_clip[view_rows].astype(np.int32),
            "views/kind": np.concatenate([s.view_kind for s in shards]).astype(np.int8),
            "views/index": np.concatenate([s.view_index for s in shards]).astype(np.int16),
            "views/frames": np.concatenate([s.view_frames for s in shards]).astype(np.int32),
        },
        clip_datasets=clip_datasets,
        shape_attrs={"frames": frames, "dim": dim},
    )
    commit_entry(entry, annotations, shard_files, rows, attrs)
    return entry_summary(annotations, rows, views=len(view_rows), frames=len(view_rows) * frames)


@dataclass(frozen=True, eq=False)
class FeatureCache(ClipTable):
    """A whole view cache in memory (a DFEW cache is about 1 GB). Arrays as in the module docstring.

    Two kinds of rows: views (``features``, ``view_*``: V rows, each clip's test view and its train views) and clips
    (``clip_*``, ``labels``, ``num_frames``, ``membership``, ``face_frames``: C rows, sorted by clip id);
    ``view_clip[v]`` is the clip row of view v. Classes and splits: ``ClipTable``.
    """

    path: str
    features: np.ndarray  # (V, T, D) float16
    view_clip: np.ndarray  # (V,) int64
    view_kind: np.ndarray  # (V,) int8
    view_index: np.ndarray  # (V,) int16
    view_frames: np.ndarray  # (V, T) int32
    clip_ids: np.ndarray  # (C,) str objects
    clip_paths: np.ndarray  # (C,) str objects
    labels: np.ndarray  # (C,) int64
    num_frames: np.ndarray  # (C,) int32
    membership: np.ndarray  # (C, S) int8
    failures: tuple[tuple[str, str, str], ...]  # (id, path, reason)
    attrs: dict
    face_frames: np.ndarray | None = None  # (C,) int32 distinct sampled frames with a face found; None: not recorded
    sampled_frames: np.ndarray | None = None  # (C,) int32 distinct frames sampled over the clip's views

    @property
    def frames(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def views_by_clip(self, kind: int) -> dict[int, np.ndarray]:
        """{clip row: its view indices of ``kind``}."""
        chosen = np.flatnonzero(self.view_kind == kind)
        if len(chosen) == 0:
            return {}
        order = np.argsort(self.view_clip[chosen], kind="stable")
        chosen = chosen[order]
        clips, starts = np.unique(self.view_clip[chosen], return_index=True)
        return {int(c): v for c, v in zip(clips, np.split(chosen, starts[1:]), strict=True)}


def load_views(path: str | Path) -> FeatureCache:
    """Open a view entry file, check it and its shards, and read everything into memory."""
    path = Path(path)
    with checked_entry(path, VIEW_SHARDS) as (f, shards, features):
        view_clip = f["views/clip"][()].astype(np.int64)
        fields = clip_fields(f)
        view = first_non_finite(features, 4096)
        if view is not None:
            what = "NaN" if np.isnan(features[view]).any() else "Inf"
            raise CacheError(
                f"{path}: expected finite features, found {what} at view {view} (clip "
                f"{fields['clip_ids'][view_clip[view]]}, shard {shard_of(shards, view).path}), which matches its "
                "digest: it was encoded so (fp16 overflow?). Re-extract with --overwrite, with --precision fp32 if "
                "it was fp16"
            )
        return FeatureCache(
            path=str(path),
            features=features,
            view_clip=view_clip,
            view_kind=f["views/kind"][()],
            view_index=f["views/index"][()],
            view_frames=f["views/frames"][()],
            **fields,
            face_frames=f["clips/face_frames"][()] if "clips/face_frames" in f else None,
            sampled_frames=f["clips/sampled_frames"][()] if "clips/sampled_frames" in f else None,
        )
