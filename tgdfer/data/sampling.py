"""Which T frames of an n-frame clip a view uses. Pure functions of (n, T) and, for train views, a seed.

The clip is cut into T equal segments [floor(i*n/T), floor((i+1)*n/T)). The test view takes each segment's centre
frame, so evaluation is repeatable (unlike M3DFEL's random test sampling). A train view takes one uniformly random
frame inside each segment, so it spans the whole clip at any length (unlike DFER-CLIP, whose train sampling
takes frames 0..15 of a 16-31 frame clip). Clips shorter than T use every frame once, then repeat the last.
The randomness of a train view comes only from (seed, clip id, view), so reruns and other ranks agree.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

TEST_VIEW, TRAIN_VIEW = 0, 1  # view kinds: segment centres (evaluation) | random frame per segment (training)

SAMPLING_RULE = (
    "T equal segments; test view: centre frame of each segment; train view k: uniform random frame in each "
    "segment, generator seeded by sha256(seed, clip id, k); clips shorter than T: all frames then the last repeated"
)


def _short_clip(n: int, frames: int) -> np.ndarray:
    return np.minimum(np.arange(frames), n - 1)


def _check(n: int, frames: int) -> None:
    if n < 1:
        raise ValueError(f"a clip needs at least 1 frame to sample from, found {n}")
    if frames < 1:
        raise ValueError(f"frames per view (T) must be at least 1, found {frames}")


def segment_bounds(n: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the T segments, ends exclusive; (T,) int64 each. Requires n >= T."""
    i = np.arange(frames + 1, dtype=np.int64)
    edges = (i * n) // frames
    return edges[:-1], edges[1:]


def centre_indices(n: int, frames: int) -> np.ndarray:
    """The test view: centre frame of each of T equal segments, (T,) int64."""
    _check(n, frames)
    if n < frames:
        return _short_clip(n, frames)
    starts, ends = segment_bounds(n, frames)
    return (starts + ends - 1) // 2


def train_indices(n: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A train view: one uniformly random frame in each of T equal segments, (T,) int64."""
    _check(n, frames)
    if n < frames:
        return _short_clip(n, frames)
    starts, ends = segment_bounds(n, frames)
    return starts + rng.integers(0, ends - starts)


def view_rng(seed: int, clip_id: str, view: int) -> np.random.Generator:
    """A generator that depends only on (seed, clip id, view), never on process, order or hash seed."""
    digest = hashlib.sha256(f"{seed}\x00{clip_id}\x00{view}".encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


EVERY_FRAME_RULE = (
    "every frame once; a clip longer than max_frames keeps max_frames frames at floor((i + 0.5) * n / max_frames)"
)


def every_frame_indices(n: int, max_frames: int = 0) -> np.ndarray:
    """The frames a per-frame cache stores of an n-frame clip: all of them, or ``max_frames`` spread uniformly
    (segment centres) when the clip is longer and ``max_frames`` > 0. (n,) or (max_frames,) int64, increasing."""
    _check(n, 1)
    if max_frames <= 0 or n <= max_frames:
        return np.arange(n, dtype=np.int64)
    return ((2 * np.arange(max_frames, dtype=np.int64) + 1) * n) // (2 * max_frames)


def tsn_positions(counts: torch.Tensor, frames: int, u: torch.Tensor | None = None) -> torch.Tensor:
    """The rules above for many clips at once, on their device: (c,) frame counts -> (c, T) int64 positions.

    ``u`` None: the test view (segment centres). ``u`` (c, T) uniform in [0, 1): a train sample, one frame in
    each segment at floor(u * width). Clips shorter than T take every frame, then the last repeated.
    """
    n = counts.long().unsqueeze(1)  # (c, 1)
    i = torch.arange(frames, device=counts.device).unsqueeze(0)  # (1, T)
    starts, ends = (i * n) // frames, ((i + 1) * n) // frames  # (c, T) each
    if u is None:
        pos = (starts + ends - 1) // 2
    else:
        pos = starts + torch.minimum((u * (ends - starts)).long(), ends - starts - 1)
    return torch.where(n < frames, torch.minimum(i, n - 1), pos)  # (c, T)
