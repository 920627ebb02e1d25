"""Face crops for clips that are not face crops already (raw videos), and a face tracker for long videos.

DFEW and FERV39k give frames already cropped to the face; a user's own video shows a whole scene, and CLIP would
spend most of its 224 x 224 pixels on background. ``FaceCropper`` finds the face in each sampled frame and cuts a
square around it with a margin, like DFEW's crops, which hold the whole face down to the chin.

The detector is Google MediaPipe's BlazeFace (Bazarevsky et al. 2019), two small TFLite models shipped inside tgdfer
(``tgdfer/face_models``, Apache-2.0; provenance and checksums in the README there) and run by OpenCV's DNN module, so
it needs no package beyond OpenCV and nothing downloads. It finds tilted faces (skimage's astronaut rotated in-plane
up to 90 degrees either way) and turned ones that OpenCV's Haar frontal cascade misses (it misses the astronaut at
-20, -30 and +30 degrees), at a few milliseconds a frame on one CPU thread (bench/faces.py). Where
BlazeFace cannot load (an OpenCV without a TFLite reader, a broken install), ``backend="auto"`` falls back to the
Haar cascade with a warning.

- ``FaceDetector``: every face of one frame. A whole-frame search runs both models on the frame shrunk to their
  input (192 px full-range for small faces, 128 px short-range for close-ups); each hit is then looked at again in
  a zoomed square around it with the short-range model, which must agree (fewer false faces) and gives the box, so
  boxes follow one convention whichever model found the face.
- ``FaceTracker``: one person through a stream of frames (``update(frame)`` in order). Between whole-frame searches
  (every ``detect_every`` frames, or when the face is lost) it only searches the zoomed square where the face was,
  moved by its last motion, which is cheaper and finds smaller faces. It follows the largest face, or the one
  chosen by size rank or by position, keeps it while it stays near, and says which it follows.
- ``FaceCropper``: ``crop_clip({index: frame}) -> (crops, found)`` for a clip's sampled frames, tracked in index
  order. Frames without a face borrow the box of the nearest frame (in frame index) that has one, so a blink or a
  turned head does not swap a face crop for a whole scene mid-clip; such frames are reported as not found. A clip
  with no face anywhere keeps its full frames, all reported as not found; that is a report, not an error.

Boxes are kept as fractions of the frame, (x, y, w, h) in [0, 1], so a borrowed box fits frames of another size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from tgdfer.errors import ConfigError, FaceDetectorError

Box = tuple[float, float, float, float]  # (x, y, w, h) as fractions of the frame's width and height

CASCADE_FILE = "haarcascade_frontalface_default.xml"
MODEL_FOLDER = "face_models"  # inside the tgdfer package
# name: (file, input side, anchor strides, anchors per cell at each stride): MediaPipe's anchor layout per model
BLAZEFACE_MODELS = {
    "short": ("blazeface_short_range.tflite", 128, (8, 16), (2, 6)),  # 16 x 16 x 2 + 8 x 8 x 6 = 896 anchors
    "full": ("blazeface_full_range.tflite", 192, (4,), (1,)),  # 48 x 48 x 1 = 2304 anchors
}
BACKENDS = ("auto", "blazeface", "haar")
# Crop framing per detector: (margin = crop side / box side, shift = crop centre moved down by this share of the box
# side). Haar boxes span brows to mouth, so its crop grows and moves towards the chin; BlazeFace boxes span brows to
# chin already. Both give about the same crop on skimage's astronaut (bench/faces.py prints the crops' overlap).
FRAMING = {"haar": (1.4, 0.08), "blazeface": (1.35, -0.06)}


@dataclass(frozen=True)
class Face:
    """One detected face: its box, the detector's confidence and, for BlazeFace, six keypoints (fractions of the
    frame, in the subject's terms: right eye, left eye, nose tip, mouth centre, right ear, left ear)."""

    box: Box
    score: float
    keypoints: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class DetectorConfig:
    """How ``FaceDetector`` searches a frame."""

    backend: str = "auto"  # BlazeFace, else Haar with a warning; "blazeface" or "haar" to insist on one
    min_score: float = 0.5  # BlazeFace confidence for a whole-frame hit: MediaPipe's default
    confirm_score: float = 0.7  # confidence the zoomed look at a whole-frame hit must give: real faces of
    # bench/faces.py score a median 0.88 there, scenes without a face (coffee, a cat, a star field) up to 0.64
    roi_score: float = 0.5  # confidence of a face in the zoomed square where a tracked face was: MediaPipe's default
    roi_scale: float = 2.0  # zoomed square's side / face box side: the face fills half of the short-range input,
    # as in the close-ups it was trained on, and may move half its size between tracked frames
    nms_iou: float = 0.3  # boxes overlapping more than this are one face (MediaPipe's weighted suppression)
    haar_side: int = 480  # Haar only: larger frames shrink to this longest side (faces >= ~5% wide still found)
    haar_min: int = 192  # Haar only: smaller frames grow to this longest side (the cascade's smallest face is 24 px)
    haar_scale_factor: float = 1.1  # Haar pyramid step: OpenCV's default
    haar_min_neighbors: int = 5  # overlapping Haar hits a face needs (OpenCV's default is 3): fewer false faces
    haar_min_share: float = 0.3  # a Haar face needs this share of the frame's best hit count to count at all

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: expected one of {', '.join(BACKENDS)}, found {self.backend!r}")
        scores = (self.min_score, self.confirm_score, self.roi_score, self.nms_iou)
        if not all(0 < v < 1 for v in scores):
            raise ConfigError(f"expected min_score, confirm_score, roi_score and nms_iou in (0, 1), found {scores}")
        if self.roi_scale < 1.2 or not 24 <= self.haar_min <= self.haar_side:
            raise ConfigError(
                f"expected roi_scale >= 1.2 and 24 <= haar_min <= haar_side, found {self.roi_scale}, "
                f"{self.haar_min}, {self.haar_side}"
            )


