"""Bag prediction (paper Eq. 11): T instance scores -> one clip score per class.

Instance scores are s_tk = cos(X^I_t, X^P~_k) / tau (B, T, C): how strongly frame t matches the enhanced label
of class k. This is also the frame's "influence" that Fig. 4 shows (min-max normalised) and Table 6 ranks.

The paper leaves the aggregation over T open; three readings, switchable with ``model.mil``:
- "attention" (default): weights softmax_t(cos(X^I_t, X^FP_k) / attn_tau) from the fine-prompt alignment of Eq. 8,
  so the frames the descriptors pick out decide the bag and each frame's score comes from the enhanced label.
  attn_tau (1.0) is softer than Eq. 8's tau: weights start near uniform and sharpen as the alignment is learnt;
  with tau = 0.01 they start one-hot on arbitrary frames and training collapsed in our tests;
- "mean": the plain mean over frames;
- "topk": the mean of the k highest instance scores per class (the classic MIL top-k).
A frame mask (B, T) restricts every reading to chosen frames (Table 6); masked frames never get weight.
"""

from __future__ import annotations

import torch

from tgdfer.errors import ConfigError
from tgdfer.model.influence import scaled_cosine

MODES = ("attention", "mean", "topk")


def instance_scores(xi: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 11 per frame, cos(X^I_t, X^P~_k) / tau: (B, T, D), (B, C, D) -> (B, T, C), in fp32."""
    return scaled_cosine(xi, labels, tau)


def aggregate(
    scores: torch.Tensor,
    weight_logits: torch.Tensor,
    mode: str,
    topk: int,
    frame_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T, C) instance scores, (B, T, C) attention logits over T [, (B, T) bool mask] -> (B, C) bag logits."""
    if mode not in MODES:
        raise ConfigError(f"model.mil: expected one of {', '.join(MODES)}, found {mode!r}")
    mask = None if frame_mask is None else frame_mask[:, :, None]  # (B, T, 1)
    if mode == "attention":
        a = weight_logits if mask is None else weight_logits.masked_fill(~mask, float("-inf"))
        return (a.softmax(dim=1) * scores).sum(dim=1)
    if mode == "mean":
        if mask is None:
            return scores.mean(dim=1)
        return (scores * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    s = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    k = min(topk, scores.shape[1]) if frame_mask is None else max(1, min(topk, int(frame_mask.sum(1).min())))
    return s.topk(k, dim=1).values.mean(dim=1)
