"""One split of a feature cache as device tensors: its train clips' train views and its test clips' test view.

The whole cache goes to the device once (a DFEW cache is about 1 GB); a split only indexes it. Misfits (a fold the
cache lacks, no train views, no test clips) are refused here with expected vs found.

Either layout gives the same interface: ``data.features[rows]`` is a (B, T, D) batch, where ``rows`` comes from
``test_rows`` or from ``epoch_rows`` (the epoch's draw). On a view cache a row is a view (features (V, T, D)).
On a per-frame cache (``tgdfer.features.frames``) features are its (N, P, D) frames flattened to (N * P, D), a
clip's rows are T frame rows, and ``epoch_rows`` draws a fresh TSN sample for every train clip each epoch (a
random frame in each of T equal segments, of a random train pass) on the device, from the epoch's generator: so
a batch is still one indexed read, and a resumed run redraws exactly. The test sample is the segment-centre frames
of the plain pass, the frames a view cache's test view holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from tgdfer.data.datasets import TEST, TRAIN, VAL
from tgdfer.data.sampling import TEST_VIEW, TRAIN_VIEW, tsn_positions
from tgdfer.errors import CacheError
from tgdfer.features.frames import AUGMENTED_PASS, PLAIN_PASS, FrameCache
from tgdfer.features.views import FeatureCache


@dataclass(frozen=True, eq=False)
class FrameSampler:
    """Where a per-frame split's train clips lie in the flattened (N * P, D) features; n train clips, P passes."""

    starts: torch.Tensor  # (n,) int64 first frame of each train clip (frames/offsets)
    counts: torch.Tensor  # (n,) int64 frames stored per train clip
    passes: int  # P: rows of frame f are f * P + pass
    frames: int  # T per sample

    def rows(self, passes: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """(n,) pass per clip and (n, T) uniforms (None: segment centres) -> (n, T) int64 feature rows."""
        pos = tsn_positions(self.counts, self.frames, u)  # (n, T) position inside each clip
        return (self.starts.unsqueeze(1) + pos) * self.passes + passes.unsqueeze(1)  # (n, T)

    def every_row(self, passes: torch.Tensor) -> torch.Tensor:
        """(k,) passes -> every feature row of every train clip in those passes, (sum(counts) * k,) int64."""
        first = torch.repeat_interleave(self.starts, self.counts)  # (F,) each frame's clip start
        before = torch.repeat_interleave(torch.cumsum(self.counts, 0) - self.counts, self.counts)  # (F,)
        frames = first + torch.arange(len(first), device=first.device) - before  # (F,) frame numbers
        return (frames.unsqueeze(1) * self.passes + passes.unsqueeze(0)).flatten()  # (F * k,)


@dataclass(frozen=True, eq=False)
class FoldData:
    """One split of a cache, as device tensors. Shapes: V views, n train clips, m test clips, K train views (or
    train passes). A row is a row of ``features``: a view here, a frame in one pass on a per-frame cache."""

    features: torch.Tensor  # (V, T, D) float16, the whole cache
    train_choices: torch.Tensor  # (n, K) int64 what an epoch picks one of per train clip: its train views' rows
    train_labels: torch.Tensor  # (n,) int64
    test_rows: torch.Tensor  # (m,) int64 the row of each test clip's test view
    test_labels: torch.Tensor  # (m,) int64
    test_clips: np.ndarray  # (m,) cache clip rows, for reports
    class_names: tuple[str, ...]
    val_rows: torch.Tensor | None = None  # (u,) int64 the test view row of each validation clip; None: no val split
    val_labels: torch.Tensor | None = None  # (u,) int64

    def validation(self) -> FoldData | None:
        """The validation clips in the place of the test clips (for ``evaluate``), or None without any."""
        if self.val_rows is None:
            return None
        return replace(self, test_rows=self.val_rows, test_labels=self.val_labels, test_clips=np.empty(0, np.int64))

    sampler: FrameSampler | None = None  # a per-frame cache's: then features is (N * P, D), train_choices (n, K)
    #                                      holds each clip's train pass indices, test_rows (m, T) frame rows

    def epoch_rows(self, choice: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(n,) chosen column of train_choices per train clip -> the rows of the epoch's sample of each clip: (n,)
        view rows, or on a per-frame cache (n, T) frame rows of a fresh TSN sample whose frames are drawn from
        ``generator`` (on the CPU, as every draw of an epoch, so any device redraws the same)."""
        n = len(self.train_choices)
        picked = self.train_choices[torch.arange(n, device=choice.device), choice]  # (n,)
        if self.sampler is None:
            return picked
        u = torch.rand((n, self.sampler.frames), generator=generator, dtype=torch.float64).to(choice.device)
        return self.sampler.rows(picked, u)  # (n, T)


def fold_data(cache: FeatureCache, fold: str, device: torch.device) -> FoldData:
    """Select a split's train clips (their train views) and test clips (their test view); refuse misfits."""
    split = cache.split_index(fold)
    name = cache.split_names[split]
    train_clips, test_clips = cache.clips_in(split, TRAIN), cache.clips_in(split, TEST)
    if len(train_clips) == 0 or len(test_clips) == 0:
        raise CacheError(
            f"{cache.path}: split {name!r} needs train and test clips, found {len(train_clips)} train "
            f"and {len(test_clips)} test (a CSV without a split column is split by extract --test-fraction > 0)"
        )
    if isinstance(cache, FrameCache):
        return _frame_fold_data(cache, train_clips, test_clips, cache.clips_in(split, VAL), device)
    train_by_clip, test_by_clip = cache.views_by_clip(TRAIN_VIEW), cache.views_by_clip(TEST_VIEW)
    lacking = [int(c) for c in train_clips if c not in train_by_clip]
    if lacking:
        raise CacheError(
            f"{cache.path}: expected augmented train views for every train clip (extract --views K with "
            f"K >= 1), found none for {len(lacking)} of {len(train_clips)} train clips (the cache has "
            f"train_views={cache.attrs.get('train_views')})"
        )
    width = max(len(train_by_clip[int(c)]) for c in train_clips)
    train_choices = np.stack([np.resize(train_by_clip[int(c)], width) for c in train_clips])  # (n, K) view rows
    test_rows = np.array([test_by_clip[int(c)][0] for c in test_clips])
    val_clips = cache.clips_in(split, VAL)  # held out of training to choose an epoch on
    val_rows = np.array([test_by_clip[int(c)][0] for c in val_clips], dtype=np.int64)
    return FoldData(
        features=torch.from_numpy(cache.features).to(device),
        train_choices=torch.from_numpy(train_choices).to(device),
        train_labels=torch.from_numpy(cache.labels[train_clips]).to(device),
        test_rows=torch.from_numpy(test_rows).to(device),
        test_labels=torch.from_numpy(cache.labels[test_clips]).to(device),
        test_clips=test_clips,
        class_names=cache.class_names,
        val_rows=torch.from_numpy(val_rows).to(device) if len(val_clips) else None,
        val_labels=torch.from_numpy(cache.labels[val_clips]).to(device) if len(val_clips) else None,
    )


def _frame_fold_data(
    cache: FrameCache, train_clips: np.ndarray, test_clips: np.ndarray, val_clips: np.ndarray, device
) -> FoldData:
    """A per-frame split: train passes per train clip, the test sample's frame rows per test (and val) clip."""
    augmented = np.flatnonzero(cache.pass_kind == AUGMENTED_PASS)
    train_passes = augmented if len(augmented) else np.flatnonzero(cache.pass_kind == PLAIN_PASS)[:1]
    plain = np.flatnonzero(cache.pass_kind == PLAIN_PASS)
    if len(plain) == 0:
        raise CacheError(f"{cache.path}: expected a plain pass (passes/kind 0) for the test sample, found none")
    offsets = torch.from_numpy(cache.offsets)
    passes, frames = cache.passes, cache.frames

    def sampler(clips: np.ndarray) -> FrameSampler:
        idx = torch.from_numpy(clips)
        counts = offsets[idx + 1] - offsets[idx]
        return FrameSampler(offsets[idx].to(device), counts.to(device), passes, frames)

    def centres(clips: np.ndarray) -> torch.Tensor:  # (m, T) frame rows of the plain pass's segment centres
        return sampler(clips).rows(torch.full((len(clips),), int(plain[0]), device=device), None)

    test_rows = centres(test_clips)
    n, d = len(cache.features), cache.dim
    return FoldData(
        features=torch.from_numpy(cache.features).to(device).view(n * passes, d),  # (N, P, D) -> (N * P, D)
        train_choices=torch.from_numpy(np.tile(train_passes, (len(train_clips), 1))).to(device),  # (n, K) passes
        train_labels=torch.from_numpy(cache.labels[train_clips]).to(device),
        test_rows=test_rows,
        test_labels=torch.from_numpy(cache.labels[test_clips]).to(device),
        test_clips=test_clips,
        class_names=cache.class_names,
        sampler=sampler(train_clips),
        val_rows=centres(val_clips) if len(val_clips) else None,
        val_labels=torch.from_numpy(cache.labels[val_clips]).to(device) if len(val_clips) else None,
    )


@torch.no_grad()
def train_feature_mean(data: FoldData, chunk: int = 4096) -> torch.Tensor:
    """(D,) mean frame feature over every train view of the split's train clips (the centring of ModelConfig);
    on a per-frame cache over every stored frame of the train clips in their train passes."""
    total = torch.zeros(data.features.shape[-1], dtype=torch.float64, device=data.features.device)
    if data.sampler is not None:
        rows = data.sampler.every_row(data.train_choices[0])  # (frames * K,) single frames
        for start in range(0, len(rows), chunk * 16):
            total += data.features[rows[start : start + chunk * 16]].double().sum(dim=0)
        return (total / len(rows)).float()
    rows = data.train_choices.flatten()  # (n * K,) view rows
    for start in range(0, len(rows), chunk):
        total += data.features[rows[start : start + chunk]].double().sum(dim=(0, 1))
    return (total / (len(rows) * data.features.shape[1])).float()
