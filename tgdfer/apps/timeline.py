"""An emotion timeline for long videos: one row per sliding window of a few seconds, one face followed.

``tgdfer predict`` gives one label for a whole input, meaningless on a 20-minute interview. ``timeline`` cuts the
video into windows in seconds (``window`` long, one every ``stride``) and gives each window the run's
probabilities, as if the window were one of its training clips:

- **Sampling**: a window's T frames are the segment centres of the frames inside it (``sampling.centre_indices``,
  the test view of stage 1), preprocessed as stage 1 did (face crop, ``preprocess.clip_view``) and encoded with the
  run's own CLIP (``predict._image_encoder``), then ``inference.predict_features``. On a CPU with AMX the image
  tower runs in bf16 by default (``precision``, ``encoder_precision``): 2-4x faster, within a measured tolerance
  of fp32; ``precision="fp32"`` reproduces predict exactly. The CLIP text tower is freed once the prompts are
  computed (``_PromptsOnce``): nothing else here uses it.
- **Time**: every frame's time is its presentation timestamp (PyAV: ``pts * time_base``; OpenCV's
  ``CAP_PROP_POS_MSEC`` when PyAV is missing), relative to the first frame; frame number / fps is never used, as it
  is wrong on variable-frame-rate video. A window holds the frames whose time t has start <= t < end.
- **Every frame once**: the timestamps come first from a demux pass (packets only, nothing decoded); the sampled
  frames of all windows follow from them. One decoding pass then converts and encodes only the sampled frames, each
  once, in batches; overlapping windows share their frames' features. Memory stays bounded: features are freed
  when the last window using them is done, and rows go to the CSV (flushed) as windows complete.
- **One face**: ``FaceFollower`` detects every ``detect_every`` sampled frames (OpenCV's cascade via
  ``faces.FaceCropper``, on a downscaled frame) and keeps the box between detections; a re-detection looks near the
  last box, so the same person is followed; a lost face is searched again in the whole frame, nearest to where it
  was. At the start it takes the largest face, or the ``face``-th by size.
- **No face**: a window whose share of face frames (``face_frac``) is below ``min_face`` keeps its row with status
  ``no_face`` and empty probabilities (OpenFace's ``success=0`` convention), so rows always match time. Face-less
  frames of a window that passes borrow the nearest face frame's features in that window. A window without any
  frame (a gap in a variable-frame-rate stream) has status ``no_frames``.

Outputs per video (``out``): ``<stem>.timeline.csv`` (rows), ``<stem>.timeline.json`` (header: run, classes,
window, stride, fps, versions, the settings hash that ``resume`` checks, and the summary), ``<stem>.timeline.png``
and with ``save_features`` ``<stem>.features.npz`` (per-frame features, frame numbers, face boxes,
timestamps), which ``SavedFeatures`` reads back in place of the video: re-windowing or smoothing without decoding.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from tgdfer import __version__
from tgdfer.apps.predict import _image_encoder
from tgdfer.atomic import committed, write_text
from tgdfer.backbone import cast_image_tower, drop_text_tower
from tgdfer.config import TimelineConfig
from tgdfer.data.preprocess import clip_view
from tgdfer.data.sampling import centre_indices
from tgdfer.data.views import encode_frames
from tgdfer.devices import autocast, cpu_has_amx, dtype_name, resolve_dtype
from tgdfer.errors import ConfigError
from tgdfer.model.inference import predict_features
from tgdfer.train.runs import RunDir, TrainedRun, load_run

Box = tuple[float, float, float, float]  # (x, y, w, h) as fractions of the frame, as tgdfer.data.faces
DEFAULT_WINDOW_S = 2.0  # when the run records no clip length
FIXED_COLUMNS = ("start_s", "end_s", "center_s", "status", "face_frac", "top", "margin")
_EPS = 1e-6  # seconds: a frame at a window's start computed as 0.9999999 s still belongs to the window at 1 s
_SPAN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|f)?\s*$")


# ---------------------------------------------------------------------------------------------------- windows


def parse_span(text: str, name: str) -> tuple[float, str]:
    """``"2"``, ``"2.5s"`` -> (2.5, "s"); ``"16f"`` -> (16, "f"). Refuses anything else, and zero."""
    match = _SPAN.match(str(text))
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"--{name}: expected a length > 0 in seconds (2, 2.5s) or in frames (16f), found {text!r}")
    return float(match.group(1)), match.group(2) or "s"


def span_seconds(text: str, name: str, fps: float) -> float:
    """A ``parse_span`` length in seconds; frames count at the stream's measured mean frame rate."""
    value, unit = parse_span(text, name)
    return value if unit == "s" else value / fps


@dataclass(frozen=True)
class WindowPlan:
    """Windows of a video: window w covers [starts[w], ends[w]) and samples frames[w] (T frame numbers, -1 for a
    window with no frame in it); counts[w] frames lie inside it."""

    starts: np.ndarray  # (W,) float64 seconds: w * stride
    ends: np.ndarray  # (W,) float64 seconds: start + window, the last one clipped to the video's end
    frames: np.ndarray  # (W, T) int64 frame numbers (index into the timestamps)
    counts: np.ndarray  # (W,) int64


