"""The per-frame feature cache: every frame of a clip encoded once, stored ragged (CSR), beside the view cache.

Same entry/shard/commit scheme as the view cache (``tgdfer.features.views``), from ``tgdfer.features.store``; the
entry's attribute ``layout`` is ``"frames"`` here and ``"views"`` (or absent) there, and
``tgdfer.features.cache.load_cache`` opens either. Layout of an entry file; N frames, P passes, C clips, S splits,
D feature width::

    features            (N, P, D) float16  virtual dataset over the shards, fill value NaN; features[:, p] is
                                           pass p's (N, D) frames, chunks of <= 128 frames: a clip is one read
    frames/offsets      (C+1,)    int64    clip c's frames are rows offsets[c] : offsets[c+1]
    frames/source       (N,)      int32    frame number in the source clip (subsampled clips skip some)
    frames/timestamp_ms (N,)      float64  time in the source video where known, NaN otherwise
    passes/kind         (P,)      int8     0 un-augmented (CLIP preprocessing only), 1 spatially augmented
    clips/*, failures/*, shards/* as in the view cache (clips/num_frames: frames of the source clip;
                                           shards/views: frames per shard, the on-disk name of both layouts)
    attrs: layout "frames", frames (T of the samples stage 2 draws), dim, passes, and how the features were made

Stage 2 never reads this file with sampled indices (h5py drops duplicate coordinates): ``load_frames`` reads the
whole array once and the sampling gathers with torch (``tgdfer.train.splits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tgdfer.errors import CacheError
from tgdfer.features.store import (
    FRAME_LAYOUT,
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

PLAIN_PASS, AUGMENTED_PASS = 0, 1  # passes/kind: CLIP preprocessing only | one augmentation draw per pass
CHUNK_FRAMES = 128  # frames per HDF5 chunk: a typical clip (DFEW mean 77, FERV39k 28) is one or two chunks


@dataclass(frozen=True, eq=False)
class FrameShardData:
    """What one per-frame shard holds; n frames of the shard's c clips. Rows index the annotation table."""

    index: int
    features: np.ndarray  # (n, P, D) float16
    counts: np.ndarray  # (c,) int32 frames stored per clip, in clip order
    source_frames: np.ndarray  # (n,) int32 frame number in the source clip
    timestamps_ms: np.ndarray  # (n,) float64, NaN where unknown
    pass_kind: np.ndarray  # (P,) int8
    clip_rows: np.ndarray  # (c,) int32 annotation rows stored
    num_frames: np.ndarray  # (c,) int32 frame count of each source clip
    failed_rows: np.ndarray  # (F,) int32 annotation rows that failed
    failed_reasons: tuple[str, ...]  # (F,) why


FRAME_SHARDS = ShardSchema(
    layout=FRAME_LAYOUT,
    arrays=(
        "features",
        "counts",
        "source_frames",
        "timestamps_ms",
        "pass_kind",
        "clip_rows",
        "num_frames",
        "failed_rows",
    ),
    tagged=True,
    chunk_rows=CHUNK_FRAMES,
)


def frame_shard(
    index: int, features: np.ndarray, items: list[dict], failed: list[tuple[int, str]], passes: int
) -> FrameShardData:
    """A shard from stage 1's encoded clips: ``features`` (sum over clips of P * n_c, D), clip by clip and within
    a clip pass by pass (the order ``tgdfer.data.views.ClipViews`` lays frames out); ``items`` per clip: row,
    num_frames, view_frames (P, n_c) frame numbers, fps (None for frame folders); ``failed`` (row, reason)."""
    dim = features.shape[1]
    counts = np.array([m["view_frames"].shape[1] for m in items], dtype=np.int32)
    per_clip = np.split(features, np.cumsum(counts * passes)[:-1]) if items else []
    stacked = [f.reshape(passes, n, dim).transpose(1, 0, 2) for f, n in zip(per_clip, counts, strict=True)]
    source = [m["view_frames"][0] for m in items]  # every pass covers the same frames
    times = [
        t * 1000.0 / m["fps"] if m.get("fps") else np.full(len(t), np.nan) for t, m in zip(source, items, strict=True)
    ]
    kind = np.array([PLAIN_PASS] + [AUGMENTED_PASS] * (passes - 1), dtype=np.int8)
    return FrameShardData(
        index=index,
        features=(np.concatenate(stacked) if stacked else np.empty((0, passes, dim))).astype(np.float16),
        counts=counts,
        source_frames=(np.concatenate(source) if source else np.empty(0)).astype(np.int32),
        timestamps_ms=(np.concatenate(times) if times else np.empty(0)).astype(np.float64),
        pass_kind=kind,
        clip_rows=np.array([m["row"] for m in items], dtype=np.int32),
        num_frames=np.array([m["num_frames"] for m in items], dtype=np.int32),
        failed_rows=np.array([r for r, _ in failed], dtype=np.int32),
        failed_reasons=tuple(reason for _, reason in failed),
    )


