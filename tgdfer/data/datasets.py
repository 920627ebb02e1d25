"""Annotation readers: which clips a dataset has, their labels, where they lie on disk, and their splits.

Stage 1 (feature extraction) encodes every clip in ``Annotations.clips`` once and stores ``membership`` beside
the features, so training picks any fold's train and test clips without reading these files again. Every check
happens here, before any encoding: a bad line stops the run with ``<file>:<line>: expected ..., found ...``
instead of surfacing hours later as a wrong or missing clip.

DFEW and MAFW ship five folds over one pool of clips, FERV39k one train/test split; users' own data is a CSV
of ``path,label[,split]``.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from tgdfer.data.video import VIDEO_EXTENSIONS
from tgdfer.errors import AnnotationError, ConfigError
from tgdfer.labels import CLASS_NAMES, DESCRIPTORS, canonical

ABSENT, TRAIN, TEST, VAL = 0, 1, 2, 3  # membership codes (np.int8); VAL: held out of train to choose an epoch
DATASETS = ("dfew", "ferv39k", "mafw", "csv")
_ROLES = {TRAIN: "train", TEST: "test", VAL: "val"}
NEAR_DUPLICATE = 0.85  # difflib ratio from which two labels count as one misspelt (hapiness/happiness: 0.94)
_FOLDS = tuple(f"fold{k}" for k in range(1, 6))
_FOLD_ROLES = tuple((k, role) for k in range(5) for role in (TRAIN, TEST))  # the order files are read in
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class ClipRecord:
    """One clip: the dataset's id, its 0-based class index, and the absolute path of its frames or video."""

    id: str
    label: int
    path: str


@dataclass(frozen=True, eq=False)
class Annotations:
    """Every clip of a dataset once, sorted by id, with a (clips, splits) table of ABSENT/TRAIN/TEST.

    ``eq=False``: equality and hashing are by identity, as an ndarray field has neither; compare ``sha256()``.
    """

    dataset: str
    class_names: tuple[str, ...]
    split_names: tuple[str, ...]
    clips: tuple[ClipRecord, ...]
    membership: np.ndarray  # (clips, splits) int8; stored as a read-only copy so the digest cannot go stale
    sources: tuple[str, ...]
    notes: tuple[str, ...] = ()  # things worth a look that stop nothing (a label used once), printed by extract

    def __post_init__(self) -> None:
        membership = np.array(self.membership, dtype=np.int8)
        expected = (len(self.clips), len(self.split_names))
        if membership.shape != expected:
            raise ConfigError(f"membership: expected shape {expected} (clips, splits), found {membership.shape}")
        membership.flags.writeable = False
        object.__setattr__(self, "membership", membership)

    def sha256(self) -> str:
        """Hex digest of what extraction depends on: names, every clip's (id, label, path), membership."""
        digest = hashlib.sha256()
        # JSON per record keeps field boundaries unambiguous ("a","bc" differs from "ab","c").
        digest.update(json.dumps([self.dataset, self.class_names, self.split_names]).encode())
        for clip in self.clips:
            digest.update(json.dumps([clip.id, clip.label, clip.path]).encode() + b"\n")
        digest.update(json.dumps(self.membership.shape).encode())
        digest.update(np.ascontiguousarray(self.membership).tobytes())
        return digest.hexdigest()


