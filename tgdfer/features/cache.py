"""The feature cache: the HDF5 contract between stage 1 (writer) and stage 2 (reader).

Layout of an entry file (``cache/dfew.h5``); V views, C clips, S splits, T frames, D feature width::

    features          (V, T, D) float16   virtual dataset over the shards, fill value NaN
    views/clip        (V,)      int32     row in clips/* of the view's clip
    views/kind        (V,)      int8      0 test view (segment centres), 1 augmented train view
    views/index       (V,)      int16     which train view of its clip (0 for the test view)
    views/frames      (V, T)    int32     frame indices the view sampled
    clips/id, clips/path      (C,) str;   clips/label (C,) int16; clips/num_frames (C,) int32
    clips/membership  (C, S)    int8      0 absent, 1 train, 2 test, per split (DFEW: the five folds)
    failures/id, failures/path, failures/reason   clips skipped, with why
    shards/file, shards/digest, shards/views      the shards behind ``features``, checked on every open
    attrs: model, weights hash, T, D, sampling, preprocessing, augmentation, dataset, classes, splits, version

Shards (``<entry stem>.shards/shard-00012.h5``) hold a fixed slice of the annotation rows each and are committed
atomically. The reader refuses an entry whose shards are missing or differ from what it recorded, and checks the
loaded features for NaN, so no read ever returns fill values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tgdfer.atomic import committed
from tgdfer.errors import CacheError

FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True, eq=False)
class ShardData:
    """What one shard holds. Rows index the annotation table of the extraction."""

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


_SHARD_ARRAYS = (
    "features",
    "view_row",
    "view_kind",
    "view_index",
    "view_frames",
    "clip_rows",
    "num_frames",
    "failed_rows",
)


def shard_dir(entry: str | Path) -> Path:
    entry = Path(entry)
    return entry.parent / f"{entry.stem}.shards"


def shard_path(entry: str | Path, index: int) -> Path:
    return shard_dir(entry) / f"shard-{index:05d}.h5"


def _digest(data: ShardData) -> str:
    h = hashlib.sha256()
    for name in _SHARD_ARRAYS:
        a = np.ascontiguousarray(getattr(data, name))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    h.update("\x00".join(data.failed_reasons).encode())
    return h.hexdigest()


def write_shard(path: str | Path, data: ShardData, fingerprint: str, settings: dict) -> str:
    """Commit one shard atomically; returns its digest."""
    digest = _digest(data)
    with committed(path) as tmp, h5py.File(tmp, "w") as f:
        for name in _SHARD_ARRAYS:
            f.create_dataset(name, data=getattr(data, name))
        f.create_dataset("failed_reasons", data=np.array(data.failed_reasons, dtype=object), dtype=_STR)
        f.attrs.update(
            index=data.index,
            fingerprint=fingerprint,
            digest=digest,
            settings=json.dumps(settings, sort_keys=True),
            format_version=FORMAT_VERSION,
        )
    return digest


def shard_header(path: str | Path) -> dict | None:
    """A committed shard's attributes, or None when there is none (or it cannot be read)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            return {**dict(f.attrs), "views": int(f["features"].shape[0])}
    except OSError:
        return None


def read_shard(path: str | Path, features: bool = True) -> ShardData:
    with h5py.File(path, "r") as f:
        arrays = {n: f[n][()] for n in _SHARD_ARRAYS if n != "features" or features}
        if not features:
            arrays["features"] = np.empty((0, *f["features"].shape[1:]), np.float16)
        reasons = tuple(r.decode() if isinstance(r, bytes) else str(r) for r in f["failed_reasons"][()])
        return ShardData(index=int(f.attrs["index"]), failed_reasons=reasons, **arrays)


def _strings(values) -> np.ndarray:
    return np.array(list(values), dtype=object)