def plan_windows(times: np.ndarray, duration: float, window: float, stride: float, frames: int) -> WindowPlan:
    """Windows of ``window`` seconds every ``stride`` seconds from 0 until one reaches ``duration``, so every
    moment of the video lies in some window (stride <= window) and time has no gap; times (N,) sorted seconds.

    A window's T frames are the segment centres of its frames (stage 1's test view); a window holding fewer than
    T frames uses all of them and repeats the last (``centre_indices``).
    """
    if stride > window + _EPS:
        raise ConfigError(
            f"--stride: expected at most the window ({window:g} s) so windows cover the whole video, found {stride:g} s"
        )
    count = 1 if duration <= window else math.ceil((duration - window) / stride - _EPS) + 1
    starts = np.arange(count, dtype=np.float64) * stride
    ends = np.minimum(starts + window, duration)
    ends[-1] = duration  # the last window ends with the video (its start + window is >= duration)
    lo = np.searchsorted(times, starts - _EPS, side="left")
    hi = np.searchsorted(times, ends - _EPS, side="left")
    hi[-1] = len(times)  # the last frame belongs to the last window
    chosen = np.full((count, frames), -1, dtype=np.int64)
    for w in range(count):
        n = int(hi[w] - lo[w])
        if n > 0:
            chosen[w] = lo[w] + centre_indices(n, frames)
    return WindowPlan(starts=starts, ends=ends, frames=chosen, counts=(hi - lo).astype(np.int64))


# ----------------------------------------------------------------------------------------------------- decoding


class _Frame:
    """A decoded frame whose RGB conversion happens only when asked for (most frames are never sampled)."""

    def __init__(self, convert: Callable[[], np.ndarray]):
        self._convert = convert

    def rgb(self) -> np.ndarray:
        """(H, W, 3) RGB uint8."""
        return self._convert()


class VideoStream:
    """A video's first video stream: timestamps (N,) seconds from the first frame, and ``frames()``, one decoding
    pass yielding (frame number, _Frame) in presentation order. PyAV when installed, else OpenCV."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"expected a video file, found no file at {self.path}")
        try:
            import av  # noqa: F401
        except ImportError:
            self.decoder = "opencv"
        else:
            self.decoder = "pyav"
        self.timestamps_source = "pts * time_base" if self.decoder == "pyav" else "CAP_PROP_POS_MSEC"
        self._pts: np.ndarray | None = None  # PyAV: sorted presentation timestamps, in time_base units
        self.times = self._scan_pyav() if self.decoder == "pyav" else self._scan_opencv()
        if len(self.times) == 0:
            raise ConfigError(f"expected a video with frames, found none that decode in {self.path}")
        gaps = np.diff(self.times)
        self.frame_interval = float(np.median(gaps)) if len(gaps) else 0.04  # 25 fps when there is one frame
        self.duration = float(self.times[-1] + self.frame_interval)  # the last frame is shown one interval
        self.fps = len(self.times) / self.duration
        self.variable_rate = bool(len(gaps) and gaps.max() - gaps.min() > 0.01 * self.frame_interval + 1e-4)

    def _scan_pyav(self) -> np.ndarray:
        import av

        with av.open(str(self.path)) as container:
            if not container.streams.video:
                raise ConfigError(f"expected a video stream, found none in {self.path}")
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
            if not pts:  # no packet timestamps (some raw streams): the decoder's frame times
                container.seek(0)
                pts = [f.pts for f in container.decode(stream) if f.pts is not None]
            self._time_base = stream.time_base
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
        self._pts = np.unique(np.asarray(pts, dtype=np.int64))  # presentation order (packets come in decode order)
        tb = self._time_base
        return (self._pts - self._pts[0]).astype(np.float64) * tb.numerator / tb.denominator

    def _scan_opencv(self) -> np.ndarray:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise ConfigError(f"expected a video OpenCV can open, found an unsupported or corrupt file: {self.path}")
        times = []
        while capture.grab():
            times.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
        self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        capture.release()
        t = np.asarray(times, dtype=np.float64)
        return t - t[0] if len(t) else t

    def frames(self) -> Iterator[tuple[int, _Frame]]:
        """One decoding pass: (frame number, frame) for every decoded frame, in presentation order."""
        if self.decoder == "pyav":
            yield from self._frames_pyav()
        else:
            yield from self._frames_opencv()

    def _frames_pyav(self) -> Iterator[tuple[int, _Frame]]:
        import av

        assert self._pts is not None
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # the codec's own frame threads; the encoder waits on decoding otherwise
            index = -1
            for frame in container.decode(stream):
                if frame.pts is not None:
                    found = int(np.searchsorted(self._pts, frame.pts))
                    if found >= len(self._pts) or self._pts[found] != frame.pts:
                        continue  # a frame the demux pass did not see: it has no place on the time axis
                    index = found
                else:
                    index += 1
                if index >= len(self._pts):
                    return
                yield index, _Frame(lambda f=frame: f.to_ndarray(format="rgb24"))

    def _frames_opencv(self) -> Iterator[tuple[int, _Frame]]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while index < len(self.times) and capture.grab():

                def convert(c=capture) -> np.ndarray:
                    ok, image = c.retrieve()
                    if not ok or image is None:
                        raise ConfigError(f"expected a decodable frame, found a broken one in {self.path}")
                    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

                yield index, _Frame(convert)
                index += 1
        finally:
            capture.release()


class SavedFeatures:
    """A timeline's ``<stem>.features.npz`` read back as its video: the same time axis (every frame's time), and
    the frames it sampled, with their features and whether the followed face was on them. Re-windowing or
    smoothing runs from it without decoding or encoding anything. A window of the new plan whose segment centre
    fell on a frame the first run did not sample takes the nearest sampled frame inside the window (by time);
    with the first run's window and stride every chosen frame is one it sampled, so the rows come out the same."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            data = np.load(self.path, allow_pickle=False)  # plain arrays only: never unpickle a user's file
            arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"expected a timeline's .features.npz, found an unreadable file {self.path}: {exc}"
            ) from exc
        missing = [k for k in _SAVED_KEYS if k not in arrays]
        if missing:
            raise ConfigError(
                f"expected a .features.npz written by `tgdfer timeline --save-features`, found {self.path} "
                f"without {', '.join(missing)}"
            )
        self.times = arrays["all_timestamps_ms"].astype(np.float64) / 1000.0  # (N,) seconds, every frame
        self.duration = float(arrays["duration_s"])
        self.fps = len(self.times) / self.duration
        self.variable_rate = bool(arrays["variable_rate"])
        self.width, self.height = (int(v) for v in arrays["size"])
        self.video = str(arrays["video"])
        self.decoder = f"saved features ({arrays['decoder']})"
        self.timestamps_source = f"{arrays['timestamps_source']} (saved)"
        self.clip_sha256 = str(arrays["clip_sha256"])
        self.face_crop = bool(arrays["face_crop"])
        frames = arrays["frames"].astype(np.int64)  # (F,) encoded frames with a face box
        no_face = arrays["no_face_frames"].astype(np.int64)  # (G,) sampled frames the follower found no face on
        self.available = np.union1d(frames, no_face)  # (F+G,) sorted: every frame the first run sampled
        self.face = np.zeros(len(self.times), dtype=bool)
        self.face[frames] = True
        self._feature = {int(i): torch.from_numpy(f) for i, f in zip(frames, arrays["features"], strict=True)}

    def feature(self, index: int) -> torch.Tensor:
        """(D,) fp16 of a frame with a face."""
        return self._feature[index]

    def substitute(self, plan: WindowPlan) -> WindowPlan:
        """The plan with each chosen frame replaced by the nearest sampled frame inside its window (the earlier on
        a tie); a window holding no sampled frame gets none (its row: no_frames)."""
        frames, counts = plan.frames.copy(), plan.counts.copy()
        t = self.times[self.available]
        for w in range(len(frames)):
            last = w == len(frames) - 1
            inside = (t >= plan.starts[w] - _EPS) & ((t < plan.ends[w] - _EPS) | last)
            candidates = self.available[inside]
            if plan.counts[w] == 0 or len(candidates) == 0:
                frames[w], counts[w] = -1, 0
                continue
            ct = self.times[candidates]
            for j, i in enumerate(frames[w]):
                frames[w, j] = candidates[int(np.argmin(np.abs(ct - self.times[i])))]
        return WindowPlan(starts=plan.starts, ends=plan.ends, frames=frames, counts=counts)

    def frames(self) -> Iterator[tuple[int, None]]:
        """(frame number, None) for every sampled frame, in time order: nothing to decode."""
        for i in self.available:
            yield int(i), None


