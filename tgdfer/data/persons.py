"""Every face of a video as persons with stable ids: tracked frame to frame online, linked by appearance at the end.

The shape follows what works for identity over long footage (DESIGN.md, "Several persons in one video"): track by
motion within a shot, end every track at a cut or when its face stays unseen, then link tracks into persons by
appearance, with "too short to attribute" said out loud rather than guessed.

- ``PersonTracker(config).update(frame, time, index) -> [Detection(track, box, score)]`` for each sampled frame in
  order. Every face of the frame is detected (``FaceDetector.faces``, BlazeFace); detections continue the active
  tracks by a Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on box overlap plus colour appearance,
  gated by centre distance. A shot cut (``appearance.ShotCuts``) ends every track: after a cut nothing continues by
  position alone. ``describe(track, embedding)`` adds the caller's embedding of a detection's crop (the CLIP
  feature tgdfer computes anyway) to the track's running mean. Per track the state is small: running means of its
  colour histograms and embeddings, and its box per sampled frame.
- ``state()``/``restore(state)``: the tracker's whole running state as plain arrays, for a resumable checkpoint.
- ``PersonTracker.link() -> PersonAssignment`` at the end: the tracks joined into persons ``p1``, ``p2``, ... by
  appearance (``tgdfer.data.identity.link``, which also holds ``Track`` and ``PersonAssignment``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from tgdfer.data.appearance import CutConfig, ShotCuts, region_distance, region_histograms
from tgdfer.data.faces import DetectorConfig, Face, FaceDetector
from tgdfer.data.identity import LinkConfig, PersonAssignment, Track, link, tracks_from_arrays, tracks_to_arrays
from tgdfer.errors import ConfigError

Box = tuple[float, float, float, float]  # (x, y, w, h) as fractions of the frame's width and height
_FAR = 1e6  # assignment cost of a pair the gate forbids


@dataclass(frozen=True)
class PersonsConfig:
    """How ``PersonTracker`` follows faces, and how its tracks are joined into persons."""

    detector: DetectorConfig = field(default_factory=DetectorConfig)  # BlazeFace, MediaPipe's thresholds
    cuts: CutConfig = field(default_factory=CutConfig)  # when a frame starts a new shot
    detect_every: int = 4  # a whole-frame search at least every 4th sampled frame (0.5 s at 8 a second), so a new
    # face is found within it; in between, a zoomed search around each tracked face: ~4 ms a face against ~21 ms for
    # a whole 640 x 360 frame on one thread (bench/persons.py)
    gate: float = 1.0  # a detection may continue a track only if its centre lies within this many face sides of the
    # track's last box: sampled frames are ~0.1 s apart, and a face moves far less than its size in that time
    appearance_gate: float = 0.4  # nor if its colour distance (in [0, 1]) from the track exceeds this: a face that
    # looks like another person's does not continue a track, whatever its place (same person <= 0.3 on real footage)
    appearance_weight: float = 1.0  # weight of the colour distance (in [0, 1]) beside 1 - IoU in the frame-to-frame
    # cost: two faces passing each other overlap alike, their colours do not
    max_missed: int = 6  # sampled frames a track may go unmatched (a blink, a hand, a turn) before it ends
    link: LinkConfig = field(default_factory=LinkConfig)  # how tracks join into persons (tgdfer.data.identity)

    def __post_init__(self):
        if self.gate <= 0 or self.appearance_weight < 0 or self.detect_every < 1 or self.max_missed < 0:
            raise ConfigError(
                "expected gate > 0, appearance_weight >= 0, detect_every >= 1 and max_missed >= 0, found "
                f"{self.gate}, {self.appearance_weight}, {self.detect_every}, {self.max_missed}"
            )
        if not 0 < self.appearance_gate <= 1:
            raise ConfigError(f"expected appearance_gate in (0, 1], found {self.appearance_gate}")


@dataclass(frozen=True)
class Detection:
    """One face of a sampled frame and the track it continues."""

    track: int
    box: Box
    score: float


def _iou(a: Box, b: Box) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-12)


def _centre_distance(a: Box, b: Box, shape: tuple[int, ...]) -> float:
    """Distance between two boxes' centres in pixels over box a's side in pixels."""
    h, w = shape[:2]
    dx = (a[0] + a[2] / 2 - b[0] - b[2] / 2) * w
    dy = (a[1] + a[3] / 2 - b[1] - b[3] / 2) * h
    return float(np.hypot(dx, dy) / max(a[2] * w, a[3] * h, 1e-9))


class PersonTracker:
    """Every face through a stream of sampled frames: ``update(frame, time, index)`` for each in order -> its
    detections, each with the id of the track it continues or starts. ``tracks`` holds all tracks so far,
    ``cuts`` the (index, time) of each shot cut; ``link()`` turns them into persons."""

    def __init__(self, config: PersonsConfig = PersonsConfig(), detector: FaceDetector | None = None):
        self.config = config
        self.detector = detector if detector is not None else FaceDetector(config.detector)
        self.shots = ShotCuts(config.cuts)
        self.tracks: dict[int, Track] = {}
        self.active: list[int] = []  # ids of the tracks that may continue
        self.cuts: list[tuple[int, float]] = []
        self.shot = 0
        self._since_search = 0  # sampled frames since the last whole-frame search

    def update(self, frame: np.ndarray, time: float, index: int) -> list[Detection]:
        """(H, W, 3) RGB uint8, the next sampled frame, at ``time`` seconds, frame number ``index`` -> the faces."""
        if self.shots.is_cut(frame):
            self.cuts.append((index, time))
            self.shot += 1
            self.active = []  # a cut ends every track: nothing continues across it by position
        whole = self._whole_search_due()
        faces = self._faces(frame, whole)
        hists = [region_histograms(frame, f.box) for f in faces]  # (R, B) each
        pairs = self._match([f.box for f in faces], hists, frame.shape)
        out, matched = [], set()
        for d, face in enumerate(faces):
            t = pairs.get(d)
            if t is None and not whole:
                continue  # a zoomed square's other face (a neighbour's, cut off): new faces come from whole searches
            if t is None:
                t = len(self.tracks)
                self.tracks[t] = Track(t, self.shot)
                self.active.append(t)
            self.tracks[t].add(index, time, face.box, hists[d])
            matched.add(t)
            out.append(Detection(t, face.box, face.score))
        for t in self.active:
            if t not in matched:
                self.tracks[t].missed += 1
        self.active = [t for t in self.active if self.tracks[t].missed <= self.config.max_missed]
        return out

    def _whole_search_due(self) -> bool:
        """A whole-frame search every ``detect_every`` sampled frames, after a cut, while no track is active and when
        one was missed last frame; zoomed searches otherwise (not with the Haar fallback, which finds false faces in
        a zoomed square)."""
        tracked = [self.tracks[t] for t in self.active]
        zoom = (
            tracked
            and self._since_search < self.config.detect_every - 1
            and all(t.missed == 0 for t in tracked)
            and self.detector.backend == "blazeface"
        )
        self._since_search = self._since_search + 1 if zoom else 0
        return not zoom

    def _faces(self, frame: np.ndarray, whole: bool) -> list[Face]:
        """Every face of the frame, or those in zoomed squares where the active tracks' faces were."""
        if whole:
            return self.detector.faces(frame)
        tracked = [self.tracks[t] for t in self.active]
        found = sorted(
            (f for t in tracked for f in self.detector.faces_near(frame, t.last_box)), key=lambda f: -f.score
        )
        kept: list[Face] = []
        for face in found:  # one face found from two tracks' squares counts once
            if all(_iou(face.box, k.box) <= self.config.detector.nms_iou for k in kept):
                kept.append(face)
        return kept

    def _match(self, boxes: list[Box], hists: list[np.ndarray], shape: tuple[int, ...]) -> dict[int, int]:
        """Detections' boxes and (R, B) histograms -> {detection: active track} by least total cost."""
        if not boxes or not self.active:
            return {}
        c = self.config
        cost = np.full((len(self.active), len(boxes)), _FAR)  # (tracks, detections)
        for i, t in enumerate(self.active):
            track = self.tracks[t]
            last, colour = track.last_box, track.colour()
            for d, box in enumerate(boxes):
                looks = region_distance(colour, hists[d])
                if _centre_distance(last, box, shape) <= c.gate and looks <= c.appearance_gate:
                    cost[i, d] = 1 - _iou(last, box) + c.appearance_weight * looks
        rows, cols = linear_sum_assignment(cost)
        return {int(d): self.active[int(i)] for i, d in zip(rows, cols, strict=True) if cost[i, d] < _FAR}

    def describe(self, track: int, embedding: np.ndarray) -> None:
        """Add the caller's (D,) embedding of one detection's crop (e.g. its CLIP feature) to the track's mean. Only
        ``link`` reads it, so it may come any time before that (when the caller's encoder batch is through), in any
        order; a track need not have one for every detection."""
        self.tracks[track].describe(embedding)

    def state(self) -> dict[str, np.ndarray]:
        """Everything ``update`` carries from frame to frame, as plain arrays (an npz, no pickle): ``restore`` on a
        new tracker with the same config continues the stream exactly as this one would."""
        previous = self.shots.previous
        return tracks_to_arrays(list(self.tracks.values())) | {
            "active": np.array(self.active, np.int64),
            "cut_index": np.array([i for i, _ in self.cuts], np.int64),
            "cut_time": np.array([t for _, t in self.cuts], np.float64),
            "counters": np.array([self.shot, self._since_search], np.int64),
            "shot_previous": np.zeros((0, 0)) if previous is None else previous,  # (cells, B) or empty
            "shot_distance": np.array(self.shots.last_distance),
        }

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Continue from ``state()`` of a tracker with this config, taken after some sampled frame."""
        self.tracks = {t.id: t for t in tracks_from_arrays(state)}
        self.active = [int(t) for t in state["active"]]
        self.cuts = [(int(i), float(t)) for i, t in zip(state["cut_index"], state["cut_time"], strict=True)]
        self.shot, self._since_search = (int(v) for v in state["counters"])
        self.shots.previous = None if state["shot_previous"].size == 0 else state["shot_previous"].copy()
        self.shots.last_distance = float(state["shot_distance"])

    def link(self) -> PersonAssignment:
        """The tracks so far joined into persons (``tgdfer.data.identity.link``)."""
        return link(list(self.tracks.values()), self.config.link)