class _Pool:
    """Clips gathered from one or more files; catches duplicates and conflicts at the line that makes them."""

    def __init__(self, class_names: tuple[str, ...], split_names: tuple[str, ...]):
        self.class_names, self.split_names = class_names, split_names
        self.first: dict[str, tuple[int, str, str, int]] = {}  # id -> (label, path, file, line), first seen
        self.rows: dict[str, np.ndarray] = {}  # id -> (splits,) int8 membership
        self.where: dict[tuple[str, int], tuple[str, int]] = {}  # (id, split) -> (file, line) that set it
        self.seen: dict[tuple[str, str], int] = {}  # (file, id) -> line

    def add(self, clip_id: str, label: int, path: str, split: int, role: int, file: Path, line: int) -> None:
        name, fail = str(file), partial(AnnotationError, file, line)
        before = self.seen.setdefault((name, clip_id), line)
        if before != line:
            raise fail(f"expected each clip once per file, found {clip_id!r} again (first at line {before})")
        if clip_id in self.first:
            known, _, other, other_line = self.first[clip_id]
            if known != label:
                given, found = self.class_names[known], self.class_names[label]
                expected = f"expected {clip_id!r} to keep label {given!r} from {other}:{other_line}"
                raise fail(f"{expected}, found {found!r}")
        else:
            self.first[clip_id] = (label, path, name, line)
            self.rows[clip_id] = np.zeros(len(self.split_names), np.int8)
        row = self.rows[clip_id]
        if row[split] != ABSENT:
            other, other_line = self.where[(clip_id, split)]
            expected = f"expected {clip_id!r} in only one of train and test of {self.split_names[split]}"
            here, there = _ROLES[role], _ROLES[int(row[split])]
            raise fail(f"{expected}, found it in {here} here and in {there} at {other}:{other_line}")
        row[split] = role
        self.where[(clip_id, split)] = (name, line)

    def build(self, dataset: str, sources: list[Path]) -> Annotations:
        ids = sorted(self.first)
        clips = tuple(ClipRecord(i, self.first[i][0], self.first[i][1]) for i in ids)
        membership = np.stack([self.rows[i] for i in ids])  # (clips, splits); every reader saw >= 1 row
        files = tuple(map(str, sources))
        return Annotations(dataset, self.class_names, self.split_names, clips, membership, files)


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))  # normalises ".." but keeps symlinks as named


def _annotation_dir(annotations: str | Path | None, default: Path) -> Path:
    return default if annotations is None else _absolute(annotations)


def _root(root: str | Path) -> Path:
    path = _absolute(root)
    if not path.is_dir():
        found = "a file" if path.exists() else "nothing"
        raise AnnotationError(path, None, f"expected the dataset root folder, found {found} at this path")
    return path


def _require(files: list[Path], layout: str) -> None:
    for file in files:
        if not file.is_file():
            raise AnnotationError(file, None, f"expected an annotation file, found none ({layout})")