_SAVED_KEYS = (
    "features",
    "frames",
    "no_face_frames",
    "all_timestamps_ms",
    "duration_s",
    "variable_rate",
    "size",
    "video",
    "decoder",
    "timestamps_source",
    "clip_sha256",
    "face_crop",
)
SAVED_SUFFIX = ".features.npz"


# -------------------------------------------------------------------------------------------------------- faces


def _mask(frame: np.ndarray, box: Box) -> np.ndarray:
    """A copy of the frame with the box (grown by a quarter) filled with the frame's mean colour."""
    h, w = frame.shape[:2]
    x, y, bw, bh = box
    x0, y0 = max(0, round((x - bw / 4) * w)), max(0, round((y - bh / 4) * h))
    x1, y1 = min(w, round((x + bw * 1.25) * w)), min(h, round((y + bh * 1.25) * h))
    out = frame.copy()
    out[y0:y1, x0:x1] = frame.reshape(-1, 3).mean(0).astype(np.uint8)
    return out


def _centre(box: Box) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


class FaceFollower:
    """One person's face box through a video's sampled frames: ``update(frame) -> box or None``.

    Built on ``FaceCropper.detect`` (the largest face of an image, as fractions) so it can give way to the shared
    tracker of ``tgdfer.data.faces`` when that lands. Every ``every`` frames it detects: near the last box (the
    box grown by ``reach`` box sides on each side), so a bystander does not take over; when the face is not
    there, in the whole frame, taking the face nearest the last box. Between detections the box is kept.
    """

    def __init__(
        self, cropper, choose: int = 0, every: int = 4, reach: float = 0.5, most: int = 4, region_side: int = 240
    ):
        self.cropper, self.choose, self.every, self.reach, self.most = cropper, choose, every, reach, most
        self.region_side = region_side  # the search region shrinks to this longest side (the face ~half of it)
        self.box: Box | None = None
        self.last: Box | None = None  # the last box seen, kept while the face is lost
        self._since = every  # detect on the first frame
        self.events: list[str] = []  # what happened, for the log: which face, lost, found again

    def _faces(self, frame: np.ndarray, limit: int) -> list[Box]:
        """Up to ``limit`` faces, largest first: detect, hide the face found, detect again."""
        faces: list[Box] = []
        image = frame
        while len(faces) < limit:
            box = self.cropper.detect(image)
            if box is None:
                break
            faces.append(box)
            image = _mask(image, box)
        return faces

    def _near(self, frame: np.ndarray, box: Box) -> Box | None:
        """The largest face inside the region around ``box``, in whole-frame fractions."""
        h, w = frame.shape[:2]
        x, y, bw, bh = box
        x0, y0 = max(0, math.floor((x - self.reach * bw) * w)), max(0, math.floor((y - self.reach * bh) * h))
        x1 = min(w, math.ceil((x + (1 + self.reach) * bw) * w))
        y1 = min(h, math.ceil((y + (1 + self.reach) * bh) * h))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        region = frame[y0:y1, x0:x1]
        longest = max(region.shape[:2])
        if longest > self.region_side:  # the face fills half the region: a smaller copy finds it as well, faster
            scale = self.region_side / longest
            size = (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))
            region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
        found = self.cropper.detect(np.ascontiguousarray(region))  # fractions of the region, at any scale
        if found is None:
            return None
        rw, rh = (x1 - x0) / w, (y1 - y0) / h
        return x0 / w + found[0] * rw, y0 / h + found[1] * rh, found[2] * rw, found[3] * rh

    def update(self, frame: np.ndarray, when: float = 0.0) -> Box | None:
        """(H, W, 3) RGB uint8, the next sampled frame (at ``when`` seconds, for the events) -> its face box."""
        self._since += 1
        if self._since < self.every:
            return self.box
        self._since = 0
        if self.box is not None:
            near = self._near(frame, self.box)
            if near is not None:
                self.box = self.last = near
                return self.box
        if self.last is None:  # the start: the chosen face by size
            faces = sorted(self._faces(frame, max(self.most, self.choose + 1)), key=lambda b: -b[2] * b[3])
            if len(faces) > self.choose:
                self.box = self.last = faces[self.choose]
                which = "largest" if self.choose == 0 else f"{_ordinal(self.choose + 1)} largest"
                self.events.append(
                    f"{when:.2f} s: following the {which} of {len(faces)} faces found, at {_where(self.box)}"
                )
            return self.box
        faces = self._faces(frame, self.most)
        was = self.box is not None
        if faces:
            cx, cy = _centre(self.last)
            self.box = self.last = min(faces, key=lambda b: (_centre(b)[0] - cx) ** 2 + (_centre(b)[1] - cy) ** 2)
            if not was:
                self.events.append(f"{when:.2f} s: face found again at {_where(self.box)}")
        else:
            self.box = None
            if was:
                self.events.append(f"{when:.2f} s: face lost")
        return self.box


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _where(box: Box) -> str:
    cx, cy = _centre(box)
    return f"({cx:.2f}, {cy:.2f}) of the frame, {box[2]:.2f} wide"


