"""Windows of a timeline: lengths in seconds or frames, the windows over a video's time axis, their sampled frames,
and smoothing over windows."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from tgdfer.data.sampling import centre_indices
from tgdfer.errors import ConfigError

DEFAULT_WINDOW_S = 2.0  # when the run records no clip length
EPS = 1e-6  # seconds: a frame at a window's start computed as 0.9999999 s still belongs to the window at 1 s
_SPAN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|f)?\s*$")


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
    if stride > window + EPS:
        raise ConfigError(
            f"--stride: expected at most the window ({window:g} s) so windows cover the whole video, found {stride:g} s"
        )
    count = 1 if duration <= window else math.ceil((duration - window) / stride - EPS) + 1
    starts = np.arange(count, dtype=np.float64) * stride
    ends = np.minimum(starts + window, duration)
    ends[-1] = duration  # the last window ends with the video (its start + window is >= duration)
    lo = np.searchsorted(times, starts - EPS, side="left")
    hi = np.searchsorted(times, ends - EPS, side="left")
    hi[-1] = len(times)  # the last frame belongs to the last window
    chosen = np.full((count, frames), -1, dtype=np.int64)
    for w in range(count):
        n = int(hi[w] - lo[w])
        if n > 0:
            chosen[w] = lo[w] + centre_indices(n, frames)
    return WindowPlan(starts=starts, ends=ends, frames=chosen, counts=(hi - lo).astype(np.int64))


def fill_slots(slots: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """A window's T features, None for frames without the face -> each None replaced by the features of the
    nearest slot with one (the earlier on a tie). At least one slot must have features."""
    have = [j for j, f in enumerate(slots) if f is not None]
    return [f if f is not None else slots[min(have, key=lambda k: (abs(k - j), k))] for j, f in enumerate(slots)]


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