def write_entry(entry: str | Path, annotations, shard_files: list[Path], attrs: dict) -> dict:
    """Write the entry file over committed shards, atomically. Returns counts and the failed (id, path, reason).

    ``annotations`` is the extraction's ``tgdfer.data.datasets.Annotations``; ``attrs`` how the features were made.
    """
    entry = Path(entry)
    shards = [read_shard(p, features=False) for p in shard_files]
    headers = [shard_header(p) for p in shard_files]
    frames, dim = None, None
    with h5py.File(shard_files[0], "r") as f:
        _, frames, dim = f["features"].shape
    ok_rows = np.concatenate([s.clip_rows for s in shards]).astype(np.int64)
    num_frames = np.concatenate([s.num_frames for s in shards])
    row_to_clip = np.full(len(annotations.clips), -1, dtype=np.int64)
    row_to_clip[ok_rows] = np.arange(len(ok_rows))
    view_rows = np.concatenate([s.view_row for s in shards]).astype(np.int64)
    n_views = len(view_rows)
    failed = [(int(r), reason) for s in shards for r, reason in zip(s.failed_rows, s.failed_reasons, strict=True)]
    clips = annotations.clips

    layout = h5py.VirtualLayout(shape=(n_views, frames, dim), dtype=np.float16)
    start = 0
    for path, header in zip(shard_files, headers, strict=True):
        n = header["views"]
        if n:
            rel = path.relative_to(entry.parent).as_posix()  # HDF5 resolves it beside the entry file
            layout[start : start + n] = h5py.VirtualSource(rel, "features", shape=(n, frames, dim))
        start += n

    with committed(entry) as tmp, h5py.File(tmp, "w") as f:
        f.create_virtual_dataset("features", layout, fillvalue=np.float16(np.nan))
        f["views/clip"] = row_to_clip[view_rows].astype(np.int32)
        f["views/kind"] = np.concatenate([s.view_kind for s in shards]).astype(np.int8)
        f["views/index"] = np.concatenate([s.view_index for s in shards]).astype(np.int16)
        f["views/frames"] = np.concatenate([s.view_frames for s in shards]).astype(np.int32)
        f.create_dataset("clips/id", data=_strings(clips[r].id for r in ok_rows), dtype=_STR)
        f.create_dataset("clips/path", data=_strings(clips[r].path for r in ok_rows), dtype=_STR)
        f["clips/label"] = np.array([clips[r].label for r in ok_rows], dtype=np.int16)
        f["clips/num_frames"] = num_frames.astype(np.int32)
        f["clips/membership"] = annotations.membership[ok_rows].astype(np.int8)
        f.create_dataset("failures/id", data=_strings(clips[r].id for r, _ in failed), dtype=_STR)
        f.create_dataset("failures/path", data=_strings(clips[r].path for r, _ in failed), dtype=_STR)
        f.create_dataset("failures/reason", data=_strings(reason for _, reason in failed), dtype=_STR)
        f.create_dataset(
            "shards/file",
            data=_strings(p.relative_to(entry.parent).as_posix() for p in shard_files),
            dtype=_STR,
        )
        f.create_dataset("shards/digest", data=_strings(h["digest"] for h in headers), dtype=_STR)
        f["shards/views"] = np.array([h["views"] for h in headers], dtype=np.int64)
        f.attrs.update({k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v for k, v in attrs.items()})
        f.attrs.update(
            layout="views",  # tgdfer.features.frames writes "frames"
            format_version=FORMAT_VERSION,
            frames=frames,
            dim=dim,
            class_names=json.dumps(list(annotations.class_names)),
            split_names=json.dumps(list(annotations.split_names)),
            dataset=annotations.dataset,
            annotations_sha256=annotations.sha256(),
        )
    return {
        "clips": len(ok_rows),
        "views": n_views,
        "frames": n_views * frames,
        "failures": len(failed),
        "failed": [(clips[r].id, clips[r].path, reason) for r, reason in failed],
    }


