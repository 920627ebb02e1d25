"""Stage 2: train and evaluate TG-DFER on the feature cache. ``train_one_epoch``, ``evaluate``, ``fit``.

The cache goes to the device once; each epoch every train clip contributes one of its augmented train views,
drawn with a generator seeded by (seed, epoch), and the order is shuffled the same way. So a resumed run draws
exactly what an uninterrupted one would, and no data loader or h5py handle is involved. Evaluation uses each
test clip's test view. The reported metrics are the final epoch's: no checkpoint is ever chosen on the test split.

A run directory holds config.json, log.csv (one row per epoch), checkpoint.pt (trainable state, optimizer,
scheduler, RNG, history; rewritten atomically each epoch), metrics.json, confusion.png and curves.png.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tgdfer import __version__
from tgdfer.atomic import committed, write_text
from tgdfer.backbone import FrozenClip, load_clip
from tgdfer.config import RunConfig, TrainConfig, to_dict
from tgdfer.devices import resolve_device
from tgdfer.features import CacheError, FeatureCache, load_cache
from tgdfer.metrics import Scores, scores, summarize
from tgdfer.model import TGDFER, count_parameters
from tgdfer.runs import TrainedRun, TrainingError, build_model, cache_identity, load_run
from tgdfer.splits import FoldData, fold_data, train_feature_mean

__all__ = [
    "FoldData",
    "TrainedRun",
    "TrainingError",
    "evaluate",
    "fit",
    "fit_folds",
    "fold_data",
    "folds_of",
    "load_run",
    "predict_views",
    "train_one_epoch",
]


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The view draw and order of an epoch depend only on (seed, epoch), so resuming redraws them exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train_one_epoch(
    model: TGDFER, optimizer: torch.optim.Optimizer, data: FoldData, cfg: TrainConfig, epoch: int
) -> dict:
    """One pass over the train clips, a random train view each; returns mean loss and train accuracy."""
    model.train()
    device = data.features.device
    n, k = data.train_views.shape
    g = epoch_generator(cfg.seed, epoch)
    choice = torch.randint(0, k, (n,), generator=g).to(device)
    order = torch.randperm(n, generator=g).to(device)
    views = data.train_views[torch.arange(n, device=device), choice]  # (n,)
    steps = math.ceil(n / cfg.batch_size)
    losses = torch.zeros(steps, device=device)
    correct = torch.zeros((), device=device)
    for step in range(steps):
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = data.features[views[idx]].float()  # (B, T, D)
        y = data.train_labels[idx]
        with _autocast(device, cfg.amp):
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


@torch.inference_mode()
def predict_views(
    model: TGDFER,
    features: torch.Tensor,
    amp: bool = True,
    batch_size: int = 1024,
    select: tuple[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the model on (N, T, D) features -> {"probs": (N, C), "scores": (N, T, C), "mask": (N, T) bool}.

    ``select=("highest"|"lowest", k)`` re-predicts from only the k frames with the highest or lowest influence
    on the full-clip prediction (Table 6); ``mask`` says which frames were used. The other frames reach no module
    of the re-prediction (``TGDFER.forward`` masks them as attention keys and in every pooling), so it is the
    prediction from those k frames alone.
    """
    model.eval()
    device = features.device
    probs, frame_scores, masks = [], [], []
    for start in range(0, len(features), batch_size):
        x = features[start : start + batch_size].float()
        with _autocast(device, amp):
            out = model(x)
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
            if select is not None:
                order, k = select
                if order not in ("highest", "lowest") or not 1 <= k <= x.shape[1]:
                    raise ValueError(f"select: expected ('highest'|'lowest', 1..{x.shape[1]}), found {select}")
                pred = out.logits.argmax(1)
                influence = out.scores[torch.arange(len(x), device=device), :, pred]  # (B, T) for the prediction
                chosen = influence.topk(k, dim=1, largest=order == "highest").indices
                mask = torch.zeros_like(mask).scatter_(1, chosen, True)
                out = model(x, frame_mask=mask)
        probs.append(out.logits.float().softmax(-1))
        frame_scores.append(out.scores.float())
        masks.append(mask)
    return {"probs": torch.cat(probs), "scores": torch.cat(frame_scores), "mask": torch.cat(masks)}


