"""The feature cache: the HDF5 contract between stage 1 (writer) and stage 2 (reader).

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
    attrs: model, weights hash, T, D, sampling, preprocessing, augmentation, dataset, classes, splits, version,
           entry_digest (SHA-256 of every other dataset and attribute of the entry)

Shards (``<entry stem>.shards/shard-00012.h5``) hold a fixed slice of the annotation rows each and are committed
atomically. Integrity: ``load_cache`` refuses an entry whose own digest does not match (a flipped byte in a view's
clip index), whose shards are missing or of another size or header digest than it recorded, or whose shard data
do not hash to their digest (a flipped byte in the features; checked once per shard per process); then it refuses
non-finite features, naming the view. ``verify_cache`` (``tgdfer verify``) runs the same checks shard by shard
without loading the cache and lists every shard that fails. Both HDF5 files are built in memory and committed with
plain writes (``tgdfer.atomic.write_bytes``), so a full disk is one ``OSError``, never a crash inside h5py.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from tgdfer.atomic import write_bytes
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
    face_frames: np.ndarray | None = None  # (C,) int32 distinct sampled frames of each clip with a face found
    sampled_frames: np.ndarray | None = None  # (C,) int32 distinct frames sampled over all views of each clip


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
_FACE_ARRAYS = ("face_frames", "sampled_frames")  # optional: caches written before they existed lack them


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
    for name in _FACE_ARRAYS:
        if getattr(data, name) is not None:
            a = np.ascontiguousarray(getattr(data, name))
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    h.update("\x00".join(data.failed_reasons).encode())
    return h.hexdigest()


@contextlib.contextmanager
def _h5_commit(path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 file built in memory, committed as ``path`` when the block ends (see the module docstring)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        yield f
    write_bytes(path, buffer.getbuffer())


def write_shard(path: str | Path, data: ShardData, fingerprint: str, settings: dict) -> str:
    """Commit one shard atomically; returns its digest."""
    digest = _digest(data)
    with _h5_commit(path) as f:
        for name in _SHARD_ARRAYS:
            f.create_dataset(name, data=getattr(data, name))
        for name in _FACE_ARRAYS:
            if getattr(data, name) is not None:
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
        arrays |= {n: f[n][()] for n in _FACE_ARRAYS if n in f}
        if not features:
            arrays["features"] = np.empty((0, *f["features"].shape[1:]), np.float16)
        reasons = tuple(r.decode() if isinstance(r, bytes) else str(r) for r in f["failed_reasons"][()])
        return ShardData(index=int(f.attrs["index"]), failed_reasons=reasons, **arrays)


def _strings(values) -> np.ndarray:
    return np.array(list(values), dtype=object)


def _write_records(f: h5py.File, entry: Path, clips, failed, shard_files: list[Path], headers, attrs: dict) -> None:
    """What every entry layout holds alike: failures/*, shards/* (file, digest, rows, size) and the given attrs."""
    f.create_dataset("failures/id", data=_strings(clips[r].id for r, _ in failed), dtype=_STR)
    f.create_dataset("failures/path", data=_strings(clips[r].path for r, _ in failed), dtype=_STR)
    f.create_dataset("failures/reason", data=_strings(reason for _, reason in failed), dtype=_STR)
    files = _strings(p.relative_to(entry.parent).as_posix() for p in shard_files)
    f.create_dataset("shards/file", data=files, dtype=_STR)
    f.create_dataset("shards/digest", data=_strings(h["digest"] for h in headers), dtype=_STR)
    f["shards/views"] = np.array([h["views"] for h in headers], dtype=np.int64)  # first-axis rows per shard
    f["shards/size"] = np.array([p.stat().st_size for p in shard_files], dtype=np.int64)
    f.attrs.update({k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v for k, v in attrs.items()})


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

    with _h5_commit(entry) as f:
        f.create_virtual_dataset("features", layout, fillvalue=np.float16(np.nan))
        f["views/clip"] = row_to_clip[view_rows].astype(np.int32)
        f["views/kind"] = np.concatenate([s.view_kind for s in shards]).astype(np.int8)
        f["views/index"] = np.concatenate([s.view_index for s in shards]).astype(np.int16)
        f["views/frames"] = np.concatenate([s.view_frames for s in shards]).astype(np.int32)
        f.create_dataset("clips/id", data=_strings(clips[r].id for r in ok_rows), dtype=_STR)
        f.create_dataset("clips/path", data=_strings(clips[r].path for r in ok_rows), dtype=_STR)
        f["clips/label"] = np.array([clips[r].label for r in ok_rows], dtype=np.int16)
        f["clips/num_frames"] = num_frames.astype(np.int32)
        if all(s.face_frames is not None and s.sampled_frames is not None for s in shards):
            f["clips/face_frames"] = np.concatenate([s.face_frames for s in shards]).astype(np.int32)
            f["clips/sampled_frames"] = np.concatenate([s.sampled_frames for s in shards]).astype(np.int32)
        f["clips/membership"] = annotations.membership[ok_rows].astype(np.int8)
        _write_records(f, entry, clips, failed, shard_files, headers, attrs)
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
        f.attrs["entry_digest"] = _entry_digest(f)
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
    """A whole cache in memory (a DFEW cache is about 1 GB). Arrays as in the module docstring.

    Two kinds of rows: views (``features``, ``view_*``: V rows, each clip's test view and its train views) and clips
    (``clip_*``, ``labels``, ``num_frames``, ``membership``, ``face_frames``: C rows, sorted by clip id);
    ``view_clip[v]`` is the clip row of view v.
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
        """Clip rows whose membership in ``split`` is ``role`` (1 train, 2 test, 3 val), (n,) int64."""
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


def _entry_digest(f: h5py.File) -> str:
    """SHA-256 of the entry's own datasets (not the virtual features) and attributes, in name order."""
    h = hashlib.sha256()
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and not obj.is_virtual else None)
    for name in sorted(names):
        a = f[name][()]
        data = b"\x00".join(v if isinstance(v, bytes) else str(v).encode() for v in a) if a.dtype == object else None
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes() if data is None else data)
    for key in sorted(k for k in f.attrs if k != "entry_digest"):
        v = f.attrs[key]
        h.update(f"{key}|{type(v).__name__}|".encode())
        h.update(v.encode() if isinstance(v, str) else v if isinstance(v, bytes) else np.asarray(v).tobytes())
    return h.hexdigest()


_RERUN = "rerun the same extract command: it re-encodes only shards that fail their check and rewrites the entry"


@dataclass(frozen=True)
class _Shard:
    """One shard as the entry recorded it."""

    path: Path
    digest: str
    views: int
    size: int
    start: int  # its first view in ``features``


def _entry_shards(f: h5py.File, entry: Path) -> list[_Shard]:
    """The entry's shard records, after checking the entry against its own digest."""
    if "entry_digest" not in f.attrs or "shards/size" not in f:
        raise CacheError(
            f"{entry}: expected an entry with integrity records (entry_digest, shards/size), found one written by an "
            f"earlier tgdfer; {_RERUN}"
        )
    stored, actual = _attr(f.attrs["entry_digest"]), _entry_digest(f)
    if stored != actual:
        raise CacheError(
            f"{entry}: expected entry digest {stored[:12]}, found {actual[:12]}: the entry file is damaged (views, "
            f"clips or attributes changed on disk); {_RERUN}"
        )
    views = f["shards/views"][()]
    starts = np.concatenate([[0], np.cumsum(views)[:-1]]).astype(np.int64)
    return [
        _Shard(entry.parent / rel, digest, int(n), int(size), int(start))
        for rel, digest, n, size, start in zip(
            _text(f["shards/file"][()]), _text(f["shards/digest"][()]), views, f["shards/size"][()], starts, strict=True
        )
    ]


def _shard_header_problem(shard: _Shard) -> str | None:
    """The cheap check on open: the shard exists, has the recorded size and the recorded digest in its header."""
    path = shard.path
    if not path.is_file():
        return f"shard {path} is missing"
    size = path.stat().st_size
    if size != shard.size:
        return f"expected shard {path} of {shard.size} bytes, found {size} bytes: it is damaged or was rewritten"
    header = shard_header(path)
    if header is None:
        return f"shard {path} is unreadable (damaged HDF5)"
    if header["digest"] != shard.digest:
        return (
            f"shard {path} has digest {header['digest'][:12]}, the entry expects {shard.digest[:12]}: "
            "the shard was rewritten after the entry"
        )
    return None


def shard_data_problem(path: str | Path, features: np.ndarray | None = None) -> str | None:
    """Why a committed shard's data do not hash to the digest in its header (None: they do).

    ``features`` (its (V, T, D) rows, as read through the entry) saves reading them again from the shard.
    """
    try:
        header = shard_header(path)
        if header is None:
            return "unreadable"
        if _attr(header.get("layout", "views")) == "frames":  # a per-frame shard hashes its own arrays
            from tgdfer.features.frames import frame_shard_data_problem

            return frame_shard_data_problem(path, header, features)
        data = read_shard(path, features=features is None)
    except (OSError, KeyError, ValueError) as exc:
        return f"unreadable ({str(exc).splitlines()[0][:80]})"
    if features is not None:
        data = replace(data, features=features)
    actual = _digest(data)
    if actual != header["digest"]:
        return f"data hash to {actual[:12]}, its digest is {header['digest'][:12]}: damaged on disk"
    return None


_VERIFIED: set[tuple] = set()  # (shard path, size, mtime, digest) whose data this process has hashed


def _check_shard_data(shard: _Shard, entry: Path, features: np.ndarray) -> None:
    """The data check, once per shard per process: ``features`` are the entry's rows of this shard."""
    st = shard.path.stat()
    key = (str(shard.path.resolve()), st.st_size, st.st_mtime_ns, shard.digest)
    if key in _VERIFIED:
        return
    problem = shard_data_problem(shard.path, features)
    if problem is not None:
        raise CacheError(f"{entry}: shard {shard.path} fails its check ({problem}); {_RERUN}")
    _VERIFIED.add(key)


def _check_finite(features: np.ndarray, shards: list[_Shard], entry: Path, clip_ids, view_clip) -> None:
    """Refuse NaN or Inf features, naming the first such view, its clip and its shard."""
    for start in range(0, len(features), 4096):
        bad = ~np.isfinite(features[start : start + 4096]).all(axis=(1, 2))  # (chunk,) views with a non-finite value
        if bad.any():
            view = start + int(np.argmax(bad))
            what = "NaN" if np.isnan(features[view]).any() else "Inf"
            shard = next(s for s in reversed(shards) if s.start <= view)
            raise CacheError(
                f"{entry}: expected finite features, found {what} at view {view} (clip {clip_ids[view_clip[view]]}, "
                f"shard {shard.path}), which matches its digest: it was encoded so (fp16 overflow?). Re-extract "
                "with --overwrite, with --precision fp32 if it was fp16"
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


def _clip_fields(f: h5py.File) -> dict:
    """What every entry layout holds of its clips, failures and attributes, as the loaded caches' fields."""
    failures = (_text(f["failures/id"][()]), _text(f["failures/path"][()]), _text(f["failures/reason"][()]))
    return {
        "clip_paths": _text(f["clips/path"][()]),
        "labels": f["clips/label"][()].astype(np.int64),
        "num_frames": f["clips/num_frames"][()],
        "membership": f["clips/membership"][()],
        "failures": tuple(zip(*failures, strict=True)),
        "attrs": {k: _attr(v) for k, v in f.attrs.items()},
    }


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
        shards = _entry_shards(f, path)
        for shard in shards:
            problem = _shard_header_problem(shard)
            if problem is not None:
                raise CacheError(f"{path}: {problem}; {_RERUN}")
        features = f["features"][()]
        for shard in shards:
            _check_shard_data(shard, path, features[shard.start : shard.start + shard.views])
        view_clip = f["views/clip"][()].astype(np.int64)
        clip_ids = _text(f["clips/id"][()])
        _check_finite(features, shards, path, clip_ids, view_clip)
        return FeatureCache(
            path=str(path),
            features=features,
            view_clip=view_clip,
            view_kind=f["views/kind"][()],
            view_index=f["views/index"][()],
            view_frames=f["views/frames"][()],
            clip_ids=clip_ids,
            **_clip_fields(f),
            face_frames=f["clips/face_frames"][()] if "clips/face_frames" in f else None,
            sampled_frames=f["clips/sampled_frames"][()] if "clips/sampled_frames" in f else None,
        )


def verify_cache(path: str | Path) -> dict:
    """``tgdfer verify``: the full check of a cache, shard by shard, without loading it whole.

    Checks the entry's digest, then every shard's presence, size, header digest, data digest and finiteness.
    Returns {"entry", "shards", "views", "bytes"} when all pass; otherwise raises one ``CacheError`` that counts
    the failing shards and names the first three with why.
    """
    path = Path(path)
    with _open_entry(path) as f:
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise CacheError(f"{path}: expected cache format {FORMAT_VERSION}, found {version}; re-extract it")
        shards = _entry_shards(f, path)
    problems = []
    for shard in shards:
        problem = _shard_header_problem(shard)
        if problem is not None:
            problems.append(problem)
            continue
        problem = shard_data_problem(shard.path)
        if problem is None:
            with h5py.File(shard.path, "r") as g:
                features = g["features"][()]
            bad = ~np.isfinite(features).all(axis=(1, 2))  # (V,) views holding NaN or Inf
            if bad.any():
                problem = f"view {shard.start + int(np.argmax(bad))} holds NaN or Inf features"
        if problem is not None:
            problems.append(f"shard {shard.path}: {problem}")
    if problems:
        raise CacheError(
            f"{path}: expected every shard to pass its check, found {len(problems)} of {len(shards)} failing: "
            f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}; {_RERUN}"
        )
    return {
        "entry": str(path),
        "shards": len(shards),
        "views": sum(s.views for s in shards),
        "bytes": sum(s.size for s in shards),
    }
