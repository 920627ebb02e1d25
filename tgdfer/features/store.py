"""The cache store: what both cache layouts (``tgdfer.features.views``, ``tgdfer.features.frames``) share.

A cache is one entry file (``cache/dfew.h5``) over shards (``<entry stem>.shards/shard-00012.h5``), each holding a
fixed slice of the annotation rows. Each layout says what its shards hold (a ``ShardSchema``) and which datasets
its entry adds; this module writes, reads and checks them alike:

- **Atomic commit.** Both HDF5 files are built in memory and committed with plain writes
  (``tgdfer.atomic.write_bytes``), so a full disk is one ``OSError``, never a crash inside h5py.
- **Digests.** A shard's header records the SHA-256 of its arrays (``shard_digest``); an entry records the SHA-256
  of its own datasets and attributes (``entry_digest``, attribute ``entry_digest``) and, per shard, its file, header
  digest, first-axis rows and size (``shards/*``).
- **Integrity on open** (``checked_entry``): the entry against its own digest; every shard's presence, size and
  header digest; then, once per shard per process, its data against that digest. ``verify_entry`` (``tgdfer
  verify``) runs the same checks shard by shard without loading the features and lists every shard that fails.
- **Records** every entry holds alike: ``clips/*`` (id, path, label, num_frames, membership), ``failures/*`` (id,
  path, reason) and ``shards/*``; attributes: layout, format_version, frames, dim, classes, splits, dataset.

The first axis of ``features`` (its rows) is a view in a view cache and a frame in a per-frame cache; the on-disk
dataset ``shards/views`` counts these rows per shard in both layouts (its name predates the per-frame layout).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tgdfer.atomic import write_bytes
from tgdfer.errors import CacheError

FORMAT_VERSION = 1
_STRING = h5py.string_dtype("utf-8")  # HDF5 type of every string dataset
VIEW_LAYOUT, FRAME_LAYOUT = "views", "frames"  # entry attribute ``layout``; absent on view caches of before
RERUN = "rerun the same extract command: it re-encodes only shards that fail their check and rewrites the entry"


def _strings(values: Iterable) -> np.ndarray:
    """Python strings as an object array, to write as ``_STRING``."""
    return np.array(list(values), dtype=object)


def _text(values: Iterable) -> np.ndarray:
    """A string dataset's values (bytes or str) as an object array of str."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def attr_value(value):
    """An HDF5 attribute as Python: bytes decoded, JSON lists and dicts parsed, numpy scalars unwrapped."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.item() if isinstance(value, np.generic) else value


def layout_of(attrs) -> str:
    """The layout an entry's or shard's attributes name (view shards and early view entries name none)."""
    return attr_value(attrs.get("layout", VIEW_LAYOUT))


# --- shards ---------------------------------------------------------------------------------------------------


def shard_dir(entry: str | Path) -> Path:
    entry = Path(entry)
    return entry.parent / f"{entry.stem}.shards"


def shard_path(entry: str | Path, index: int) -> Path:
    return shard_dir(entry) / f"shard-{index:05d}.h5"


@dataclass(frozen=True)
class ShardSchema:
    """What a layout's shards hold. A shard is a dataclass with ``index``, ``failed_reasons`` and these arrays."""

    layout: str  # VIEW_LAYOUT | FRAME_LAYOUT, as the entry's attribute names it
    arrays: tuple[str, ...]  # in digest and write order, "features" first: (rows, ..., D) float16
    optional: tuple[str, ...] = ()  # arrays that shards written before they existed lack; hashed when present
    tagged: bool = False  # the layout name seeds the digest and is in the header (view shards predate both)
    chunk_rows: int | None = None  # features chunked by this many rows; None: contiguous

    def fields(self, data) -> dict[str, np.ndarray]:
        """The shard's arrays by name, in digest order, without optional ones it lacks."""
        names = self.arrays + tuple(n for n in self.optional if getattr(data, n) is not None)
        return {n: getattr(data, n) for n in names}


