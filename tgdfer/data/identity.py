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
- ``tracks_to_arrays``/``tracks_from_arrays``: tracks as plain arrays, exactly (a resumable checkpoint).

Identity never comes from face-recognition weights (ArcFace/InsightFace are licensed for non-commercial research
only): colour statistics work with any CLIP, the tiny random one of the tests included; the caller's CLIP
embeddings add to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from tgdfer.data.appearance import BINS, REGIONS
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


def tracks_to_arrays(tracks: list[Track]) -> dict[str, np.ndarray]:
    """Tracks (ids 0..n-1, in order) as plain arrays for an npz (no pickle), exactly: ``tracks_from_arrays`` gives
    them back. n tracks, m detections in all, D the embedding size (1 when none has one)."""
    dims = [t.embedding_sum.shape[0] for t in tracks if t.embedding_sum is not None]
    dim = dims[0] if dims else 1
    detections = [(t.id, i, *t.boxes[i], t.times[i]) for t in tracks for i in t.boxes]  # in each track's order
    return {
        "track_ints": np.array(
            [(t.id, t.shot, t.embeddings, t.missed, t.last_index) for t in tracks], np.int64
        ).reshape(-1, 5),  # (n, 5)
        "track_colour": np.stack([t.colour_sum for t in tracks]) if tracks else np.zeros((0, len(REGIONS), 1)),
        "track_embedding": np.stack(
            [np.zeros(dim) if t.embedding_sum is None else t.embedding_sum for t in tracks]
        ).reshape(-1, dim),  # (n, D) float64
        "track_embedded": np.array([t.embedding_sum is not None for t in tracks], bool),  # (n,)
        "track_detections": np.array(detections, np.float64).reshape(-1, 7),  # (m, 7): track, frame, box, time
    }


def tracks_from_arrays(arrays: dict[str, np.ndarray]) -> list[Track]:
    """The tracks ``tracks_to_arrays`` wrote, equal to those it was given."""
    tracks = []
    for n, (tid, shot, embeddings, missed, last_index) in enumerate(arrays["track_ints"].tolist()):
        embedded = bool(arrays["track_embedded"][n])
        tracks.append(
            Track(
                tid,
                shot,
                colour_sum=arrays["track_colour"][n].copy(),
                embedding_sum=arrays["track_embedding"][n].copy() if embedded else None,
                embeddings=embeddings,
                missed=missed,
                last_index=last_index,
            )
        )
    for tid, index, x, y, w, h, time in arrays["track_detections"].tolist():
        tracks[int(tid)].boxes[int(index)] = (x, y, w, h)
        tracks[int(tid)].times[int(index)] = time
    return tracks


class _Stats:
    """The linker's arrays: per group of tracks, (n, R, B) summed colour histograms and (n, D) summed unit
    embeddings (zeros where it has none; ``embedded`` (n,) says which have some)."""

    def __init__(self, tracks: list[Track]):
        self.colour = np.stack([t.colour_sum for t in tracks]) if tracks else np.zeros((0, len(REGIONS), 1))
        dims = {t.embedding_sum.shape[0] for t in tracks if t.embedding_sum is not None}
        if len(dims) > 1:
            raise ConfigError(f"expected embeddings of one size for all tracks, found sizes {sorted(dims)}")
        dim = dims.pop() if dims else 1
        zero = np.zeros(dim)
        self.embedding = np.stack([zero if t.embedding_sum is None else t.embedding_sum for t in tracks] or [zero])
        self.embedded = np.array([t.embedding_sum is not None for t in tracks], bool)

    def merge(self, i: int, j: int) -> None:
        self.colour[i] += self.colour[j]
        self.embedding[i] += self.embedding[j]
        self.embedded[i] |= self.embedded[j]

    def distances(self, i: int, to: np.ndarray, weight: float, scale: float | None) -> tuple[np.ndarray, ...]:
        """Group ``i`` against groups ``to`` (k,) -> (linking distance, colour distance, embedding distance or NaN),
        (k,) each."""
        colour = _colour_distance(_mean(self.colour[i][None]), _mean(self.colour[to]))  # (k,)
        unit = self.embedding / np.maximum(np.linalg.norm(self.embedding, axis=-1, keepdims=True), 1e-12)  # (n, D)
        embedded = np.where(self.embedded[i] & self.embedded[to], (1 - unit[to] @ unit[i]) / 2, np.nan)  # (k,)
        if scale is None:
            return colour, colour, embedded
        blended = (1 - weight) * colour + weight * np.minimum(1.0, scale * embedded)
        return np.where(np.isnan(embedded), colour, blended), colour, embedded


def _mean(colour_sums: np.ndarray) -> np.ndarray:
    """(k, R, B) summed histograms -> (k, R, B) each region summing to 1, or zeros where never seen."""
    sums = colour_sums.sum(-1, keepdims=True)
    return np.divide(colour_sums, sums, out=np.zeros_like(colour_sums, dtype=np.float64), where=sums > 0)


