"""``tgdfer import-features``: a per-frame cache from CLIP features made elsewhere, checked before anything is written.

Input: a folder of v-iashin/video_features outputs (``<stem>_clip.npy`` of shape (frames, D), beside
``<stem>_timestamps_ms.npy``) or of one ``.npy``/``.npz`` of shape (frames, D) per clip, listed by a CSV
``path,label[,split]`` read exactly as ``--dataset csv`` reads it (``tgdfer.data.datasets.read_csv``: classes,
splits, checks). A CSV path ending in .npy/.npz names that file under the folder; any other path (a video, a
clip name) names ``<folder>/<its stem>_clip.npy``, as video_features writes one flat folder. ``import_arrays`` does
the same from arrays in memory.

Two passes: every file is read and checked first, and any of these refuses the import in one line with nothing
written: a D other than the CLIP model's embedding width, NaN/Inf (also after rounding to fp16), 0 frames or not a
2-D array, one feature file listed by two rows, a label one typo away from a known class name, timestamps whose
length differs from the frames'. A missing or unreadable file is skipped and recorded as a failure, as extract
does. Then the features are written as fp16 through ``tgdfer.features.frames``. L2-normalised input (as
clip-retrieval writes) is detected and stated: stage 1 stores raw ``encode_image`` output, which the model's
centring (``model.center``) and its cosine scores expect; normalised input still trains, on other statistics.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tgdfer import __version__
from tgdfer.atomic import committed, remove_stale_temporaries
from tgdfer.backbone import load_clip
from tgdfer.data.datasets import TEST, TRAIN, Annotations, ClipRecord, csv_classes, read_csv
from tgdfer.data.video import VIDEO_EXTENSIONS
from tgdfer.errors import ConfigError, FeatureImportError
from tgdfer.features.frames import PLAIN_PASS, FrameShardData, write_frame_entry, write_frame_shard
from tgdfer.features.store import shard_dir, shard_path

_NORM_TOLERANCE = 1e-2  # |norm - 1| of every row below this: the input was L2-normalised


@dataclass(frozen=True)
class ImportConfig:
    """``tgdfer import-features``: where the features are, what they are, where the cache goes."""

    folder: str  # the features: video_features outputs or one .npy/.npz per clip
    annotations: str  # CSV path,label[,split] as --dataset csv reads it; paths relative to folder
    clip: str  # the CLIP model (name or file) that made the features; its text tower is stage 2's
    out: str = "cache/imported.h5"  # entry file; shards go to <out stem>.shards/ beside it
    frames: int = 16  # T of the samples stage 2 draws from the imported frames, paper §4.2
    shard_clips: int = 256  # clips per shard, as extract
    download_root: str | None = None  # where clip keeps downloaded weights (default ~/.cache/clip)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.shard_clips < 1:
            raise ConfigError(
                f"import-features: expected frames >= 1 and shard_clips >= 1, found {self.frames} and "
                f"{self.shard_clips}"
            )


@dataclass(frozen=True)
class _Clip:
    """One clip's features as loaded and checked: (n, D) float and (n,) timestamps (NaN when unknown)."""

    features: np.ndarray
    timestamps_ms: np.ndarray
    digest: str


def feature_file(folder: Path, clip_path: str) -> tuple[Path, Path | None]:
    """(features file, timestamps file or None) a CSV path names (see the module docstring)."""
    path = Path(clip_path)
    if path.suffix.lower() in (".npy", ".npz"):
        return folder / path, None
    stem = path.stem if path.suffix.lower() in VIDEO_EXTENSIONS else path.name
    return folder / f"{stem}_clip.npy", folder / f"{stem}_timestamps_ms.npy"


def _read_array(file: Path) -> np.ndarray:
    """An array from .npy or .npz (one array, or the one named 'features'), never unpickling; OSError/ValueError
    when the file is missing or unreadable."""
    if file.suffix.lower() == ".npz":
        try:
            with np.load(file, allow_pickle=False) as archive:
                names = list(archive.files)
                if len(names) != 1 and "features" not in names:
                    raise ValueError(f"expected one array or one named 'features' in the .npz, found {names}")
                return archive["features" if "features" in names else names[0]]
        except zipfile.BadZipFile as exc:
            raise ValueError(f"not a .npz archive ({exc})") from exc
    return np.load(file, allow_pickle=False)


