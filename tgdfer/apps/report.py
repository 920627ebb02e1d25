"""``<stem>.report.html``: one file, opened from disk, that plays the video beside its emotion timeline.

The page needs no server and no network: its script and style (``report.js``, ``report.css`` beside this module,
written for it, no library) and the timeline's data are inlined into ``report.html``. The video is referenced by a
path relative to the page, or inlined as a base64 data URL (``embed_video``, small videos only).

What the page shows: the video with each person's face box and label drawn over it (the boxes of the windows'
centre frames, moved linearly between neighbouring centres where the two overlap); per person, the class
probabilities over time as a stacked area with windows without a face shaded, the top-class strip beneath, a
cursor that follows playback and a click that seeks; a readout per person of the window under the cursor; a
face-blur toggle (for sharing); a legend with the run, window, stride and each person's screen time.

Data are embedded compactly, column by column, as base64 little-endian typed arrays: probabilities and face shares
quantised to 1/1000 (uint16, 65535 = empty), boxes in source pixels (int16, -32768 = none), status and top class
codes (uint8), the rows' time bounds in milliseconds (int32). One hour at a 1 s stride with two persons: 335 KB.
The page draws at most one column of the chart per screen pixel (the mean of the windows in it), so drawing costs
the same for a minute and for hours.

Reads both timeline CSVs: one row per window for the one followed face (``start_s, end_s, center_s, status,
face_frac, top, margin``, a column per class; read as one person, ``p1``, without boxes), or one row per (window,
person) with ``person`` and ``x0, y0, x1, y1`` besides (``tgdfer timeline --people``). Columns are found by name,
so their order does not matter; smoothed columns (``happy_mean5``) are not drawn.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from tgdfer import __version__
from tgdfer.atomic import write_text
from tgdfer.errors import ConfigError
from tgdfer.plots import row_bounds

EMBED_LIMIT_BYTES = 64 << 20  # a data URL grows the video by 4/3 and is parsed in one piece by the browser
STATUS_CODES = ("ok", "no_face", "no_frames")  # a row's uint8 status is its index here; any other status is 3
MISSING_U16 = 65535  # an empty probability or face share
MISSING_BOX = -32768  # an empty box coordinate
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".ogv": "video/ogg",
               ".mov": "video/quicktime", ".mkv": "video/x-matroska"}  # fmt: skip
_SMOOTHED = re.compile(r"^(?P<name>.+)_(mean|ema)\d+$")  # ``happy_mean5``: smoothed columns, not drawn
_NOT_CLASSES = {"person", "start_s", "end_s", "center_s", "status", "face_frac", "top", "margin", *BOX_COLUMNS}


@dataclass(frozen=True)
class PersonRows:
    """One person's rows over the timeline's W windows (the window order of ``TimelineRows``)."""

    name: str
    status: np.ndarray  # (W,) uint8 index into STATUS_CODES; a window without this person's row is no_face
    face_frac: np.ndarray  # (W,) float64, NaN where the CSV has none
    boxes: np.ndarray | None  # (W, 4) float64 x0, y0, x1, y1 source pixels, NaN when absent; None: no box columns
    probs: np.ndarray  # (W, C) float64, NaN where the status is not ok
    top: np.ndarray  # (W,) int64 class index, -1 where there is none


@dataclass(frozen=True)
class TimelineRows:
    """A timeline CSV read back: the windows shared by all persons, and each person's rows."""

    classes: tuple[str, ...]
    starts: np.ndarray  # (W,) seconds
    ends: np.ndarray  # (W,) seconds
    persons: tuple[PersonRows, ...]


def default_report_path(csv_path: str | Path) -> Path:
    """``out/<stem>.timeline.csv`` -> ``out/<stem>.report.html``."""
    csv_path = Path(csv_path)
    name = csv_path.name
    stem = name[: -len(".timeline.csv")] if name.endswith(".timeline.csv") else csv_path.stem
    return csv_path.with_name(f"{stem}.report.html")


def _class_columns(header: list[str]) -> tuple[str, ...]:
    rest = [c for c in header if c not in _NOT_CLASSES]
    return tuple(c for c in rest if not ((m := _SMOOTHED.match(c)) and m["name"] in rest))