@dataclass(frozen=True)
class TrackConfig:
    """How ``FaceTracker`` follows a face through consecutive frames."""

    detect_every: int = 10  # a whole-frame search at least every 10th frame (0.4 s at 25 fps): a drifted track is
    # caught and a lost face found again soon; in between, one zoomed search costs about a quarter of a whole one
    max_missed: int = 5  # frames the followed face may go unseen (a blink, a hand, a fast turn) before the tracker
    # lets it go and chooses again by its follow rule
    match: float = 0.75  # a face continues the track if its centre lies within this many face sides of the last one
    smooth: float = 0.6  # weight of the new box in the running average (1: raw boxes): damps detector jitter
    jump: float = 0.3  # a centre moving more than this share of the face side resets the average: no lag on a fast
    # move

    def __post_init__(self):
        if self.detect_every < 1 or self.max_missed < 0:
            raise ConfigError(
                f"expected detect_every >= 1 and max_missed >= 0, found {self.detect_every}, {self.max_missed}"
            )
        if not (0 < self.smooth <= 1 and self.match > 0 and self.jump > 0):
            raise ConfigError(
                f"expected 0 < smooth <= 1, match > 0 and jump > 0, found {self.smooth}, {self.match}, {self.jump}"
            )


@dataclass(frozen=True)
class TrackedFace:
    """``FaceTracker.update``'s answer for a frame with the followed face."""

    box: Box  # smoothed
    score: float
    source: str  # "detected" (whole-frame search) or "tracked" (zoomed search where the face was)
    person: int  # 0 for the first person chosen, +1 each time the tracker lets a face go and chooses again
    frame: int  # the frame's position in the stream, from 0


def cascade_path() -> Path:
    """The frontal-face Haar cascade inside the installed OpenCV wheel; a clear error if it ships none."""
    data = getattr(cv2, "data", None)
    folder = getattr(data, "haarcascades", None)
    path = Path(folder) / CASCADE_FILE if folder else None
    if path is None or not path.is_file():
        raise FaceDetectorError(
            f"face cropping needs OpenCV's Haar cascade {CASCADE_FILE}, expected in cv2.data.haarcascades, found "
            f"{'no cv2.data module' if folder is None else f'no such file in {folder}'} (OpenCV {cv2.__version__}). "
            "Expected opencv-python-headless<5, whose wheels carry the cascades: "
            "pip install 'opencv-python-headless>=4.10,<5'; or pass --no-face-crop for clips that are face crops"
        )
    return path