def _check(name: str, array: np.ndarray, timestamps: np.ndarray | None, dim: int) -> _Clip:
    """Refuse what cannot be a (frames, D) feature array of this CLIP; the message names ``name``."""
    if array.ndim != 2:
        raise FeatureImportError(
            f"{name}: expected a (frames, {dim}) array, found shape {tuple(array.shape)}; save one row per frame"
        )
    if array.shape[0] == 0:
        raise FeatureImportError(f"{name}: expected at least 1 frame, found shape {tuple(array.shape)}")
    if array.shape[1] != dim:
        raise FeatureImportError(
            f"{name}: expected D={dim} (the embedding width of the --clip model), found shape "
            f"{tuple(array.shape)}; pass the CLIP model that made these features"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise FeatureImportError(f"{name}: expected float features, found dtype {array.dtype}")
    with np.errstate(over="ignore"):  # overflow is what is checked for
        stored = array.astype(np.float16)
    if not np.isfinite(stored).all():
        bad = np.argwhere(~np.isfinite(stored))[0]
        raise FeatureImportError(
            f"{name}: expected finite features (fp16 range), found {array[tuple(bad)]} at frame {bad[0]}, "
            f"column {bad[1]}; fix or drop this clip"
        )
    if timestamps is None:
        timestamps = np.full(len(array), np.nan)
    timestamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if len(timestamps) != len(array):
        raise FeatureImportError(f"{name}: expected {len(array)} timestamps, one per frame, found {len(timestamps)}")
    digest = hashlib.sha256(np.ascontiguousarray(stored).tobytes()).hexdigest()
    return _Clip(array, timestamps, digest)


def _read_all(
    loaders: list[Callable[[], tuple[np.ndarray, np.ndarray | None]]],
    names: list[str],
    dim: int,
    source: str,
    log: Callable[[str], None],
) -> tuple[dict[int, _Clip], list[tuple[int, str]]]:
    """Every clip checked ({row: clip}), and the rows skipped with their reasons (unreadable: OSError/ValueError)."""
    checked: dict[int, _Clip] = {}
    skipped: list[tuple[int, str]] = []
    for row, (load, name) in enumerate(zip(loaders, names, strict=True)):
        try:
            array, timestamps = load()
        except (OSError, ValueError, EOFError) as exc:
            reason = f"missing or unreadable features ({type(exc).__name__}: {exc}): {name}"
            skipped.append((row, reason))
            log(f"import-features: skipped {reason}")
            continue
        checked[row] = _check(name, array, timestamps, dim)
    if not checked:
        raise FeatureImportError(f"{source}: expected at least one readable feature file, found none of {len(names)}")
    return checked, skipped


def _norm_note(checked: dict[int, _Clip]) -> tuple[bool, str]:
    """(whether every frame is L2-normalised, a note saying which kind of input this is)."""
    norms = np.concatenate([np.linalg.norm(c.features.astype(np.float64), axis=1) for c in checked.values()])
    normalised = bool(np.abs(norms - 1).max() < _NORM_TOLERANCE)
    note = (
        f"L2-normalised input detected (every frame's norm is 1 within {_NORM_TOLERANCE}); stage 1 stores raw "
        "encode_image output, which model.center and the cosine scores expect"
        if normalised
        else f"raw features (frame norms {norms.min():.3g} to {norms.max():.3g})"
    )
    return normalised, note


def _write_shards(
    entry: Path,
    n_clips: int,
    checked: dict[int, _Clip],
    skipped: list[tuple[int, str]],
    cfg: ImportConfig,
    dim: int,
    fingerprint: str,
    settings: dict,
) -> list[Path]:
    """The frame shards of ``n_clips`` annotation rows, ``cfg.shard_clips`` rows each (stale ones removed)."""
    folder = shard_dir(entry)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    n_shards = max(1, -(-n_clips // cfg.shard_clips))
    for stale in folder.glob("shard-*.h5"):
        if int(stale.stem.split("-")[1]) >= n_shards:
            stale.unlink()
    files = []
    for k in range(n_shards):
        rows = [r for r in range(k * cfg.shard_clips, (k + 1) * cfg.shard_clips) if r < n_clips]
        ok = [r for r in rows if r in checked]
        data = FrameShardData(
            index=k,
            features=(
                np.concatenate([checked[r].features for r in ok]).astype(np.float16)[:, None]
                if ok
                else np.empty((0, 1, dim), np.float16)
            ),  # (n, D) -> (n, 1, D): one plain pass
            counts=np.array([len(checked[r].features) for r in ok], dtype=np.int32),
            source_frames=np.concatenate([np.arange(len(checked[r].features)) for r in ok] or [[]]).astype(np.int32),
            timestamps_ms=np.concatenate([checked[r].timestamps_ms for r in ok] or [[]]).astype(np.float64),
            pass_kind=np.array([PLAIN_PASS], np.int8),
            clip_rows=np.array(ok, dtype=np.int32),
            num_frames=np.array([len(checked[r].features) for r in ok], dtype=np.int32),
            failed_rows=np.array([r for r, _ in skipped if r in rows], dtype=np.int32),
            failed_reasons=tuple(reason for r, reason in skipped if r in rows),
        )
        files.append(shard_path(entry, k))
        write_frame_shard(files[-1], data, fingerprint, settings)
    return files


def _import(
    annotations: Annotations,
    loaders: list[Callable[[], tuple[np.ndarray, np.ndarray | None]]],
    names: list[str],
    cfg: ImportConfig,
    source: str,
    log: Callable[[str], None],
) -> dict:
    """Check every clip (``loaders[i]()`` -> (features, timestamps or None); OSError/ValueError: skip), then write."""
    clip = load_clip(cfg.clip, "cpu", None, cfg.download_root)
    checked, skipped = _read_all(loaders, names, clip.dim, source, log)
    normalised, note = _norm_note(checked)
    dtypes = sorted({str(c.features.dtype) for c in checked.values()})
    settings = {
        "layout": "frames",
        "imported_from": source,
        "clip_sha256": clip.sha256,
        "frames": cfg.frames,
        "data_sha256": hashlib.sha256("".join(c.digest for c in checked.values()).encode()).hexdigest(),
        "annotations_sha256": annotations.sha256(),
    }
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    entry = Path(cfg.out)
    files = _write_shards(entry, len(annotations.clips), checked, skipped, cfg, clip.dim, fingerprint, settings)
    clip_model = cfg.clip if not Path(cfg.clip).expanduser().is_file() else str(Path(cfg.clip).expanduser().resolve())
    attrs = {
        **settings,
        "clip_model": clip_model,
        "dim": clip.dim,
        "image_size": clip.image_size,
        "sampling": "imported: every frame the input holds; stage 2 draws T-frame TSN samples from them",
        "preprocess": "imported (made outside tgdfer)",
        "input_note": note,
        "input_normalised": normalised,
        "input_dtypes": dtypes,
        "train_views": 0,
        "face_crop": False,
        "seed": 0,
        "dtype": "fp16 (stored)",
        "tgdfer_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
    }
    totals = write_frame_entry(entry, annotations, files, attrs)
    failures_csv = entry.with_name(f"{entry.stem}.failures.csv")
    with committed(failures_csv) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", "reason"])
        writer.writerows(totals.pop("failed"))
    log(
        f"import-features: {totals['clips']} clips, {totals['frames']} frames ({', '.join(dtypes)} stored fp16), "
        f"{totals['failures']} skipped (listed in {failures_csv}); {note}; CLIP sha256 {clip.sha256[:12]}; "
        f"cache {entry}"
    )
    return {**totals, "entry": str(entry), "normalised": normalised, "note": note, "failures_csv": str(failures_csv)}


def import_features(cfg: ImportConfig, log: Callable[[str], None] = print) -> dict:
    """``tgdfer import-features``: a per-frame cache from a folder of feature files listed by a CSV."""
    folder = Path(cfg.folder).expanduser()
    if not folder.is_dir():
        raise FeatureImportError(f"expected a folder of feature files, found no folder {folder}")
    annotations = read_csv(folder, cfg.annotations)
    targets: dict[Path, str] = {}
    loaders, names = [], []
    for clip in annotations.clips:
        file, times = feature_file(folder, clip.id)
        if file in targets:
            raise FeatureImportError(
                f"{cfg.annotations}: expected each feature file once, found {file} for both {targets[file]!r} and "
                f"{clip.id!r} (video_features names outputs by stem: rename one video)"
            )
        targets[file] = clip.id

        def load(file=file, times=times):
            stamps = _read_array(times) if times is not None and times.is_file() else None
            return _read_array(file), stamps

        loaders.append(load)
        names.append(str(file))
    return _import(annotations, loaders, names, cfg, str(folder), log)


def import_arrays(
    features: Mapping[str, np.ndarray],
    labels: Mapping[str, str],
    clip: str,
    out: str,
    splits: Mapping[str, str] | None = None,
    timestamps_ms: Mapping[str, np.ndarray] | None = None,
    frames: int = 16,
    log: Callable[[str], None] = print,
) -> dict:
    """The same from arrays in memory: {clip id: (frames, D) array}, {clip id: label}, optional {clip id: "train" |
    "test"} (default train) and {clip id: (frames,) timestamps}. Classes follow the CSV reader's rules."""
    ids = sorted(features)
    missing = sorted(set(ids) ^ set(labels))
    if missing:
        raise FeatureImportError(
            f"expected a label for every feature array and no other, found a mismatch for {missing[:5]}"
        )
    # the CSV reader's rules: canonical names sorted, a typo of another label or of an emotion name refused
    class_names, index, _ = csv_classes([(k + 1, labels[i]) for k, i in enumerate(ids)], None, Path("labels"))
    roles = {"train": TRAIN, "test": TEST}
    membership = np.zeros((len(ids), 1), np.int8)
    for k, i in enumerate(ids):
        role = roles.get(str((splits or {}).get(i, "train")).lower())
        if role is None:
            raise FeatureImportError(f"split of {i!r}: expected 'train' or 'test', found {splits[i]!r}")
        membership[k, 0] = role
    records = tuple(ClipRecord(i, index[labels[i]], f"memory/{i}") for i in ids)
    annotations = Annotations("arrays", class_names, ("default",), records, membership, ())
    loaders = [
        lambda i=i: (np.asarray(features[i]), None if timestamps_ms is None else timestamps_ms.get(i)) for i in ids
    ]
    cfg = ImportConfig(folder="memory", annotations="memory", clip=clip, out=out, frames=frames)
    return _import(annotations, loaders, [f"array {i!r}" for i in ids], cfg, "arrays in memory", log)
