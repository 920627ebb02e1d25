"""TG-DFER (paper Fig. 2): cached CLIP frame features -> class logits, per-frame influence.

    X^v (B, T, D) --MultiGrainedTemporal (Eq. 2-5)--> X^I (B, T, D)
    TextPrompts (Eq. 6) --> X^FP (C, D), X^CP (C, D)
    VisualPrompt (Eq. 7-10) --> X^P~ (B, C, D), A_I (B, T, C)
    instance scores cos(X^I, X^P~)/tau (B, T, C) --MIL (Eq. 11)--> bag logits (B, C)

Only the temporal network, the prompt contexts, the visual prompt's MLP and the fusion FC train; the CLIP text
tower is frozen and never saved in checkpoints (``trainable_state``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tgdfer.config import ModelConfig
from tgdfer.errors import ConfigError
from tgdfer.labels import fixed_prompts, load_descriptor_file, prompt_bodies
from tgdfer.model.mil import aggregate, instance_scores
from tgdfer.model.prompts import PromptSet, TextPrompts, TextTower
from tgdfer.model.temporal import MultiGrainedTemporal
from tgdfer.model.visual_prompt import VisualPrompt

FROZEN_PREFIX = "prompts.tower."  # the CLIP text tower: loaded from CLIP's weights, never from checkpoints


@dataclass(frozen=True)
class Output:
    logits: torch.Tensor  # (B, C) bag logits, Eq. 11 before the softmax
    scores: torch.Tensor  # (B, T, C) instance scores: each frame's influence per class
    align: torch.Tensor  # (B, T, C) A_I, Eq. 8


class TGDFER(nn.Module):
    def __init__(self, cfg: ModelConfig, clip_model: nn.Module, class_names: tuple[str, ...], frames: int, dim: int):
        super().__init__()
        tower = TextTower(clip_model)
        text_dim = int(tower.text_projection.shape[1])
        if text_dim != dim:
            raise ConfigError(
                f"CLIP text features have D={text_dim}, the cache's image features D={dim}: the cache "
                "was made with another CLIP"
            )
        extra = load_descriptor_file(cfg.descriptors) if cfg.descriptors else None

        def prompt_set(text: str, learnable: bool) -> PromptSet:
            return PromptSet(
                tower,
                prompt_bodies(class_names, text, extra),
                fixed_prompts(class_names, text, extra),
                learnable,
                cfg.n_ctx,
                cfg.class_specific_ctx,
            )

        self.cfg = cfg
        self.temporal = MultiGrainedTemporal(
            frames,
            dim,
            cfg.fine_depth,
            cfg.coarse_depth,
            cfg.window,
            cfg.stride,
            cfg.window_merge,
            cfg.heads,
            cfg.ffn_mult,
            cfg.dropout,
        )
        self.prompts = TextPrompts(
            tower,
            prompt_set(cfg.fine_text, cfg.fine_learnable),
            prompt_set(cfg.coarse_text, cfg.coarse_learnable),
        )
        self.visual_prompt = VisualPrompt(dim, cfg.visual_prompt, cfg.vp_weights, cfg.mlp_mult, cfg.tau)
        # (D,) mean frame feature of the training split, set by ``set_feature_mean``; saved with the checkpoint
        self.register_buffer("feature_mean", torch.zeros(dim))

    @torch.no_grad()
    def set_feature_mean(self, mean: torch.Tensor) -> None:
        """Store the (D,) train-split mean that ``forward`` subtracts when ``center`` is on."""
        self.feature_mean.copy_(mean.to(self.feature_mean))

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> Output:
        """(B, T, D) frame features [, (B, T) bool frames to use] -> Output."""
        if self.cfg.center:
            x = x - self.feature_mean
        xi = self.temporal(x)  # Eq. 2-5
        xfp, xcp = self.prompts()  # Eq. 6, (C, D) each
        labels, align = self.visual_prompt(xi, xfp, xcp, frame_mask)  # Eq. 7-10
        scores = instance_scores(xi, labels, self.cfg.tau)  # Eq. 11, per frame
        weight_logits = align * (self.cfg.tau / self.cfg.attn_tau)  # cos(X^I, X^FP) / attn_tau
        logits = aggregate(scores, weight_logits, self.cfg.mil, self.cfg.topk, frame_mask)
        return Output(logits=logits, scores=scores, align=align)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(prompt contexts, everything else that trains): they get different learning rates (§4.2)."""
        prompt = [p for n, p in self.named_parameters() if p.requires_grad and n.startswith("prompts.")]
        rest = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("prompts.")]
        return prompt, rest

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint needs: everything but the frozen CLIP text tower."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(FROZEN_PREFIX)}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(FROZEN_PREFIX)]
        if missing or result.unexpected_keys:
            raise ConfigError(
                f"checkpoint does not fit this model: missing {missing[:5]}, unexpected "
                f"{result.unexpected_keys[:5]}; was it trained with other model settings?"
            )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen
