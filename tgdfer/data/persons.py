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
- ``link(tracks, config) -> PersonAssignment``, offline at the end: tracks with fewer than ``min_detections``
  detections are left out (counted in ``short``); the rest merge greedily, closest pair first (centroid linkage on
  colour histograms, plus embeddings where both have them), while the distance stays under ``link_threshold`` and
  the two never share a frame (one person is never in two places at once). Persons are named ``p1``, ``p2``, ... by
  first appearance.
- ``PersonAssignment``: which person each track is, each person's boxes in a time range (``boxes``), first and last
  seen, a merge-and-rename map (``renamed``), and a JSON form (``to_dict``/``from_dict``) to re-apply a map without
  decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from tgdfer.data.appearance import BINS, REGIONS, CutConfig, ShotCuts, region_distance, region_histograms
from tgdfer.data.faces import DetectorConfig, FaceDetector
from tgdfer.errors import ConfigError

Box = tuple[float, float, float, float]  # (x, y, w, h) as fractions of the frame's width and height
_FAR = 1e6  # assignment cost of a pair the gate forbids


@dataclass(frozen=True)
class PersonsConfig:
    """How ``PersonTracker`` follows faces and how ``link`` joins tracks into persons."""

    detector: DetectorConfig = field(
        default_factory=DetectorConfig
    )  # BlazeFace, MediaPipe's thresholds (tgdfer.data.faces)
    cuts: CutConfig = field(default_factory=CutConfig)  # when a frame starts a new shot
    gate: float = 1.0  # a detection may continue a track only if its centre lies within this many face sides of the
    # track's last box: sampled frames are ~0.1 s apart, and a face moves far less than its size in that time
    appearance_gate: float = 0.4  # nor if its colour distance (in [0, 1]) from the track exceeds this: a face that
    # looks like another person's does not continue a track, whatever its place (same person <= 0.3 on real footage)
    appearance_weight: float = 1.0  # weight of the colour distance (in [0, 1]) beside 1 - IoU in the frame-to-frame
    # cost: two faces passing each other overlap alike, their colours do not
    max_missed: int = 6  # sampled frames a track may go unmatched (a blink, a hand, a turn) before it ends
    min_detections: int = 4  # a track with fewer detections is too short to attribute (a false face, a glimpse)
    link_threshold: float = 0.42  # largest linking distance of two tracks of one person: the real-footage
    # composites of tgdfer/testing/people.py give <= 0.32 for one person across shots, >= 0.5 for two persons
    embedding_weight: float = 0.3  # share of the linking distance from the caller's embeddings, where both tracks
    # have them; colour keeps the rest, as a random CLIP's embeddings say little

    def __post_init__(self):
        if self.gate <= 0 or self.appearance_weight < 0 or self.max_missed < 0 or self.min_detections < 1:
            raise ConfigError(
                "expected gate > 0, appearance_weight >= 0, max_missed >= 0 and min_detections >= 1, found "
                f"{self.gate}, {self.appearance_weight}, {self.max_missed}, {self.min_detections}"
            )
        if not (0 < self.link_threshold < 1 and 0 <= self.embedding_weight <= 1):
            raise ConfigError(
                f"expected link_threshold in (0, 1) and embedding_weight in [0, 1], found {self.link_threshold}, "
                f"{self.embedding_weight}"
            )


@dataclass(frozen=True)
class Detection:
    """One face of a sampled frame and the track it continues."""

    track: int
    box: Box
    score: float


