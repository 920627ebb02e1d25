"""Face crops for clips that are not face crops already (raw videos), with a detector that ships offline.

DFEW and FERV39k give frames already cropped to the face; a user's own video shows a whole scene, and CLIP would
spend most of its 224 x 224 pixels on background. ``FaceCropper`` finds the face in each sampled frame with
OpenCV's Haar frontal-face cascade (the XML file inside every opencv-python 4.x wheel, so nothing downloads) and
cuts a square around it with a margin, like DFEW's crops, which hold the whole face down to the chin.

Per clip: detect on a resized grey copy of each frame (big frames shrink for speed, tiny ones grow), keep the largest
of the confidently detected faces, and give frames without a detection the box of the nearest frame (in frame
index) that has one, so a blink or a turned head does not swap a face crop for a whole scene mid-clip. Such
frames are reported as not found. A clip with no face anywhere keeps its full frames, all reported as not found;
that is a report, not an error.

Boxes are kept as fractions of the frame, (x, y, w, h) in [0, 1], so a borrowed box fits frames of another size.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tgdfer.errors import FaceDetectorError

CASCADE_FILE = "haarcascade_frontalface_default.xml"


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


class FaceCropper:
    """Square face crops of a clip's frames: ``crop_clip({index: (H, W, 3) RGB uint8}) -> (crops, found)``.

    Built cheaply; the cascade loads on first use, so each DataLoader worker loads its own copy.
    """

    def __init__(
        self,
        margin: float = 1.4,  # crop side / box side: Haar boxes stop near the mouth; DFEW's crops hold the chin
        shift: float = 0.08,  # crop centre moves down this fraction of the box side, towards the chin
        detect_side: int = 480,  # larger frames shrink to this longest side for the detector (faces >= ~5% wide)
        detect_min: int = 192,  # smaller frames grow to this longest side: the cascade's smallest face is 24 px
        scale_factor: float = 1.1,  # Haar pyramid step: OpenCV's default
        min_neighbors: int = 5,  # overlapping hits a face needs (OpenCV's default is 3): fewer false faces
        min_share: float = 0.3,  # a face needs this share of the frame's best hit count to compete on size
    ):
        if margin < 1.0 or not 24 <= detect_min <= detect_side:
            raise ValueError(
                f"expected margin >= 1 and 24 <= detect_min <= detect_side, found {margin}, {detect_min}, {detect_side}"
            )
        self.margin, self.shift, self.detect_side, self.detect_min = margin, shift, detect_side, detect_min
        self.scale_factor, self.min_neighbors, self.min_share = scale_factor, min_neighbors, min_share
        self._cascade: cv2.CascadeClassifier | None = None

    def _detector(self) -> cv2.CascadeClassifier:
        if self._cascade is None:
            path = cascade_path()
            cascade = cv2.CascadeClassifier(str(path))
            if cascade.empty():
                raise FaceDetectorError(f"OpenCV could not read the Haar cascade {path}: reinstall opencv")
            self._cascade = cascade
        return self._cascade

    def detect(self, frame: np.ndarray) -> tuple[float, float, float, float] | None:
        """(H, W, 3) RGB uint8 -> the largest face as fractions (x, y, w, h) of the frame, or None."""
        h, w = frame.shape[:2]
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        longest = max(h, w)
        # Big frames shrink (Haar's cost grows with the pixels); tiny ones grow, as the cascade's smallest face is
        # 24 px and a 64 px frame's face is hardly more (upscaled, most faces of such frames are found).
        scale = min(self.detect_side, max(self.detect_min, longest)) / longest
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        grey = cv2.equalizeHist(grey)  # Haar features compare intensities: even out dim or washed-out lighting
        boxes, hits = self._detector().detectMultiScale2(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(24, 24)
        )
        if len(boxes) == 0:
            return None
        # A real face collects dozens of overlapping hits, a false one (a rocket nose, a lamp) a handful; drop
        # the weak ones first, or a large false face would win. Then the largest: the subject, not a bystander.
        hits = np.asarray(hits).reshape(-1)
        strong = [b for b, n in zip(boxes.tolist(), hits, strict=True) if n >= self.min_share * hits.max()]
        x, y, bw, bh = max(strong, key=lambda b: b[2] * b[3])
        gh, gw = grey.shape
        return x / gw, y / gh, bw / gw, bh / gh

    def crop(self, frame: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """(H, W, 3) uint8 and a fractional box -> (s, s, 3) uint8 square around it; edge pixels pad the outside."""
        h, w = frame.shape[:2]
        x, y, bw, bh = box[0] * w, box[1] * h, box[2] * w, box[3] * h
        side = max(1, round(self.margin * max(bw, bh)))
        cx, cy = x + bw / 2, y + bh / 2 + self.shift * max(bw, bh)
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        x1, y1 = x0 + side, y0 + side
        inside = frame[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
        pads = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))  # top, bottom, left, right
        if any(pads):
            inside = cv2.copyMakeBorder(inside, *pads, cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(inside)

    def crop_clip(self, frames: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], dict[int, bool]]:
        """{frame index: (H, W, 3) RGB uint8} -> ({index: (s, s, 3) crop}, {index: face found in this frame}).

        Frames without a face borrow the nearest detected frame's box; with no face anywhere the frames come
        back unchanged.
        """
        boxes = {i: self.detect(frame) for i, frame in frames.items()}
        found = {i: box is not None for i, box in boxes.items()}
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
