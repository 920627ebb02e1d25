"""Cheap appearance statistics for telling persons apart and for finding shot cuts, from colour alone.

Identity must not come from face-recognition weights (ArcFace/InsightFace are licensed for non-commercial research
only), and it must work with the tiny random CLIP of the tests as well as with real CLIP, so the persons linker
(``tgdfer.data.persons``) does not rely on CLIP alone: it compares colour histograms of three regions around a face
box, which random weights cannot spoil and which carry what tells people apart in one video: skin and face (the
box), hair (a band above it) and clothing (a wider band below it).

- ``region_histograms(frame, box)``: (R, B) HSV histograms of the face, hair and clothing regions, each summing to 1,
  or all zeros where the region lies outside the frame; ``hellinger`` compares them (0 same, 1 disjoint).
- ``ShotCuts``: says whether a frame starts a new shot, from HSV histograms of the cells of a 2 x 2 grid over the
  frame against the previous frame's (a cut changes the whole picture at once; a moving face or camera changes a
  little of it).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # (x, y, w, h) as fractions of the frame's width and height

# Region around a face box (x, y, w, h) as (dx, dy, w, h) in box sides: the box's own centre (skin, eyes, mouth;
# the edges hold background), hair above it, and clothing below the chin, wider than the face (shoulders).
REGIONS = {
    "face": (0.15, 0.15, 0.7, 0.7),
    "hair": (-0.1, -0.35, 1.2, 0.45),
    "clothing": (-0.5, 1.3, 2.0, 1.0),
}
BINS = (8, 4, 4)  # hue, saturation, value: 128 bins; coarse enough to stay still under lighting and pose changes
SIDE = 32  # a region shrinks to at most this side before its histogram: enough pixels, and ~0.1 ms a region
CUT_SIDE = 96  # a whole frame shrinks to this side (its aspect kept) for the shot-cut histograms
CUT_GRID = 2  # the shrunk frame is cut into CUT_GRID x CUT_GRID cells, each with its own histogram: two persons
# exchanging places leave the whole frame's histogram as it was, not its cells'


def region_histograms(frame: np.ndarray, box: Box) -> np.ndarray:
    """(H, W, 3) RGB uint8 and a face box as fractions -> (R, B) float32: per region of ``REGIONS``, its HSV
    histogram (B = 8 x 4 x 4 bins) summing to 1, or zeros where less than 4 x 4 pixels of the region lie in the
    frame."""
    h, w = frame.shape[:2]
    out = np.zeros((len(REGIONS), int(np.prod(BINS))), np.float32)
    side = max(box[2] * w, box[3] * h)
    cx, cy = (box[0] + box[2] / 2) * w, (box[1] + box[3] / 2) * h
    for r, (dx, dy, rw, rh) in enumerate(REGIONS.values()):
        # regions are laid out in face sides from the box's square around its centre
        x0, y0 = round(cx - side / 2 + dx * side), round(cy - side / 2 + dy * side)
        x1, y1 = round(x0 + rw * side), round(y0 + rh * side)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        out[r] = hsv_histogram(frame[y0:y1, x0:x1])
    return out


def hsv_histogram(image: np.ndarray, side: int = SIDE) -> np.ndarray:
    """(h, w, 3) RGB uint8 -> (B,) float32 HSV histogram summing to 1 (the image first shrunk to ``side``)."""
    scale = side / max(image.shape[:2])
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(BINS), [0, 180, 0, 256, 0, 256]).reshape(-1)
    return (hist / max(float(hist.sum()), 1.0)).astype(np.float32)


def hellinger(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., B) and (..., B) histograms summing to 1 -> (...) Hellinger distance in [0, 1] (0: the same)."""
    bc = np.sqrt(np.clip(a, 0, None) * np.clip(b, 0, None)).sum(-1)  # Bhattacharyya coefficient
    return np.sqrt(np.clip(1.0 - bc, 0.0, 1.0))


def region_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two (R, B) region histograms (zeros where a region was never seen) -> the mean Hellinger distance over the
    regions both have, or 1.0 (unknown, as far apart as can be) when they share none."""
    both = (a.sum(-1) > 0) & (b.sum(-1) > 0)  # (R,)
    if not both.any():
        return 1.0
    na, nb = a[both] / a[both].sum(-1, keepdims=True), b[both] / b[both].sum(-1, keepdims=True)
    return float(hellinger(na, nb).mean())


@dataclass(frozen=True)
class CutConfig:
    """When ``ShotCuts`` calls a frame the start of a new shot."""

    threshold: float = 0.35  # mean Hellinger distance of the grid cells' HSV histograms between consecutive sampled
    # frames: the composites of tgdfer/testing/people.py (every 3rd frame) give <= 0.16 within a shot (talking, a
    # hand over the face, a person sliding out) and >= 0.53 at their cuts, persons exchanging places included


class ShotCuts:
    """``is_cut(frame) -> bool`` for each frame of a stream in order: True when it differs from the previous one
    by more than ``threshold`` (the first frame is no cut)."""

    def __init__(self, config: CutConfig = CutConfig()):
        self.config = config
        self.previous: np.ndarray | None = None  # (cells, B) histograms of the last frame
        self.last_distance = 0.0

    def is_cut(self, frame: np.ndarray) -> bool:
        """(H, W, 3) RGB uint8, the stream's next frame -> whether a new shot starts with it."""
        hist = grid_histograms(frame)
        previous, self.previous = self.previous, hist
        if previous is None:
            return False
        self.last_distance = float(hellinger(previous, hist).mean())
        return self.last_distance > self.config.threshold


def grid_histograms(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> (CUT_GRID * CUT_GRID, B) HSV histograms of the cells of the shrunk frame."""
    scale = CUT_SIDE / max(frame.shape[:2])
    size = (max(CUT_GRID, round(frame.shape[1] * scale)), max(CUT_GRID, round(frame.shape[0] * scale)))
    small = cv2.resize(np.ascontiguousarray(frame), size, interpolation=cv2.INTER_AREA)
    rows = np.array_split(np.arange(size[1]), CUT_GRID)
    cols = np.array_split(np.arange(size[0]), CUT_GRID)
    return np.stack([hsv_histogram(small[r[0] : r[-1] + 1, c[0] : c[-1] + 1]) for r in rows for c in cols])