@dataclass
class Track:
    """One face followed through consecutive sampled frames of one shot, and its running appearance."""

    id: int
    shot: int
    boxes: dict[int, Box] = field(default_factory=dict)  # sampled frame index -> box
    times: dict[int, float] = field(default_factory=dict)  # sampled frame index -> seconds
    colour_sum: np.ndarray = field(default_factory=lambda: np.zeros((len(REGIONS), int(np.prod(BINS)))))  # (R, B) sums
    embedding_sum: np.ndarray | None = None  # (D,) sum of L2-normalised embeddings
    embeddings: int = 0
    missed: int = 0  # sampled frames since the last match

    @property
    def first(self) -> float:
        return min(self.times.values())

    @property
    def last(self) -> float:
        return max(self.times.values())

    @property
    def last_box(self) -> Box:
        return self.boxes[max(self.boxes)]

    def colour(self) -> np.ndarray:
        """(R, B) mean region histograms (zeros for a region never seen)."""
        sums = self.colour_sum.sum(-1, keepdims=True)
        return np.divide(self.colour_sum, sums, out=np.zeros_like(self.colour_sum), where=sums > 0)

    def add(self, index: int, time: float, box: Box, hist: np.ndarray) -> None:
        self.boxes[index], self.times[index] = box, time
        self.colour_sum = self.colour_sum + hist
        self.missed = 0


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

    def update(self, frame: np.ndarray, time: float, index: int) -> list[Detection]:
        """(H, W, 3) RGB uint8, the next sampled frame, at ``time`` seconds, frame number ``index`` -> the faces."""
        if self.shots.is_cut(frame):
            self.cuts.append((index, time))
            self.shot += 1
            self.active = []  # a cut ends every track: nothing continues across it by position
        faces = self.detector.faces(frame)
        hists = [region_histograms(frame, f.box) for f in faces]  # (R, B) each
        pairs = self._match([f.box for f in faces], hists, frame.shape)
        out, matched = [], set()
        for d, face in enumerate(faces):
            t = pairs.get(d)
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
        """Add the caller's (D,) embedding of one detection's crop (e.g. its CLIP feature) to the track's mean."""
        v = np.asarray(embedding, np.float64).reshape(-1)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        t = self.tracks[track]
        t.embedding_sum = v if t.embedding_sum is None else t.embedding_sum + v
        t.embeddings += 1

    def link(self) -> PersonAssignment:
        """The tracks so far joined into persons (``link``)."""
        return link(list(self.tracks.values()), self.config)


def track_distance(a: Track, b: Track, embedding_weight: float) -> float:
    """Linking distance in [0, 1] of two tracks (or merged groups): colour, blended with embeddings' cosine
    distance where both have them."""
    colour = region_distance(a.colour(), b.colour())
    if a.embedding_sum is None or b.embedding_sum is None:
        return colour
    ea, eb = a.embedding_sum, b.embedding_sum
    cosine = float(ea @ eb / max(float(np.linalg.norm(ea) * np.linalg.norm(eb)), 1e-12))
    return (1 - embedding_weight) * colour + embedding_weight * (1 - cosine) / 2


def _merged(a: Track, b: Track) -> Track:
    out = Track(a.id, a.shot, {**a.boxes, **b.boxes}, {**a.times, **b.times}, a.colour_sum + b.colour_sum)
    sums = [e for e in (a.embedding_sum, b.embedding_sum) if e is not None]
    out.embedding_sum = sum(sums) if sums else None
    out.embeddings = a.embeddings + b.embeddings
    return out


def link(tracks: list[Track], config: PersonsConfig = PersonsConfig()) -> PersonAssignment:
    """Tracks -> persons: short tracks left out, the rest merged closest pair first while under the threshold and
    never sharing a frame; persons named p1, p2, ... by first appearance."""
    short = tuple(sorted(t.id for t in tracks if len(t.boxes) < config.min_detections))
    groups = [(t, [t.id]) for t in sorted(tracks, key=lambda t: t.first) if len(t.boxes) >= config.min_detections]
    while len(groups) > 1:
        best, pair = config.link_threshold, None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                a, b = groups[i][0], groups[j][0]
                if a.boxes.keys() & b.boxes.keys():
                    continue  # seen together: two persons
                d = track_distance(a, b, config.embedding_weight)
                if d < best:
                    best, pair = d, (i, j)
        if pair is None:
            break
        i, j = pair
        groups[i] = (_merged(groups[i][0], groups[j][0]), groups[i][1] + groups[j][1])
        del groups[j]
    groups.sort(key=lambda g: g[0].first)
    person_of = {t: f"p{k + 1}" for k, (_, ids) in enumerate(groups) for t in ids}
    records = {t.id: TrackRecord(t.id, t.shot, dict(t.boxes), dict(t.times)) for t in tracks}
    return PersonAssignment(person_of, records, short)