def _anchors(size: int, strides: tuple[int, ...], per_cell: tuple[int, ...]) -> np.ndarray:
    """(A, 2) anchor centres as fractions of the input, in the models' output order (row-major cells, then anchors)."""
    out = []
    for stride, n in zip(strides, per_cell, strict=True):
        grid = size // stride
        ys, xs = np.mgrid[0:grid, 0:grid]
        centres = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], -1).reshape(-1, 1, 2)  # (G*G, 1, 2)
        out.append(np.repeat(centres, n, axis=1).reshape(-1, 2))  # (G*G*n, 2)
    return np.concatenate(out)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(4,) and (N, 4) boxes as (x, y, w, h) -> (N,) intersection over union."""
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y1 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter + 1e-12)


def _weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou: float) -> list[Face]:
    """(N, 4), (N, K, 2), (N,) -> faces, best first: each group of overlapping boxes becomes their score-weighted
    mean with the group's best score (MediaPipe's WEIGHTED suppression, steadier than keeping the top box)."""
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    faces, left = [], np.ones(len(scores), bool)
    for i in range(len(scores)):
        if not left[i]:
            continue
        group = left & (_iou(boxes[i], boxes) > iou)
        group[i] = True
        w = scores[group] / scores[group].sum()
        box = (boxes[group] * w[:, None]).sum(0)
        kps = (keypoints[group] * w[:, None, None]).sum(0)
        faces.append(Face(tuple(map(float, box)), float(scores[i]), tuple(map(tuple, kps.astype(float).tolist()))))
        left &= ~group
    return faces


def _letterbox(image: np.ndarray, size: int, pad: bool = True):
    """(h, w, 3) -> (size, size, 3) with the image scaled to fit and centred on black, and (ox, oy, sx, sy): a
    point p of the square in [0, 1] lies at ((p_x * size - ox) / sx, (p_y * size - oy) / sy) of the image. With
    ``pad=False`` only the scaled image, its longest side ``size``."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    if not pad:
        return scaled
    out = np.zeros((size, size, 3), np.uint8)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    out[oy : oy + nh, ox : ox + nw] = scaled
    return out, (ox, oy, nw, nh)


class _BlazeFace:
    """One BlazeFace TFLite model run by OpenCV's DNN module: (h, w, 3) RGB uint8 -> faces as fractions of it."""

    def __init__(self, name: str, iou: float):
        file, self.size, strides, per_cell = BLAZEFACE_MODELS[name]
        self.iou = iou
        resource = resources.files("tgdfer").joinpath(MODEL_FOLDER, file)
        try:
            data = np.frombuffer(resource.read_bytes(), np.uint8)
        except OSError as exc:
            raise FaceDetectorError(
                f"BlazeFace needs its model {file}, expected in the tgdfer package ({resource}), found none "
                f"({exc}): reinstall tgdfer"
            ) from exc
        if not hasattr(cv2.dnn, "readNetFromTFLite"):
            raise FaceDetectorError(
                f"BlazeFace needs OpenCV >= 4.8 with its DNN TFLite reader, found OpenCV {cv2.__version__} without "
                "cv2.dnn.readNetFromTFLite: pip install 'opencv-python-headless>=4.10,<5'"
            )
        try:
            self.net = cv2.dnn.readNetFromTFLite(data)
        except cv2.error as exc:
            raise FaceDetectorError(f"OpenCV {cv2.__version__} could not read BlazeFace's {file}: {exc}") from exc
        self.outputs = self.net.getUnconnectedOutLayersNames()
        self.anchors = _anchors(self.size, strides, per_cell)  # (A, 2)

    def __call__(self, image: np.ndarray, min_score: float) -> list[Face]:
        square, (ox, oy, sx, sy) = _letterbox(image, self.size)
        # The models take RGB scaled to [-1, 1]; OpenCV's TFLite reader wants the blob as NCHW: (1, 3, S, S).
        self.net.setInput(cv2.dnn.blobFromImage(square, 1 / 127.5, mean=(127.5, 127.5, 127.5)))
        outs = self.net.forward(self.outputs)
        raw_scores = next(o for o in outs if o.shape[-1] == 1).reshape(-1)  # (A,) logits
        regress = next(o for o in outs if o.shape[-1] == 16).reshape(-1, 16)  # (A, 16): box (4), 6 keypoints (12)
        scores = 1 / (1 + np.exp(-np.clip(raw_scores, -80, 80)))
        keep = np.flatnonzero(scores >= min_score)
        if len(keep) == 0:
            return []
        reg, anchors = regress[keep] / self.size, self.anchors[keep]  # offsets in input pixels -> fractions
        centre, wh = reg[:, :2] + anchors, reg[:, 2:4]
        keypoints = reg[:, 4:].reshape(-1, 6, 2) + anchors[:, None]  # (N, 6, 2)
        # square fractions -> image fractions (the letterbox's offset and scale undone)
        to_image = np.array([self.size / sx, self.size / sy])
        offset = np.array([ox / sx, oy / sy])
        boxes = np.concatenate([(centre - wh / 2) * to_image - offset, wh * to_image], 1)  # (N, 4)
        return _weighted_nms(boxes, keypoints * to_image - offset, scores[keep], self.iou)


