"""A timeline's files: ``<stem>.timeline.csv`` (one row per window), ``<stem>.timeline.json`` (the header: what
made the rows, the settings hash ``--resume`` checks, the summary), and the resume check itself.

Rows reach the CSV as windows complete (flushed), so an interrupted run keeps every finished window; ``start_csv``
then appends after them when the settings are the same, or refuses with what changed."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from tgdfer import __version__
from tgdfer.atomic import committed, write_text
from tgdfer.errors import ConfigError

FIXED_COLUMNS = ("start_s", "end_s", "center_s", "status", "face_frac", "top", "margin")


def columns(class_names: tuple[str, ...]) -> list[str]:
    """The raw columns of a one-face timeline CSV: the fixed ones, then one probability per class."""
    return [*FIXED_COLUMNS, *class_names]


def format_row(start: float, end: float, status: str, face_frac: float, probs: np.ndarray | None, names) -> list[str]:
    """One window's CSV cells; ``probs`` (C,) or None for a window without probabilities (empty cells)."""
    base = [f"{start:.3f}", f"{end:.3f}", f"{(start + end) / 2:.3f}", status, f"{face_frac:.3f}"]
    if probs is None:
        return base + [""] * (2 + len(names))
    order = np.argsort(-probs, kind="stable")
    margin = probs[order[0]] - (probs[order[1]] if len(probs) > 1 else 0.0)
    return [*base, names[int(order[0])], f"{margin:.6f}", *(f"{p:.6f}" for p in probs)]


def read_rows(path: str | Path, names: tuple[str, ...]) -> list[list[str]]:
    """The raw columns of the complete rows of a timeline CSV (a row cut short by a crash is dropped)."""
    text = Path(path).read_text()
    if not text.endswith("\n"):  # the last line was being written when the process died
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0][: len(columns(names))] != columns(names):
        raise ConfigError(f"--resume: expected a timeline CSV with columns {columns(names)}, found {path}")
    width, raw = len(rows[0]), len(columns(names))
    return [r[:raw] for r in rows[1:] if len(r) == width]  # smoothed columns are recomputed from the raw ones


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Replace the CSV atomically with ``header`` and ``rows``."""
    with committed(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])


def write_smoothed(path: Path, rows: list[list[str]], names: tuple[str, ...], smoothed: np.ndarray, tag: str) -> None:
    """The CSV again with the raw columns kept and one smoothed column per class added (``<class>_<tag>``);
    smoothed (W, C), NaN (empty cell) where a window has no probabilities."""
    raw = len(columns(names))
    cells = [r[:raw] + ["" if np.isnan(v) else f"{v:.6f}" for v in sm] for r, sm in zip(rows, smoothed, strict=True)]
    write_rows(path, columns(names) + [f"{name}_{tag}" for name in names], cells)


def summarize(rows: list[list[str]], names: tuple[str, ...]) -> dict:
    """Share of the windows (= of time, windows are evenly spaced) whose top class is each class, and no face."""
    total = max(len(rows), 1)
    tops = [r[5] for r in rows]
    share = {name: tops.count(name) / total for name in names}
    missing = sum(r[3] != "ok" for r in rows) / total
    return {"windows": len(rows), "share": share, "no_face": missing}


def format_summary(result: dict) -> str:
    """One line per video: its length, windows (and persons), face share, then classes by share of time (over all
    (window, person) rows of a people timeline)."""
    if not result["ok"]:
        return f"{result['path']}: failed: {result['error']}"
    s = result["summary"]
    minutes, seconds = divmod(result["duration_s"], 60)
    ranked = sorted(s["share"].items(), key=lambda kv: -kv[1])
    shares = ", ".join(f"{name} {share:.0%}" for name, share in ranked if share > 0)
    persons = s.get("persons")  # a people timeline: one row per (window, person)
    who = "" if persons is None else f" x {len(persons)} person{'s' * (len(persons) != 1)}"
    return (
        f"{result['path']}: {int(minutes)}:{seconds:04.1f}, {result['windows']} windows of {result['window_s']:g} s "
        f"every {result['stride_s']:g} s{who}; time by top emotion: {shares or 'none'}"
        + (f", no face {s['no_face']:.0%}" if s["no_face"] else "")
        + f" -> {result['csv']}"
    )


def output_paths(out: Path, stem: str) -> dict[str, Path]:
    """csv, json, png and npz paths of one video's timeline in ``out``."""
    return {
        "csv": out / f"{stem}.timeline.csv",
        "json": out / f"{stem}.timeline.json",
        "png": out / f"{stem}.timeline.png",
        "npz": out / f"{stem}.features.npz",
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_hash(settings: dict) -> str:
    """16 hex digits naming the settings the rows depend on."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def versions(decoder: str) -> dict:
    """Versions of what made the rows: tgdfer, torch, numpy, OpenCV, and PyAV when it decoded."""
    found = {"tgdfer": __version__, "torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__}
    if decoder == "pyav":
        import av

        found["av"] = av.__version__
    return found


def write_header(files: dict[str, Path], header: dict) -> None:
    write_text(files["json"], json.dumps(header, indent=2) + "\n")


def start_csv(
    files: dict[str, Path], header: dict, names: tuple[str, ...], resume: bool, log: Callable[[str], None]
) -> int:
    """Write the header (status running) and start the CSV; returns the windows already in it (0 unless
    ``resume`` finds an interrupted run with the same settings hash, refused with what changed otherwise)."""
    done, total = 0, header["windows"]
    if resume and files["json"].is_file() and files["csv"].is_file():
        old = json.loads(files["json"].read_text())
        if old.get("settings_hash") != header["settings_hash"]:
            before = old.get("settings", {})
            changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in header["settings"].items() if before.get(k) != v]
            raise ConfigError(
                f"--resume: expected the settings of the interrupted run of {header['video']}, found changes ("
                f"{'; '.join(changed) or 'settings hash'}): rerun without --resume to start over"
            )
        rows = read_rows(files["csv"], names)
        done = len(rows)
        write_rows(files["csv"], columns(names), rows)  # without a row cut short
        log(f"resuming after {done} of {total} windows")
    elif resume:
        log(f"nothing to resume in {files['csv'].parent}, starting")
    elif files["csv"].exists():
        log(f"overwriting the timeline in {files['csv'].parent} (pass --resume to continue an interrupted one)")
    write_header(files, header)
    if done == 0:
        write_rows(files["csv"], columns(names), [])
    return done