class _PromptsOnce(torch.nn.Module):
    """The run's text prompts (X^FP, X^CP, Eq. 6) computed once, under the autocast a model call uses, and
    returned by every later call. In inference they depend only on the trained weights, yet ``TGDFER.forward``
    runs the CLIP text tower for them each call: 0.5-4.5 s on 2 CPU threads for ViT-B/32, more than a whole
    batch of windows costs otherwise. The values are the ones the uncached module returns."""

    def __init__(self, prompts: torch.nn.Module, device: torch.device, amp: bool):
        super().__init__()
        with torch.inference_mode(), autocast(device, amp):
            self.values = tuple(t.detach() for t in prompts())  # (C, D) each

    def forward(self) -> tuple[torch.Tensor, ...]:
        return self.values


def encoder_precision(run: TrainedRun, choice: str) -> str:
    """Put the run's image tower (after ``_image_encoder``) in the dtype ``choice`` names and say which, and why.

    auto keeps predict's dtype (on CUDA the cache's, fp16 for stage 1's caches; fp32 on CPU), except on a CPU with
    AMX, where bf16 runs the tower 3-4x faster than fp32 and moves the window probabilities by less than the
    tolerance the README states (measured there, bounded in tests/test_timeline.py); fp32 then reproduces
    predict exactly. Stage 1 on a GPU encodes in fp16 anyway, so a run's features were never exact fp32.
    """
    clip = run.clip
    why = "as asked"
    if choice == "auto":
        if clip.device.type == "cuda" or not cpu_has_amx():
            return f"image encoder {dtype_name(clip.dtype)} (auto: as predict; --precision to choose)"
        choice, why = "bf16", "auto: this CPU has AMX; --precision fp32 for predict's exact values"
    clip.model.visual.float()  # from fp32 (no copy on CPU): _image_encoder casts all of it, LayerNorms too, on CUDA
    if choice != "fp32":
        cast_image_tower(clip.model, resolve_dtype(choice, clip.device))
    return f"image encoder {choice} ({why})"


def follow_faces(cropper, choose: int, every: int) -> FaceFollower:
    """The face tracker of the timeline: one place to switch to ``tgdfer.data.faces``' shared tracker."""
    return FaceFollower(cropper, choose=choose, every=every)


# ---------------------------------------------------------------------------------------------------- the rows


def columns(class_names: tuple[str, ...]) -> list[str]:
    return [*FIXED_COLUMNS, *class_names]


