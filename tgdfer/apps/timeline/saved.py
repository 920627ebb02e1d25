"""A timeline's saved features (``<stem>.features.npz``, ``--save-features``): the per-frame CLIP features of the
frames it sampled, their face boxes and every frame's timestamp. ``SavedFeatures`` reads the file back in place
of the video, so re-windowing, smoothing or re-mapping needs no decoding and no encoder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from tgdfer.apps.timeline.windows import EPS, WindowPlan
from tgdfer.atomic import committed
from tgdfer.errors import ConfigError

Box = tuple[float, float, float, float]  # (x, y, w, h) as fractions of the frame, as tgdfer.data.faces
SAVED_KEYS = (
    "features",
    "frames",
    "no_face_frames",
    "all_timestamps_ms",
    "duration_s",
    "variable_rate",
    "size",
    "video",
    "decoder",
    "timestamps_source",
    "clip_sha256",
    "face_crop",
)
SAVED_SUFFIX = ".features.npz"


class SavedFeatures:
    """A timeline's ``<stem>.features.npz`` read back as its video: the same time axis (every frame's time), and
    the frames it sampled, with their features and whether the followed face was on them. Re-windowing or
    smoothing runs from it without decoding or encoding anything. A window of the new plan whose segment centre
    fell on a frame the first run did not sample takes the nearest sampled frame inside the window (by time);
    with the first run's window and stride every chosen frame is one it sampled, so the rows come out the same."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            data = np.load(self.path, allow_pickle=False)  # plain arrays only: never unpickle a user's file
            arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"expected a timeline's .features.npz, found an unreadable file {self.path}: {exc}"
            ) from exc
        missing = [k for k in SAVED_KEYS if k not in arrays]
        if missing:
            raise ConfigError(
                f"expected a .features.npz written by `tgdfer timeline --save-features`, found {self.path} "
                f"without {', '.join(missing)}"
            )
        self.times = arrays["all_timestamps_ms"].astype(np.float64) / 1000.0  # (N,) seconds, every frame
        self.duration = float(arrays["duration_s"])
        self.fps = len(self.times) / self.duration
        self.variable_rate = bool(arrays["variable_rate"])
        self.width, self.height = (int(v) for v in arrays["size"])
        self.video = str(arrays["video"])
        self.decoder = f"saved features ({arrays['decoder']})"
        self.timestamps_source = f"{arrays['timestamps_source']} (saved)"
        self.clip_sha256 = str(arrays["clip_sha256"])
        self.face_crop = bool(arrays["face_crop"])
        frames = arrays["frames"].astype(np.int64)  # (F,) encoded frames with a face box
        no_face = arrays["no_face_frames"].astype(np.int64)  # (G,) sampled frames the follower found no face on
        self.available = np.union1d(frames, no_face)  # (F+G,) sorted: every frame the first run sampled
        self.face = np.zeros(len(self.times), dtype=bool)
        self.face[frames] = True
        self._feature = {int(i): torch.from_numpy(f) for i, f in zip(frames, arrays["features"], strict=True)}
        self.assignment = None  # a people timeline's: its persons, and every detection's track and box
        self.detections: dict[int, dict[int, Box]] = {}  # frame -> {track: box}
        if "tracks" in arrays:
            from tgdfer.data.identity import PersonAssignment

            self.assignment = PersonAssignment.from_dict(json.loads(str(arrays["people"])))
            self._by_track = {}
            rows = zip(frames, arrays["tracks"], arrays["features"], arrays["boxes"], strict=True)
            for i, t, f, b in rows:
                self._by_track[(int(i), int(t))] = torch.from_numpy(f)
                self.detections.setdefault(int(i), {})[int(t)] = tuple(float(v) for v in b)

    def track_feature(self, index: int, track: int) -> torch.Tensor:
        """(D,) fp16 of one track's face on a frame (people timelines)."""
        return self._by_track[(index, track)]

    def feature(self, index: int) -> torch.Tensor:
        """(D,) fp16 of a frame with a face."""
        return self._feature[index]

    def substitute(self, plan: WindowPlan) -> WindowPlan:
        """The plan with each chosen frame replaced by the nearest sampled frame inside its window (the earlier on
        a tie); a window holding no sampled frame gets none (its row: no_frames)."""
        frames, counts = plan.frames.copy(), plan.counts.copy()
        t = self.times[self.available]
        for w in range(len(frames)):
            last = w == len(frames) - 1
            inside = (t >= plan.starts[w] - EPS) & ((t < plan.ends[w] - EPS) | last)
            candidates = self.available[inside]
            if plan.counts[w] == 0 or len(candidates) == 0:
                frames[w], counts[w] = -1, 0
                continue
            ct = self.times[candidates]
            for j, i in enumerate(frames[w]):
                frames[w, j] = candidates[int(np.argmin(np.abs(ct - self.times[i])))]
        return WindowPlan(starts=plan.starts, ends=plan.ends, frames=frames, counts=counts)

    def frames(self) -> Iterator[tuple[int, None]]:
        """(frame number, None) for every sampled frame, in time order: nothing to decode."""
        for i in self.available:
            yield int(i), None


def save_features(
    path: Path,
    saved: list[tuple[int, np.ndarray, Box]],
    stream,
    plan: WindowPlan,
    no_face: np.ndarray,
    video: str,
    clip_sha256: str,
    face_crop: bool,
    dim: int,
    extra: dict | None = None,
) -> None:
    """Write ``<stem>.features.npz`` atomically: ``saved`` (frame number, (D,) fp16 features, face box) of every
    encoded frame, in any order; ``stream`` the video's ``VideoStream``; ``no_face`` (G,) the sampled frames
    without the face."""
    order = sorted(range(len(saved)), key=lambda k: saved[k][0])
    frames = np.array([saved[k][0] for k in order], dtype=np.int64)
    features = np.stack([saved[k][1] for k in order]).astype(np.float16) if saved else np.zeros((0, dim), np.float16)
    with committed(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            features=features,  # (N, D) fp16, the encoder's raw output
            frames=frames,  # (N,) frame numbers (presentation order)
            boxes=np.array([saved[k][2] for k in order], dtype=np.float64).reshape(-1, 4),  # (N, 4) x, y, w, h
            timestamps_ms=stream.times[frames] * 1000.0,  # (N,) from pts * time_base
            all_timestamps_ms=stream.times * 1000.0,  # every decoded frame's time
            window_frames=plan.frames,  # (W, T) frame numbers each window sampled
            no_face_frames=no_face,  # (G,) sampled frames without the face
            duration_s=np.float64(stream.duration),  # what the video is, for a rerun from this file:
            variable_rate=np.bool_(stream.variable_rate),
            size=np.array([stream.width, stream.height], np.int64),
            video=np.str_(video),
            decoder=np.str_(stream.decoder),
            timestamps_source=np.str_(stream.timestamps_source),
            clip_sha256=np.str_(clip_sha256),  # features of this CLIP only
            face_crop=np.bool_(face_crop),
            **(extra or {}),  # people timelines: tracks (N,) int64 per row, people (the linked persons as JSON)
        )
