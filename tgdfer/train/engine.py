"""Stage 2: train and evaluate TG-DFER on the feature cache. ``train_one_epoch``, ``evaluate``, ``fit_fold``.

The cache goes to the device once; each epoch every train clip contributes one of its augmented train views,
drawn with a generator seeded by (seed, epoch), and the order is shuffled the same way. So a resumed run draws
exactly what an uninterrupted one would, and no data loader or h5py handle is involved. Evaluation uses each
test clip's test view. The reported metrics are the final epoch's: no checkpoint is ever chosen on the test split.

``fit_fold`` trains one run (one fold) and reads top to bottom: build the model for the cache, resume if asked,
then per epoch train, evaluate for the curves, log and checkpoint; finally evaluate and write the metrics. The
files of the run directory and the checkpoint's format belong to ``tgdfer.train.runs``. Every fold of a cache:
``tgdfer.train.folds``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tgdfer.atomic import is_disk_full, remove_stale_temporaries
from tgdfer.backbone import FrozenClip
from tgdfer.config import RunConfig, TrainConfig
from tgdfer.devices import autocast, resolve_device
from tgdfer.errors import CacheError, TrainingError
from tgdfer.features.cache import FeatureCache, load_cache
from tgdfer.locks import exclusive
from tgdfer.model.inference import predict_features
from tgdfer.model.network import TGDFER, count_parameters
from tgdfer.train.metrics import Scores, scores
from tgdfer.train.runs import (
    CONFUSION,
    CURVES,
    RunDir,
    build_model,
    cache_identity,
    differing_settings,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from tgdfer.train.splits import FoldData, fold_data, train_feature_mean


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The view draw and order of an epoch depend only on (seed, epoch), so resuming redraws them exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_draw(data: FoldData, cfg: TrainConfig, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An epoch's sample of the train clips -> (n,) view rows (a per-frame cache's fresh (n, T) frame rows) and
    the (n,) order to visit them in, both drawn from ``epoch_generator(seed, epoch)`` on the CPU."""
    device = data.features.device
    n, k = data.train_choices.shape
    g = epoch_generator(cfg.seed, epoch)
    choice = torch.randint(0, k, (n,), generator=g).to(device)
    order = torch.randperm(n, generator=g).to(device)
    return data.epoch_rows(choice, g), order


