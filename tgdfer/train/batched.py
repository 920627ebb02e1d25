"""Runs that share a model shape trained together in one process as one batched model (``fit_batched``).

The folds and seeds of a table row (and rows that differ only in optimiser settings) build the same network. Here
R such runs train as one: their trainable parameters (and per-run buffers, the feature mean) are stacked into
(R, ...) tensors with ``torch.func.stack_module_state``'s layout, and ``torch.func.vmap`` runs the model's own
``TGDFER.forward`` over the run axis through ``torch.func.functional_call`` (``run_forward``). There is no second
copy of the forward: a change to the model reaches batched runs as it is. The frozen CLIP text tower is not
stacked: every run's prompts go through the one shared tower inside the vmap. (On the CPU, torch 2.14 has no vmap
rule for the fused attention kernel and loops over the runs there, with a warning.) Nothing else is shared:

- each run draws its own data order and train views with ``engine.epoch_draw`` (its batches are the ones it gets
  alone);
- runs whose last batch is shorter, or who have fewer steps this epoch, are padded to the common batch size; the
  loss of each run is its own ``cross_entropy`` over its valid rows, so padding never reaches a gradient;
- each run keeps its own optimizer and scheduler over its own module's parameters, which are views into the
  stacked tensors: the optimizer step is the run-alone step, and its checkpoint has the run-alone format.

Dropout draws each run's masks independently (vmap's ``randomness="different"``) from the global RNG, so with
``model.dropout > 0`` a batched run is a valid draw of the same training but not the run alone's masks. Without
dropout a run's metrics equal what it gives alone up to float rounding (batched matmuls sum in another order;
``tests/test_batched.py`` bounds it). Every run writes its normal run directory through ``tgdfer.train.runs``
(config.json, log.csv, checkpoint.pt, metrics.json, figures): a batched run resumes alone and vice versa.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from tgdfer.backbone import FrozenClip
from tgdfer.config import RunConfig, to_dict
from tgdfer.devices import autocast, resolve_device
from tgdfer.errors import ConfigError, TrainingError
from tgdfer.features.cache import FeatureCache, load_cache
from tgdfer.model.network import FROZEN_PREFIX, TGDFER, count_parameters
from tgdfer.train.engine import epoch_draw, epoch_line, evaluate, finish_run, make_optimizer, resume_run
from tgdfer.train.runs import RunDir, build_model, cache_identity, save_checkpoint
from tgdfer.train.splits import FoldData, fold_data, train_feature_mean


def shape_key(cfg: RunConfig) -> str:
    """Runs with the same key can train batched: same cache, CLIP, device, network, batch size, amp and epochs.

    Fold, seed, output folder and the optimiser's settings may differ (each run keeps its own optimizer).
    """
    d = to_dict(cfg)
    t = d["train"]
    return repr(
        (d["features"], d["clip"], d["device"], sorted(d["model"].items()), t["batch_size"], t["amp"], t["epochs"])
    )


def run_state_names(model: TGDFER) -> list[str]:
    """What differs between runs of one shape: the trainable parameters and the persistent buffers (the feature
    mean, a fixed attention temperature), never the frozen CLIP text tower or the structural buffers."""
    kept = model.trainable_state()
    return [n for n, _ in (*model.named_parameters(), *model.named_buffers()) if n in kept]


def run_forward(
    template: TGDFER, state: dict[str, torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """R runs of ``template``'s own forward: ``state`` {name: (R, ...)} (``run_state_names``), (R, B, T, D)
    features -> (R, B, C) bag logits and (R, B, C) each of ``Output.aux``. Dropout draws per run."""

    def one(run_state: dict[str, torch.Tensor], xr: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out = functional_call(template, run_state, (xr,))  # (B, T, D) -> Output of (B, C) bags
        return out.logits, out.aux

    return vmap(one, randomness="different")(state, x)


@dataclass(eq=False)
class _Run:
    cfg: RunConfig
    run: RunDir
    data: FoldData
    model: TGDFER
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    history: list
    start_epoch: int
    split: str
    trainable: int
    identity: dict
    started: float = 0.0


def _stack(runs: list[_Run]) -> dict[str, torch.Tensor]:
    """Stack every run's state (``run_state_names``) into (R, ...) tensors; each module parameter becomes a view of
    its run's slice of a stacked leaf, so the per-run optimizers update the stacked tensors in place."""
    stacked = {}
    for name in run_state_names(runs[0].model):
        tensors = [
            r.model.get_parameter(name) if _is_parameter(r.model, name) else r.model.get_buffer(name) for r in runs
        ]
        leaf = torch.stack([q.detach() for q in tensors])
        if isinstance(tensors[0], torch.nn.Parameter):
            leaf.requires_grad_(tensors[0].requires_grad)
            for i, q in enumerate(tensors):
                q.data = leaf.detach()[i]
        stacked[name] = leaf
    return stacked


def _is_parameter(model: TGDFER, name: str) -> bool:
    return name in dict(model.named_parameters())


