"""From a clip on disk to the uint8 frames of its views, ready for the CLIP image encoder.

A clip has one test view (segment centres, plain CLIP preprocessing) and ``views`` augmented train views (random
frame per segment, one augmentation draw per view). Stage 1 (extract) and ``tgdfer predict`` both go through
``ClipViews``, so a trained model sees the same sampling and preprocessing at inference as in its cache.
``ClipViews`` is a torch Dataset so decoding runs in DataLoader worker processes, whose tensors travel to the
encoder through shared memory.

With ``every_frame`` (``extract --frames all``) a "view" is a pass over every frame of the clip instead (or
``max_frames`` of them, spread uniformly): pass 0 plain, passes 1..K augmented with one draw each, through the
same preprocessing code (``plan_passes``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tgdfer.config import AugmentConfig
from tgdfer.data.preprocess import AugmentDraw, augment_view, clip_view, draw_augment, normalize
from tgdfer.data.sampling import (
    TEST_VIEW,
    TRAIN_VIEW,
    centre_indices,
    every_frame_indices,
    train_indices,
    view_rng,
)
from tgdfer.data.video import ClipError, read_sampled, video_fps


@dataclass(frozen=True)
class ClipJob:
    row: int  # annotation row (or input number for predict)
    id: str  # seeds the train views: the same id always gets the same views
    path: str  # frame folder or video file (a name for ``frames``)
    frames: object = field(default=None, compare=False, repr=False)  # or the clip's frames in memory: a (n, H, W,
    #                                  3) uint8 RGB array or a list of n (H, W, 3) ones, sampled as a folder would be


def _in_memory(frames, path: str, plan) -> tuple[int, dict[int, np.ndarray], list[np.ndarray]]:
    """``read_sampled`` for frames already decoded: (frame count, {index: RGB frame}, the planned index arrays)."""
    n = len(frames)
    if n == 0:
        raise ClipError(f"expected at least 1 frame, found none: {path}")
    indices = plan(n)
    decoded = {}
    for i in np.unique(np.concatenate(indices)).tolist():
        frame = np.asarray(frames[i])
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ClipError(
                f"expected frames as (H, W, 3) uint8 RGB arrays, found {frame.shape} {frame.dtype} at frame {i}: {path}"
            )
        decoded[i] = np.ascontiguousarray(frame)
    return n, decoded, indices


def plan_views(
    n: int, frames: int, views: int, seed: int, clip_id: str, augment: AugmentConfig
) -> tuple[list[np.ndarray], list[AugmentDraw | None]]:
    """Frame indices and augmentation of the test view and ``views`` train views of an n-frame clip."""
    indices, draws = [centre_indices(n, frames)], [None]
    for k in range(views):
        rng = view_rng(seed, clip_id, k)
        indices.append(train_indices(n, frames, rng))
        draws.append(draw_augment(rng, augment))
    return indices, draws


def plan_passes(
    n: int, max_frames: int, passes: int, seed: int, clip_id: str, augment: AugmentConfig
) -> tuple[list[np.ndarray], list[AugmentDraw | None]]:
    """Frame indices and augmentation of the plain pass and ``passes`` augmented passes of an n-frame clip.

    Every pass covers the same frames; augmented pass k draws from the same generator as train view k would."""
    frames = every_frame_indices(n, max_frames)
    draws = [None] + [draw_augment(view_rng(seed, clip_id, k), augment) for k in range(passes)]
    return [frames] * (1 + passes), draws


class ClipViews(Dataset):
    """Item i: the views of clip ``jobs[i]`` as a dict (see ``__getitem__``); failures come back, not raised."""

    def __init__(
        self,
        jobs: list[ClipJob],
        frames: int,
        views: int,
        seed: int,
        size: int,
        augment: AugmentConfig,
        face_crop: bool = False,
        every_frame: bool = False,
        max_frames: int = 0,
    ):
        self.jobs, self.frames, self.views, self.seed, self.size = jobs, frames, views, seed, size
        self.augment, self.face_crop = augment, face_crop
        self.every_frame, self.max_frames = every_frame, max_frames  # per-frame passes instead of T-frame views
        self._cropper = None

    def __len__(self) -> int:
        return len(self.jobs)

    def _faces(self, decoded: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], dict[int, bool]]:
        if not self.face_crop:
            return decoded, dict.fromkeys(decoded, True)
        if self._cropper is None:  # built in the worker process, on first use
            from tgdfer.data.faces import FaceCropper

            self._cropper = FaceCropper()
        return self._cropper.crop_clip(decoded)

    def __getitem__(self, i: int) -> dict:
        """{row, error (str or None), num_frames, frames (V*T, S, S, 3) uint8, view_frames (V, T) int32,
        view_kind (V,) int8, view_index (V,) int16, face_found (V, T) bool, fps (float or None)}.
        With ``every_frame`` T is the number of frames stored (every frame, or ``max_frames``) and V the passes."""
        job = self.jobs[i]
        plan: dict = {}

        def make_plan(n: int) -> list[np.ndarray]:
            if self.every_frame:
                plan["indices"], plan["draws"] = plan_passes(
                    n, self.max_frames, self.views, self.seed, job.id, self.augment
                )
            else:
                plan["indices"], plan["draws"] = plan_views(n, self.frames, self.views, self.seed, job.id, self.augment)
            return plan["indices"]

        try:
            if job.frames is not None:
                n, decoded, indices = _in_memory(job.frames, job.path, make_plan)
            else:
                n, decoded, indices = read_sampled(job.path, make_plan)
            decoded, found = self._faces(decoded)
        except ClipError as exc:
            return {"row": job.row, "error": str(exc)}
        except Exception as exc:  # a decoder or detector failing on data we did not foresee: this clip only
            return {"row": job.row, "error": f"unreadable clip ({type(exc).__name__}: {exc}): {job.path}"}
        out = np.empty((sum(len(v) for v in indices), self.size, self.size, 3), dtype=np.uint8)
        k = 0
        for view_idx, draw in zip(indices, plan["draws"], strict=True):
            for t in view_idx:
                frame = decoded[int(t)]
                out[k] = clip_view(frame, self.size) if draw is None else augment_view(frame, draw, self.size)
                k += 1
        view_frames = np.stack(indices).astype(np.int32)
        return {
            "row": job.row,
            "error": None,
            "num_frames": n,
            "frames": torch.from_numpy(out),
            "view_frames": view_frames,
            "view_kind": np.array([TEST_VIEW] + [TRAIN_VIEW] * self.views, dtype=np.int8),
            "view_index": np.array([0, *range(self.views)], dtype=np.int16),
            "face_found": np.vectorize(lambda t: found[int(t)], otypes=[bool])(view_frames),
            "fps": video_fps(job.path) if self.every_frame else None,
        }


def worker_init(_: int) -> None:
    """One thread per decode worker: parallelism comes from the processes."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def decode_workers(requested: int, clips: int, world: int = 1) -> int:
    """Decode processes: ``requested``, or for -1 one per CPU core but one, shared by ``world`` ranks; never more
    than there are clips, and none for a single clip (starting a process costs more than decoding it)."""
    n = ((os.cpu_count() or 1) - 1) // max(world, 1) if requested < 0 else requested
    return 0 if clips <= 1 else max(0, min(n, clips))


def decode_loader(dataset: ClipViews, workers: int, pin_memory: bool, prefetch: int = 4) -> Iterator[dict]:
    """Iterate ``dataset`` in order, decoding in ``workers`` forked processes (0: in this one).

    OpenCV's thread pool does not survive fork: a child inherits the pool's state without its threads, and its
    first ``cv2.setNumThreads`` waits on them forever. So the parent's pool is stopped (one thread) while the
    workers start, and restored after.
    """
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=worker_init,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers else None,
    )
    if workers == 0:
        yield from loader
        return
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)  # joins the pool's threads in this process before the fork
    try:
        iterator = iter(loader)  # forks the workers
    finally:
        cv2.setNumThreads(previous)
    yield from iterator


def encode_frames(clip, frames: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, S, S, 3) uint8 (any device) -> (N, D) features in fp16 on the encoder's device, in fixed batches.

    Batches are cut only by position, so the same frames in the same order give bit-identical features.
    """
    outputs = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size].to(clip.device, non_blocking=True)
        outputs.append(clip.encode_images(normalize(chunk, clip.dtype)).to(torch.float16))
    if not outputs:
        return torch.empty(0, clip.dim, dtype=torch.float16, device=clip.device)
    return torch.cat(outputs)