class _Haar:
    """OpenCV's Haar frontal-face cascade: (h, w, 3) RGB uint8 -> the confidently detected faces as fractions."""

    def __init__(self, config: DetectorConfig):
        self.config = config
        path = cascade_path()
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise FaceDetectorError(f"OpenCV could not read the Haar cascade {path}: reinstall opencv")

    def __call__(self, image: np.ndarray) -> list[Face]:
        c = self.config
        h, w = image.shape[:2]
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        longest = max(h, w)
        # Big frames shrink (Haar's cost grows with the pixels); tiny ones grow, as the cascade's smallest face is
        # 24 px and a 64 px frame's face is hardly more (upscaled, most faces of such frames are found).
        scale = min(c.haar_side, max(c.haar_min, longest)) / longest
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        grey = cv2.equalizeHist(grey)  # Haar features compare intensities: even out dim or washed-out lighting
        boxes, hits = self.cascade.detectMultiScale2(
            grey, scaleFactor=c.haar_scale_factor, minNeighbors=c.haar_min_neighbors, minSize=(24, 24)
        )
        if len(boxes) == 0:
            return []
        # A real face collects dozens of overlapping hits, a false one (a rocket nose, a lamp) a handful; drop
        # the weak ones, or a large false face would win. The score is the hit count relative to the best face.
        hits = np.asarray(hits, np.float64).reshape(-1)
        gh, gw = grey.shape
        return [
            Face((x / gw, y / gh, bw / gw, bh / gh), float(n / hits.max()))
            for (x, y, bw, bh), n in zip(boxes.tolist(), hits, strict=True)
            if n >= c.haar_min_share * hits.max()
        ]


def _side_px(box: Box, shape: tuple[int, ...]) -> float:
    return max(box[2] * shape[1], box[3] * shape[0])


def _centre_px(box: Box, shape: tuple[int, ...]) -> np.ndarray:
    return np.array([(box[0] + box[2] / 2) * shape[1], (box[1] + box[3] / 2) * shape[0]])


def _by_size(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: -f.box[2] * f.box[3])


def _nearest(faces: list[Face], box: Box, shape: tuple[int, ...], within: float) -> Face | None:
    """The face whose centre is nearest the box's, if within ``within`` box sides of it."""
    if not faces:
        return None
    centre, side = _centre_px(box, shape), _side_px(box, shape)
    dist = [float(np.linalg.norm(_centre_px(f.box, shape) - centre)) for f in faces]
    k = int(np.argmin(dist))
    return faces[k] if dist[k] <= within * side else None


def _overlaps(box: Box, faces: list[Face], iou: float) -> bool:
    return bool(faces) and float(_iou(np.array(box), np.array([f.box for f in faces])).max()) > iou


