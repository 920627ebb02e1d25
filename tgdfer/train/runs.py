"""The run directory: the one module that knows its files, writes its checkpoint and reads it back.

A run directory (``tgdfer train --out DIR``) holds::

    config.json     the RunConfig, the cache's identity and the tgdfer version (written at the start)
    log.csv         one row per epoch: lr, loss, train accuracy, test WAR/UAR where evaluated, seconds
    checkpoint.pt   trainable state, optimizer, scheduler, RNG, history: tensors and plain types only
    metrics.json    the final epoch's metrics (the run is done when it exists)
    confusion.png, curves.png
    error.txt       a sweep's record of why this run failed (tgdfer ablate)
    .lock           while a process trains it: that process's pid (``tgdfer.locks``)

A checkpoint is loaded with ``torch.load(weights_only=True)``: config, cache identity and history are JSON text
and the scheduler's state plain lists, so loading a file never runs code, and a file that is not a tgdfer
checkpoint is refused in one line. A run records what it needs of its cache (``cache_identity``: CLIP source and
weights hash, classes, T, D, how the features were made), so ``load_run`` rebuilds the model without the cache
file and with exactly the CLIP weights it was trained with (other weights are refused by their SHA-256).
"""

from __future__ import annotations

import collections
import csv
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tgdfer import __version__
from tgdfer.atomic import write_bytes, write_text
from tgdfer.backbone import FrozenClip, load_clip
from tgdfer.config import RunConfig, amp_choice, from_dict, to_dict
from tgdfer.devices import resolve_device
from tgdfer.errors import CacheError, ConfigError, RunError
from tgdfer.features.views import FeatureCache
from tgdfer.model.network import TGDFER


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


CONFIG, LOG, CHECKPOINT, METRICS = "config.json", "log.csv", "checkpoint.pt", "metrics.json"
CONFUSION, CURVES, ERROR, LOCK = "confusion.png", "curves.png", "error.txt", ".lock"
CHECKPOINT_FORMAT = 2  # 2: weights_only-loadable (JSON config, plain scheduler state); 1 was pickled objects


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory, by name."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def error(self) -> Path:
        return self.path / ERROR

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    def status(self) -> str:
        """done (metrics.json) | partial (a checkpoint) | failed earlier (error.txt only) | new."""
        if self.metrics.exists():
            return "done"
        if self.checkpoint.exists():
            return "partial"
        return "failed earlier" if self.error.exists() else "new"

    def write_config(self, cfg: RunConfig, identity: dict) -> None:
        record = {**to_dict(cfg), "cache": identity, "tgdfer_version": __version__}
        write_text(self.config, json.dumps(record, indent=2, default=list))

    def write_log(self, history: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        write_text(self.log, buffer.getvalue())

    def read_metrics(self) -> dict:
        return json.loads(self.metrics.read_text())

    def write_metrics(self, metrics: dict) -> None:
        write_text(self.metrics, json.dumps(metrics, indent=2))


def _scheduler_state(state: dict) -> dict:
    """MultiStepLR keeps its milestones in a Counter, which weights_only loading refuses: store (epoch, count) pairs."""
    return {k: sorted(v.items()) if isinstance(v, collections.Counter) else v for k, v in state.items()}


def _scheduler_restore(state: dict) -> dict:
    return {k: collections.Counter(dict(map(tuple, v))) if k == "milestones" else v for k, v in state.items()}


def save_checkpoint(
    run: RunDir,
    model: TGDFER,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    history: list[dict],
    cfg: RunConfig,
    identity: dict,
    device: torch.device,
) -> None:
    """Write checkpoint.pt atomically, holding only tensors and plain types (see the module docstring)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "tgdfer_version": __version__,
        "model": model.trainable_state(),
        "optimizer": optimizer.state_dict(),
        "scheduler": _scheduler_state(scheduler.state_dict()),
        "epoch": epoch,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
        "history": json.dumps(history),
        "config": json.dumps(to_dict(cfg), default=list),
        "cache": json.dumps(identity, default=list),
    }
    buffer = io.BytesIO()  # built in memory: a full disk is then one OSError from write_bytes, naming the file
    torch.save(state, buffer)
    write_bytes(run.checkpoint, buffer.getbuffer())


_CHECKPOINT_KEYS = frozenset(
    {"format", "model", "optimizer", "scheduler", "epoch", "rng", "history", "config", "cache"}
)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by ``save_checkpoint`` without running any code in it.

    Returns it with config, cache and history decoded from JSON. Anything else (a pickle, a foreign checkpoint, a
    damaged file, an older tgdfer's format) raises ``RunError`` naming the file and what was found.
    """
    path = Path(path)
    expected = f"expected a tgdfer checkpoint (format {CHECKPOINT_FORMAT}) written by `tgdfer train`"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path}: {expected}, found no file") from None
    except Exception as exc:  # unpickling refused (a foreign object), a truncated zip, not a torch file at all
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{path}: {expected}, found a file torch cannot load safely ({reason})") from None
    if not isinstance(state, dict) or not set(state) >= _CHECKPOINT_KEYS:
        found = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise RunError(f"{path}: {expected}, found {found}")
    if state["format"] != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: {expected}, found format {state['format']}; retrain it with this tgdfer")
    try:
        for key in ("config", "cache", "history"):
            state[key] = json.loads(state[key])
    except (TypeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: {expected}, found an unreadable {key} entry ({exc})") from None
    state["scheduler"] = _scheduler_restore(state["scheduler"])
    return state


def differing_settings(ours: RunConfig, theirs: dict) -> list[str]:
    """Dotted names of the model/optim/train settings where ``ours`` differs from a stored config dict."""
    mine = to_dict(ours)
    stored_amp = theirs.get("train", {}).get("amp")
    if stored_amp is not None:  # a run saved when train.amp was a bool reads as its choice (True: auto)
        theirs = {**theirs, "train": {**theirs["train"], "amp": amp_choice(stored_amp)}}
    return sorted(
        f"{s}.{k}"
        for s in ("model", "optim", "train")
        for k in mine[s]
        if mine[s][k] != theirs.get(s, {}).get(k)
        and not (isinstance(mine[s][k], tuple) and list(mine[s][k]) == theirs.get(s, {}).get(k))
    )


def restore_checkpoint(
    state: dict,
    model: TGDFER,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> tuple[int, list[dict]]:
    """Load a checkpoint's state into a freshly built run -> (epochs done, history)."""
    model.load_trainable_state(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
    return int(state["epoch"]), list(state["history"])


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
    run = RunDir(Path(run_dir))
    if not run.checkpoint.is_file():
        raise RunError(
            f"--run: expected a run directory written by `tgdfer train` with {CHECKPOINT}, found none in {run.path}"
        )
    state = load_checkpoint(run.checkpoint)
    try:
        cfg = from_dict(RunConfig, state["config"])
    except (TypeError, ValueError) as exc:
        raise RunError(f"{run.checkpoint}: its config does not fit this tgdfer ({exc})") from None
    if clip_source:
        cfg = replace(cfg, clip=clip_source)
    model, clip = build_model(cfg, state["cache"], resolve_device(device))
    try:
        model.load_trainable_state(state["model"])
    except ConfigError as exc:
        raise RunError(f"{run.checkpoint}: {exc}") from None
    return TrainedRun(model=model.eval(), config=cfg, identity=state["cache"], clip=clip, epoch=int(state["epoch"]))
