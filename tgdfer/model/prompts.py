"""Text prompts (paper §3.3.1, Eq. 6) through CLIP's frozen text tower.

Following CoOp, a prompt is ``[SOT] c_1 .. c_M <words>. [EOT]`` where only the context vectors c are trained (one
set shared by all classes, or one per class); the token embeddings of SOT and of the words are fixed buffers.
The frozen tower then runs on embeddings rather than token ids and pools the EOT position.

Two prompt sets make the text side of TG-DFER: the fine prompt X^FP (movement descriptors) and the coarse prompt
X^CP (class names). A set without learnable context is a hand-written sentence encoded once.

Speed: because CLIP's text transformer is causal, the features at the EOT position depend only on tokens up to
it, so running the tower over the longest prompt's tokens instead of all 77 gives the same result for less work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tgdfer.backbone import tokenize


class TextTower(nn.Module):
    """CLIP's text transformer on token embeddings (CoOp's TextEncoder), truncated after the last EOT.

    Holds the frozen CLIP text modules; none of their parameters train.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.token_embedding = clip_model.token_embedding
        self.register_buffer("causal_mask", clip_model.build_attention_mask(), persistent=False)  # (77, 77)
        self.requires_grad_(False)

    @property
    def width(self) -> int:
        return int(self.positional_embedding.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    def forward(self, embeds: torch.Tensor, eot: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """(P, L, W) token embeddings, (P,) EOT positions [, tokens to run: > the last EOT] -> (P, D) text
        features (not normalised). Pass ``length`` from Python ints (``PromptSet.length``) to keep the forward free
        of tensor-valued control flow, as ``torch.func.vmap`` over stacked models needs."""
        if length is None:
            length = int(eot.max()) + 1  # tokens after the last EOT cannot influence any EOT output (causal mask)
        x = embeds[:, :length] + self.positional_embedding[:length].to(embeds.dtype)
        x = x.permute(1, 0, 2)  # NLD -> LND, as CLIP's blocks expect
        mask = self.causal_mask[:length, :length].to(x.dtype)
        for block in self.transformer.resblocks:  # CLIP's ResidualAttentionBlock, with our shorter mask
            h = block.ln_1(x)
            x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            x = x + block.mlp(block.ln_2(x))
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection  # (P, W) @ (W, D)


class PromptSet(nn.Module):
    """C prompts of one kind. Learnable: ``[SOT] ctx <body> [EOT]`` with ctx trained. Fixed: a plain sentence."""

    def __init__(
        self,
        tower: TextTower,
        bodies: list[str],
        fixed_texts: list[str],
        learnable: bool,
        n_ctx: int,
        class_specific: bool,
        init_std: float = 0.02,
    ):
        super().__init__()
        self.learnable = learnable
        self.n_ctx = n_ctx if learnable else 0
        texts = [" ".join(["X"] * n_ctx + [b]) for b in bodies] if learnable else fixed_texts
        # (C, 77); each "X" is one token and marks where a context vector goes
        tokens = tokenize(texts, tower.context_length)
        self.register_buffer("eot", tokens.argmax(dim=-1), persistent=False)  # EOT has the largest token id
        self.length = int(self.eot.max()) + 1  # tokens the tower must run, fixed here as a Python int
        with torch.no_grad():
            embeds = tower.token_embedding(tokens)  # (C, 77, W)
        if learnable:
            self.register_buffer("prefix", embeds[:, :1].clone(), persistent=False)  # SOT
            self.register_buffer("suffix", embeds[:, 1 + n_ctx :].clone(), persistent=False)  # words, EOT, pad
            shape = (len(bodies) if class_specific else 1, n_ctx, tower.width)
            self.ctx = nn.Parameter(torch.randn(shape) * init_std)  # CoOp's random init
        else:
            self.register_buffer("embeds", embeds.clone(), persistent=False)

    def embeddings(self) -> torch.Tensor:
        """(C, 77, W) prompt embeddings."""
        if not self.learnable:
            return self.embeds
        ctx = self.ctx.expand(self.prefix.shape[0], -1, -1)  # (1 or C, M, W) -> (C, M, W)
        return torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)  # (C, 1+M+rest, W)


class TextPrompts(nn.Module):
    """The fine (X^FP) and coarse (X^CP) text features, each (C, D), L2-normalised.

    Learnable sets run through the tower together in one call each step; fixed sets are encoded once here.
    """

    def __init__(self, tower: TextTower, fine: PromptSet, coarse: PromptSet):
        super().__init__()
        self.tower, self.fine, self.coarse = tower, fine, coarse
        fixed = [s for s in (fine, coarse) if not s.learnable]
        if fixed:
            with torch.no_grad():
                feats = self._encode(fixed)
            for s, f in zip(fixed, feats, strict=True):
                s.register_buffer("features", f, persistent=False)

    def _encode(self, sets: list[PromptSet]) -> list[torch.Tensor]:
        embeds = torch.cat([s.embeddings() for s in sets])  # (sum C, 77, W)
        eot = torch.cat([s.eot for s in sets])
        length = max(s.length for s in sets)
        feats = F.normalize(self.tower(embeds, eot, length).float(), dim=-1)  # (sum C, D)
        return list(feats.split([len(s.eot) for s in sets]))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        learnable = [s for s in (self.fine, self.coarse) if s.learnable]
        fresh = dict(zip(map(id, learnable), self._encode(learnable), strict=True)) if learnable else {}
        return tuple(fresh.get(id(s), getattr(s, "features", None)) for s in (self.fine, self.coarse))  # type: ignore[return-value]