def _row(start: float, end: float, status: str, face_frac: float, probs: np.ndarray | None, names) -> list[str]:
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


def smooth(probs: np.ndarray, ok: np.ndarray, how: str, span: int) -> np.ndarray:
    """(W, C) probabilities, (W,) bool windows with a face -> (W, C) smoothed over windows, NaN where not ok.

    mean: centred moving average over ``span`` windows (the ok ones among them); ema: exponential moving
    average with alpha = 2 / (span + 1), carried over no-face windows without decaying.
    """
    out = np.full_like(probs, np.nan, dtype=np.float64)
    if how == "mean":
        half = span // 2
        for w in np.flatnonzero(ok):
            lo, hi = max(0, w - half), min(len(probs), w + span - half)
            out[w] = probs[lo:hi][ok[lo:hi]].mean(0)
    elif how == "ema":
        alpha, state = 2.0 / (span + 1.0), None
        for w in np.flatnonzero(ok):
            state = probs[w].astype(np.float64) if state is None else alpha * probs[w] + (1 - alpha) * state
            out[w] = state
    else:
        raise ConfigError(f"smooth: expected mean or ema, found {how!r}")
    return out


def summarize(rows: list[list[str]], names: tuple[str, ...]) -> dict:
    """Share of the windows (= of time, windows are evenly spaced) whose top class is each class, and no face."""
    total = max(len(rows), 1)
    tops = [r[5] for r in rows]
    share = {name: tops.count(name) / total for name in names}
    missing = sum(r[3] != "ok" for r in rows) / total
    return {"windows": len(rows), "share": share, "no_face": missing}


def format_summary(result: dict) -> str:
    """One line per video: its length, windows, face share, then classes by share of time."""
    if not result["ok"]:
        return f"{result['path']}: failed: {result['error']}"
    s = result["summary"]
    minutes, seconds = divmod(result["duration_s"], 60)
    ranked = sorted(s["share"].items(), key=lambda kv: -kv[1])
    shares = ", ".join(f"{name} {share:.0%}" for name, share in ranked if share > 0)
    return (
        f"{result['path']}: {int(minutes)}:{seconds:04.1f}, {s['windows']} windows of {result['window_s']:g} s every "
        f"{result['stride_s']:g} s; time by top emotion: {shares or 'none'}"
        + (f", no face {s['no_face']:.0%}" if s["no_face"] else "")
        + f" -> {result['csv']}"
    )


