"""Bag prediction (paper Eq. 11): T instance scores -> one clip score per class.

Instance scores are s_tk = cos(F_t, L_k) / tau (B, T, C): how strongly frame t matches the label of class k, for
the instance features F of a stream (X^I, or the frame stream's per-frame map of X^v; see ``model``). The frame
stream's scores are the frame's "influence" that Fig. 4 shows (min-max normalised) and Table 6 ranks.

The paper leaves the aggregation over T open; four readings, switchable with ``model.mil`` (temporal stream) and
``model.frame_mil`` (frame stream):
- "attention": weights softmax_t(cos(F_t, X^FP_k) / attn_tau) from the fine-prompt alignment of Eq. 8. At
  attn_tau = 1 the weights spread over 14-16 of 16 frames (a mean in effect); at Eq. 8's 0.01 they start one-hot
  on arbitrary frames and training collapsed (bench/learning.py: WAR 61);
- "mean": the plain mean over frames (the temporal stream's default: best WAR, it need not localise);
- "topk": the mean of the k highest instance scores per class (the classic MIL top-k). Its gradient reaches only
  the k chosen frames, so a class whose label starts pointing away from its expression never finds it: whole
  classes then ranked off-burst frames highest (hit rate 0.0-0.05 for that class);
- "mixed": the mean of "mean" and "topk" (the frame stream's default): every frame gets a gradient from the first
  step, the top frames a larger one, so the label finds the expression and the bag still rests on its frames.
A frame mask (B, T) restricts every reading to chosen frames (Table 6); masked frames never get weight.
"""

from __future__ import annotations

import torch

from tgdfer.errors import ConfigError
from tgdfer.model.influence import scaled_cosine

MODES = ("attention", "mean", "topk", "mixed")


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
    if mode == "mixed":
        return 0.5 * (
            aggregate(scores, weight_logits, "mean", topk, frame_mask)
            + aggregate(scores, weight_logits, "topk", topk, frame_mask)
        )
    if mode == "mean":
        if mask is None:
            return scores.mean(dim=1)
        return (scores * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    s = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    k = min(topk, scores.shape[1]) if frame_mask is None else max(1, min(topk, int(frame_mask.sum(1).min())))
    return s.topk(k, dim=1).values.mean(dim=1)
