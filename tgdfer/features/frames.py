"""The per-frame feature cache: every frame of a clip encoded once, stored ragged (CSR), beside the view cache.

Same entry/shard/commit scheme as ``tgdfer.features.cache`` (whose shard paths, headers and shard checks it
uses); the entry's attribute ``layout`` is ``"frames"`` here and ``"views"`` (or absent) there, and
``load_cache`` opens either. Layout of an entry file; N frames, P passes, C clips, S splits, D feature width::

    features            (N, P, D) float16  virtual dataset over the shards, fill value NaN; features[:, p] is
                                           pass p's (N, D) frames, chunks of <= 128 frames: a clip is one read
    frames/offsets      (C+1,)    int64    clip c's frames are rows offsets[c] : offsets[c+1]
    frames/source       (N,)      int32    frame number in the source clip (subsampled clips skip some)
    frames/timestamp_ms (N,)      float64  time in the source video where known, NaN otherwise
    passes/kind         (P,)      int8     0 un-augmented (CLIP preprocessing only), 1 spatially augmented
    clips/*, failures/*, shards/* as in the view cache (clips/num_frames: frames of the source clip;
                                           shards/views: frames per shard)
    attrs: layout "frames", frames (T of the samples stage 2 draws), dim, passes, and how the features were made

Stage 2 never reads this file with sampled indices (h5py drops duplicate coordinates): ``load_frames`` reads the
whole array once and the sampling gathers with torch (``tgdfer.train.splits``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from tgdfer.errors import CacheError
from tgdfer.features.cache import (
    _RERUN,
    _STR,
    FORMAT_VERSION,
    FeatureCache,
    _attr,
    _check_shard_data,
    _clip_fields,
    _entry_digest,
    _entry_shards,
    _h5_commit,
    _open_entry,
    _shard_header_problem,
    _strings,
    _text,
    _write_records,
    shard_header,
)

LAYOUT = "frames"
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


_SHARD_ARRAYS = (
    "features",
    "counts",
    "source_frames",
    "timestamps_ms",
    "pass_kind",
    "clip_rows",
    "num_frames",
    "failed_rows",
)


def _digest(data: FrameShardData) -> str:
    h = hashlib.sha256(LAYOUT.encode())
    for name in _SHARD_ARRAYS:
        a = np.ascontiguousarray(getattr(data, name))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update("\x00".join(data.failed_reasons).encode())
    return h.hexdigest()


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
    n, passes, dim = data.features.shape
    if int(data.counts.sum()) != n or len(data.source_frames) != n or len(data.timestamps_ms) != n:
        raise CacheError(
            f"shard {data.index}: expected {n} frames in counts, source frames and timestamps, found "
            f"{int(data.counts.sum())}, {len(data.source_frames)}, {len(data.timestamps_ms)}; this is a bug"
        )
    digest = _digest(data)
    with _h5_commit(path) as f:  # built in memory, written with plain os.write (a full disk is one clear error)
        chunks = (min(CHUNK_FRAMES, n), passes, dim) if n else None
        f.create_dataset("features", data=data.features, chunks=chunks)
        for name in _SHARD_ARRAYS[1:]:
            f.create_dataset(name, data=getattr(data, name))
        f.create_dataset("failed_reasons", data=np.array(data.failed_reasons, dtype=object), dtype=_STR)
        f.attrs.update(
            index=data.index,
            layout=LAYOUT,
            fingerprint=fingerprint,
            digest=digest,
            settings=json.dumps(settings, sort_keys=True),
            format_version=FORMAT_VERSION,
        )
    return digest


def frame_shard_data_problem(path: str | Path, header: dict, features: np.ndarray | None = None) -> str | None:
    """Why a committed per-frame shard's data do not hash to its header's digest (None: they do); ``features``,
    its (n, P, D) rows as read through the entry, saves reading them again."""
    try:
        data = read_frame_shard(path, features=features is None)
    except (OSError, KeyError, ValueError) as exc:
        return f"unreadable ({str(exc).splitlines()[0][:80]})"
    if features is not None:
        data = replace(data, features=features)
    actual = _digest(data)
    if actual != header["digest"]:
        return f"data hash to {actual[:12]}, its digest is {header['digest'][:12]}: damaged on disk"
    return None


def read_frame_shard(path: str | Path, features: bool = True) -> FrameShardData:
    with h5py.File(path, "r") as f:
        arrays = {n: f[n][()] for n in _SHARD_ARRAYS if n != "features" or features}
        if not features:
            arrays["features"] = np.empty((0, *f["features"].shape[1:]), np.float16)
        reasons = tuple(r.decode() if isinstance(r, bytes) else str(r) for r in f["failed_reasons"][()])
        return FrameShardData(index=int(f.attrs["index"]), failed_reasons=reasons, **arrays)


def write_frame_entry(entry: str | Path, annotations, shard_files: list[Path], attrs: dict) -> dict:
    """Write the per-frame entry file over committed shards, atomically. Returns counts and the failed
    (id, path, reason), as ``tgdfer.features.cache.write_entry`` does. ``attrs["frames"]`` is the T of stage 2's
    samples (16 unless given)."""
    entry = Path(entry)
    shards = [read_frame_shard(p, features=False) for p in shard_files]
    headers = [shard_header(p) for p in shard_files]
    with h5py.File(shard_files[0], "r") as f:
        _, passes, dim = f["features"].shape
    kinds = {tuple(s.pass_kind.tolist()) for s in shards}
    if len(kinds) != 1:
        raise CacheError(f"{entry}: expected every shard to hold the same passes, found {sorted(kinds)}")
    ok_rows = np.concatenate([s.clip_rows for s in shards]).astype(np.int64)
    counts = np.concatenate([s.counts for s in shards]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (C+1,)
    n_frames = int(offsets[-1])
    failed = [(int(r), reason) for s in shards for r, reason in zip(s.failed_rows, s.failed_reasons, strict=True)]
    clips = annotations.clips

    layout = h5py.VirtualLayout(shape=(n_frames, passes, dim), dtype=np.float16)
    start = 0
    for path, header in zip(shard_files, headers, strict=True):
        n = header["views"]  # shard_header counts the first axis of "features": frames here
        if n:
            rel = path.relative_to(entry.parent).as_posix()  # HDF5 resolves it beside the entry file
            layout[start : start + n] = h5py.VirtualSource(rel, "features", shape=(n, passes, dim))
        start += n

    with _h5_commit(entry) as f:
        f.create_virtual_dataset("features", layout, fillvalue=np.float16(np.nan))
        f["frames/offsets"] = offsets
        f["frames/source"] = np.concatenate([s.source_frames for s in shards]).astype(np.int32)
        f["frames/timestamp_ms"] = np.concatenate([s.timestamps_ms for s in shards]).astype(np.float64)
        f["passes/kind"] = shards[0].pass_kind.astype(np.int8)
        f.create_dataset("clips/id", data=_strings(clips[r].id for r in ok_rows), dtype=_STR)
        f.create_dataset("clips/path", data=_strings(clips[r].path for r in ok_rows), dtype=_STR)
        f["clips/label"] = np.array([clips[r].label for r in ok_rows], dtype=np.int16)
        f["clips/num_frames"] = np.concatenate([s.num_frames for s in shards]).astype(np.int32)
        f["clips/membership"] = annotations.membership[ok_rows].astype(np.int8)
        _write_records(f, entry, clips, failed, shard_files, headers, attrs)
        f.attrs.update(
            layout=LAYOUT,
            format_version=FORMAT_VERSION,
            frames=int(attrs.get("frames", 16)),
            dim=dim,
            passes=passes,
            class_names=json.dumps(list(annotations.class_names)),
            split_names=json.dumps(list(annotations.split_names)),
            dataset=annotations.dataset,
            annotations_sha256=annotations.sha256(),
        )
        f.attrs["entry_digest"] = _entry_digest(f)  # the integrity record load_cache checks first
    return {
        "clips": len(ok_rows),
        "views": len(ok_rows) * int(passes),  # a pass over a clip's frames is its "view" here
        "frames": n_frames,
        "passes": int(passes),
        "failures": len(failed),
        "failed": [(clips[r].id, clips[r].path, reason) for r, reason in failed],
    }


@dataclass(frozen=True, eq=False)
class FrameCache:
    """A whole per-frame cache in memory. Arrays as in the module docstring; N frames, P passes, C clips."""

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

    # Splits, classes and folds mean the same as in the view cache; these read only the fields both share.
    class_names = FeatureCache.class_names
    split_names = FeatureCache.split_names
    split_index = FeatureCache.split_index
    clips_in = FeatureCache.clips_in

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


def is_frame_cache(f: h5py.File) -> bool:
    return _attr(f.attrs.get("layout", "views")) == LAYOUT


def load_frames(path: str | Path) -> FrameCache:
    """Open a per-frame entry file, check its shards, and read everything into memory."""
    path = Path(path)
    with _open_entry(path) as f:
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise CacheError(f"{path}: expected cache format {FORMAT_VERSION}, found {version}; re-extract it")
        if not is_frame_cache(f):
            raise CacheError(f"{path}: expected a per-frame cache (layout 'frames'), found layout 'views'")
        shards = _entry_shards(f, path)  # the entry against its digest, then each shard as tgdfer.features.cache does
        for shard in shards:
            problem = _shard_header_problem(shard)
            if problem is not None:
                raise CacheError(f"{path}: {problem}; {_RERUN}")
        features = f["features"][()]
        for shard in shards:
            _check_shard_data(shard, path, features[shard.start : shard.start + shard.views])
        for start in range(0, len(features), 65536):
            bad = ~np.isfinite(features[start : start + 65536]).all(axis=(1, 2))  # (chunk,) frames with NaN/Inf
            if bad.any():
                row = start + int(np.argmax(bad))
                shard = next(s for s in reversed(shards) if s.start <= row)
                raise CacheError(
                    f"{path}: expected finite features, found NaN or Inf at frame row {row} (shard {shard.path}), "
                    "which matches its digest: it was encoded so. Re-extract with --overwrite"
                )
        return FrameCache(
            path=str(path),
            features=features,
            offsets=f["frames/offsets"][()].astype(np.int64),
            source_frames=f["frames/source"][()],
            timestamps_ms=f["frames/timestamp_ms"][()],
            pass_kind=f["passes/kind"][()],
            clip_ids=_text(f["clips/id"][()]),
            **_clip_fields(f),
        )