# ------------------------------------------------------------------------------------------------ one video


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions(decoder: str) -> dict:
    versions = {"tgdfer": __version__, "torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__}
    if decoder == "pyav":
        import av

        versions["av"] = av.__version__
    return versions


class _Progress:
    """A tqdm bar at a terminal; elsewhere a line every ``every`` seconds: windows done, x real time, ETA."""

    def __init__(self, name: str, total: int, done: int, seconds_per_window: float, every: float, log):
        self.name, self.total, self.done, self.every, self.log = name, total, done, every, log
        self.video_per_window = seconds_per_window
        self.start, self.first, self.last_line = time.perf_counter(), done, time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="win", desc=name, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last_line >= self.every and self.done < self.total:
            self.last_line = now
            rate = (self.done - self.first) / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log(
                f"{self.name}: {self.done}/{self.total} windows ({self.done / self.total:.0%}), {rate:.2f} windows/s, "
                f"{rate * self.video_per_window:.2f}x real time, ETA {_clock(eta)}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _outputs(out: Path, stem: str) -> dict[str, Path]:
    return {
        "csv": out / f"{stem}.timeline.csv",
        "json": out / f"{stem}.timeline.json",
        "png": out / f"{stem}.timeline.png",
        "npz": out / f"{stem}.features.npz",
    }


def _settings(cfg: TimelineConfig, run: TrainedRun, stream: VideoStream, face_crop: bool, w: float, s: float) -> dict:
    """What the rows depend on; ``resume`` refuses to append when any of it changed."""
    return {
        "video_bytes": stream.path.stat().st_size,
        "video_frames": len(stream.times),
        "decoder": stream.decoder,
        "checkpoint_sha256": _sha256(RunDir(Path(cfg.run)).checkpoint),
        "clip_sha256": run.clip.sha256,
        "precision": dtype_name(run.clip.dtype),  # the image encoder's (encoder_precision)
        "frames": int(run.identity["frames"]),
        "window_s": w,
        "stride_s": s,
        "face_crop": face_crop,
        "face": cfg.face if face_crop else None,
        "detect_every": cfg.detect_every if face_crop else None,
        "min_face": cfg.min_face if face_crop else None,
        "smooth": cfg.smooth,
        "smooth_windows": cfg.smooth_windows if cfg.smooth != "none" else None,
        "save_features": cfg.save_features,
    }


def _settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _fill(slots: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Frames of a window without a face take the features of the nearest slot with one (the earlier on a tie)."""
    have = [j for j, f in enumerate(slots) if f is not None]
    return [f if f is not None else slots[min(have, key=lambda k: (abs(k - j), k))] for j, f in enumerate(slots)]


def _one_video(
    path: str, run: TrainedRun, cfg: TimelineConfig, face_crop: bool, stem: str, log: Callable[[str], None]
) -> dict:
    names = run.class_names
    frames_per_window = int(run.identity["frames"])
    reuse = SavedFeatures(path) if str(path).endswith(SAVED_SUFFIX) else None
    stream = reuse or VideoStream(path)
    if reuse is not None:
        if reuse.clip_sha256 != run.clip.sha256:
            raise ConfigError(
                f"{path}: expected features of the run's CLIP (SHA-256 {run.clip.sha256[:12]}), found "
                f"{reuse.clip_sha256[:12]}: rerun the timeline on the video itself"
            )
        if cfg.save_features:
            raise ConfigError(f"--save-features: expected a video, found saved features {path} (they are saved)")
        if face_crop != reuse.face_crop:
            log(f"{stem}: face crop {'on' if reuse.face_crop else 'off'}, as the saved features were made")
        face_crop = reuse.face_crop
    recorded = run.identity.get("clip_seconds")  # a cache that records its clips' mean length (none does yet)
    window_why = "the run's clip length" if recorded else "default: the run records no clip length"
    window_s = span_seconds(cfg.window, "window", stream.fps) if cfg.window else float(recorded or DEFAULT_WINDOW_S)
    stride_s = span_seconds(cfg.stride, "stride", stream.fps)
    plan = plan_windows(stream.times, stream.duration, window_s, stride_s, frames_per_window)
    if reuse is not None:
        plan = reuse.substitute(plan)  # only frames the first run sampled have features
    n_windows = len(plan.starts)
    files = _outputs(Path(cfg.out), stem)
    settings = _settings(cfg, run, stream, face_crop, window_s, stride_s)
    header = {
        "video": str(path) if reuse is None else reuse.video,
        "features": None if reuse is None else str(path),
        "run": str(cfg.run),
        "run_epoch": run.epoch,
        "classes": list(names),
        "frames_per_window": frames_per_window,
        "window": cfg.window or f"{window_s:g}s ({window_why})",
        "window_s": window_s,
        "stride": cfg.stride,
        "stride_s": stride_s,
        "windows": n_windows,
        "fps": stream.fps,
        "variable_frame_rate": stream.variable_rate,
        "frame_count": len(stream.times),
        "duration_s": stream.duration,
        "size": [stream.width, stream.height],
        "timestamps": f"{stream.timestamps_source}, seconds from the first frame",
        "face_crop": face_crop,
        "sampling": f"{frames_per_window} segment centres of the frames in each window (stage 1's test view)",
        "settings": settings,
        "settings_hash": _settings_hash(settings),
        "versions": _versions(stream.decoder),
        "status": "running",
    }

    done = 0
    if cfg.resume and files["json"].is_file() and files["csv"].is_file():
        old = json.loads(files["json"].read_text())
        if old.get("settings_hash") != header["settings_hash"]:
            before = old.get("settings", {})
            changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v]
            raise ConfigError(
                f"--resume: expected the settings of the interrupted run of {path}, found changes ("
                f"{'; '.join(changed) or 'settings hash'}): rerun without --resume to start over"
            )
        rows = read_rows(files["csv"], names)
        done = len(rows)
        with committed(files["csv"]) as tmp, open(tmp, "w", newline="") as f:  # without a row cut short
            csv.writer(f, lineterminator="\n").writerows([columns(names), *rows])
        log(f"{stem}: resuming after {done} of {n_windows} windows")
    elif cfg.resume:
        log(f"{stem}: nothing to resume in {cfg.out}, starting")
    elif files["csv"].exists():
        log(f"{stem}: overwriting the timeline in {cfg.out} (pass --resume to continue an interrupted one)")
    write_text(files["json"], json.dumps(header, indent=2) + "\n")
    if done == 0:
        with committed(files["csv"]) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow(columns(names))

    # What each sampled frame is needed for: its last window (to free its features) and whether windows still to
    # be computed (or the saved features) use it.
    n_frames = len(stream.times)
    sampled = np.zeros(n_frames, dtype=bool)
    last_use = np.full(n_frames, -1, dtype=np.int64)
    for w in range(n_windows):
        idx = plan.frames[w][plan.frames[w] >= 0]
        sampled[idx] = True
        last_use[idx] = w
    encode_needed = sampled & ((last_use >= done) | cfg.save_features)
    # A window is ready once its last sampled frame (or, without frames, the frame before it) went through.
    window_last = np.where(plan.counts > 0, plan.frames.max(1), np.searchsorted(stream.times, plan.starts - _EPS) - 1)

    clip = run.clip
    size = clip.image_size
    follower = None
    if face_crop and reuse is None:
        from tgdfer.data.faces import FaceCropper

        cropper = FaceCropper()
        follower = follow_faces(cropper, cfg.face, cfg.detect_every)
    found = np.zeros(n_frames, dtype=bool)  # the follower had a face box on this sampled frame
    features: dict[int, torch.Tensor] = {}  # frame number -> (D,) fp16, while a window still needs it
    saved: list[tuple[int, np.ndarray, Box]] = []
    pending: list[tuple[int, np.ndarray, Box]] = []  # (frame number, (S, S, 3) uint8, face box) for the encoder
    state = {"next": done}
    seconds = {"total": 0.0, "encoder": 0.0, "model": 0.0, "faces": 0.0, "encoded_frames": 0}
    progress = _Progress(stem, n_windows, done, stride_s, cfg.log_every, log)
    csv_file = open(files["csv"], "a", newline="")  # noqa: SIM115 (closed in the finally below)
    writer = csv.writer(csv_file, lineterminator="\n")

    def encode() -> None:
        if not pending:
            return
        pixels = torch.from_numpy(np.stack([crop for _, crop, _ in pending]))  # (B, S, S, 3) uint8
        t0 = time.perf_counter()
        out = encode_frames(clip, pixels, batch_size=len(pending)).cpu()  # (B, D) fp16
        seconds["encoder"] += time.perf_counter() - t0
        seconds["encoded_frames"] += len(pending)
        for (i, _, box), feature in zip(pending, out, strict=True):
            if last_use[i] >= done:
                features[i] = feature
            if cfg.save_features:
                saved.append((i, feature.numpy(), box))
        pending.clear()

    def finish(upto: int, final: bool = False) -> None:
        """Compute and write the windows whose frames are all through (frame numbers <= upto), once there are
        ``batch_windows`` of them (or at the end): a model call costs about as much for 1 window as for 8."""
        ready, w = [], state["next"]
        while w < n_windows and window_last[w] <= upto:
            ready.append(w)
            w += 1
        if not ready or (len(ready) < cfg.batch_windows and not final):
            return
        state["next"] = w
        stacks, statuses = [], {}
        for w in ready:
            idx = plan.frames[w]
            if plan.counts[w] == 0:
                statuses[w] = ("no_frames", 0.0)
                continue
            face = found[idx]  # (T,) per slot
            frac = float(face.mean())
            if frac < (cfg.min_face if face_crop else 0.0) or not face.any():
                statuses[w] = ("no_face", frac)
                continue
            statuses[w] = ("ok", frac)
            stacks.append(torch.stack(_fill([features.get(int(i)) if found[i] else None for i in idx])))
        probs = iter([])
        if stacks:
            batch = torch.stack(stacks).to(next(run.model.parameters()).device)  # (B, T, D)
            t0 = time.perf_counter()
            out = predict_features(run.model, batch, amp=run.config.train.amp, batch_size=len(stacks))
            seconds["model"] += time.perf_counter() - t0
            probs = iter(out["probs"].cpu().numpy())  # (B, C)
        for w in ready:
            status, frac = statuses[w]
            p = next(probs) if status == "ok" else None
            writer.writerow(_row(plan.starts[w], plan.ends[w], status, frac, p, names))
        csv_file.flush()
        last_done = ready[-1]
        for i in [i for i in features if last_use[i] <= last_done]:
            del features[i]
        progress.update(len(ready))

    reported = 0
    started = time.perf_counter()
    try:
        for index, frame in stream.frames() if done < n_windows else ():
            if not sampled[index]:
                continue
            if reuse is not None:  # nothing to decode or encode: the first run's faces and features
                found[index] = reuse.face[index]
                if found[index] and encode_needed[index]:
                    features[index] = reuse.feature(index)
                finish(index)
                continue
            if last_use[index] < done and not encode_needed[index] and follower is None:
                continue  # resumed: only windows already in the CSV use this frame
            rgb = frame.rgb()
            t0 = time.perf_counter()
            box = follower.update(rgb, float(stream.times[index])) if follower is not None else (0.0, 0.0, 1.0, 1.0)
            seconds["faces"] += time.perf_counter() - t0
            if follower is not None:
                for event in follower.events[reported:]:
                    log(f"{stem}: {event}")
                reported = len(follower.events)
            found[index] = box is not None
            if box is not None and encode_needed[index]:
                crop = cropper.crop(rgb, box) if follower is not None else rgb
                pending.append((index, clip_view(crop, size), box))  # the same preprocessing as stage 1
            if len(pending) >= cfg.batch_frames:
                encode()
                finish(index)
        encode()
        finish(n_frames, final=True)
    except BaseException:
        csv_file.close()
        progress.close()
        header["status"] = "interrupted"
        write_text(files["json"], json.dumps(header, indent=2) + "\n")
        log(f"{stem}: stopped after {state['next']} of {n_windows} windows, all in {files['csv']}; --resume continues")
        raise
    csv_file.close()
    progress.close()

    rows = read_rows(files["csv"], names)
    if len(rows) != n_windows:  # a frame the decoder never gave cannot hold a window back: finish(n_frames) ran
        raise RuntimeError(f"{files['csv']}: expected {n_windows} rows, found {len(rows)}")
    probs = np.array([[float(v) if v else np.nan for v in r[len(FIXED_COLUMNS) :]] for r in rows], dtype=np.float64)
    ok = np.array([r[3] == "ok" for r in rows], dtype=bool)
    smoothed = None
    if cfg.smooth != "none":
        smoothed = smooth(np.nan_to_num(probs), ok, cfg.smooth, cfg.smooth_windows)
        extra = [f"{name}_{cfg.smooth}{cfg.smooth_windows}" for name in names]
        with committed(files["csv"]) as tmp, open(tmp, "w", newline="") as f:  # raw columns kept, smoothed added
            out = csv.writer(f, lineterminator="\n")
            out.writerow(columns(names) + extra)
            for r, sm in zip(rows, smoothed, strict=True):
                out.writerow(r[: len(columns(names))] + ["" if np.isnan(v) else f"{v:.6f}" for v in sm])
    if cfg.save_features:
        order = sorted(range(len(saved)), key=lambda k: saved[k][0])
        frames_saved = np.array([saved[k][0] for k in order], dtype=np.int64)
        with committed(files["npz"]) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                features=np.stack([saved[k][1] for k in order]).astype(np.float16)
                if saved
                else np.zeros((0, clip.dim), np.float16),  # (N, D) fp16, the encoder's raw output
                frames=frames_saved,  # (N,) frame numbers (presentation order)
                boxes=np.array([saved[k][2] for k in order], dtype=np.float64).reshape(-1, 4),  # (N, 4) x, y, w, h
                timestamps_ms=stream.times[frames_saved] * 1000.0,  # (N,) from pts * time_base
                all_timestamps_ms=stream.times * 1000.0,  # every decoded frame's time
                window_frames=plan.frames,  # (W, T) frame numbers each window sampled
                no_face_frames=np.flatnonzero(sampled & ~found),  # (G,) sampled frames without the face
                duration_s=np.float64(stream.duration),  # what the video is, for a rerun from this file:
                variable_rate=np.bool_(stream.variable_rate),
                size=np.array([stream.width, stream.height], np.int64),
                video=np.str_(str(path)),
                decoder=np.str_(stream.decoder),
                timestamps_source=np.str_(stream.timestamps_source),
                clip_sha256=np.str_(run.clip.sha256),  # features of this CLIP only
                face_crop=np.bool_(face_crop),
            )
    summary = summarize(rows, names)
    png = None
    if cfg.plot:
        from tgdfer.plots import timeline_png

        png = str(
            timeline_png(
                plan.starts,
                plan.ends,
                probs,
                ok,
                names,
                files["png"],
                smoothed=smoothed,
                title=(
                    f"{Path(header['video']).name}: run {Path(cfg.run).name}, {window_s:g} s windows every "
                    f"{stride_s:g} s"
                ),
            )
        )
    seconds["total"] = time.perf_counter() - started  # from the decoding pass to the plot
    header |= {"status": "complete", "summary": summary, "seconds": seconds}
    write_text(files["json"], json.dumps(header, indent=2) + "\n")
    return {
        "path": str(path),
        "ok": True,
        "error": None,
        "csv": str(files["csv"]),
        "json": str(files["json"]),
        "png": png,
        "npz": str(files["npz"]) if cfg.save_features else None,
        "windows": n_windows,
        "window_s": window_s,
        "stride_s": stride_s,
        "duration_s": stream.duration,
        "fps": stream.fps,
        "face_crop": face_crop,
        "summary": summary,
        "seconds": seconds,  # this call's: total (the decoding pass), encoder, model, faces; encoded_frames
    }


def _stems(paths: list[str]) -> list[str]:
    """Output names: the file stem, with its parent folder's name added when two videos share a stem."""
    stems = [Path(p).name[: -len(SAVED_SUFFIX)] if p.endswith(SAVED_SUFFIX) else Path(p).stem for p in paths]
    return [
        f"{Path(p).parent.name}-{s}" if stems.count(s) > 1 and Path(p).parent.name else s
        for p, s in zip(paths, stems, strict=True)
    ]


def timeline(paths: list[str], cfg: TimelineConfig, log: Callable[[str], None] | None = None) -> list[dict]:
    """Write the timeline of each video (see the module docstring) into ``cfg.out``.

    Returns one dict per video, in order: path, ok, error (the reason when ok is False), csv, json, png, npz,
    windows, window_s, stride_s, duration_s, fps, face_crop, summary ({windows, share {class: share of time with
    that top class}, no_face share}). A video that cannot be read is reported and the others still run.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    for text, name in ((cfg.window, "window"), (cfg.stride, "stride")):
        if text is not None:
            parse_span(text, name)  # a bad length fails before the run loads, not once per video
    run = load_run(cfg.run, cfg.device, cfg.clip)
    _image_encoder(run)  # the run's CLIP image tower on its device and dtype, as predict uses it
    device = next(run.model.parameters()).device
    run.model.prompts = _PromptsOnce(run.model.prompts, device, run.config.train.amp)  # this run object only
    drop_text_tower(run.clip.model)  # the prompts were its only use here (ViT-B/32: 253 MB freed)
    log(encoder_precision(run, cfg.precision))
    recorded = run.identity.get("face_crop")
    if cfg.face_crop is None:
        face_crop = True if recorded is None else bool(recorded)
        why = "the run records none; raw video" if recorded is None else "as the run's cache was made"
        log(f"face crop {'on' if face_crop else 'off'} ({why}; --face-crop/--no-face-crop override)")
    else:
        face_crop = cfg.face_crop
        if recorded is not None and bool(recorded) != face_crop:
            log(
                f"face crop {'on' if face_crop else 'off'} as asked, although the run's cache was made "
                f"{'with' if recorded else 'without'} face crops"
            )
    if face_crop:
        from tgdfer.data.faces import cascade_path

        cascade_path()  # a missing cascade fails once, before any video
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    results = []
    paths = [str(p) for p in paths]
    for path, stem in zip(paths, _stems(paths), strict=True):
        try:
            results.append(_one_video(path, run, cfg, face_crop, stem, log))
        except ConfigError as exc:  # this video cannot be used as asked (no frames, --resume with new settings)
            results.append({"path": path, "ok": False, "error": str(exc)})
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # a decoder failing on this file: report it, go on with the others
            results.append({"path": path, "ok": False, "error": f"unreadable video ({type(exc).__name__}: {exc})"})
        if not results[-1]["ok"]:
            log(f"{path}: skipped: {results[-1]['error']}")
    return results
