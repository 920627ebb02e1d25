"""Reading frames from a clip: a folder of image files or a video file.

Frames come back as RGB uint8 arrays (H, W, 3). Folder frames sort by the number in their name ("2.jpg" before
"10.jpg"); other files in the folder are ignored. A clip that cannot give its frames raises ``ClipError`` with a
reason that extraction records; it is never turned into zeros.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from tgdfer.errors import ClipError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
_NUMBER = re.compile(r"\d+")


def frame_sort_key(path: Path) -> tuple[int, int, str]:
    """Sort by the last number in the file stem, so frame 10 follows frame 9; unnumbered names go last."""
    numbers = _NUMBER.findall(path.stem)
    return (0, int(numbers[-1]), path.name) if numbers else (1, 0, path.name)


def list_frames(folder: str | Path) -> list[Path]:
    """Image files of a frame folder in numeric order."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=frame_sort_key)


_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"


def _truncated_jpeg(path: Path) -> bool:
    """Whether ``path`` is a JPEG cut short: no end-of-image marker in its last KiB (OpenCV decodes such a file,
    greying what is missing, and only warns on stderr)."""
    with open(path, "rb") as fh:
        if fh.read(3) != _JPEG_START:
            return False
        size = fh.seek(0, 2)
        fh.seek(max(0, size - 1024))
        return _JPEG_END not in fh.read()


def _to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class FrameFolder:
    """A clip stored as one image file per frame."""

    def __init__(self, path: Path):
        if not path.is_dir():
            raise ClipError(f"frame folder not found: {path}")
        self.path = path
        self.files = list_frames(path)
        if not self.files:
            raise ClipError(f"no image frames in folder: {path}")

    @property
    def num_frames(self) -> int:
        return len(self.files)

    def read(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
        """Decode each distinct index once: {index: (H, W, 3) RGB uint8}."""
        frames = {}
        for i in sorted(set(int(i) for i in indices)):
            image = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
            if image is None:
                raise ClipError(f"frame file could not be decoded: {self.files[i]}")
            if _truncated_jpeg(self.files[i]):
                raise ClipError(f"frame file is a truncated JPEG (no end-of-image marker): {self.files[i]}")
            frames[i] = _to_rgb(image)
        return frames


class VideoFile:
    """A clip stored as a video file, decoded with OpenCV (FFmpeg).

    The container's frame count plans the sampling; one decoding pass keeps only the planned frames and counts
    what really decodes. A shortfall within a few frames (containers often round) re-plans on the true count;
    a larger one means the file is truncated and the clip fails.
    """

    def __init__(self, path: Path):
        if not path.is_file():
            raise ClipError(f"video file not found: {path}")
        self.path = path
        capture = self._open()
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        self.declared = max(declared, 0)
        self._count: int | None = None

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise ClipError(f"video could not be opened (unsupported or corrupt): {self.path}")
        return capture

    def _count_frames(self) -> int:
        capture = self._open()
        count = 0
        while capture.grab():
            count += 1
        capture.release()
        return count

    @property
    def num_frames(self) -> int:
        """Frames that decode. Uses the container's count until a decoding pass says otherwise."""
        if self._count is None:
            self._count = self.declared if self.declared > 0 else self._count_frames()
            if self._count == 0:
                raise ClipError(f"video has no decodable frames: {self.path}")
        return self._count

    def read(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
        """Decode the whole file once (the count is checked), keeping the wanted frames: {index: RGB}."""
        wanted = set(int(i) for i in indices)
        frames: dict[int, np.ndarray] = {}
        capture = self._open()
        decoded = 0
        try:
            while capture.grab():
                if decoded in wanted:
                    ok, image = capture.retrieve()
                    if not ok or image is None:
                        raise ClipError(f"frame {decoded} could not be decoded: {self.path}")
                    frames[decoded] = _to_rgb(image)
                decoded += 1
        finally:
            capture.release()
        if decoded == 0:
            raise ClipError(f"video has no decodable frames: {self.path}")
        planned = self.num_frames
        if decoded != planned:
            if decoded < planned - max(2, planned // 20):
                raise ClipError(
                    f"video is truncated: container declares {planned} frames, only {decoded} decode: {self.path}"
                )
            self._count = decoded  # containers often round their count: the caller re-plans on the truth
            raise FrameCountChanged(decoded)
        return frames


class FrameCountChanged(Exception):
    """The decodable frame count differs slightly from the container's; sample again with ``count``."""

    def __init__(self, count: int):
        super().__init__(count)
        self.count = count


def open_clip_source(path: str | Path) -> FrameFolder | VideoFile:
    """A frame folder or a video file, chosen by what is on disk."""
    path = Path(path)
    if path.is_dir():
        return FrameFolder(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:  # OpenCV would open a lone image as a one-frame video
        raise ClipError(
            f"expected a video file or a folder of frames, found an image file: {path} (put it in a "
            "folder to use it as a one-frame clip)"
        )
    if path.suffix.lower() in VIDEO_EXTENSIONS or path.is_file():
        return VideoFile(path)
    raise ClipError(f"clip not found (expected a frame folder or a video file): {path}")


def video_fps(path: str | Path) -> float | None:
    """The frame rate a video container declares, or None for a frame folder or a container without one.

    Timestamps from it (frame / fps) are exact for constant frame rate only, as OpenFace's are."""
    path = Path(path)
    if path.is_dir() or not path.is_file():
        return None
    capture = cv2.VideoCapture(str(path))
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS)) if capture.isOpened() else 0.0
    finally:
        capture.release()
    return fps if fps > 0 else None


def read_sampled(path: str | Path, plan) -> tuple[int, dict[int, np.ndarray], list[np.ndarray]]:
    """Open a clip, plan sample indices from its frame count with ``plan(n) -> list of index arrays``, decode.

    Returns (frame count, {index: RGB frame}, the planned index arrays). Re-plans once if a video's container
    count was slightly off.
    """
    source = open_clip_source(path)
    for _ in range(2):
        n = source.num_frames
        indices = plan(n)
        try:
            frames = source.read(np.concatenate(indices).tolist())
            return n, frames, indices
        except FrameCountChanged:
            continue
    raise ClipError(f"video frame count is unstable between decoding passes: {path}")