@dataclass(frozen=True)
class TrackRecord:
    """What a finished track keeps for the outputs: its shot and its box per sampled frame."""

    id: int
    shot: int
    boxes: dict[int, Box]  # sampled frame index -> box
    times: dict[int, float]  # sampled frame index -> seconds


@dataclass(frozen=True)
class PersonAssignment:
    """Tracks joined into persons: ``person_of`` maps a track id to its person's name; ``short`` lists the tracks
    too short to attribute (in no person)."""

    person_of: dict[int, str]
    tracks: dict[int, TrackRecord]
    short: tuple[int, ...]

    @property
    def persons(self) -> list[str]:
        """Person names by first appearance (then by first track)."""
        first: dict[str, tuple[float, int]] = {}
        for t, p in self.person_of.items():
            first[p] = min(first.get(p, (np.inf, t)), (min(self.tracks[t].times.values()), t))
        return sorted(first, key=first.__getitem__)

    def seen(self, person: str) -> dict[int, tuple[float, Box]]:
        """{sampled frame index: (seconds, box)} of every detection of the person, in frame order. Where a merge
        (``renamed``) gave the person two boxes in one frame, the larger is kept."""
        out: dict[int, tuple[float, Box]] = {}
        for t, p in self.person_of.items():
            if p != person:
                continue
            for i, b in self.tracks[t].boxes.items():
                if i not in out or b[2] * b[3] > out[i][1][2] * out[i][1][3]:
                    out[i] = (self.tracks[t].times[i], b)
        return dict(sorted(out.items()))

    def boxes(self, person: str, start: float, end: float) -> dict[int, Box]:
        """{sampled frame index: box} of the person's detections at times in [start, end)."""
        return {i: b for i, (s, b) in self.seen(person).items() if start <= s < end}

    def span(self, person: str) -> tuple[float, float]:
        """(first, last) seconds the person is seen."""
        times = [s for s, _ in self.seen(person).values()]
        return min(times), max(times)

    def renamed(self, mapping: dict[str, str]) -> PersonAssignment:
        """Persons merged and renamed by ``mapping`` (``{"p3": "p1", "p1": "Anna"}``: p3 joins p1, then p1 is
        called Anna), applied until nothing changes; a name that maps back to itself through a cycle stops."""

        def final(name: str) -> str:
            seen = {name}
            while name in mapping and mapping[name] not in seen:
                name = mapping[name]
                seen.add(name)
            return name

        return PersonAssignment({t: final(p) for t, p in self.person_of.items()}, self.tracks, self.short)

    def to_dict(self) -> dict:
        """A JSON-ready form: tracks with their frames [[index, seconds, x, y, w, h], ...], persons, short."""
        tracks = {
            str(t.id): {"shot": t.shot, "frames": [[i, t.times[i], *t.boxes[i]] for i in sorted(t.boxes)]}
            for t in self.tracks.values()
        }
        return {"tracks": tracks, "person_of": {str(t): p for t, p in self.person_of.items()}, "short": self.short}

    @classmethod
    def from_dict(cls, data: dict) -> PersonAssignment:
        """The inverse of ``to_dict``."""
        tracks = {}
        for key, value in data["tracks"].items():
            frames = value["frames"]
            boxes = {int(f[0]): tuple(float(v) for v in f[2:6]) for f in frames}
            tracks[int(key)] = TrackRecord(
                int(key), int(value["shot"]), boxes, {int(f[0]): float(f[1]) for f in frames}
            )
        person_of = {int(t): str(p) for t, p in data["person_of"].items()}
        return cls(person_of, tracks, tuple(int(t) for t in data["short"]))