def _colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(1, R, B) and (k, R, B) region histograms -> (k,) mean Hellinger distance over the regions both have (1.0,
    as far as can be, where they share none): ``appearance.region_distance`` for many at once."""
    both = (a.sum(-1) > 0) & (b.sum(-1) > 0)  # (k, R)
    hellinger = np.sqrt(np.clip(1.0 - np.sqrt(a * b).sum(-1), 0.0, 1.0))  # (k, R)
    shared = both.sum(-1)
    return np.where(shared > 0, (hellinger * both).sum(-1) / np.maximum(shared, 1), 1.0)


def track_distance(a: Track, b: Track, embedding_weight: float, embedding_scale: float | None) -> float:
    """Linking distance in [0, 1] of two tracks: the colour distance, blended with the embeddings' (1 - cosine) / 2
    times ``embedding_scale`` (capped at 1) where both have embeddings and a scale is known."""
    return float(_Stats([a, b]).distances(0, np.array([1]), embedding_weight, embedding_scale)[0][0])


def embedding_scale(tracks: list[Track], together: np.ndarray) -> float | None:
    """What brings embedding distances to the colour distances' scale: the ratio of their medians over the pairs of
    tracks seen together (``together``: (n, n) bool), which are two persons for sure. An embedding's scale depends on
    the model (a random CLIP's distances are ~100x smaller than a real one's), so the video calibrates it; None
    where no such pair has embeddings (colour alone then)."""
    return _scale(_Stats(tracks), together)


def _scale(stats: _Stats, together: np.ndarray) -> float | None:
    colour, embedded = [], []
    for i in range(len(together)):
        partners = np.flatnonzero(together[i, i + 1 :]) + i + 1
        if len(partners):
            _, c, e = stats.distances(i, partners, 0.0, None)
            colour.append(c[~np.isnan(e)])
            embedded.append(e[~np.isnan(e)])
    embedded_all = np.concatenate(embedded) if embedded else np.zeros(0)
    if len(embedded_all) == 0 or float(np.median(embedded_all)) <= 1e-9:
        return None
    return float(np.median(np.concatenate(colour)) / np.median(embedded_all))


def _seen_together(tracks: list[Track]) -> np.ndarray:
    """(n, n) bool: the two tracks have a detection in the same sampled frame."""
    starts = np.array([min(t.boxes) for t in tracks], np.int64)
    ends = np.array([max(t.boxes) for t in tracks], np.int64)
    overlap = (starts[:, None] <= ends[None, :]) & (starts[None, :] <= ends[:, None])  # (n, n) spans overlap
    out = np.zeros_like(overlap)
    for i, j in zip(*np.nonzero(np.triu(overlap, 1)), strict=True):
        out[i, j] = out[j, i] = bool(tracks[i].boxes.keys() & tracks[j].boxes.keys())
    return out


def link(tracks: list[Track], config: LinkConfig = LinkConfig()) -> PersonAssignment:
    """Tracks -> persons: short tracks left out, the rest merged closest pair first (centroid linkage: a merged
    group's distances are recomputed from its summed statistics) while under the threshold and never sharing a
    frame; persons named p1, p2, ... by first appearance."""
    short = tuple(sorted(t.id for t in tracks if len(t.boxes) < config.min_detections))
    kept = [t for t in sorted(tracks, key=lambda t: t.first) if len(t.boxes) >= config.min_detections]
    members = [[t.id] for t in kept]
    firsts = [t.first for t in kept]
    n, stats, together = len(kept), _Stats(kept), _seen_together(kept)
    scale = _scale(stats, together)
    dist = np.full((n, n), np.inf)  # (n, n): inf on the diagonal, for pairs seen together and for merged-away groups
    for i in range(n - 1):
        others = np.arange(i + 1, n)
        dist[i, i + 1 :] = np.where(
            together[i, i + 1 :], np.inf, stats.distances(i, others, config.embedding_weight, scale)[0]
        )
    dist = np.minimum(dist, dist.T)
    while n > 1:
        i, j = sorted(np.unravel_index(int(np.argmin(dist)), dist.shape))
        if not dist[i, j] < config.link_threshold:
            break
        stats.merge(i, j)
        members[i], members[j] = members[i] + members[j], []
        together[i] |= together[j]
        together[:, i] = together[i]
        dist[j, :] = dist[:, j] = np.inf
        alive = np.array([k for k in range(n) if members[k] and k != i], np.int64)
        if len(alive):
            row = stats.distances(i, alive, config.embedding_weight, scale)[0]
            dist[i, alive] = dist[alive, i] = np.where(together[i, alive], np.inf, row)
    found = sorted((k for k in range(n) if members[k]), key=lambda k: firsts[k])
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
