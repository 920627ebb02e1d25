"""The multi-grained temporal network (paper §3.2, Eq. 2-5): X^v (B, T, D) -> X^I (B, T, D).

Fine module (Eq. 2-3): N = floor((T - w) / s) + 1 windows of width w and stride s; a transformer encoder with a
learnable positional embedding P^f (w, D) runs on every window separately. Our reading of how the overlapping
window outputs map back to T frames (``merge``): frame t is the mean of its outputs in every window that covers
it ("mean", default), or its output in the first such window ("first"). Frames no window covers (when s does not
divide T - w) keep their input features. The map is a fixed (T, N*w) matrix, so it is deterministic on GPUs.

Coarse module (Eq. 4): a transformer encoder over all T frames with its own positional embedding P^c (T, D).

Fusion (Eq. 5): X^I = FC([X^fine, X^coarse]). Depth 0 removes a module (Table 3); with both removed, the FC maps
the frame features themselves.

A frame mask (B, T) (Table 6: re-predict from k chosen frames) makes the left-out frames padding: they are never
attention keys, in the fine windows or the coarse transformer, so no chosen frame's output depends on them. A fine
window holding no chosen frame attends to all its frames instead (its outputs only reach left-out frames, which
every later module masks too), so softmax never sees a row without keys.
"""

from __future__ import annotations

import torch
from torch import nn

from tgdfer.errors import ConfigError


def _encoder(dim: int, depth: int, heads: int, ffn_mult: int, dropout: float) -> nn.TransformerEncoder:
    if dim % heads:
        raise ConfigError(f"model.heads: the feature width D={dim} must divide by the head count, found {heads}")
    layer = nn.TransformerEncoderLayer(
        dim,
        heads,
        dim_feedforward=ffn_mult * dim,
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,  # pre-norm: stable from scratch with SGD at lr 1e-2
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def window_starts(frames: int, window: int, stride: int) -> list[int]:
    """First frame of each fine window: i * s for i < N = floor((T - w) / s) + 1 (Eq. 3)."""
    if not 1 <= window <= frames:
        raise ConfigError(f"model.window: expected 1 <= w <= T={frames}, found {window}")
    if stride < 1:
        raise ConfigError(f"model.stride: expected s >= 1 (0 in config means s = w), found {stride}")
    return list(range(0, frames - window + 1, stride))


def merge_matrix(frames: int, window: int, stride: int, merge: str) -> torch.Tensor:
    """(T, N*w) weights taking the stacked window outputs back to frames; rows of uncovered frames are zero."""
    starts = window_starts(frames, window, stride)
    m = torch.zeros(frames, len(starts) * window)
    for i, s in enumerate(starts):
        for j in range(window):
            m[s + j, i * window + j] = 1.0
    if merge == "mean":
        return m / m.sum(1, keepdim=True).clamp(min=1)
    if merge == "first":
        first = torch.zeros_like(m)
        for t in range(frames):
            cols = torch.nonzero(m[t]).flatten()
            if len(cols):
                first[t, cols[0]] = 1.0
        return first
    raise ConfigError(f"model.window_merge: expected 'mean' or 'first', found {merge!r}")


class FineTemporal(nn.Module):
    """Eq. 2-3: a transformer on each overlapping window of w frames (arguments as ``MultiGrainedTemporal``'s)."""

    def __init__(
        self,
        frames: int,
        dim: int,
        *,
        depth: int,
        window: int,
        stride: int,
        merge: str,
        heads: int,
        ffn_mult: int,
        dropout: float,
    ):
        super().__init__()
        starts = window_starts(frames, window, stride)
        index = torch.tensor([[s + j for j in range(window)] for s in starts])  # (N, w)
        self.register_buffer("index", index, persistent=False)
        weights = merge_matrix(frames, window, stride, merge)
        self.register_buffer("merge", weights, persistent=False)  # (T, N*w)
        self.register_buffer("covered", weights.sum(1) > 0, persistent=False)  # (T,)
        self.pos = nn.Parameter(torch.randn(window, dim) * 0.02)  # P^f
        self.encoder = _encoder(dim, depth, heads, ffn_mult, dropout)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) [, (B, T) bool frames to use] -> (B, T, D)."""
        b, _, d = x.shape
        n, w = self.index.shape
        windows = x[:, self.index] + self.pos  # (B, N, w, D)   X'_i + P^f
        pad = None
        if frame_mask is not None:
            pad = ~frame_mask[:, self.index]  # (B, N, w) True: not a key
            pad = pad & ~pad.all(dim=-1, keepdim=True)  # windows with no chosen frame attend to all
            pad = pad.reshape(b * n, w)
        out = self.encoder(windows.reshape(b * n, w, d), src_key_padding_mask=pad).reshape(b, n * w, d)  # (B, N*w, D)
        merged = torch.einsum("tk,bkd->btd", self.merge.to(out.dtype), out)  # (B, T, D)
        return torch.where(self.covered[None, :, None], merged, x)


class CoarseTemporal(nn.Module):
    """Eq. 4: a transformer over all T frames (arguments as ``MultiGrainedTemporal``'s)."""

    def __init__(self, frames: int, dim: int, *, depth: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(frames, dim) * 0.02)  # P^c
        self.encoder = _encoder(dim, depth, heads, ffn_mult, dropout)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) [, (B, T) bool frames to use] -> (B, T, D)."""
        pad = None if frame_mask is None else ~frame_mask  # (B, T) True: not a key
        return self.encoder(x + self.pos, src_key_padding_mask=pad)


class MultiGrainedTemporal(nn.Module):
    """Eq. 5: X^I = FC([X^fine, X^coarse]) over whichever modules have depth > 0.

    ``frames`` T and ``dim`` D are the cache's shape; the rest are keyword-only, as ``ModelConfig`` names them:
    ``fine_depth`` / ``coarse_depth`` transformer layers per fine window (Eq. 2) / over all T frames (Eq. 4), 0
    removes the module (Table 3); ``window`` w and ``stride`` s of the fine windows (Eq. 3; s = 0 means s = w, Table
    4's "no stride"); ``merge`` how overlapping window outputs become frames ("mean" | "first", module docstring);
    ``heads`` attention heads (D must divide by it); ``ffn_mult`` feed-forward width over D; ``dropout`` in every
    temporal layer.
    """

    def __init__(
        self,
        frames: int,
        dim: int,
        *,
        fine_depth: int,
        coarse_depth: int,
        window: int,
        stride: int,
        merge: str,
        heads: int,
        ffn_mult: int,
        dropout: float,
    ):
        super().__init__()
        if fine_depth < 0 or coarse_depth < 0:
            raise ConfigError(f"model.fine_depth/coarse_depth: expected >= 0, found {fine_depth}/{coarse_depth}")
        stride = stride or window  # config 0 = no overlap (Table 4 "no stride")
        layers = {"heads": heads, "ffn_mult": ffn_mult, "dropout": dropout}
        self.fine = (
            FineTemporal(frames, dim, depth=fine_depth, window=window, stride=stride, merge=merge, **layers)
            if fine_depth
            else None
        )
        self.coarse = CoarseTemporal(frames, dim, depth=coarse_depth, **layers) if coarse_depth else None
        branches = (self.fine is not None) + (self.coarse is not None)
        self.fc = nn.Linear(max(branches, 1) * dim, dim)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) frame features X^v [, (B, T) bool frames to use] -> (B, T, D) instance features X^I."""
        parts = [m(x, frame_mask) for m in (self.fine, self.coarse) if m is not None] or [x]
        return self.fc(torch.cat(parts, dim=-1))  # (B, T, branches*D) -> (B, T, D)
