"""Scaled cosine scores and the influence display of the paper (Eq. 8, 11, 12).

Both the alignment A_I of Eq. 8 (frames against the fine prompt) and the instance scores of Eq. 11 (frames against
the enhanced labels) are cos(frame, text) / tau; ``scaled_cosine`` computes either. A frame's instance score for
a class is its *influence* on that class (Fig. 4, Table 6); ``minmax`` is Eq. 12, for display only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def scaled_cosine(frames: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """cos(frames, text) / tau in fp32: (B, T, D) with (C, D) or (B, C, D) -> (B, T, C).

    Outside autocast: a bf16 cosine times 1/tau = 100 would carry about +-0.4 of rounding into the logits.
    """
    with torch.autocast(frames.device.type, enabled=False):
        x = F.normalize(frames.float(), dim=-1)
        t = F.normalize(text.float(), dim=-1)
        return (x @ t.transpose(-1, -2)) / tau  # (B, T, D) @ (C, D)^T or (B, D, C) -> (B, T, C)


def minmax(values: np.ndarray) -> np.ndarray:
    """Eq. 12: (x - min) / (max - min) over a clip's frames, for display only; a constant row maps to zeros."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)