def train_one_epoch(
    model: TGDFER, optimizer: torch.optim.Optimizer, data: FoldData, cfg: TrainConfig, epoch: int
) -> dict:
    """One pass over the train clips, a random train view each; returns mean loss and train accuracy."""
    model.train()
    device = data.features.device
    views, order = epoch_draw(data, cfg, epoch)
    n = len(order)
    steps = math.ceil(n / cfg.batch_size)
    losses = torch.zeros(steps, device=device)
    correct = torch.zeros((), device=device)
    for step in range(steps):
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = data.features[views[idx]].float()  # (B, T, D)
        y = data.train_labels[idx]
        with autocast(device, cfg.amp):
            out = model(x)
        loss = F.cross_entropy(out.logits.float(), y)
        for bag in out.aux:  # a stream's own bag, trained on the label too (ModelConfig.aux_loss)
            loss = loss + F.cross_entropy(bag.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses[step] = loss.detach()  # checked once per epoch: no device sync per step
        correct += (out.logits.argmax(1) == y).sum()
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise TrainingError(
            f"non-finite loss ({losses[bad].item()}) at epoch {epoch + 1}, step {bad + 1} of {steps}; "
            "the run stops here (the last checkpoint is the previous epoch). Try a lower optim.lr "
            "or train.grad_clip"
        )
    return {"loss": float(losses.mean()), "train_acc": float(correct) / n * 100.0}


def evaluate(model: TGDFER, data: FoldData, amp: str = "auto", select: tuple[str, int] | None = None) -> Scores:
    """WAR/UAR/per-class/confusion on the test view of every test clip."""
    out = predict_features(model, data.features[data.test_rows], amp, select=select)
    pred = out["probs"].argmax(1).cpu().numpy()
    return scores(data.test_labels.cpu().numpy(), pred, len(data.class_names))


def make_optimizer(model: TGDFER, cfg: RunConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with two learning rates (prompt contexts, the rest) and MultiStepLR, as §4.2."""
    prompt, rest = model.parameter_groups()
    groups = [
        g for g in ({"params": rest, "lr": cfg.optim.lr}, {"params": prompt, "lr": cfg.optim.lr_prompt}) if g["params"]
    ]
    optimizer = torch.optim.SGD(
        groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.optim.milestones), cfg.optim.gamma)
    return optimizer, scheduler


def resume_run(run: RunDir, cfg: RunConfig, identity: dict, model, optimizer, scheduler, device) -> tuple[int, list]:
    """Continue from run's checkpoint, refusing one trained with other settings or on another cache."""
    state = load_checkpoint(run.checkpoint, map_location=device)
    differing = differing_settings(cfg, state["config"])
    if differing:
        raise TrainingError(
            f"--resume: {run.checkpoint} was trained with other settings ({differing}); use its settings or "
            "another --out"
        )
    if state["cache"].get("fingerprint") != identity.get("fingerprint"):
        raise CacheError(
            f"--resume: {run.checkpoint} was trained on a cache with fingerprint "
            f"{str(state['cache'].get('fingerprint'))[:12]}, {identity['path']} has "
            f"{str(identity.get('fingerprint'))[:12]}"
        )
    return restore_checkpoint(state, model, optimizer, scheduler, device)


def epoch_line(row: dict, epochs: int) -> str:
    """The log line of one epoch's row (loss, train accuracy, and the test/val scores where evaluated)."""
    evaluated = f" test WAR {row['test_war']:.2f} UAR {row['test_uar']:.2f}" if row["test_war"] != "" else ""
    if row.get("val_war", "") != "":
        evaluated += f" val WAR {row['val_war']:.2f} UAR {row['val_uar']:.2f}"
    return (
        f"epoch {row['epoch']}/{epochs} loss {row['loss']:.4f} train acc {row['train_acc']:.1f}{evaluated}"
        f" ({row['seconds']:.1f} s)"
    )


def fit_fold(
    cfg: RunConfig,
    resume: bool = False,
    cache: FeatureCache | None = None,
    clip: FrozenClip | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train one run and write its directory (``tgdfer.train.runs``); returns the final metrics (metrics.json).

    The run directory belongs to this process while it trains (a second one is refused, naming this pid); dead
    writers' temporary files in it are removed first, and a full disk stops the run in one line.
    """
    run = RunDir(Path(cfg.out))
    with exclusive(run.lock, f"run directory {run.path}"):
        remove_stale_temporaries(run.path)
        try:
            return _fit(cfg, resume, cache, clip, on_epoch_end, log)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            epochs = load_checkpoint(run.checkpoint)["epoch"] if run.checkpoint.is_file() else 0
            raise TrainingError(
                f"no space left on the device holding {exc.filename or run.path}; {epochs} epochs are checkpointed "
                f"in {run.checkpoint}, free space and rerun with --resume"
            ) from None


def _fit(cfg: RunConfig, resume: bool, cache, clip, on_epoch_end, log) -> dict:

    run = RunDir(Path(cfg.out))
    if not resume and run.status() in ("done", "partial"):
        raise TrainingError(f"{run.path} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and not run.checkpoint.exists():
        log(f"--resume: no checkpoint in {run.path}; starting from epoch 1")
    device = resolve_device(cfg.device)
    cache = cache or load_cache(cfg.features)
    identity = cache_identity(cache)
    data = fold_data(cache, cfg.fold, device)
    model, _ = build_model(cfg, identity, device, clip)
    model.set_feature_mean(train_feature_mean(data))
    optimizer, scheduler = make_optimizer(model, cfg)
    trainable, frozen = count_parameters(model)
    split = cache.split_names[cache.split_index(cfg.fold)]
    val = data.validation()  # None without val clips (extract --val-fraction)
    held = f" / {len(val.test_rows)} val" if val is not None else ""
    log(
        f"train: {len(data.train_choices)} train / {len(data.test_rows)} test{held} clips, split {split}, "
        f"{trainable:,} trainable parameters ({frozen:,} frozen CLIP text tower), device {device}"
    )
    run.path.mkdir(parents=True, exist_ok=True)
    start_epoch, history = 0, []
    if resume and run.checkpoint.exists():
        start_epoch, history = resume_run(run, cfg, identity, model, optimizer, scheduler, device)
        log(f"resumed {run.path} after epoch {start_epoch}")
    run.write_config(cfg, identity)
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(model, optimizer, data, cfg.train, epoch)
        scheduler.step()
        row = {"epoch": epoch + 1, "lr": lr, **stats, "test_war": "", "test_uar": ""}
        if val is not None:
            row.update(val_war="", val_uar="")
        every = cfg.train.eval_every
        if epoch + 1 == cfg.train.epochs or (every > 0 and (epoch + 1) % every == 0):  # for the curves only
            s = evaluate(model, data, cfg.train.amp)
            row.update(test_war=s.war, test_uar=s.uar)
            if val is not None:  # what a user may choose an epoch on (train.epochs=k), never the test columns
                v = evaluate(model, val, cfg.train.amp)
                row.update(val_war=v.war, val_uar=v.uar)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        run.write_log(history)
        save_checkpoint(run, model, optimizer, scheduler, epoch + 1, history, cfg, identity, device)
        log(epoch_line(row, cfg.train.epochs))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    return finish_run(run, model, data, cfg, split, trainable, started, history, log)


def finish_run(
    run: RunDir,
    model: TGDFER,
    data: FoldData,
    cfg: RunConfig,
    split: str,
    trainable: int,
    started: float,
    history: list[dict],
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluate the final epoch, write metrics.json and the figures -> the metrics (``fit_fold``, ``fit_batched``)."""
    from tgdfer.plots import confusion_png, curves_png

    val = data.validation()  # None without val clips
    final = evaluate(model, data, cfg.train.amp)  # the final epoch is reported: no selection on the test split
    metrics = {
        **final.to_dict(data.class_names),
        "epoch": cfg.train.epochs,
        "fold": cfg.fold,
        "split": split,
        "test_clips": len(data.test_rows),
        "train_clips": len(data.train_choices),
        "trainable_parameters": trainable,
        "train_seconds": time.perf_counter() - started,
        "class_names": list(data.class_names),
        "reported": "final epoch (no checkpoint selection on the test split)",
    }
    if val is not None:
        v = evaluate(model, val, cfg.train.amp)
        scored = [r for r in history if r.get("val_uar", "") != ""]
        metrics |= {
            "val": v.to_dict(data.class_names) | {"clips": len(val.test_rows)},
            # information for choosing train.epochs on the validation clips; the run still reports its final epoch
            "val_best_epoch": max(scored, key=lambda r: (r["val_uar"], r["val_war"], -r["epoch"]))["epoch"],
        }
    run.write_metrics(metrics)
    title = f"fold {cfg.fold}: WAR {final.war:.2f}  UAR {final.uar:.2f}"
    confusion_png(final.confusion, data.class_names, run.path / CONFUSION, title)
    curves_png(history, run.path / CURVES)
    log(f"final (epoch {cfg.train.epochs}): WAR {final.war:.2f}  UAR {final.uar:.2f}  -> {run.path}")
    return metrics