class FaceDetector:
    """Every face of a frame (``faces``), the largest (``detect``), or those in a square around a box
    (``faces_near``, for tracking). Built cheaply; the models load on first use, so each DataLoader worker loads its
    own copy."""

    def __init__(self, config: DetectorConfig | str = DetectorConfig()):  # a str: a backend name, other defaults
        self.config = DetectorConfig(backend=config) if isinstance(config, str) else config
        self._models: dict[str, _BlazeFace] | None = None
        self._haar: _Haar | None = None

    @property
    def backend(self) -> str:
        """ "blazeface" or "haar": the detector in use (loads it)."""
        self._load()
        return "blazeface" if self._models is not None else "haar"

    def _load(self) -> None:
        if self._models is not None or self._haar is not None:
            return
        if self.config.backend in ("auto", "blazeface"):
            try:
                self._models = {name: _BlazeFace(name, self.config.nms_iou) for name in BLAZEFACE_MODELS}
                return
            except FaceDetectorError as exc:
                if self.config.backend == "blazeface":
                    raise
                warnings.warn(
                    f"{exc}; falling back to OpenCV's Haar cascade, which misses tilted and turned faces",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self._haar = _Haar(self.config)

    def faces(self, frame: np.ndarray) -> list[Face]:
        """(H, W, 3) RGB uint8 -> every face found in the whole frame, largest first."""
        self._load()
        if self._models is None:
            return _by_size(self._haar(frame))
        c = self.config
        # Shrunk once to the larger model input (boxes are fractions, so both read the same small copy); the zoomed
        # looks below cut their squares from the full frame.
        side = max(m.size for m in self._models.values())
        small = frame if max(frame.shape[:2]) <= side else _letterbox(frame, side, pad=False)
        hits = self._models["full"](small, c.min_score) + self._models["short"](small, c.min_score)
        faces = []
        for hit in sorted(hits, key=lambda f: -f.score):
            if _overlaps(hit.box, faces, c.nms_iou):
                continue  # a face already kept (both models found it)
            # The zoomed look must agree, and its box (short-range, face at half the square) is the one kept.
            near = [f for f in self.faces_near(frame, hit.box) if f.score >= c.confirm_score]
            best = _nearest(near, hit.box, frame.shape, 0.5)
            if best is not None and not _overlaps(best.box, faces, c.nms_iou):
                faces.append(best)
        return _by_size(faces)

    def faces_near(self, frame: np.ndarray, box: Box) -> list[Face]:
        """(H, W, 3) RGB uint8 and a box -> faces found in a square of ``roi_scale`` times the box's side around its
        centre (the frame padded with black where the square leaves it), as fractions of the frame."""
        self._load()
        h, w = frame.shape[:2]
        side = max(2, round(self.config.roi_scale * _side_px(box, frame.shape)))
        cx, cy = _centre_px(box, frame.shape)
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        inside = frame[max(y0, 0) : min(y0 + side, h), max(x0, 0) : min(x0 + side, w)]
        if inside.size == 0:
            return []
        square = np.zeros((side, side, 3), np.uint8)
        square[max(0, -y0) : max(0, -y0) + inside.shape[0], max(0, -x0) : max(0, -x0) + inside.shape[1]] = inside
        found = self._haar(square) if self._models is None else self._models["short"](square, self.config.roi_score)
        sx, sy = side / w, side / h  # square fractions -> frame fractions

        def to_frame(px: float, py: float) -> tuple[float, float]:
            return x0 / w + px * sx, y0 / h + py * sy

        return [
            Face(
                (*to_frame(f.box[0], f.box[1]), f.box[2] * sx, f.box[3] * sy),
                f.score,
                tuple(to_frame(*k) for k in f.keypoints),
            )
            for f in found
        ]

    def detect(self, frame: np.ndarray) -> Box | None:
        """(H, W, 3) RGB uint8 -> the largest face as fractions (x, y, w, h) of the frame, or None."""
        faces = self.faces(frame)
        return faces[0].box if faces else None


class FaceTracker:
    """One person's face through a stream of frames: ``update(frame)`` for each frame in order -> ``TrackedFace`` or
    None (no face this frame; the stream's time goes on).

    ``follow`` chooses the person whenever the tracker has none (at the start, and after losing one for more than
    ``max_missed`` frames): "largest" (default), an int k (the k-th largest face, 0 = largest; waits until there are
    k + 1 faces), or a point (x, y) as fractions of the frame (the face nearest it). ``choices`` logs each choice:
    (frame, size rank, faces in that frame, box); ``following`` says it in words.
    """

    def __init__(
        self,
        detector: FaceDetector | None = None,
        config: TrackConfig = TrackConfig(),
        follow: str | int | tuple[float, float] = "largest",
    ):
        ok = (
            follow == "largest"
            or (isinstance(follow, int) and not isinstance(follow, bool) and follow >= 0)
            or (isinstance(follow, tuple) and len(follow) == 2 and all(0 <= float(v) <= 1 for v in follow))
        )
        if not ok:
            raise ConfigError(
                f"follow: expected 'largest', a size rank k >= 0 or a point (x, y) in [0, 1], found {follow!r}"
            )
        self.detector = detector if detector is not None else FaceDetector()
        self.config, self.follow = config, follow
        self.choices: list[tuple[int, int, int, Box]] = []
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next frame is frame 0 and the person is chosen again."""
        self.frame = -1
        self.person = -1
        self.choices.clear()
        self._raw: Box | None = None  # last detected box of the followed face, unsmoothed
        self._box: Box | None = None  # its running average
        self._velocity = np.zeros(2)  # (dx, dy) of the centre per frame, frame fractions
        self._missed = 0
        self._since_search = 0

    @property
    def following(self) -> str:
        rule = (
            "the largest face"
            if self.follow == "largest"
            else f"the face nearest ({self.follow[0]:.2f}, {self.follow[1]:.2f}) of the frame"
            if isinstance(self.follow, tuple)
            else f"face {self.follow} by size (0 = largest)"
        )
        if not self.choices:
            return f"{rule}: none chosen yet"
        said = "; ".join(f"frame {f}: face {r} of {n} by size" for f, r, n, _ in self.choices)
        return f"{rule} ({len(self.choices)} person(s) in turn; {said})"

    def _choose(self, faces: list[Face], shape: tuple[int, ...]) -> Face | None:
        if not faces:
            return None
        if self.follow == "largest":
            return faces[0]
        if isinstance(self.follow, int):
            return faces[self.follow] if len(faces) > self.follow else None
        point = np.array([self.follow[0] * shape[1], self.follow[1] * shape[0]])
        return min(faces, key=lambda f: float(np.linalg.norm(_centre_px(f.box, shape) - point)))

    def update(self, frame: np.ndarray) -> TrackedFace | None:
        """(H, W, 3) RGB uint8, the stream's next frame -> the followed face in it, or None."""
        c, det = self.config, self.detector
        self.frame += 1
        shape = frame.shape
        found, source = None, "tracked"
        tracking = self._raw is not None
        predicted = None
        if tracking:  # where the face should be now: its last box moved by its last motion
            predicted = (self._raw[0] + self._velocity[0], self._raw[1] + self._velocity[1], *self._raw[2:])
        # A zoomed search where the face is expected, unless it was missed last frame or a whole search is due. Not
        # with the Haar fallback: upscaled, the cascade finds false faces in a zoomed square (bench/faces.py).
        zoomable = tracking and det.backend == "blazeface"
        zoomed = zoomable and self._missed == 0 and self._since_search < c.detect_every - 1
        if zoomed:
            found = _nearest(det.faces_near(frame, predicted), predicted, shape, c.match)
        if found is None:
            faces = det.faces(frame)
            self._since_search = -1
            source = "detected"
            if tracking:
                found = _nearest(faces, predicted, shape, c.match)
                if found is None and zoomable and not zoomed:  # a face too small or faint for the whole search
                    found, source = _nearest(det.faces_near(frame, predicted), predicted, shape, c.match), "tracked"
            if found is None and tracking:
                self._missed += 1
                if self._missed > c.max_missed:  # let it go, and choose again among this frame's faces
                    self._raw = self._box = None
                    tracking = False
            if found is None and not tracking:
                found = self._choose(faces, shape)
                if found is not None:
                    self.person += 1
                    self.choices.append((self.frame, faces.index(found), len(faces), found.box))
                    self._velocity = np.zeros(2)
        self._since_search += 1
        if found is None:
            self._velocity = np.zeros(2)
            return None
        gap, self._missed = self._missed + 1, 0  # frames since the face was last seen
        self._follow(found.box, shape, continuing=tracking, gap=gap)
        return TrackedFace(self._box, found.score, source, self.person, self.frame)

    def _follow(self, box: Box, shape: tuple[int, ...], continuing: bool, gap: int) -> None:
        c = self.config
        if continuing and self._raw is not None:  # motion per frame, over the frames since it was last seen
            move = (_centre_px(box, shape) - _centre_px(self._raw, shape)) / gap
            self._velocity = np.array([move[0] / shape[1], move[1] / shape[0]])
        self._raw = box
        old = self._box
        if old is None or not continuing:
            self._box = box
            return
        step = np.linalg.norm(_centre_px(box, shape) - _centre_px(old, shape)) / max(_side_px(old, shape), 1e-9)
        a = 1.0 if step > c.jump else c.smooth
        self._box = tuple(float(a * n + (1 - a) * o) for n, o in zip(box, old, strict=True))


class FaceCropper:
    """Square face crops of a clip's frames: ``crop_clip({index: (H, W, 3) RGB uint8}) -> (crops, found)``.

    Built cheaply; the detector loads on first use, so each DataLoader worker loads its own copy.
    """

    def __init__(
        self,
        margin: float | None = None,  # crop side / box side; None: the detector's own (FRAMING): DFEW-like crops
        shift: float | None = None,  # crop centre moves down this share of the box side; None: the detector's own
        detector: DetectorConfig | str = DetectorConfig(),  # a str: a backend name ("haar"), other defaults
        # A clip's sampled frames lie several frames apart, so the face may move far between them: boxes are not
        # averaged (smooth=1), a face not found near the last one is chosen afresh at once (max_missed=0: the
        # largest face of that frame, as a per-frame search would), and a whole-frame search runs every 4th sampled
        # frame (a 16-frame clip gets 4 of them and 12 zoomed ones).
        track: TrackConfig = TrackConfig(detect_every=4, max_missed=0, smooth=1.0),
    ):
        if margin is not None and margin < 1.0:
            raise ConfigError(f"margin: expected >= 1 (the crop holds the whole box), found {margin}")
        self._margin, self._shift, self.track = margin, shift, track
        self.detector = FaceDetector(detector)

    def detect(self, frame: np.ndarray) -> Box | None:
        """(H, W, 3) RGB uint8 -> the largest face as fractions (x, y, w, h) of the frame, or None."""
        return self.detector.detect(frame)

    @property
    def margin(self) -> float:
        """Crop side / box side in use: the one given, else the detector's own (loads the detector)."""
        return FRAMING[self.detector.backend][0] if self._margin is None else self._margin

    @property
    def shift(self) -> float:
        """Crop centre's move down, as a share of the box side: the one given, else the detector's own."""
        return FRAMING[self.detector.backend][1] if self._shift is None else self._shift

    def crop(self, frame: np.ndarray, box: Box) -> np.ndarray:
        """(H, W, 3) uint8 and a fractional box -> (s, s, 3) uint8 square around it; edge pixels pad the outside."""
        margin, shift = self.margin, self.shift
        h, w = frame.shape[:2]
        x, y, bw, bh = box[0] * w, box[1] * h, box[2] * w, box[3] * h
        side = max(1, round(margin * max(bw, bh)))
        cx, cy = x + bw / 2, y + bh / 2 + shift * max(bw, bh)
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        x1, y1 = x0 + side, y0 + side
        inside = frame[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
        pads = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))  # top, bottom, left, right
        if any(pads):
            if inside.size == 0:  # the box lies wholly outside the frame: pad from the nearest edge pixel
                iy, ix = min(max(y0, 0), h - 1), min(max(x0, 0), w - 1)
                inside, pads = frame[iy : iy + 1, ix : ix + 1], (0, side - 1, 0, side - 1)
            inside = cv2.copyMakeBorder(inside, *pads, cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(inside)

    def boxes(self, frames: dict[int, np.ndarray]) -> dict[int, Box | None]:
        """{frame index: (H, W, 3) RGB uint8} -> {index: the followed face's box, or None}: one tracker through the
        frames in index order, following the largest face."""
        tracker = FaceTracker(self.detector, self.track)
        out = {}
        for i in sorted(frames):
            face = tracker.update(frames[i])
            out[i] = None if face is None else face.box
        return out

    def crop_clip(self, frames: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], dict[int, bool]]:
        """{frame index: (H, W, 3) RGB uint8} -> ({index: (s, s, 3) crop}, {index: face found in this frame}).

        Frames without a face borrow the nearest detected frame's box; with no face anywhere the frames come
        back unchanged.
        """
        boxes = self.boxes(frames)
        found = {i: boxes[i] is not None for i in frames}
        detected = sorted(i for i, box in boxes.items() if box is not None)
        if not detected:
            return dict(frames), found
        anchors = np.array(detected)
        crops = {}
        for i, frame in frames.items():
            box = boxes[i]
            if box is None:  # temporal fill: the nearest frame with a face (the earlier one on a tie)
                box = boxes[int(anchors[np.abs(anchors - i).argmin()])]
            crops[i] = self.crop(frame, box)
        return crops, found
