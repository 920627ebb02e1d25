"""A TG-DFER model built for a cache, or rebuilt from a run directory for inference.

A run records what it needs of its cache (``cache_identity``: CLIP source and weights hash, classes, T, D, how the
features were made) in config.json and every checkpoint, so ``load_run`` rebuilds the model without the cache
file and with exactly the CLIP weights it was trained with (other weights are refused by their SHA-256).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tgdfer.backbone import FrozenClip, load_clip
from tgdfer.config import RunConfig, from_dict
from tgdfer.devices import resolve_device
from tgdfer.features import CacheError, FeatureCache
from tgdfer.model import TGDFER


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a run directory that does not fit); says where and why."""


def cache_identity(cache: FeatureCache) -> dict:
    """What a run needs to know of its cache; saved in config.json and every checkpoint (predict reads it)."""
    keys = (
        "fingerprint",
        "clip_sha256",
        "clip_model",
        "dataset",
        "frames",
        "dim",
        "train_views",
        "class_names",
        "image_size",
        "dtype",
        "face_crop",
        "seed",
        "sampling",
        "preprocess",
    )
    return {k: cache.attrs.get(k) for k in keys} | {"path": cache.path}


def build_model(
    cfg: RunConfig, identity: dict, device: torch.device, clip: FrozenClip | None = None
) -> tuple[TGDFER, FrozenClip]:
    """Load the cache's CLIP (refusing other weights), seed, and build the model on ``device``.

    ``identity`` is what the model must fit: the cache's clip_model, clip_sha256, class_names, frames, dim.
    """
    source = cfg.clip or identity["clip_model"]
    clip = clip or load_clip(source, "cpu", torch.float32)
    if clip.sha256 != identity["clip_sha256"]:
        raise CacheError(
            f"CLIP weights {source!r} have sha256 {clip.sha256[:12]}, but {identity.get('path', 'the cache')} was "
            f"extracted with {identity['clip_sha256'][:12]} ({identity['clip_model']}): pass the same weights with "
            "--clip"
        )
    torch.manual_seed(cfg.train.seed)
    model = TGDFER(cfg.model, clip.model, tuple(identity["class_names"]), int(identity["frames"]), int(identity["dim"]))
    return model.to(device), clip


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """A finished (or checkpointed) run, rebuilt for inference without its cache file."""

    model: TGDFER  # eval mode, on the asked device
    config: RunConfig
    identity: dict  # the cache the run trained on: clip_model, clip_sha256, class_names, frames, dim, ...
    clip: FrozenClip  # the same CLIP weights, for encoding new frames
    epoch: int  # epochs trained

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.identity["class_names"])


def load_run(run_dir: str | Path, device: str = "auto", clip_source: str | None = None) -> TrainedRun:
    """Rebuild the model of a run directory from its checkpoint, with the CLIP weights it was trained with."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise TrainingError(
            f"--run: expected a run directory written by `tgdfer train` with checkpoint.pt, found none in {run_dir}"
        )
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    cfg = from_dict(RunConfig, state["config"])
    if clip_source:
        cfg = replace(cfg, clip=clip_source)
    dev = resolve_device(device)
    model, clip = build_model(cfg, state["cache"], dev)
    model.load_trainable_state(state["model"])
    return TrainedRun(model=model.eval(), config=cfg, identity=state["cache"], clip=clip, epoch=int(state["epoch"]))