def _text(values) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True, eq=False)
class FeatureCache:
    """A whole cache in memory (a DFEW cache is about 1 GB). Arrays as in the module docstring."""

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

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.attrs["class_names"])

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self.attrs["split_names"])

    @property
    def frames(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def split_index(self, fold: str | int) -> int:
        """Column of clips/membership for --fold: 1..5 or fold1..fold5 on DFEW/MAFW; 1 or default otherwise."""
        names = self.split_names
        text = str(fold).strip().lower()
        if text in names:
            return names.index(text)
        if text.isdigit() and f"fold{text}" in names:
            return names.index(f"fold{text}")
        if text in ("1", "fold1") and len(names) == 1:
            return 0
        valid = [str(i + 1) for i in range(len(names))] if names[0].startswith("fold") else ["1"]
        raise CacheError(
            f"--fold: this cache ({self.path}) has splits {list(names)}; expected one of {valid}, found {fold!r}"
        )

    def clips_in(self, split: int, role: int) -> np.ndarray:
        """Clip rows whose membership in ``split`` is ``role`` (1 train, 2 test), (n,) int64."""
        return np.flatnonzero(self.membership[:, split] == role)

    def views_by_clip(self, kind: int) -> dict[int, np.ndarray]:
        """{clip row: its view indices of ``kind``}."""
        chosen = np.flatnonzero(self.view_kind == kind)
        if len(chosen) == 0:
            return {}
        order = np.argsort(self.view_clip[chosen], kind="stable")
        chosen = chosen[order]
        clips, starts = np.unique(self.view_clip[chosen], return_index=True)
        return {int(c): v for c, v in zip(clips, np.split(chosen, starts[1:]), strict=True)}


def _check_shards(f: h5py.File, entry: Path) -> None:
    for rel, digest in zip(_text(f["shards/file"][()]), _text(f["shards/digest"][()]), strict=True):
        path = entry.parent / rel
        header = shard_header(path)
        if header is None:
            raise CacheError(
                f"{entry}: shard {path} is missing or unreadable. Rerun the same extract command: it "
                "redoes only missing shards"
            )
        if header["digest"] != digest:
            raise CacheError(
                f"{entry}: shard {path} has digest {header['digest'][:12]}, the entry expects "
                f"{digest[:12]}: the shard was rewritten after the entry. Rerun extract to rewrite it"
            )


def _open_entry(path: Path) -> h5py.File:
    if not path.is_file():
        raise CacheError(f"--features: expected a feature cache written by `tgdfer extract`, found no file {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise CacheError(f"{path}: expected an HDF5 feature cache, could not open it ({exc}); re-extract it") from exc


def read_attrs(path: str | Path) -> dict:
    """The entry's attributes only (cheap)."""
    with _open_entry(Path(path)) as f:
        return {k: _attr(v) for k, v in f.attrs.items()}


def folds_of(path: str | Path, fold: str) -> list[str]:
    """--fold all -> every split of the cache ("1".."5" for DFEW/MAFW, "1" otherwise); else [fold]."""
    if str(fold).strip().lower() != "all":
        return [str(fold)]
    return [str(i + 1) for i in range(len(read_attrs(path)["split_names"]))]


def load_cache(path: str | Path) -> FeatureCache:
    """Open an entry file, check its shards, and read everything into memory.

    A per-frame entry (attribute layout "frames") comes back as ``tgdfer.features.frames.FrameCache``."""
    path = Path(path)
    with _open_entry(path) as f:
        if _attr(f.attrs.get("layout", "views")) == "frames":
            from tgdfer.features.frames import load_frames

            return load_frames(path)
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise CacheError(f"{path}: expected cache format {FORMAT_VERSION}, found {version}; re-extract it")
        _check_shards(f, path)
        features = f["features"][()]
        for start in range(0, len(features), 4096):
            if np.isnan(features[start : start + 4096]).any():
                raise CacheError(f"{path}: features hold NaN (fill values of an unreadable shard) near view {start}")
        return FeatureCache(
            path=str(path),
            features=features,
            view_clip=f["views/clip"][()].astype(np.int64),
            view_kind=f["views/kind"][()],
            view_index=f["views/index"][()],
            view_frames=f["views/frames"][()],
            clip_ids=_text(f["clips/id"][()]),
            clip_paths=_text(f["clips/path"][()]),
            labels=f["clips/label"][()].astype(np.int64),
            num_frames=f["clips/num_frames"][()],
            membership=f["clips/membership"][()],
            failures=tuple(
                zip(
                    _text(f["failures/id"][()]),
                    _text(f["failures/path"][()]),
                    _text(f["failures/reason"][()]),
                    strict=True,
                )
            ),
            attrs={k: _attr(v) for k, v in f.attrs.items()},
        )