def write_frame_shard(path: str | Path, data: FrameShardData, fingerprint: str, settings: dict) -> str:
    """Commit one per-frame shard atomically; returns its digest."""
    n = len(data.features)
    if int(data.counts.sum()) != n or len(data.source_frames) != n or len(data.timestamps_ms) != n:
        raise CacheError(
            f"shard {data.index}: expected {n} frames in counts, source frames and timestamps, found "
            f"{int(data.counts.sum())}, {len(data.source_frames)}, {len(data.timestamps_ms)}; this is a bug"
        )
    return commit_shard(path, FRAME_SHARDS, data, fingerprint, settings)


def read_frame_shard(path: str | Path, features: bool = True) -> FrameShardData:
    return FrameShardData(**read_shard_fields(path, FRAME_SHARDS, features))


def write_frame_entry(entry: str | Path, annotations, shard_files: list[Path], attrs: dict) -> dict:
    """Write the per-frame entry file over committed shards, atomically. Returns counts (clips, frames, passes,
    failures) and the failed (id, path, reason), as ``tgdfer.features.views.write_entry`` does. ``attrs["frames"]``
    is the T of stage 2's samples (16 unless given)."""
    shards = [read_frame_shard(p, features=False) for p in shard_files]
    _, passes, dim = shards[0].features.shape
    kinds = {tuple(s.pass_kind.tolist()) for s in shards}
    if len(kinds) != 1:
        raise CacheError(f"{entry}: expected every shard to hold the same passes, found {sorted(kinds)}")
    counts = np.concatenate([s.counts for s in shards]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (C+1,)
    rows = EntryRows(
        layout=FRAME_LAYOUT,
        clip_rows=np.concatenate([s.clip_rows for s in shards]).astype(np.int64),
        failed=failed_of(shards),
        datasets={
            "frames/offsets": offsets,
            "frames/source": np.concatenate([s.source_frames for s in shards]).astype(np.int32),
            "frames/timestamp_ms": np.concatenate([s.timestamps_ms for s in shards]).astype(np.float64),
            "passes/kind": shards[0].pass_kind.astype(np.int8),
        },
        clip_datasets={"clips/num_frames": np.concatenate([s.num_frames for s in shards]).astype(np.int32)},
        shape_attrs={"frames": int(attrs.get("frames", 16)), "dim": dim, "passes": passes},
    )
    commit_entry(entry, annotations, shard_files, rows, attrs)
    return entry_summary(annotations, rows, frames=int(offsets[-1]), passes=int(passes))


@dataclass(frozen=True, eq=False)
class FrameCache(ClipTable):
    """A whole per-frame cache in memory. Arrays as in the module docstring; N frames, P passes, C clips. Classes
    and splits mean the same as in the view cache (``ClipTable``)."""

    path: str
    features: np.ndarray  # (N, P, D) float16
    offsets: np.ndarray  # (C+1,) int64
    source_frames: np.ndarray  # (N,) int32
    timestamps_ms: np.ndarray  # (N,) float64
    pass_kind: np.ndarray  # (P,) int8
    clip_ids: np.ndarray  # (C,) str objects
    clip_paths: np.ndarray  # (C,) str objects
    labels: np.ndarray  # (C,) int64
    num_frames: np.ndarray  # (C,) int32 frames of the source clip
    membership: np.ndarray  # (C, S) int8
    failures: tuple[tuple[str, str, str], ...]  # (id, path, reason)
    attrs: dict

    @property
    def frames(self) -> int:
        """T: frames per sample stage 2 draws (16)."""
        return int(self.attrs["frames"])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    @property
    def passes(self) -> int:
        return int(self.features.shape[1])

    @property
    def counts(self) -> np.ndarray:
        """(C,) int64 frames stored per clip."""
        return np.diff(self.offsets)

    def clip_frames(self, clip: int, pass_: int = 0) -> np.ndarray:
        """(n, D) float16: every stored frame of one clip in one pass."""
        return self.features[self.offsets[clip] : self.offsets[clip + 1], pass_]


def load_frames(path: str | Path) -> FrameCache:
    """Open a per-frame entry file, check it and its shards, and read everything into memory."""
    path = Path(path)
    with checked_entry(path, FRAME_SHARDS) as (f, shards, features):
        row = first_non_finite(features, 65536)
        if row is not None:
            raise CacheError(
                f"{path}: expected finite features, found NaN or Inf at frame row {row} (shard "
                f"{shard_of(shards, row).path}), which matches its digest: it was encoded so. Re-extract with "
                "--overwrite"
            )
        return FrameCache(
            path=str(path),
            features=features,
            offsets=f["frames/offsets"][()].astype(np.int64),
            source_frames=f["frames/source"][()],
            timestamps_ms=f["frames/timestamp_ms"][()],
            pass_kind=f["passes/kind"][()],
            **clip_fields(f),
        )