def shard_digest(schema: ShardSchema, arrays: dict[str, np.ndarray], failed_reasons: Iterable[str]) -> str:
    """SHA-256 of a shard's arrays (name, dtype, shape and bytes, in ``schema`` order) and failure reasons."""
    h = hashlib.sha256(schema.layout.encode() if schema.tagged else b"")
    for name in schema.arrays + schema.optional:
        if arrays.get(name) is not None:
            a = np.ascontiguousarray(arrays[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    h.update("\x00".join(failed_reasons).encode())
    return h.hexdigest()


@contextlib.contextmanager
def _h5_commit(path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 file built in memory, committed as ``path`` when the block ends (see the module docstring)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        yield f
    write_bytes(path, buffer.getbuffer())


def commit_shard(path: str | Path, schema: ShardSchema, data, fingerprint: str, settings: dict) -> str:
    """Commit one shard (a ``schema`` dataclass) atomically; returns its digest."""
    arrays = schema.fields(data)
    digest = shard_digest(schema, arrays, data.failed_reasons)
    with _h5_commit(path) as f:
        for name, a in arrays.items():
            chunked = name == "features" and schema.chunk_rows and len(a)  # an empty dataset cannot be chunked
            f.create_dataset(name, data=a, chunks=(min(schema.chunk_rows, len(a)), *a.shape[1:]) if chunked else None)
        f.create_dataset("failed_reasons", data=np.array(data.failed_reasons, dtype=object), dtype=_STRING)
        f.attrs.update(
            index=data.index,
            **({"layout": schema.layout} if schema.tagged else {}),
            fingerprint=fingerprint,
            digest=digest,
            settings=json.dumps(settings, sort_keys=True),
            format_version=FORMAT_VERSION,
        )
    return digest


def shard_header(path: str | Path) -> dict | None:
    """A committed shard's attributes and its ``rows`` (first axis of features), or None when there is none (or it
    cannot be read)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            return {**dict(f.attrs), "rows": int(f["features"].shape[0])}
    except OSError:
        return None


def read_shard_fields(path: str | Path, schema: ShardSchema, features: bool = True) -> dict:
    """A shard's index, failed_reasons and arrays, as keyword arguments of its layout's dataclass; without
    ``features`` its features are an empty (0, ..., D) array."""
    with h5py.File(path, "r") as f:
        arrays = {n: f[n][()] for n in schema.arrays if n != "features" or features}
        arrays |= {n: f[n][()] for n in schema.optional if n in f}
        if not features:
            arrays["features"] = np.empty((0, *f["features"].shape[1:]), np.float16)
        reasons = tuple(r.decode() if isinstance(r, bytes) else str(r) for r in f["failed_reasons"][()])
        return {"index": int(f.attrs["index"]), "failed_reasons": reasons, **arrays}


def shard_data_problem(
    path: str | Path, schemas: tuple[ShardSchema, ...], features: np.ndarray | None = None
) -> str | None:
    """Why a committed shard's data do not hash to the digest in its header (None: they do). The shard is read by
    whichever of ``schemas`` its header's layout names; ``features`` (its rows, as read through the entry) saves
    reading them again from the shard."""
    try:
        header = shard_header(path)
        if header is None:
            return "unreadable"
        layout = layout_of(header)
        schema = next((s for s in schemas if s.layout == layout), None)
        if schema is None:
            return f"of layout {layout!r}, expected one of {[s.layout for s in schemas]}"
        fields = read_shard_fields(path, schema, features=features is None)
    except (OSError, KeyError, ValueError) as exc:
        return f"unreadable ({str(exc).splitlines()[0][:80]})"
    if features is not None:
        fields["features"] = features
    actual = shard_digest(schema, fields, fields["failed_reasons"])
    if actual != header["digest"]:
        return f"data hash to {actual[:12]}, its digest is {header['digest'][:12]}: damaged on disk"
    return None


# --- entries --------------------------------------------------------------------------------------------------


def entry_digest(f: h5py.File) -> str:
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


def seal_entry(f: h5py.File) -> None:
    """Record the entry's digest, the integrity record every open checks first (after any edit of the entry)."""
    f.attrs["entry_digest"] = entry_digest(f)


@dataclass(frozen=True)
class EntryRows:
    """What an entry's layout adds over its committed shards; ``commit_entry`` writes the rest."""

    layout: str  # VIEW_LAYOUT | FRAME_LAYOUT
    clip_rows: np.ndarray  # (C,) int64 annotation rows stored, in entry order
    failed: list[tuple[int, str]]  # (annotation row, reason) of every clip that failed
    datasets: dict[str, np.ndarray]  # the layout's own datasets, written after features, before clips/*
    clip_datasets: dict[str, np.ndarray]  # clips/num_frames and the layout's other per-clip datasets
    shape_attrs: dict  # frames, dim (and the layout's other shape attributes), written after format_version


def _virtual_features(entry: Path, shard_files: list[Path], headers: list[dict]) -> h5py.VirtualLayout:
    """(rows, ..., D) float16 over the shards' features, each referred to by its path beside the entry file."""
    with h5py.File(shard_files[0], "r") as f:
        tail = f["features"].shape[1:]
    layout = h5py.VirtualLayout(shape=(sum(h["rows"] for h in headers), *tail), dtype=np.float16)
    start = 0
    for path, header in zip(shard_files, headers, strict=True):
        n = header["rows"]
        if n:
            rel = path.relative_to(entry.parent).as_posix()  # HDF5 resolves it beside the entry file
            layout[start : start + n] = h5py.VirtualSource(rel, "features", shape=(n, *tail))
        start += n
    return layout


def _write_records(f: h5py.File, entry: Path, clips, failed, shard_files: list[Path], headers: list[dict]) -> None:
    """failures/* and shards/* (file, digest, rows, size)."""
    f.create_dataset("failures/id", data=_strings(clips[r].id for r, _ in failed), dtype=_STRING)
    f.create_dataset("failures/path", data=_strings(clips[r].path for r, _ in failed), dtype=_STRING)
    f.create_dataset("failures/reason", data=_strings(reason for _, reason in failed), dtype=_STRING)
    files = _strings(p.relative_to(entry.parent).as_posix() for p in shard_files)
    f.create_dataset("shards/file", data=files, dtype=_STRING)
    f.create_dataset("shards/digest", data=_strings(h["digest"] for h in headers), dtype=_STRING)
    f["shards/views"] = np.array([h["rows"] for h in headers], dtype=np.int64)  # on-disk name: rows per shard
    f["shards/size"] = np.array([p.stat().st_size for p in shard_files], dtype=np.int64)


def commit_entry(entry: str | Path, annotations, shard_files: list[Path], rows: EntryRows, attrs: dict) -> None:
    """Write the entry file over committed shards, atomically: features (virtual), the layout's datasets, clips/*,
    failures/*, shards/*, ``attrs`` (how the features were made), the common attributes and the entry digest.

    ``annotations`` is the extraction's ``tgdfer.data.datasets.Annotations``.
    """
    entry = Path(entry)
    headers = [shard_header(p) for p in shard_files]
    clips, ok_rows = annotations.clips, rows.clip_rows
    with _h5_commit(entry) as f:
        features = _virtual_features(entry, shard_files, headers)
        f.create_virtual_dataset("features", features, fillvalue=np.float16(np.nan))
        for name, a in rows.datasets.items():
            f[name] = a
        f.create_dataset("clips/id", data=_strings(clips[r].id for r in ok_rows), dtype=_STRING)
        f.create_dataset("clips/path", data=_strings(clips[r].path for r in ok_rows), dtype=_STRING)
        f["clips/label"] = np.array([clips[r].label for r in ok_rows], dtype=np.int16)
        for name, a in rows.clip_datasets.items():
            f[name] = a
        f["clips/membership"] = annotations.membership[ok_rows].astype(np.int8)
        _write_records(f, entry, clips, rows.failed, shard_files, headers)
        f.attrs.update({k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v for k, v in attrs.items()})
        f.attrs.update(
            layout=rows.layout,
            format_version=FORMAT_VERSION,
            **rows.shape_attrs,
            class_names=json.dumps(list(annotations.class_names)),
            split_names=json.dumps(list(annotations.split_names)),
            dataset=annotations.dataset,
            annotations_sha256=annotations.sha256(),
        )
        seal_entry(f)


def failed_of(shards) -> list[tuple[int, str]]:
    """(annotation row, reason) of every failed clip of the shards (layout dataclasses), in shard order."""
    return [(int(r), reason) for s in shards for r, reason in zip(s.failed_rows, s.failed_reasons, strict=True)]


def entry_summary(annotations, rows: EntryRows, **counts: int) -> dict:
    """What an entry write returns: clips, the layout's ``counts``, failures and the failed (id, path, reason)."""
    clips = annotations.clips
    return {
        "clips": len(rows.clip_rows),
        **counts,
        "failures": len(rows.failed),
        "failed": [(clips[r].id, clips[r].path, reason) for r, reason in rows.failed],
    }


# --- opening and checking -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardRecord:
    """One shard as the entry recorded it."""

    path: Path
    digest: str
    rows: int  # its rows of ``features`` (on disk: shards/views)
    size: int
    start: int  # its first row in ``features``


def open_entry(path: Path) -> h5py.File:
    """The entry file open for reading, or a ``CacheError`` saying what is there instead."""
    if not path.is_file():
        raise CacheError(f"--features: expected a feature cache written by `tgdfer extract`, found no file {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise CacheError(f"{path}: expected an HDF5 feature cache, could not open it ({exc}); re-extract it") from exc


def _entry_shards(f: h5py.File, entry: Path, layout: str) -> list[ShardRecord]:
    """The entry's shard records, after checking its format, its layout and the entry against its own digest."""
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise CacheError(f"{entry}: expected cache format {FORMAT_VERSION}, found {version}; re-extract it")
    if layout_of(f.attrs) != layout:
        raise CacheError(f"{entry}: expected a cache of layout {layout!r}, found layout {layout_of(f.attrs)!r}")
    if "entry_digest" not in f.attrs or "shards/size" not in f:
        raise CacheError(
            f"{entry}: expected an entry with integrity records (entry_digest, shards/size), found one written by an "
            f"earlier tgdfer; {RERUN}"
        )
    stored, actual = attr_value(f.attrs["entry_digest"]), entry_digest(f)
    if stored != actual:
        raise CacheError(
            f"{entry}: expected entry digest {stored[:12]}, found {actual[:12]}: the entry file is damaged (views, "
            f"clips or attributes changed on disk); {RERUN}"
        )
    rows = f["shards/views"][()]  # (shards,) first-axis rows of each shard: views or frames
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    return [
        ShardRecord(entry.parent / rel, digest, int(n), int(size), int(start))
        for rel, digest, n, size, start in zip(
            _text(f["shards/file"][()]), _text(f["shards/digest"][()]), rows, f["shards/size"][()], starts, strict=True
        )
    ]


def _shard_header_problem(shard: ShardRecord) -> str | None:
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


_VERIFIED: set[tuple] = set()  # (shard path, size, mtime, digest) whose data this process has hashed


def _check_shard_data(shard: ShardRecord, entry: Path, schema: ShardSchema, features: np.ndarray) -> None:
    """The data check, once per shard per process: ``features`` are the entry's rows of this shard."""
    st = shard.path.stat()
    key = (str(shard.path.resolve()), st.st_size, st.st_mtime_ns, shard.digest)
    if key in _VERIFIED:
        return
    problem = shard_data_problem(shard.path, (schema,), features)
    if problem is not None:
        raise CacheError(f"{entry}: shard {shard.path} fails its check ({problem}); {RERUN}")
    _VERIFIED.add(key)


@contextlib.contextmanager
def checked_entry(path: Path, schema: ShardSchema) -> Iterator[tuple[h5py.File, list[ShardRecord], np.ndarray]]:
    """The entry of ``schema``'s layout open and checked (see the module docstring): (file, its shard records, its
    features read whole)."""
    with open_entry(path) as f:
        shards = _entry_shards(f, path, schema.layout)
        for shard in shards:
            problem = _shard_header_problem(shard)
            if problem is not None:
                raise CacheError(f"{path}: {problem}; {RERUN}")
        features = f["features"][()]
        for shard in shards:
            _check_shard_data(shard, path, schema, features[shard.start : shard.start + shard.rows])
        yield f, shards, features


def first_non_finite(features: np.ndarray, chunk: int) -> int | None:
    """The first row of ``features`` (rows, T or P, D) holding NaN or Inf, or None; read ``chunk`` rows at a time."""
    for start in range(0, len(features), chunk):
        bad = ~np.isfinite(features[start : start + chunk]).all(axis=(1, 2))  # (chunk,) rows with NaN or Inf
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def shard_of(shards: list[ShardRecord], row: int) -> ShardRecord:
    """The shard holding row ``row`` of ``features``."""
    return next(s for s in reversed(shards) if s.start <= row)


def verify_entry(path: Path, schemas: tuple[ShardSchema, ...]) -> dict:
    """The full check of a cache, shard by shard, without loading it whole (``tgdfer.features.cache.verify_cache``).

    Checks the entry's digest, then every shard's presence, size, header digest, data digest and finiteness.
    Returns {"entry", "layout", "shards", "rows", "bytes"} when all pass (rows: views or frames, as ``layout``
    says); otherwise raises one ``CacheError`` that counts the failing shards and names the first three with why.
    """
    with open_entry(path) as f:
        layout = layout_of(f.attrs)
        shards = _entry_shards(f, path, layout)
    problems = []
    for shard in shards:
        problem = _shard_header_problem(shard)
        if problem is not None:
            problems.append(problem)
            continue
        problem = shard_data_problem(shard.path, schemas)
        if problem is None:
            with h5py.File(shard.path, "r") as g:
                bad = first_non_finite(g["features"][()], 65536)
            if bad is not None:
                row = {VIEW_LAYOUT: "view", FRAME_LAYOUT: "frame row"}[layout]
                problem = f"{row} {shard.start + bad} holds NaN or Inf features"
        if problem is not None:
            problems.append(f"shard {shard.path}: {problem}")
    if problems:
        raise CacheError(
            f"{path}: expected every shard to pass its check, found {len(problems)} of {len(shards)} failing: "
            f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}; {RERUN}"
        )
    return {
        "entry": str(path),
        "layout": layout,
        "shards": len(shards),
        "rows": sum(s.rows for s in shards),
        "bytes": sum(s.size for s in shards),
    }


# --- loaded caches --------------------------------------------------------------------------------------------


def clip_fields(f: h5py.File) -> dict:
    """What every entry layout holds of its clips, failures and attributes, as the loaded caches' fields."""
    failures = (_text(f["failures/id"][()]), _text(f["failures/path"][()]), _text(f["failures/reason"][()]))
    return {
        "clip_ids": _text(f["clips/id"][()]),
        "clip_paths": _text(f["clips/path"][()]),
        "labels": f["clips/label"][()].astype(np.int64),
        "num_frames": f["clips/num_frames"][()],
        "membership": f["clips/membership"][()],
        "failures": tuple(zip(*failures, strict=True)),
        "attrs": {k: attr_value(v) for k, v in f.attrs.items()},
    }


class ClipTable:
    """Classes, splits and membership of a loaded cache's clips, alike in both layouts. Needs the fields ``path``,
    ``membership`` (C, S) int8 and ``attrs`` (with class_names and split_names)."""

    path: str
    membership: np.ndarray
    attrs: dict

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.attrs["class_names"])

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self.attrs["split_names"])

    def split_index(self, fold: str | int) -> int:
        """Column of clips/membership for --fold: 1..5 or fold1..fold5 on DFEW/MAFW; 1 or default otherwise."""
        names = self.split_names
        name = str(fold).strip().lower()
        if name in names:
            return names.index(name)
        if name.isdigit() and f"fold{name}" in names:
            return names.index(f"fold{name}")
        if name in ("1", "fold1") and len(names) == 1:
            return 0
        valid = [str(i + 1) for i in range(len(names))] if names[0].startswith("fold") else ["1"]
        raise CacheError(
            f"--fold: this cache ({self.path}) has splits {list(names)}; expected one of {valid}, found {fold!r}"
        )

    def clips_in(self, split: int, role: int) -> np.ndarray:
        """Clip rows whose membership in ``split`` is ``role`` (1 train, 2 test, 3 val), (n,) int64."""
        return np.flatnonzero(self.membership[:, split] == role)
