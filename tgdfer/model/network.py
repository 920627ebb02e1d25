"""TG-DFER (paper Fig. 2): cached CLIP frame features -> class logits, per-frame influence.

    X^v (B, T, D) --MultiGrainedTemporal (Eq. 2-5)--> X^I (B, T, D)
    TextPrompts (Eq. 6) --> X^FP (C, D), X^CP (C, D)
    VisualPrompt (Eq. 7-10) --> X^P~ (B, C, D), A_I (B, T, C)
    temporal stream: cos(X^I, X^P~)/tau (B, T, C) --MIL (Eq. 11)--> bag (B, C)
    frame stream:    cos(W X^v, MLP(X^FP) + X^CP [+ offset])/tau (B, T, C) --MIL--> bag (B, C)   [the influence]
    bag logits (B, C), ``ModelConfig.bag``: (temporal + w * frame) / (1 + w) | the streams' mean | temporal's

Where influence is read (``ModelConfig.instances``, issue 11): on X^I the coarse transformer spreads a clip's
class over every frame, so the top-scoring frame missed the expression burst for more than half the clips of
bench/learning.py. The default reads it from a frame stream no temporal layer mixes, scored against labels no
video's context reaches (V^P carries the clip's class, and with it whole classes learnt to rank off-burst frames
highest), and keeps the temporal stream, as the paper writes it, for the clip's prediction.

How the streams make the prediction (``ModelConfig.bag``, issue 23): trained as one (the mean of the bags), the
frame stream's loss dragged the labels both streams share and cost the prediction accuracy and stability. By
default each stream trains by its own bag's loss alone (``Output.aux``), the frame stream's reaching only its
frame map and its own offset to the detached labels (``frame_grad="own"``), and the clip's logits are a fixed
mix in which the temporal stream, the better classifier of full clips, weighs 4:1. The frame stream's share is
what lets Table 6 re-predict from single frames: the temporal stream learns to contrast a clip's frames and has
nothing to contrast in one frame. docs/pages/learning.md has the figures.

Only the temporal network, the prompt contexts, the visual prompt's MLP, the fusion FC and the frame stream's map
and label offset train; the CLIP text tower is frozen and never saved in checkpoints (``trainable_state``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tgdfer.config import ModelConfig
from tgdfer.errors import ConfigError
from tgdfer.labels import fixed_prompts, load_descriptor_file, prompt_bodies
from tgdfer.model.mil import aggregate, instance_scores
from tgdfer.model.prompts import PromptSet, TextPrompts, TextTower
from tgdfer.model.temporal import MultiGrainedTemporal
from tgdfer.model.visual_prompt import VisualPrompt, alignment

FROZEN_PREFIX = "prompts.tower."  # the CLIP text tower: loaded from CLIP's weights, never from checkpoints


@dataclass(frozen=True)
class Output:
    logits: torch.Tensor  # (B, C) bag logits, Eq. 11 before the softmax (bag="ensemble": detached, trains nothing)
    scores: torch.Tensor  # (B, T, C) instance scores: each frame's influence per class
    align: torch.Tensor  # (B, T, C) A_I, Eq. 8
    aux: tuple[torch.Tensor, ...] = ()  # (B, C) bag logits the loss also supervises (bag="ensemble": each stream's)


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
            fine_depth=cfg.fine_depth,
            coarse_depth=cfg.coarse_depth,
            window=cfg.window,
            stride=cfg.stride,
            merge=cfg.window_merge,
            heads=cfg.heads,
            ffn_mult=cfg.ffn_mult,
            dropout=cfg.dropout,
        )
        self.prompts = TextPrompts(
            tower,
            prompt_set(cfg.fine_text, cfg.fine_learnable),
            prompt_set(cfg.coarse_text, cfg.coarse_learnable),
        )
        self.visual_prompt = VisualPrompt(dim, cfg.visual_prompt, cfg.vp_weights, cfg.mlp_mult, cfg.tau)
        self.frame = None
        if cfg.instances != "temporal":  # per-frame map of X^v, starting as the identity (CLIP's joint space)
            self.frame = nn.Linear(dim, dim, bias=False)
            with torch.no_grad():
                self.frame.weight.copy_(torch.eye(dim))
        self.frame_offset = None
        self.own_frame_grad = cfg.frame_grad == "own" and cfg.instances == "both"  # alone, the frame stream trains all
        if self.own_frame_grad:  # (C, D) the frame stream's own move of its labels
            self.frame_offset = nn.Parameter(torch.zeros(len(class_names), dim))
        log_tau = torch.tensor(math.log(cfg.attn_tau))
        if cfg.learn_attn_tau:
            self.log_attn_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_attn_tau", log_tau)
        # (D,) mean frame feature of the training split, set by ``set_feature_mean``; saved with the checkpoint
        self.register_buffer("feature_mean", torch.zeros(dim))

    @torch.no_grad()
    def set_feature_mean(self, mean: torch.Tensor) -> None:
        """Store the (D,) train-split mean that ``forward`` subtracts when ``center`` is on."""
        self.feature_mean.copy_(mean.to(self.feature_mean))

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> Output:
        """(B, T, D) frame features [, (B, T) bool frames to use] -> Output.

        With a frame mask (Table 6) the frames left out reach nothing: no attention key (temporal), no weight in
        V^P (Eq. 7), no clip mean (frame_centre), no place in any bag (MIL).
        """
        if self.cfg.center:
            x = x - self.feature_mean
        xi = self.temporal(x, frame_mask)  # Eq. 2-5, (B, T, D)
        xfp, xcp = self.prompts()  # Eq. 6, (C, D) each
        labels, align = self.visual_prompt(xi, xfp, xcp, frame_mask)  # Eq. 7-10, (B, C, D), (B, T, C)
        attn_tau = self.log_attn_tau.exp()
        bags, streams = [], []
        if self.cfg.instances in ("temporal", "both"):
            scores = instance_scores(xi, labels, self.cfg.tau)  # Eq. 11 per frame, (B, T, C)
            weight_logits = align * (self.cfg.tau / attn_tau)  # cos(X^I, X^FP) / attn_tau
            bags.append(aggregate(scores, weight_logits, self.cfg.mil, self.cfg.topk, frame_mask))
            streams.append(scores)
        if self.frame is not None:
            scores, weight_logits = self._frame_stream(x, labels, xfp, xcp, attn_tau, frame_mask)
            bags.append(aggregate(scores, weight_logits, self.cfg.frame_mil, self.cfg.topk, frame_mask))
            streams.append(scores)
        two = len(bags) > 1
        logits = self._clip_logits(bags)
        if two and self.cfg.bag == "ensemble":  # each stream trains by its own bag's loss alone
            aux = tuple(bags)
        else:
            aux = (bags[-1],) if two and (self.cfg.aux_loss or self.cfg.bag != "mean") else ()  # the frame bag
        return Output(logits=logits, scores=streams[-1], align=align, aux=aux)

    def _clip_logits(self, bags: list[torch.Tensor]) -> torch.Tensor:
        """The streams' (B, C) bags -> the clip's (B, C) logits (``ModelConfig.bag``)."""
        if len(bags) == 1 or self.cfg.bag == "mean":
            return torch.stack(bags).mean(0)  # (streams, B, C) -> (B, C)
        if self.cfg.bag == "temporal":
            return bags[0]
        w = self.cfg.frame_weight  # "ensemble": trains nothing itself; each bag trains by its own loss (aux)
        return ((bags[0] + w * bags[1]) / (1 + w)).detach()

    def _frame_stream(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        xfp: torch.Tensor,
        xcp: torch.Tensor,
        attn_tau: torch.Tensor,
        frame_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame instance scores no temporal layer mixes: X^v (B, T, D), X^P~ (B, C, D), X^FP, X^CP (C, D)
        -> scores (B, T, C) (the influence), attention logits (B, T, C)."""
        if self.cfg.frame_centre > 0:  # each frame against its own clip's mean over the frames used
            w = torch.ones_like(x[:, :, :1]) if frame_mask is None else frame_mask[:, :, None].to(x.dtype)
            x = x - self.cfg.frame_centre * (w * x).sum(1, keepdim=True) / w.sum(1, keepdim=True)  # (B, 1, D)
        xf = self.frame(x)  # (B, T, D)
        if self.cfg.frame_labels == "plain":  # Eq. 10 without V^P: no video's context reaches these labels
            labels = self.visual_prompt.plain(xfp, xcp).expand(x.shape[0], -1, -1)  # (C, D) -> (B, C, D)
        if self.own_frame_grad:  # this stream's loss trains its frame map only, never the shared labels
            labels, xfp, attn_tau = labels.detach() + self.frame_offset, xfp.detach(), attn_tau.detach()
        return instance_scores(xf, labels, self.cfg.tau), alignment(xf, xfp, 1.0) / attn_tau

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