def _person_rows(name: str, frame, window: np.ndarray, n: int, classes: tuple[str, ...]) -> PersonRows:
    """One person's CSV rows (a DataFrame, numbers parsed, NaN where empty) -> its columns over all n windows;
    ``window`` (R,) is the window index of each of its rows."""
    status = np.full(n, STATUS_CODES.index("no_face"), dtype=np.uint8)  # a window without this person's row
    status[window] = (
        frame["status"].map({s: i for i, s in enumerate(STATUS_CODES)}).fillna(len(STATUS_CODES)).to_numpy()
    )
    frac = np.full(n, np.nan)
    if "face_frac" in frame:
        frac[window] = frame["face_frac"].to_numpy(dtype=np.float64)
    probs = np.full((n, len(classes)), np.nan)
    probs[window] = frame[list(classes)].to_numpy(dtype=np.float64)
    probs[status != 0] = np.nan
    boxes = None
    if all(c in frame for c in BOX_COLUMNS):
        boxes = np.full((n, 4), np.nan)
        boxes[window] = frame[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)
    top = np.where(status == 0, np.nan_to_num(probs, nan=-1.0).argmax(1), -1)
    if "top" in frame:  # the CSV's own choice (ties broken by the timeline), where it names a class
        top[window] = frame["top"].map({c: i for i, c in enumerate(classes)}).fillna(-1).to_numpy()
    return PersonRows(name, status, frac, boxes, probs, top)


def read_timeline_rows(csv_path: str | Path, classes: tuple[str, ...] | None = None) -> TimelineRows:
    """Read a one-face or people timeline CSV; ``classes`` (the JSON header's) or the class columns found.

    A last line cut short by a crash is left out, as ``--resume`` does.
    """
    import pandas as pd

    text = Path(csv_path).read_text()
    text = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    header = next(csv.reader(io.StringIO(text)), [])
    classes = tuple(classes) if classes is not None else _class_columns(header)
    missing = [c for c in ("start_s", "end_s", "status", *classes) if c not in header]
    if missing or not classes:
        raise ConfigError(
            f"{csv_path}: expected a timeline CSV (start_s, end_s, status and one column per class), found columns "
            f"{header} (missing {missing or 'class columns'}): pass the .timeline.csv that tgdfer timeline wrote"
        )
    text_columns = {c: str for c in ("person", "status", "top") if c in header}  # "NA" stays a name
    numbers = [c for c in header if c not in text_columns]
    frame = pd.read_csv(  # numbers parsed in C, an empty cell as NaN; names and words as written
        io.StringIO(text), dtype=text_columns, keep_default_na=False, na_values={c: [""] for c in numbers}
    )
    if frame.empty:
        raise ConfigError(f"{csv_path}: expected at least one window row, found none: rerun the timeline")
    times = frame[["start_s", "end_s"]].to_numpy(dtype=np.float64)  # (R, 2)
    keys, window = np.unique(times, axis=0, return_inverse=True)  # (W, 2) sorted windows, (R,) each row's
    window = window.reshape(-1)
    people = frame["person"] if "person" in frame else pd.Series("p1", index=frame.index)
    persons = tuple(
        _person_rows(str(name), frame.iloc[rows], window[rows], len(keys), classes)
        for name, rows in people.groupby(people, sort=False).indices.items()
    )
    return TimelineRows(classes, keys[:, 0].copy(), keys[:, 1].copy(), persons)


def _b64(values: np.ndarray, dtype: str) -> str:
    """An array as base64 of its little-endian bytes, read back in the page as a typed array."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def _quantised(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint16 thousandths (3 decimals), MISSING_U16 where NaN."""
    return np.where(np.isnan(values), MISSING_U16, np.round(np.nan_to_num(values) * 1000)).astype(np.uint16)


def _person_data(person: PersonRows, summary: dict | None) -> dict:
    boxes = None
    if person.boxes is not None and not np.isnan(person.boxes).all():
        boxes = np.where(
            np.isnan(person.boxes), MISSING_BOX, np.clip(np.round(np.nan_to_num(person.boxes)), -32767, 32767)
        )
        boxes = _b64(boxes, "<i2")  # (W * 4,) x0, y0, x1, y1 per window
    return {
        "name": person.name,
        "status": _b64(person.status, "u1"),  # (W,)
        "face": _b64(_quantised(person.face_frac), "<u2"),  # (W,)
        "probs": _b64(_quantised(person.probs), "<u2"),  # (W * C,) window-major
        "top": _b64(np.where(person.top < 0, 255, person.top), "u1"),  # (W,) 255: none
        "boxes": boxes,
        "summary": summary,
    }


