"""Tracks of faces joined into persons by appearance, offline at the end of a video, and what the outputs need of
them.

- ``Track``: one face followed through consecutive sampled frames of one shot (``tgdfer.data.persons`` makes
  them), with a small running state: the summed colour histograms of its face, hair and clothing regions
  (``appearance.region_histograms``), the summed L2-normalised embeddings the caller gave, and its box per sampled
  frame.
- ``link(tracks, config) -> PersonAssignment``: tracks with fewer than ``min_detections`` detections are left out
  (counted in ``short``); the rest merge greedily, closest pair first (centroid linkage on the colour histograms,
  plus embeddings where both have them, brought to colour's scale on the pairs of tracks seen together), while the
  distance stays under ``link_threshold`` and the two never share a frame (one person is never in two places at
  once). Persons are named ``p1``, ``p2``, ... by first appearance.
- ``PersonAssignment``: which person each track is, each person's boxes in a time range (``boxes``) or nearest a
  time (``nearest``), screen time (``detections``, ``top``), first and last seen (``span``), a merge-and-rename
  map (``renamed``), and a JSON form (``to_dict``/``from_dict``) to re-apply a map without decoding.

Identity never comes from face-recognition weights (ArcFace/InsightFace are licensed for non-commercial research
only): colour statistics work with any CLIP, the tiny random one of the tests included; the caller's CLIP
embeddings add to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from tgdfer.data.appearance import BINS, REGIONS, region_distance
from tgdfer.errors import ConfigError

Box = tuple[float, float, float, float]  # (x, y, w, h) as fractions of the frame's width and height


@dataclass(frozen=True)
class LinkConfig:
    """How ``link`` joins tracks into persons."""

    min_detections: int = 4  # a track with fewer detections is too short to attribute (a false face, a glimpse)
    link_threshold: float = 0.42  # largest linking distance of two tracks of one person: the real-footage
    # composites of tgdfer/testing/people.py give <= 0.32 for one person across shots, >= 0.5 for two persons
    embedding_weight: float = 0.3  # share of the linking distance from the caller's embeddings (scaled to colour's
    # scale on tracks seen together, see embedding_scale), where both tracks have them; colour keeps the rest: the
    # tiny random CLIP's alone merge two of the seven persons of the group video (bench/persons.py)

    def __post_init__(self):
        if self.min_detections < 1 or not (0 < self.link_threshold < 1 and 0 <= self.embedding_weight <= 1):
            raise ConfigError(
                "expected min_detections >= 1, link_threshold in (0, 1) and embedding_weight in [0, 1], found "
                f"{self.min_detections}, {self.link_threshold}, {self.embedding_weight}"
            )


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
    last_index: int = -1  # the sampled frame of the last detection

    @property
    def first(self) -> float:
        return min(self.times.values())

    @property
    def last(self) -> float:
        return max(self.times.values())

    @property
    def last_box(self) -> Box:
        return self.boxes[self.last_index]

    def colour(self) -> np.ndarray:
        """(R, B) mean region histograms (zeros for a region never seen)."""
        sums = self.colour_sum.sum(-1, keepdims=True)
        return np.divide(self.colour_sum, sums, out=np.zeros_like(self.colour_sum), where=sums > 0)

    def add(self, index: int, time: float, box: Box, hist: np.ndarray) -> None:
        """A detection at sampled frame ``index`` (after the track's others), ``time`` seconds, with its (R, B)
        region histograms."""
        self.boxes[index], self.times[index] = box, time
        self.colour_sum = self.colour_sum + hist
        self.missed, self.last_index = 0, index

    def describe(self, embedding: np.ndarray) -> None:
        """Add a (D,) embedding of one detection's crop to the running mean (L2-normalised first)."""
        v = np.asarray(embedding, np.float64).reshape(-1)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        self.embedding_sum = v if self.embedding_sum is None else self.embedding_sum + v
        self.embeddings += 1


def _embedding_distance(a: Track, b: Track) -> float | None:
    """(1 - cosine) / 2 in [0, 1] of two tracks' mean embeddings, or None where one has none."""
    if a.embedding_sum is None or b.embedding_sum is None:
        return None
    ea, eb = a.embedding_sum, b.embedding_sum
    return (1 - float(ea @ eb / max(float(np.linalg.norm(ea) * np.linalg.norm(eb)), 1e-12))) / 2


def track_distance(a: Track, b: Track, embedding_weight: float, embedding_scale: float | None) -> float:
    """Linking distance in [0, 1] of two tracks (or merged groups): the colour distance, blended with the
    embeddings' distance times ``embedding_scale`` (capped at 1) where both have embeddings and a scale is known."""
    colour = region_distance(a.colour(), b.colour())
    embedded = _embedding_distance(a, b)
    if embedded is None or embedding_scale is None:
        return colour
    return (1 - embedding_weight) * colour + embedding_weight * min(1.0, embedding_scale * embedded)


def embedding_scale(tracks: list[Track], together: np.ndarray) -> float | None:
    """What brings embedding distances to the colour distances' scale: the ratio of their medians over the pairs of
    tracks seen together (``together``: (n, n) bool), which are two persons for sure. An embedding's scale depends on
    the model (a random CLIP's distances are ~100x smaller than a real one's), so the video calibrates it; None
    where no such pair has embeddings (colour alone then)."""
    colour, embedded = [], []
    for i, j in zip(*np.nonzero(np.triu(together, 1)), strict=True):
        e = _embedding_distance(tracks[i], tracks[j])
        if e is not None:
            colour.append(region_distance(tracks[i].colour(), tracks[j].colour()))
            embedded.append(e)
    if not embedded or float(np.median(embedded)) <= 1e-9:
        return None
    return float(np.median(colour) / np.median(embedded))


def _merged(a: Track, b: Track) -> Track:
    out = Track(a.id, a.shot, {**a.boxes, **b.boxes}, {**a.times, **b.times}, a.colour_sum + b.colour_sum)
    out.last_index = max(a.last_index, b.last_index)
    sums = [e for e in (a.embedding_sum, b.embedding_sum) if e is not None]
    out.embedding_sum = sum(sums) if sums else None
    out.embeddings = a.embeddings + b.embeddings
    return out


def _seen_together(tracks: list[Track]) -> np.ndarray:
    """(n, n) bool: the two tracks have a detection in the same sampled frame."""
    n = len(tracks)
    out = np.zeros((n, n), bool)
    spans = [(min(t.boxes), max(t.boxes)) for t in tracks]
    for i in range(n):
        for j in range(i + 1, n):
            if spans[i][0] <= spans[j][1] and spans[j][0] <= spans[i][1] and tracks[i].boxes.keys() & tracks[j].boxes:
                out[i, j] = out[j, i] = True
    return out


def link(tracks: list[Track], config: LinkConfig = LinkConfig()) -> PersonAssignment:
    """Tracks -> persons: short tracks left out, the rest merged closest pair first (centroid linkage: a merged
    group's distances are recomputed from its summed statistics) while under the threshold and never sharing a
    frame; persons named p1, p2, ... by first appearance."""
    short = tuple(sorted(t.id for t in tracks if len(t.boxes) < config.min_detections))
    groups = [t for t in sorted(tracks, key=lambda t: t.first) if len(t.boxes) >= config.min_detections]
    members = [[t.id] for t in groups]
    together = _seen_together(groups)
    scale = embedding_scale(groups, together)
    n = len(groups)
    dist = np.full((n, n), np.inf)  # (n, n), inf on the diagonal, for pairs seen together and for merged-away rows
    for i in range(n):
        for j in range(i + 1, n):
            if not together[i, j]:
                dist[i, j] = dist[j, i] = track_distance(groups[i], groups[j], config.embedding_weight, scale)
    while n > 1:
        i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
        if not dist[i, j] < config.link_threshold:
            break
        i, j = min(i, j), max(i, j)
        groups[i], members[i], members[j] = _merged(groups[i], groups[j]), members[i] + members[j], []
        together[i] |= together[j]
        together[:, i] = together[i]
        dist[j, :] = dist[:, j] = np.inf
        for k in range(n):
            if k != i and members[k] and not together[i, k]:
                dist[i, k] = dist[k, i] = track_distance(groups[i], groups[k], config.embedding_weight, scale)
    found = sorted((k for k in range(n) if members[k]), key=lambda k: groups[k].first)
    person_of = {t: f"p{rank + 1}" for rank, k in enumerate(found) for t in members[k]}
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

    @cached_property
    def _by_person(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """{person: ((N,) sampled frame indices, increasing, (N,) seconds, (N, 4) boxes)}, built once. Where a merge
        (``renamed``) gave a person two boxes in one frame, the larger is kept."""
        rows: dict[str, dict[int, tuple[float, Box]]] = {}
        for t, p in self.person_of.items():
            out = rows.setdefault(p, {})
            for i, b in self.tracks[t].boxes.items():
                if i not in out or b[2] * b[3] > out[i][1][2] * out[i][1][3]:
                    out[i] = (self.tracks[t].times[i], b)
        index = {}
        for p, out in rows.items():
            frames = np.array(sorted(out), np.int64)
            times = np.array([out[i][0] for i in frames], np.float64)
            boxes = np.array([out[i][1] for i in frames], np.float64).reshape(-1, 4)
            index[p] = (frames, times, boxes)
        return index

    def _rows(self, person: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if person not in self._by_person:
            raise KeyError(f"expected a person of {', '.join(self.persons) or 'none'}, found {person!r}")
        return self._by_person[person]

    def seen(self, person: str) -> dict[int, tuple[float, Box]]:
        """{sampled frame index: (seconds, box)} of every detection of the person, in frame order."""
        frames, times, boxes = self._rows(person)
        return {int(i): (float(s), tuple(map(float, b))) for i, s, b in zip(frames, times, boxes, strict=True)}

    def boxes(self, person: str, start: float, end: float) -> dict[int, Box]:
        """{sampled frame index: box} of the person's detections at times in [start, end)."""
        frames, times, boxes = self._rows(person)
        a, b = np.searchsorted(times, [start, end], side="left")
        return {int(i): tuple(map(float, box)) for i, box in zip(frames[a:b], boxes[a:b], strict=True)}

    def nearest(self, person: str, time: float, within: float) -> tuple[int, Box] | None:
        """(sampled frame index, box) of the person's detection nearest ``time`` seconds, if within ``within``
        seconds of it (e.g. the box at a window's centre), else None."""
        frames, times, boxes = self._rows(person)
        k = int(np.searchsorted(times, time))
        near = [j for j in (k - 1, k) if 0 <= j < len(times)]
        if not near:
            return None
        j = min(near, key=lambda j: abs(times[j] - time))
        return (int(frames[j]), tuple(map(float, boxes[j]))) if abs(times[j] - time) <= within else None

    def detections(self, person: str) -> int:
        """How many sampled frames show the person: screen time, in sampled frames."""
        return len(self._rows(person)[0])

    def top(self, n: int) -> list[str]:
        """The ``n`` persons with the most screen time, in order of first appearance (``--people N``)."""
        chosen = sorted(self.persons, key=lambda p: -self.detections(p))[:n]
        return [p for p in self.persons if p in chosen]

    def span(self, person: str) -> tuple[float, float]:
        """(first, last) seconds the person is seen."""
        times = self._rows(person)[1]
        return float(times[0]), float(times[-1])

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