def _lines(file: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers; BOM and surrounding whitespace dropped."""
    try:
        # Universal newlines: \r\n and \r files number their lines as an editor does.
        with open(file, encoding="utf-8-sig") as handle:
            return [(number, text.strip()) for number, text in enumerate(handle, 1) if text.strip()]
    except UnicodeDecodeError as error:
        raise AnnotationError(file, None, f"expected UTF-8 text, found bad bytes at {error.start}") from None


def _csv_rows(file: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[tuple]:
    """Data rows of a CSV with a header, as (line, {column: stripped cell}) for the named columns."""
    lines = _lines(file)
    wanted = ",".join(required)
    if not lines:
        raise AnnotationError(file, None, f"expected a header with columns {wanted}, found an empty file")
    head_line, head = lines[0]
    header = [cell.strip().lower() for cell in next(csv.reader([head]))]
    missing = [c for c in required if c not in header]
    if missing:
        raise AnnotationError(file, head_line, f"expected a header with columns {wanted}, found {head!r}")
    columns = {c: header.index(c) for c in (*required, *optional) if c in header}
    rows = []
    for number, text in lines[1:]:
        cells = next(csv.reader([text]))
        if len(cells) != len(header):
            raise AnnotationError(file, number, f"expected {len(header)} fields, found {len(cells)}: {text!r}")
        rows.append((number, {c: cells[i].strip() for c, i in columns.items()}))
    if not rows:
        raise AnnotationError(file, None, "expected at least one clip row after the header, found none")
    return rows


def _pairs(file: Path, layout: str) -> list[tuple[int, str, str]]:
    """Lines of exactly two space-separated fields, as (line, first, second)."""
    rows = []
    for number, text in _lines(file):
        fields = text.split()
        if len(fields) != 2:
            raise AnnotationError(file, number, f"expected 2 fields {layout}, found {len(fields)}: {text!r}")
        rows.append((number, fields[0], fields[1]))
    if not rows:
        raise AnnotationError(file, None, f"expected lines '{layout}', found an empty file")
    return rows


def _named_label(text: str, class_names: tuple[str, ...], file: Path, line: int) -> int:
    name = canonical(text)
    if name not in class_names:
        raise AnnotationError(file, line, f"expected a label among {', '.join(class_names)}, found {text!r}")
    return class_names.index(name)


def _entries(folder: Path) -> dict[str, bool]:
    """{name: is a folder} for one directory listing; one listing beats a stat per clip on network disks."""
    try:
        with os.scandir(folder) as it:
            return {entry.name: entry.is_dir() for entry in it}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def read_dfew(root: str | Path, annotations: str | Path | None = None) -> Annotations:
    """DFEW's five single-label folds from ``<annotations>/{train,test}(single-labeled)/set_{1..5}.csv``."""
    root = _root(root)
    ann = _annotation_dir(annotations, root / "EmoLabel_DataSplit")
    files = [(k, role, ann / f"{_ROLES[role]}(single-labeled)/set_{k + 1}.csv") for k, role in _FOLD_ROLES]
    _require([f for *_, f in files], f"DFEW needs {{train,test}}(single-labeled)/set_1..5.csv in {ann}")
    names = CLASS_NAMES["dfew"]
    faces_dir, videos_dir = root / "Clip" / "clip_224x224", root / "Clip" / "original"
    faces, videos = _entries(faces_dir), _entries(videos_dir)
    pool = _Pool(names, _FOLDS)
    for fold, role, file in files:
        for line, row in _csv_rows(file, ("video_name", "label")):
            number, label, fail = row["video_name"], row["label"], partial(AnnotationError, file, line)
            if not _INTEGER.fullmatch(number) or int(number) < 0:
                raise fail(f"expected an integer video_name such as 00001, found {number!r}")
            if not _INTEGER.fullmatch(label) or not 1 <= int(label) <= len(names):
                valid = ", ".join(f"{i}={n}" for i, n in enumerate(names, 1))
                raise fail(f"expected a label 1..{len(names)} ({valid}), found {label!r}")
            clip_id = f"{int(number):05d}"  # the CSVs write 1 or 00001; folders are named 00001
            path = _dfew_path(clip_id, faces_dir, faces, videos_dir, videos)
            pool.add(clip_id, int(label) - 1, path, fold, role, file, line)
    return pool.build("dfew", [f for *_, f in files])


def _dfew_path(clip_id: str, faces_dir: Path, faces: dict, videos_dir: Path, videos: dict) -> str:
    """The face-crop folder if present, else the first original video by sorted extension, else the folder."""
    if faces.get(clip_id):
        return str(faces_dir / clip_id)
    for ext in sorted(VIDEO_EXTENSIONS):
        for name in (clip_id + ext, clip_id + ext.upper()):
            if videos.get(name) is False:
                return str(videos_dir / name)
    return str(faces_dir / clip_id)  # missing: extraction records the failure with this path


def read_ferv39k(root: str | Path, annotations: str | Path | None = None) -> Annotations:
    """FERV39k's one split from ``<annotations>/{train,test}_All.csv`` (lines ``<clip path> <Label>``)."""
    root = _root(root)
    ann = _annotation_dir(annotations, root / "4_setups" / "All_scenes")
    files = [(TRAIN, ann / "train_All.csv"), (TEST, ann / "test_All.csv")]
    _require([f for _, f in files], f"FERV39k needs train_All.csv and test_All.csv in {ann}")
    names = CLASS_NAMES["ferv39k"]
    pool = _Pool(names, ("default",))
    for role, file in files:
        for line, clip_id, label in _pairs(file, "<clip path> <label>"):
            path = os.path.normpath(root / "2_ClipsforFaceCrop" / clip_id)
            pool.add(clip_id, _named_label(label, names, file, line), path, 0, role, file, line)
    return pool.build("ferv39k", [f for _, f in files])


def read_mafw(root: str | Path, annotations: str | Path | None = None) -> Annotations:
    """MAFW's five folds from ``<annotations>/set_{1..5}/{train,test}.txt`` (``<file> <label>``)."""
    root = _root(root)
    ann = _annotation_dir(annotations, root / "Train & Test Set" / "single" / "no_caption")
    files = [(k, role, ann / f"set_{k + 1}" / f"{_ROLES[role]}.txt") for k, role in _FOLD_ROLES]
    _require([f for *_, f in files], f"MAFW needs set_1..5/train.txt and test.txt in {ann}")
    names = CLASS_NAMES["mafw"]
    frames_dir, clips_dir = root / "data" / "frames", root / "data" / "clips"
    frames = _entries(frames_dir)
    pool = _Pool(names, _FOLDS)
    for fold, role, file in files:
        for line, name, label in _pairs(file, "<clip file> <label>"):
            stem = Path(name).stem
            # Extracted frames, when present, beat decoding the video.
            path = frames_dir / stem if frames.get(stem) else clips_dir / name
            pool.add(stem, _named_label(label, names, file, line), str(path), fold, role, file, line)
    return pool.build("mafw", [f for *_, f in files])


def read_csv(
    root: str | Path,
    annotations: str | Path | None = None,
    classes: tuple[str, ...] | list[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Annotations:
    """Users' own clips from a CSV with columns ``path,label`` and optionally ``split`` (train / val / test).

    Classes are the file's labels (``canonical`` names, synonyms folded), sorted, or ``classes`` in that order.
    Paths are relative to ``root`` or absolute; ``./a/x`` and ``a//x/`` name one clip (ids are normalised), and a
    relative path leaving ``root`` is refused. Without a split column, a seeded split stratified by class holds
    out ``test_fraction`` of each class's clips for testing (``stratified``).
    """
    root = _root(root)
    file = _absolute(annotations) if annotations is not None else root / "annotations.csv"
    _require([file], "a CSV with a header path,label[,split]")
    roles = {"train": TRAIN, "test": TEST, "val": VAL, "validation": VAL}
    parsed = _csv_rows(file, ("path", "label"), ("split",))
    has_split = "split" in parsed[0][1]
    rows = []
    for line, row in parsed:
        for column in ("path", "label"):
            if not row[column]:
                raise AnnotationError(file, line, f"expected a value in column {column!r}, found nothing")
        role = roles.get(row["split"].lower()) if has_split else TRAIN
        if role is None:
            raise AnnotationError(file, line, f"expected split 'train', 'val' or 'test', found {row['split']!r}")
        rows.append((line, _clip_id(row["path"], file, line), row["label"], role))
    class_names, index, notes = csv_classes([(line, label) for line, _, label, _ in rows], classes, file)
    pool = _Pool(class_names, ("default",))
    for line, clip_id, label, role in rows:
        path = os.path.join(root, clip_id)  # an absolute id replaces root
        pool.add(clip_id, index[label], path, 0, role, file, line)
    built = pool.build("csv", [file])
    if not has_split:
        if not 0 <= test_fraction < 1:
            raise ConfigError(f"--test-fraction: expected a fraction in [0, 1), found {test_fraction!r}")
        labels = np.array([c.label for c in built.clips])
        test = stratified(labels, class_names, test_fraction, seed, "test")
        built = replace(built, membership=np.where(test, TEST, TRAIN).astype(np.int8)[:, None])
    return replace(built, notes=tuple(notes))


def _clip_id(text: str, file: Path, line: int) -> str:
    """A CSV path as a clip id: normalised (``./a/x``, ``a//x/`` -> ``a/x``); relative ones must stay in the root."""
    clip_id = os.path.normpath(os.path.expanduser(text))
    if clip_id == ".":
        raise AnnotationError(file, line, f"expected a clip's path inside --root, found {text!r}, the root itself")
    if not os.path.isabs(clip_id) and (clip_id == ".." or clip_id.startswith(".." + os.sep)):
        raise AnnotationError(
            file,
            line,
            f"expected a path inside --root (or an absolute path), found {text!r}, which leads out of it; move the "
            "clip under the root or write its absolute path",
        )
    return clip_id


def stratified(
    labels: np.ndarray, class_names: tuple[str, ...], fraction: float, seed: int, purpose: str
) -> np.ndarray:
    """(n,) bool: ``fraction`` of each class's clips (rounded, at least 1 of a class of >= 2 clips, never all).

    ``labels`` (n,) int class indices, in a stable clip order (ids sorted). Each class draws from its own generator
    seeded by (seed, purpose, class name), so adding clips of one class leaves the other classes' draws alone.
    """
    chosen = np.zeros(len(labels), dtype=bool)
    if fraction <= 0:
        return chosen
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = len(members)
        if n < 2:
            continue  # a lone clip trains (and is reported as used once)
        k = min(max(int(n * fraction + 0.5), 1), n - 1)
        digest = hashlib.sha256(json.dumps([int(seed), purpose, class_names[int(c)]]).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        chosen[rng.permutation(members)[:k]] = True
    return chosen


def carve_validation(annotations: Annotations, fraction: float, seed: int) -> Annotations:
    """Move ``fraction`` of each split's train clips (stratified by class, seeded) to VAL, for choosing an epoch
    without looking at the test clips."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"--val-fraction: expected a fraction in [0, 1), found {fraction!r}")
    if fraction == 0:
        return annotations
    membership = np.array(annotations.membership)
    if (membership == VAL).any():
        raise ConfigError(
            f"--val-fraction: expected annotations without val clips, found {int((membership == VAL).sum())} marked "
            "val in the split column; drop --val-fraction or the val rows"
        )
    labels = np.array([c.label for c in annotations.clips])
    for s, name in enumerate(annotations.split_names):
        train = np.flatnonzero(membership[:, s] == TRAIN)
        val = stratified(labels[train], annotations.class_names, fraction, seed, f"val:{name}")
        membership[train[val], s] = VAL
    return replace(annotations, membership=membership)


def csv_classes(
    rows: list[tuple[int, str]], classes: tuple[str, ...] | list[str] | None, file: Path
) -> tuple[tuple[str, ...], dict[str, int], list[str]]:
    """Class names for free-form labels, each written label's index into them, and notes worth a look.

    ``rows`` are (line, label as written). Names are the canonical labels sorted (integers numerically), so the
    same label set always gives the same indices, or ``classes`` in the given order. Without ``classes``, two labels
    that differ by a typo (difflib ratio >= NEAR_DUPLICATE, among themselves or against a known emotion name) stop
    here with the line of the rarer one; ``classes`` listing both keeps them apart.
    """
    first: dict[str, int] = {}
    for line, text in rows:
        first.setdefault(text, line)
    if classes is not None:
        names = tuple(canonical(c) for c in classes)
        repeated = sorted(n for n, k in Counter(names).items() if k > 1)
        if repeated or not names:
            raise ConfigError(
                f"--classes: expected distinct class names (synonyms fold: happy = happiness), found {list(classes)}"
            )
        index = {}
        for text, line in first.items():
            name = canonical(text)
            if name not in names:
                close = difflib.get_close_matches(name, names, 1, NEAR_DUPLICATE)
                hint = f"; did you mean {close[0]!r}?" if close else "; add it to --classes or fix the label"
                raise AnnotationError(
                    file, line, f"expected a label among {', '.join(names)} (--classes), found {text!r}{hint}"
                )
            index[text] = names.index(name)
    elif all(_INTEGER.fullmatch(text) for text in first):
        names = tuple(str(n) for n in sorted({int(text) for text in first}))
        index = {text: names.index(str(int(text))) for text in first}
    else:
        folded = {text: canonical(text) for text in first}
        names = tuple(sorted(set(folded.values())))
        index = {text: names.index(name) for text, name in folded.items()}
        _refuse_near_duplicates(rows, folded, file)
    counts = Counter(index[text] for _, text in rows)
    notes = [f"{file}: class {name!r} (from --classes) has no clip" for k, name in enumerate(names) if not counts[k]]
    for text, line in first.items():
        if counts[index[text]] == 1:
            notes.append(f"{file}:{line}: label {text!r} is used by 1 clip only (a typo?); its class cannot be tested")
    return names, index, notes


def _clips(n: int) -> str:
    return f"{n} clip" if n == 1 else f"{n} clips"


def _refuse_near_duplicates(rows: list[tuple[int, str]], folded: dict[str, str], file: Path) -> None:
    """Stop at a label that looks like a misspelling of another label of the file or of a known emotion."""
    counts = Counter(folded[text] for _, text in rows)
    line_of: dict[str, tuple[int, str]] = {}
    for line, text in rows:
        line_of.setdefault(folded[text], (line, text))
    names = sorted(counts)
    for a, b in ((a, b) for i, a in enumerate(names) for b in names[i + 1 :]):
        ratio = difflib.SequenceMatcher(None, a, b).ratio()
        if ratio >= NEAR_DUPLICATE:
            # the typo: not a known emotion, then the rarer, then the one first seen later
            typo, kept = sorted((a, b), key=lambda n: (n not in DESCRIPTORS, -counts[n], line_of[n][0]))[::-1]
            line, text = line_of[typo]
            raise AnnotationError(
                file,
                line,
                f"expected one spelling per class, found {text!r} ({_clips(counts[typo])}) beside {kept!r} "
                f"({_clips(counts[kept])}), near-duplicates (similarity {ratio:.2f}); fix the label, or pass --classes "
                f"listing both to keep them as two classes",
            )
    for name in names:
        close = [] if name in DESCRIPTORS else difflib.get_close_matches(name, DESCRIPTORS, 1, NEAR_DUPLICATE)
        if close:
            line, text = line_of[name]
            raise AnnotationError(
                file,
                line,
                f"expected a label such as {close[0]!r}, found {text!r}, a near-duplicate of that emotion's name; fix "
                f"the label, or pass --classes including {name} to keep it as written",
            )


_READERS = {"dfew": read_dfew, "ferv39k": read_ferv39k, "mafw": read_mafw, "csv": read_csv}


def read_annotations(
    dataset: str,
    root: str | Path,
    annotations: str | Path | None = None,
    classes: tuple[str, ...] | list[str] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> Annotations:
    """Read and check one dataset's annotations; ``annotations`` overrides where its files are looked for.

    ``classes`` and ``test_fraction`` apply to ``csv`` (see ``read_csv``); ``val_fraction`` of every split's train
    clips becomes VAL (``carve_validation``), seeded by ``seed``.
    """
    name = str(dataset).strip().lower()
    reader = _READERS.get(name)
    if reader is None:
        raise AnnotationError(None, None, f"dataset: expected one of {', '.join(DATASETS)}, found {dataset!r}")
    if name == "csv":
        found = read_csv(root, annotations, classes=classes, test_fraction=test_fraction, seed=seed)
    elif classes is not None:
        raise ConfigError(f"--classes: expected only with --dataset csv ({name} has fixed classes), found {classes}")
    else:
        found = reader(root, annotations)
    return carve_validation(found, val_fraction, seed)
