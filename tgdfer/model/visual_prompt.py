"""The visual prompt (paper §3.3.2, Eq. 7-10): text label features enriched with each video's own frames.

    A_I   = cos(X^I, X^FP) / tau                      (B, T, C)   Eq. 8, instance-level alignment
    V^P   = N(A_I . X^I)                              (B, C, D)   Eq. 7, one visual context vector per class
    X^P^  = X^FP + V^P                                (B, C, D)   Eq. 9 ("add")
    X^P~  = MLP(X^P^) + X^CP                          (B, C, D)   Eq. 10

Our reading of N and of the weighting: A_I becomes weights over the T frames by a softmax over time (``weights
="softmax"``), so V^P is a convex mix of frames, which is then L2-normalised to match the unit-norm text features.
``weights="raw"`` uses the raw scores as VadCLIP does (kept for comparison; it lets the scale of A_I leak in).
Placement (Table 5): "add" as Eq. 9; "prepend" concatenates [V^P ; X^FP] (2D) as the MLP's input, the visual
context placed before the text feature instead of summed into it; "off" gives X^P~ = MLP(X^FP) + X^CP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tgdfer.errors import ConfigError
from tgdfer.model.influence import scaled_cosine

PLACEMENTS = ("add", "prepend", "off")


def alignment(xi: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 8, A_I = cos(X^I, X^FP) / tau: (B, T, D), (C, D) -> (B, T, C), in fp32."""
    return scaled_cosine(xi, text, tau)


class VisualPrompt(nn.Module):
    def __init__(self, dim: int, placement: str, weights: str, mlp_mult: int, tau: float):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ConfigError(f"model.visual_prompt: expected one of {PLACEMENTS}, found {placement!r}")
        if weights not in ("softmax", "raw"):
            raise ConfigError(f"model.vp_weights: expected 'softmax' or 'raw', found {weights!r}")
        self.placement, self.weights, self.tau = placement, weights, tau
        in_dim = 2 * dim if placement == "prepend" else dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, mlp_mult * dim), nn.GELU(), nn.Linear(mlp_mult * dim, dim))

    def forward(
        self, xi: torch.Tensor, xfp: torch.Tensor, xcp: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """X^I (B, T, D), X^FP (C, D), X^CP (C, D) [, frame mask (B, T) bool] -> X^P~ (B, C, D), A_I (B, T, C)."""
        a = alignment(xi, xfp, self.tau)  # Eq. 8
        b = xi.shape[0]
        fine = xfp.to(xi.dtype).expand(b, -1, -1)  # (C, D) -> (B, C, D)
        if self.placement == "off":
            hat = fine
        else:
            w = a
            if frame_mask is not None:  # frames left out (Table 6) get no weight
                w = w.masked_fill(~frame_mask[:, :, None], float("-inf") if self.weights == "softmax" else 0.0)
            if self.weights == "softmax":
                w = w.softmax(dim=1)  # over T
            vp = F.normalize(w.transpose(1, 2) @ xi, dim=-1)  # (B, C, T) @ (B, T, D) -> (B, C, D)   Eq. 7
            hat = fine + vp if self.placement == "add" else torch.cat([vp, fine], dim=-1)  # Eq. 9 / prepend
        return self.mlp(hat) + xcp.to(xi.dtype), a  # Eq. 10

    def plain(self, xfp: torch.Tensor, xcp: torch.Tensor) -> torch.Tensor:
        """X^FP (C, D), X^CP (C, D) -> (C, D) the labels without any video's context: MLP(X^FP) + X^CP."""
        return self.mlp(plain_input(xfp, self.placement)) + xcp


def plain_input(xfp: torch.Tensor, placement: str) -> torch.Tensor:
    """The Eq. 10 MLP's input with no visual context: X^FP (..., D), or [0 ; X^FP] (..., 2D) for "prepend"."""
    return xfp if placement != "prepend" else torch.cat([torch.zeros_like(xfp), xfp], dim=-1)
