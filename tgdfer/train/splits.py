"""One split of a feature cache as device tensors: its train clips' train views and its test clips' test view.

The whole cache goes to the device once (a DFEW cache is about 1 GB); a split only indexes it. Misfits (a fold the
cache lacks, no train views, no test clips) are refused here with expected vs found.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from tgdfer.data.sampling import TEST_VIEW, TRAIN_VIEW
from tgdfer.features.cache import CacheError, FeatureCache


@dataclass(frozen=True, eq=False)
class FoldData:
    """One split of a cache, as device tensors. Shapes: V views, n train clips, m test clips, K train views."""

    features: torch.Tensor  # (V, T, D) float16, the whole cache
    train_views: torch.Tensor  # (n, K) int64 view rows of each train clip's train views
    train_labels: torch.Tensor  # (n,) int64
    test_views: torch.Tensor  # (m,) int64 the test view of each test clip
    test_labels: torch.Tensor  # (m,) int64
    test_clips: np.ndarray  # (m,) cache clip rows, for reports
    class_names: tuple[str, ...]
    val_views: torch.Tensor | None = None  # (u,) int64 the test view of each validation clip; None: no val split
    val_labels: torch.Tensor | None = None  # (u,) int64

    def validation(self) -> FoldData | None:
        """The validation clips in the place of the test clips (for ``evaluate``), or None without any."""
        if self.val_views is None:
            return None
        return replace(self, test_views=self.val_views, test_labels=self.val_labels, test_clips=np.empty(0, np.int64))


def fold_data(cache: FeatureCache, fold: str, device: torch.device) -> FoldData:
    """Select a split's train clips (their train views) and test clips (their test view); refuse misfits."""
    split = cache.split_index(fold)
    name = cache.split_names[split]
    train_clips, test_clips = cache.clips_in(split, 1), cache.clips_in(split, 2)
    if len(train_clips) == 0 or len(test_clips) == 0:
        raise CacheError(
            f"{cache.path}: split {name!r} needs train and test clips, found {len(train_clips)} train "
            f"and {len(test_clips)} test (a CSV without a split column is split by extract --test-fraction > 0)"
        )
    train_by_clip, test_by_clip = cache.views_by_clip(TRAIN_VIEW), cache.views_by_clip(TEST_VIEW)
    lacking = [int(c) for c in train_clips if c not in train_by_clip]
    if lacking:
        raise CacheError(
            f"{cache.path}: expected augmented train views for every train clip (extract --views K with "
            f"K >= 1), found none for {len(lacking)} of {len(train_clips)} train clips (the cache has "
            f"train_views={cache.attrs.get('train_views')})"
        )
    width = max(len(train_by_clip[int(c)]) for c in train_clips)
    train_views = np.stack([np.resize(train_by_clip[int(c)], width) for c in train_clips])  # (n, K)
    test_views = np.array([test_by_clip[int(c)][0] for c in test_clips])
    val_clips = cache.clips_in(split, 3)  # membership 3: held out of training to choose an epoch on
    val_views = np.array([test_by_clip[int(c)][0] for c in val_clips], dtype=np.int64)
    return FoldData(
        features=torch.from_numpy(cache.features).to(device),
        train_views=torch.from_numpy(train_views).to(device),
        train_labels=torch.from_numpy(cache.labels[train_clips]).to(device),
        test_views=torch.from_numpy(test_views).to(device),
        test_labels=torch.from_numpy(cache.labels[test_clips]).to(device),
        test_clips=test_clips,
        class_names=cache.class_names,
        val_views=torch.from_numpy(val_views).to(device) if len(val_clips) else None,
        val_labels=torch.from_numpy(cache.labels[val_clips]).to(device) if len(val_clips) else None,
    )


@torch.no_grad()
def train_feature_mean(data: FoldData, chunk: int = 4096) -> torch.Tensor:
    """(D,) mean frame feature over every train view of the split's train clips (the centring of ModelConfig)."""
    views = data.train_views.flatten()
    total = torch.zeros(data.features.shape[-1], dtype=torch.float64, device=data.features.device)
    for start in range(0, len(views), chunk):
        total += data.features[views[start : start + chunk]].double().sum(dim=(0, 1))
    return (total / (len(views) * data.features.shape[1])).float()