def evaluate(model: TGDFER, data: FoldData, amp: bool = True, select: tuple[str, int] | None = None) -> Scores:
    """WAR/UAR/per-class/confusion on the test view of every test clip."""
    out = predict_views(model, data.features[data.test_views], amp, select=select)
    pred = out["probs"].argmax(1).cpu().numpy()
    return scores(data.test_labels.cpu().numpy(), pred, len(data.class_names))


def make_optimizer(model: TGDFER, cfg: RunConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    prompt, rest = model.parameter_groups()
    groups = [
        g for g in ({"params": rest, "lr": cfg.optim.lr}, {"params": prompt, "lr": cfg.optim.lr_prompt}) if g["params"]
    ]
    optimizer = torch.optim.SGD(
        groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.optim.milestones), cfg.optim.gamma)
    return optimizer, scheduler


def _write_log(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


def _resume(path: Path, cfg: RunConfig, cache: FeatureCache, model, optimizer, scheduler, device) -> tuple[int, list]:
    state = torch.load(path, map_location=device, weights_only=False)
    ours, theirs = to_dict(cfg), state["config"]
    differing = sorted(
        f"{s}.{k}"
        for s in ("model", "optim", "train")
        for k in ours[s]
        if ours[s][k] != theirs[s].get(k)
        and not (isinstance(ours[s][k], tuple) and list(ours[s][k]) == theirs[s].get(k))
    )
    if differing:
        raise TrainingError(
            f"--resume: {path} was trained with other settings ({differing}); use its settings or another --out"
        )
    if state["cache"]["fingerprint"] != cache.attrs.get("fingerprint"):
        raise CacheError(
            f"--resume: {path} was trained on a cache with fingerprint {state['cache']['fingerprint'][:12]}"
            f", {cache.path} has {str(cache.attrs.get('fingerprint'))[:12]}"
        )
    model.load_trainable_state(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
    return int(state["epoch"]), list(state["history"])


def fit(
    cfg: RunConfig,
    resume: bool = False,
    cache: FeatureCache | None = None,
    clip: FrozenClip | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train one run and write its directory; returns the final metrics (also in metrics.json)."""
    from tgdfer.plots import confusion_png, curves_png

    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    if not resume and (ckpt_path.exists() or (out / "metrics.json").exists()):
        raise TrainingError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and not ckpt_path.exists():
        log(f"--resume: no checkpoint in {out}; starting from epoch 1")
    device = resolve_device(cfg.device)
    cache = cache or load_cache(cfg.features)
    data = fold_data(cache, cfg.fold, device)
    model, _ = build_model(cfg, cache_identity(cache), device, clip)
    model.set_feature_mean(train_feature_mean(data))
    optimizer, scheduler = make_optimizer(model, cfg)
    trainable, frozen = count_parameters(model)
    log(
        f"train: {len(data.train_views)} train / {len(data.test_views)} test clips, split "
        f"{cache.split_names[cache.split_index(cfg.fold)]}, {trainable:,} trainable parameters ({frozen:,} frozen "
        f"CLIP text tower), device {device}"
    )
    out.mkdir(parents=True, exist_ok=True)
    start_epoch, history = 0, []
    if resume and ckpt_path.exists():
        start_epoch, history = _resume(ckpt_path, cfg, cache, model, optimizer, scheduler, device)
        log(f"resumed {out} after epoch {start_epoch}")
    write_text(
        out / "config.json",
        json.dumps(
            {**to_dict(cfg), "cache": cache_identity(cache), "tgdfer_version": __version__},
            indent=2,
            default=list,
        ),
    )
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(model, optimizer, data, cfg.train, epoch)
        scheduler.step()
        last = epoch + 1 == cfg.train.epochs
        row = {"epoch": epoch + 1, "lr": lr, **stats, "test_war": "", "test_uar": ""}
        if last or (cfg.train.eval_every > 0 and (epoch + 1) % cfg.train.eval_every == 0):
            s = evaluate(model, data, cfg.train.amp)
            row.update(test_war=s.war, test_uar=s.uar)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        _write_log(out / "log.csv", history)
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }
        with committed(ckpt_path) as tmp:
            torch.save(
                {
                    "model": model.trainable_state(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "rng": rng,
                    "history": history,
                    "config": to_dict(cfg),
                    "cache": cache_identity(cache),
                },
                tmp,
            )
        log(
            f"epoch {epoch + 1}/{cfg.train.epochs} loss {stats['loss']:.4f} train acc {stats['train_acc']:.1f}"
            + (f" test WAR {row['test_war']:.2f} UAR {row['test_uar']:.2f}" if row["test_war"] != "" else "")
            + f" ({row['seconds']:.1f} s)"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    final = evaluate(model, data, cfg.train.amp)
    metrics = {
        **final.to_dict(data.class_names),
        "epoch": cfg.train.epochs,
        "fold": cfg.fold,
        "split": cache.split_names[cache.split_index(cfg.fold)],
        "test_clips": len(data.test_views),
        "train_clips": len(data.train_views),
        "trainable_parameters": trainable,
        "train_seconds": time.perf_counter() - started,
        "class_names": list(data.class_names),
        "reported": "final epoch (no checkpoint selection on the test split)",
    }
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    confusion_png(
        final.confusion,
        data.class_names,
        out / "confusion.png",
        f"fold {cfg.fold}: WAR {final.war:.2f}  UAR {final.uar:.2f}",
    )
    curves_png(history, out / "curves.png")
    log(f"final (epoch {cfg.train.epochs}): WAR {final.war:.2f}  UAR {final.uar:.2f}  -> {out}")
    return metrics


def folds_of(cache_path: str, fold: str) -> list[str]:
    """--fold all -> every split of the cache ("1".."5" for DFEW/MAFW, "1" otherwise); else [fold]."""
    if str(fold).lower() != "all":
        return [str(fold)]
    from tgdfer.features import read_attrs

    names = read_attrs(cache_path)["split_names"]
    return [str(i + 1) for i in range(len(names))]


def fit_folds(cfg: RunConfig, folds: list[str], resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """One run per fold under cfg.out/fold<k>, then summary.json and the fold-averaged confusion matrix."""
    from dataclasses import replace

    from tgdfer.plots import confusion_png

    if len(folds) == 1:
        return fit(replace(cfg, fold=folds[0]), resume=resume, log=log)
    cache = load_cache(cfg.features)
    clip = load_clip(cfg.clip or cache.attrs["clip_model"], "cpu", torch.float32)
    results = []
    for fold in folds:
        run = replace(cfg, fold=fold, out=str(Path(cfg.out) / f"fold{fold}"))
        if (Path(run.out) / "metrics.json").exists():
            log(f"fold {fold}: finished earlier, reading {run.out}/metrics.json")
            results.append(json.loads((Path(run.out) / "metrics.json").read_text()))
            continue
        results.append(fit(run, resume=resume, cache=cache, clip=clip, log=log))
    summary = summarize(results)
    write_text(Path(cfg.out) / "summary.json", json.dumps(summary, indent=2))
    confusion_png(
        np.array(summary["confusion_sum"]),
        tuple(summary["class_names"]),
        Path(cfg.out) / "confusion.png",
        f"{len(folds)} folds: WAR {summary['war_mean']:.2f}±{summary['war_std']:.2f}  "
        f"UAR {summary['uar_mean']:.2f}±{summary['uar_std']:.2f}",
    )
    log(
        f"{len(folds)} folds: WAR {summary['war_mean']:.2f} ± {summary['war_std']:.2f}  "
        f"UAR {summary['uar_mean']:.2f} ± {summary['uar_std']:.2f}  -> {cfg.out}/summary.json"
    )
    return summary