def _video_source(video: Path | None, out_html: Path, embed: bool) -> dict:
    """Where the page finds the video: a URL relative to the page, or the video itself as a data URL."""
    if video is None:
        return {"src": None, "name": None, "embedded": False}
    kind = VIDEO_TYPES.get(video.suffix.lower())
    if embed:
        size = video.stat().st_size if video.is_file() else -1
        if size < 0 or size > EMBED_LIMIT_BYTES or kind is None:
            raise ConfigError(
                f"--embed-video: expected a video file of at most {EMBED_LIMIT_BYTES >> 20} MB with a suffix in "
                f"{sorted(VIDEO_TYPES)}, found {video} ({'missing' if size < 0 else f'{size / 2**20:.1f} MB'}): "
                "leave --embed-video out (the report then refers to the video beside it) or make a smaller copy"
            )
        data = base64.b64encode(video.read_bytes()).decode("ascii")
        return {"src": f"data:{kind};base64,{data}", "name": video.name, "embedded": True}
    relative = Path(os.path.relpath(video.resolve(), out_html.resolve().parent))
    return {"src": quote(relative.as_posix()), "name": video.name, "embedded": False}


def report_data(rows: TimelineRows, header: dict, video: dict, title: str) -> dict:
    """What the page reads (the JSON embedded in it): the timeline's rows, compacted, and its header's facts."""
    people = (header.get("people") or {}).get("persons") or []
    by_name = {p.get("name") or p.get("id"): p for p in people} | {p.get("id"): p for p in people}
    bounds = row_bounds(rows.starts, rows.ends)  # (W+1,) the stretch of time each row stands for
    return {
        "format": 1,
        "tgdfer": __version__,
        "title": title,
        "video": video,
        "size": header.get("size"),  # [w, h] source pixels, the boxes' frame
        "duration_s": float(header.get("duration_s") or rows.ends[-1]),
        "run": header.get("run"),
        "window_s": header.get("window_s"),
        "stride_s": header.get("stride_s"),
        "window": header.get("window"),
        "stride": header.get("stride"),
        "classes": list(rows.classes),
        "status_names": list(STATUS_CODES),
        "windows": len(rows.starts),
        "start_ms": _b64(np.round(rows.starts * 1000), "<i4"),
        "end_ms": _b64(np.round(rows.ends * 1000), "<i4"),
        "bounds_ms": _b64(np.round(bounds * 1000), "<i4"),
        "persons": [_person_data(p, by_name.get(p.name)) for p in rows.persons],
        "short_tracks_left_out": (header.get("people") or {}).get("short_tracks_left_out"),
    }


def _page(data: dict) -> str:
    here = Path(__file__).parent
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # inert inside <script>
    page = (here / "report.html").read_text()
    for key, value in (  # the data last: nothing in it is read as a template key
        ("{{TITLE}}", html.escape(f"{data['title']}: emotion timeline")),
        ("{{CSS}}", (here / "report.css").read_text()),
        ("{{JS}}", (here / "report.js").read_text()),
        ("{{DATA}}", text),
    ):
        page = page.replace(key, value)
    return page


def write_report(
    csv_path: str | Path,
    json_path: str | Path | None = None,
    video_path: str | Path | None = None,
    out_html: str | Path | None = None,
    embed_video: bool = False,
) -> Path:
    """Write the report of a timeline CSV and its JSON header; returns the page's path.

    json_path: default the CSV's ``<stem>.timeline.json`` if there (without one the legend lacks the run).
    video_path: default the header's ``video`` (a relative one is looked up from the working directory, then
    from the CSV's folder); the page refers to it relative to itself, or inlines it with ``embed_video``.
    out_html: default ``<stem>.report.html`` beside the CSV.
    """
    csv_path = Path(csv_path)
    if json_path is not None and not Path(json_path).is_file():
        raise ConfigError(f"report: expected the timeline's JSON header at {json_path}, found no such file")
    if json_path is None and csv_path.name.endswith(".timeline.csv"):
        json_path = csv_path.with_name(csv_path.name[: -len(".csv")] + ".json")
    header = json.loads(Path(json_path).read_text()) if json_path and Path(json_path).is_file() else {}
    rows = read_timeline_rows(csv_path, tuple(header["classes"]) if "classes" in header else None)
    out_html = Path(out_html) if out_html is not None else default_report_path(csv_path)
    video = Path(video_path) if video_path is not None else None
    if video is None and header.get("video"):
        video = Path(header["video"])
        if not video.is_absolute() and not video.exists() and (csv_path.parent / video).exists():
            video = csv_path.parent / video
    out_html.parent.mkdir(parents=True, exist_ok=True)
    title = video.name if video is not None else default_report_path(csv_path).name[: -len(".report.html")]
    write_text(out_html, _page(report_data(rows, header, _video_source(video, out_html, embed_video), title)))
    return out_html