@contextlib.contextmanager
def _owned(model: TGDFER) -> Iterator[None]:
    """Give the module's parameters their own storage for a moment (``torch.save`` of a view writes its base)."""
    params = [q for n, q in model.named_parameters() if not n.startswith(FROZEN_PREFIX)]
    views = [q.data for q in params]
    for q in params:
        q.data = q.data.clone()
    try:
        yield
    finally:
        for q, v in zip(params, views, strict=True):
            v.copy_(q.data)
            q.data = v


def _step(runs: list[_Run], stacked: dict[str, torch.Tensor], batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """One optimizer step of every run with a batch this step: ``batches[r]`` (b_r,) view rows and (b_r,) labels,
    b_r = 0 for a run whose epoch has ended. -> per run (its loss, its correct count) or None."""
    batch = runs[0].cfg.train.batch_size
    rows = [
        torch.cat([v, v[:1].expand(batch - len(v)) if len(v) else r.data.train_choices[:1, 0].expand(batch)])
        for r, (v, _) in zip(runs, batches, strict=True)
    ]
    x = runs[0].data.features[torch.stack(rows)].float()  # (R, B, T, D), padded rows never reach a loss
    with autocast(x.device, runs[0].cfg.train.amp):
        logits, aux = run_forward(runs[0].model, stacked, x)  # (R, B, C), aux: (R, B, C) each
    total, out = 0, []
    for i, (v, y) in enumerate(batches):
        if not len(v):
            out.append(None)
            continue
        loss = F.cross_entropy(logits[i, : len(v)].float(), y)
        for bag in aux:  # a stream's own bag, as engine.train_one_epoch
            loss = loss + F.cross_entropy(bag[i, : len(v)].float(), y)
        total = total + loss
        out.append((loss.detach(), (logits[i, : len(v)].argmax(1) == y).sum()))
    for leaf in stacked.values():
        leaf.grad = None
    total.backward()
    for r, o, i in zip(runs, out, range(len(runs)), strict=True):
        if o is None:
            continue  # this run's epoch has ended: no step, as alone
        for name, q in r.model.named_parameters():
            if name in stacked:
                q.grad = stacked[name].grad[i]
        if r.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(r.model.parameters(), r.cfg.train.grad_clip)
        r.optimizer.step()
    return out


def train_epoch_batched(runs: list[_Run], stacked: dict[str, torch.Tensor], epoch: int) -> list[dict | Exception]:
    """One epoch of every run, stepped together -> per run its stats (as ``train_one_epoch``) or its error."""
    batch, device = runs[0].cfg.train.batch_size, runs[0].data.features.device
    for r in runs:
        r.model.train()
    draws = [epoch_draw(r.data, r.cfg.train, epoch) for r in runs]  # (n,) views, (n,) order per run
    steps = [math.ceil(len(order) / batch) for _, order in draws]
    losses = [torch.zeros(s, device=device) for s in steps]
    correct = [torch.zeros((), device=device) for _ in runs]
    for step in range(max(steps)):
        batches = []
        for (views, order), r in zip(draws, runs, strict=True):
            idx = order[step * batch : (step + 1) * batch]
            batches.append((views[idx], r.data.train_labels[idx]))
        for i, o in enumerate(_step(runs, stacked, batches)):
            if o is not None:
                losses[i][step], correct[i] = o[0], correct[i] + o[1]
    results: list[dict | Exception] = []
    for i in range(len(runs)):
        finite = torch.isfinite(losses[i])
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            results.append(
                TrainingError(
                    f"non-finite loss ({losses[i][bad].item()}) at epoch {epoch + 1}, step {bad + 1} of {steps[i]}; "
                    "the run stops here (the last checkpoint is the previous epoch). Try a lower optim.lr "
                    "or train.grad_clip"
                )
            )
        else:
            n = len(draws[i][1])
            results.append({"loss": float(losses[i].mean()), "train_acc": float(correct[i]) / n * 100.0})
    return results


def _open_run(cfg: RunConfig, resume: bool, cache: FeatureCache, identity: dict, clip, features, log) -> _Run:
    """Build one run as ``engine.fit_fold`` does (same seed, init, optimizer, resume), its data on the shared
    features."""
    run = RunDir(Path(cfg.out))
    if not resume and run.status() in ("done", "partial"):
        raise TrainingError(f"{run.path} already holds a run: pass --resume to continue it, or choose another --out")
    device = features.device
    cpu = fold_data(cache, cfg.fold, torch.device("cpu"))  # indices only; the features stay shared
    if cpu.sampler is not None or cpu.val_rows is not None:
        raise ConfigError(
            f"batched runs: expected a view cache without a validation split, found "
            f"{'a per-frame cache' if cpu.sampler is not None else 'val clips'} in {cache.path}; train these runs "
            "one at a time (--no-batch)"
        )
    data = replace(
        cpu,
        features=features,
        train_choices=cpu.train_choices.to(device),
        train_labels=cpu.train_labels.to(device),
        test_rows=cpu.test_rows.to(device),
        test_labels=cpu.test_labels.to(device),
    )
    model, _ = build_model(cfg, identity, device, clip)
    model.set_feature_mean(train_feature_mean(data))
    optimizer, scheduler = make_optimizer(model, cfg)
    trainable, frozen = count_parameters(model)
    split = cache.split_names[cache.split_index(cfg.fold)]
    log(
        f"train: {len(data.train_choices)} train / {len(data.test_rows)} test clips, split {split}, "
        f"{trainable:,} trainable parameters ({frozen:,} frozen CLIP text tower), device {device} (batched)"
    )
    run.path.mkdir(parents=True, exist_ok=True)
    start_epoch, history = 0, []
    if resume and run.checkpoint.exists():
        start_epoch, history = resume_run(run, cfg, identity, model, optimizer, scheduler, device)
        log(f"resumed {run.path} after epoch {start_epoch}")
    elif resume:
        log(f"--resume: no checkpoint in {run.path}; starting from epoch 1")
    run.write_config(cfg, identity)
    return _Run(cfg, run, data, model, optimizer, scheduler, history, start_epoch, split, trainable, identity)


def fit_batched(
    cfgs: list[RunConfig],
    resume: bool | list[bool] = False,
    cache: FeatureCache | None = None,
    clip: FrozenClip | None = None,
    on_epoch_end: Callable[[int, int, dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict | Exception]:
    """Train runs of one model shape (``shape_key``) together; each writes its own run directory.

    Returns per config its final metrics (what ``engine.fit_fold`` returns) or the exception that stopped it; the
    other runs go on. ``on_epoch_end(run index, epoch, row)`` is called per run and epoch.
    """
    if len({shape_key(c) for c in cfgs}) != 1:
        raise TrainingError(
            f"fit_batched: expected runs of one model shape, found {len({shape_key(c) for c in cfgs})} shapes"
        )
    resumes = resume if isinstance(resume, list) else [resume] * len(cfgs)
    device = resolve_device(cfgs[0].device)
    cache = cache or load_cache(cfgs[0].features)
    identity = cache_identity(cache)
    features = torch.from_numpy(cache.features).to(device)  # (V, T, D) fp16, once for every run
    results: list[dict | Exception | None] = [None] * len(cfgs)
    runs: dict[int, _Run] = {}
    for i, (cfg, res) in enumerate(zip(cfgs, resumes, strict=True)):
        try:
            runs[i] = _open_run(cfg, res, cache, identity, clip, features, log)
        except Exception as exc:
            results[i] = exc
    by_start: dict[int, list[int]] = {}
    for i, r in runs.items():
        by_start.setdefault(r.start_epoch, []).append(i)
    for start, members in sorted(by_start.items()):  # runs resumed at different epochs step in separate groups
        _train_group([runs[i] for i in members], members, start, results, on_epoch_end, log)
    return results  # type: ignore[return-value]


def _end_epoch(r: _Run, epoch: int, lr: float, stats: dict, t0: float, log) -> dict:
    """Step the run's scheduler, evaluate when due, log and checkpoint the epoch -> its log row."""
    epochs = r.cfg.train.epochs
    r.scheduler.step()
    row = {"epoch": epoch + 1, "lr": lr, **stats, "test_war": "", "test_uar": ""}
    every = r.cfg.train.eval_every
    if epoch + 1 == epochs or (every > 0 and (epoch + 1) % every == 0):
        e = evaluate(r.model, r.data, r.cfg.train.amp)
        row.update(test_war=e.war, test_uar=e.uar)
    row["seconds"] = time.perf_counter() - t0
    r.history.append(row)
    r.run.write_log(r.history)
    device = r.data.features.device
    with _owned(r.model):
        save_checkpoint(r.run, r.model, r.optimizer, r.scheduler, epoch + 1, r.history, r.cfg, r.identity, device)
    log(f"{r.run.path.name}: {epoch_line(row, epochs)}")
    return row


def _train_group(group: list[_Run], members: list[int], start: int, results: list, on_epoch_end, log) -> None:
    """Train runs that start at the same epoch; ``results[members[k]]`` gets run k's metrics or its error."""
    epochs = group[0].cfg.train.epochs
    live = list(range(len(group)))
    stacked = _stack(group) if start < epochs else {}
    for r in group:
        r.started = time.perf_counter()
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        lrs = [group[k].optimizer.param_groups[0]["lr"] for k in live]
        stats = train_epoch_batched([group[k] for k in live], stacked, epoch)
        failed = []
        for k, lr, s in zip(list(live), lrs, stats, strict=True):
            try:
                if isinstance(s, Exception):
                    raise s
                row = _end_epoch(group[k], epoch, lr, s, t0, log)
                if on_epoch_end is not None:
                    on_epoch_end(members[k], epoch + 1, row)
            except Exception as exc:
                results[members[k]] = exc
                failed.append(k)
        if failed:
            live = [k for k in live if k not in failed]
            if not live:
                return
            stacked = _stack([group[k] for k in live])
    for k in live:
        r = group[k]
        try:
            with _owned(r.model):
                results[members[k]] = finish_run(
                    r.run, r.model, r.data, r.cfg, r.split, r.trainable, r.started, r.history, log
                )
        except Exception as exc:
            results[members[k]] = exc
