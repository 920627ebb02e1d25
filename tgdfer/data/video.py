"""Reading frames from a clip: a folder of image files or a video file.

``VideoStream`` is the one video reader: every frame's presentation timestamp from a demux pass, then one decoding
pass (PyAV; OpenCV when PyAV is missing). ``VideoFile`` (extract, predict) and the timeline both read through it.
Frames come back as RGB uint8 arrays (H, W, 3). Folder frames sort by the number in their name ("2.jpg" before
"10.jpg"); other files in the folder are ignored. A clip that cannot give its frames raises ``ClipError`` with a
reason that extraction records; it is never turned into zeros.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
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


class Frame:
    """A decoded frame whose RGB conversion happens only when asked for (most frames of a long video are never
    sampled)."""

    def __init__(self, convert: Callable[[], np.ndarray]):
        self._convert = convert

    def rgb(self) -> np.ndarray:
        """(H, W, 3) RGB uint8."""
        return self._convert()


class VideoStream:
    """A video file's first video stream, the one video reader of tgdfer (extract, predict and the timeline).

    ``times`` (N,) are every frame's presentation timestamps in seconds from the first frame, in presentation
    order: PyAV's ``pts * time_base`` from a demux pass (packets only, nothing decoded), or OpenCV's
    ``CAP_PROP_POS_MSEC`` when PyAV is missing. Frame number / fps is never used: it is wrong on variable frame
    rate. ``frames()`` is one decoding pass yielding (frame number, ``Frame``) in presentation order; ``declared``
    is the frame count the container states (0 when it states none). A file that cannot be opened, or has no
    frame, raises ``ClipError``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ClipError(f"video file not found: expected a video file at {self.path}, found nothing there")
        try:
            import av  # noqa: F401
        except ImportError:
            self.decoder = "opencv"
        else:
            self.decoder = "pyav"
        self.timestamps_source = "pts * time_base" if self.decoder == "pyav" else "CAP_PROP_POS_MSEC"
        self._pts: np.ndarray | None = None  # PyAV: sorted presentation timestamps, in time_base units
        self.times = self._scan_pyav() if self.decoder == "pyav" else self._scan_opencv()
        if len(self.times) == 0:
            raise ClipError(f"expected a video with frames, found none that decode in {self.path}")
        gaps = np.diff(self.times)
        self.frame_interval = float(np.median(gaps)) if len(gaps) else 0.04  # 25 fps when there is one frame
        self.duration = float(self.times[-1] + self.frame_interval)  # the last frame is shown one interval
        self.fps = len(self.times) / self.duration
        self.variable_rate = bool(len(gaps) and gaps.max() - gaps.min() > 0.01 * self.frame_interval + 1e-4)

    def _scan_pyav(self) -> np.ndarray:
        import av

        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise ClipError(f"expected a video stream, found none in {self.path}")
                stream = container.streams.video[0]
                pts = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
                if not pts:  # no packet timestamps (some raw streams): the decoder's frame times
                    container.seek(0)
                    pts = [f.pts for f in container.decode(stream) if f.pts is not None]
                self._time_base = stream.time_base
                self.width, self.height = stream.codec_context.width, stream.codec_context.height
                self.declared = max(int(stream.frames or 0), 0)
        except av.FFmpegError as exc:
            raise ClipError(
                f"expected a video PyAV can read, found an unsupported or corrupt file: {self.path} ({exc})"
            ) from exc
        self._pts = np.unique(np.asarray(pts, dtype=np.int64))  # presentation order (packets come in decode order)
        if len(self._pts) == 0:
            return np.zeros(0, dtype=np.float64)
        tb = self._time_base
        return (self._pts - self._pts[0]).astype(np.float64) * tb.numerator / tb.denominator

    def _scan_opencv(self) -> np.ndarray:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise ClipError(f"expected a video OpenCV can open, found an unsupported or corrupt file: {self.path}")
        self.declared = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        times = []
        while capture.grab():
            times.append(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
        self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        capture.release()
        t = np.asarray(times, dtype=np.float64)
        return t - t[0] if len(t) else t

    def frames(self) -> Iterator[tuple[int, Frame]]:
        """One decoding pass: (frame number, frame) for every decoded frame, in presentation order."""
        if self.decoder == "pyav":
            yield from self._frames_pyav()
        else:
            yield from self._frames_opencv()

    def _frames_pyav(self) -> Iterator[tuple[int, Frame]]:
        import av

        assert self._pts is not None
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # the codec's own frame threads; the encoder waits on decoding otherwise
            index = -1
            for frame in container.decode(stream):
                if frame.pts is not None:
                    found = int(np.searchsorted(self._pts, frame.pts))
                    if found >= len(self._pts) or self._pts[found] != frame.pts:
                        continue  # a frame the demux pass did not see: it has no place on the time axis
                    index = found
                else:
                    index += 1
                if index >= len(self._pts):
                    return
                yield index, Frame(lambda f=frame: f.to_ndarray(format="rgb24"))

    def _frames_opencv(self) -> Iterator[tuple[int, Frame]]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while index < len(self.times) and capture.grab():

                def convert(c=capture) -> np.ndarray:
                    ok, image = c.retrieve()
                    if not ok or image is None:
                        raise ClipError(f"expected a decodable frame, found a broken one in {self.path}")
                    return _to_rgb(image)

                yield index, Frame(convert)
                index += 1
        finally:
            capture.release()


class VideoFile:
    """A clip stored as a video file, read with ``VideoStream``: its frame count is the number of frames with a
    timestamp, and ``read`` decodes once, keeping the wanted frames. A stream that holds far fewer frames than its
    container declares is a truncated file, and the clip fails."""

    def __init__(self, path: Path):
        self.path = path
        self.stream = VideoStream(path)
        declared, n = self.stream.declared, len(self.stream.times)
        if declared and n < declared - max(2, declared // 20):  # containers often round their count
            raise ClipError(f"video is truncated: container declares {declared} frames, only {n} found: {path}")

    @property
    def num_frames(self) -> int:
        return len(self.stream.times)

    def read(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
        """Decode the file once, up to the last wanted frame: {index: (H, W, 3) RGB uint8}."""
        wanted = set(int(i) for i in indices)
        frames: dict[int, np.ndarray] = {}
        for index, frame in self.stream.frames():
            if index in wanted:
                frames[index] = frame.rgb()
                if len(frames) == len(wanted):
                    break
        missing = sorted(wanted - set(frames))
        if missing:
            raise ClipError(f"frames {missing[:5]} of {self.num_frames} could not be decoded: {self.path}")
        return frames


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

    Returns (frame count, {index: RGB frame}, the planned index arrays).
    """
    source = open_clip_source(path)
    n = source.num_frames
    indices = plan(n)
    return n, source.read(np.concatenate(indices).tolist()), indices
