"""Runs that share a model shape trained together in one process as one batched model (``fit_batched``).

The folds and seeds of a table row (and rows that differ only in optimiser settings) build the same network. Here
R such runs train as one: their trainable parameters are stacked into (R, ...) tensors and one forward pass
(``batched_forward``) computes every run's step, with the layers written for the run axis (batched matmuls over
R). The CLIP text tower runs once per step over every run's prompts in one batch: the prompt embeddings
(R, C, L, W) become (R*C, L, W). Nothing is shared between runs but the frozen tower and the cache:

- each run draws its own data order and train views from ``epoch_generator(seed, epoch)``, exactly as
  ``engine.train_one_epoch`` does (so a run's batches are the ones it gets alone);
- each run keeps its own RNG stream for dropout: a generator holding the state the global RNG has in the run
  alone (after its initialisation, or from its checkpoint), drawing every dropout mask with the shape and memory
  order of the run alone, so on the CPU a run draws the same masks batched as alone;
- runs whose last batch is shorter, or who have fewer steps this epoch, are padded to the common batch size; the
  loss of each run is its own ``cross_entropy`` over its valid rows, so padding never reaches a gradient;
- each run keeps its own optimizer and scheduler over its own module's parameters, which are views into the
  stacked tensors: the optimizer step is the run-alone step, and its checkpoint has the run-alone format.

So each run's metrics equal what it gives alone up to float rounding (batched matmuls sum in another order; the
test bounds it). Every run writes its normal run directory through ``tgdfer.train.runs`` (config.json, log.csv,
checkpoint.pt, metrics.json, figures): a batched run resumes alone and vice versa. On CUDA the masks come from
per-run CUDA generators, so a batched run is a valid draw of the same training but not bit-equal to a run alone.
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

from tgdfer.backbone import FrozenClip
from tgdfer.config import RunConfig, to_dict
from tgdfer.devices import autocast, resolve_device
from tgdfer.errors import ConfigError, TrainingError
from tgdfer.features.cache import FeatureCache, load_cache
from tgdfer.model.influence import scaled_cosine
from tgdfer.model.mil import aggregate
from tgdfer.model.network import FROZEN_PREFIX, TGDFER, count_parameters
from tgdfer.model.visual_prompt import plain_input
from tgdfer.train.engine import _epoch_line, _resume, epoch_generator, evaluate, finish_run, make_optimizer
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


# ---------------------------------------------------------------------------------------------------- the model


class _Dropout:
    """Per-run dropout with per-run generators, drawing each run's masks as the run alone would draw them.

    ``valid[r]`` is run r's number of real clips in this step; a tensor whose dim 1 holds ``k * batch`` rows
    (clips, or clips x windows) has ``k * valid[r]`` real rows for run r. On the CPU ``torch.nn.functional.dropout``
    multiplies by ``empty_like(x).bernoulli_(1 - p) / (1 - p)``; ``transposed`` marks the tensors that are
    transposed views in ``nn.MultiheadAttention``'s batch-first output, whose masks fill in (L, N, D) order.
    """

    def __init__(self, p: float, generators: list[torch.Generator], valid: list[int], batch: int):
        self.p, self.generators, self.valid, self.batch = p, generators, valid, batch

    def __call__(self, x: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        """(R, N, ...) -> (R, N, ...) with each run's real rows dropped as alone and padding rows kept."""
        if self.p == 0:
            return x
        per = x.shape[1] // self.batch
        noise = torch.ones_like(x)
        for r, g in enumerate(self.generators):
            rows = self.valid[r] * per
            if rows == 0:
                continue
            shape = (rows, *x.shape[2:])
            if transposed:  # (N, L, D) viewed from (L, N, D) memory
                draw = torch.empty((shape[1], shape[0], *shape[2:]), dtype=x.dtype, device=x.device)
                draw = draw.bernoulli_(1 - self.p, generator=g).transpose(0, 1)
            else:
                draw = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p, generator=g)
            noise[r, :rows] = draw.div_(1 - self.p)
        return x * noise


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(R, ..., in) @ (R, out, in)^T + (R, out) -> (R, ..., out), one batched matmul over the runs."""
    r, shape = x.shape[0], x.shape
    y = torch.baddbmm(b[:, None, :].to(x.dtype), x.reshape(r, -1, shape[-1]), w.transpose(1, 2).to(x.dtype))
    return y.reshape(*shape[:-1], w.shape[1])


def _norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim with per-run affine (R, D): (R, ..., D) -> (R, ..., D)."""
    view = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:]) * w.view(view) + b.view(view)


def _encoder_layer(x: torch.Tensor, p: dict, prefix: str, heads: int, drop: _Dropout) -> torch.Tensor:
    """A pre-norm ``nn.TransformerEncoderLayer`` (GELU) per run: (R, N, L, D) -> (R, N, L, D)."""
    r, n, length, d = x.shape
    h = _norm(x, p[prefix + "norm1.weight"], p[prefix + "norm1.bias"])
    qkv = _linear(h, p[prefix + "self_attn.in_proj_weight"], p[prefix + "self_attn.in_proj_bias"])  # (R,N,L,3D)
    q, k, v = qkv.view(r, n, length, 3, heads, d // heads).permute(3, 0, 1, 4, 2, 5)  # (R, N, H, L, d/H) each
    scale = math.sqrt(1.0 / math.sqrt(d // heads))  # split between q and k as scaled_dot_product_attention does
    attn = drop(torch.matmul(q * scale, k.transpose(-2, -1) * scale).softmax(-1))  # (R, N, H, L, L)
    out = torch.matmul(attn, v).permute(0, 1, 3, 2, 4).reshape(r, n, length, d)
    out = _linear(out, p[prefix + "self_attn.out_proj.weight"], p[prefix + "self_attn.out_proj.bias"])
    x = x + drop(out, transposed=True)
    h = _norm(x, p[prefix + "norm2.weight"], p[prefix + "norm2.bias"])
    h = drop(F.gelu(_linear(h, p[prefix + "linear1.weight"], p[prefix + "linear1.bias"])))
    return x + drop(_linear(h, p[prefix + "linear2.weight"], p[prefix + "linear2.bias"]))


def _encoder(x: torch.Tensor, p: dict, prefix: str, depth: int, heads: int, drop: _Dropout) -> torch.Tensor:
    for i in range(depth):
        x = _encoder_layer(x, p, f"{prefix}encoder.layers.{i}.", heads, drop)
    return x


def _text_features(template: TGDFER, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Every run's fine and coarse text features, (R, C, D) each: one text-tower call over all R*C prompts."""
    prompts = template.prompts
    r = next(iter(p.values())).shape[0]
    learnable = [(name, s) for name, s in (("fine", prompts.fine), ("coarse", prompts.coarse)) if s.learnable]
    fresh = {}
    if learnable:
        parts = []
        for name, s in learnable:
            c = s.prefix.shape[0]
            ctx = p[f"prompts.{name}.ctx"].expand(r, c, -1, -1).to(s.prefix.dtype)  # (R, C, M, W)
            parts.append(torch.cat([s.prefix.expand(r, -1, -1, -1), ctx, s.suffix.expand(r, -1, -1, -1)], dim=2))
        embeds = torch.cat(parts, dim=1)  # (R, sum C, L, W)
        eot = torch.cat([s.eot for _, s in learnable]).repeat(r)
        feats = F.normalize(prompts.tower(embeds.flatten(0, 1), eot).float(), dim=-1)  # (R * sum C, D)
        sizes = [len(s.eot) for _, s in learnable]
        fresh = dict(
            zip((n for n, _ in learnable), feats.view(r, -1, feats.shape[-1]).split(sizes, dim=1), strict=True)
        )
    out = [fresh.get(n, getattr(s, "features", None)) for n, s in (("fine", prompts.fine), ("coarse", prompts.coarse))]
    return tuple(f if f.dim() == 3 else f.expand(r, -1, -1) for f in out)  # type: ignore[return-value]


def batched_forward(
    template: TGDFER, p: dict, mean: torch.Tensor, x: torch.Tensor, drop: _Dropout
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """R runs of ``TGDFER.forward`` in training mode: stacked parameters ``p`` {name: (R, ...)}, (R, D) feature
    means, (R, B, T, D) features -> (R, B, C) bag logits and, with ``aux_loss`` and two streams, (R, B, C) the
    frame stream's own bag (``Output.aux``). ``template`` supplies the structure and shared buffers."""
    cfg = template.cfg
    r, b, _, d = x.shape
    if cfg.center:
        x = x - mean[:, None, None, :]
    parts = []
    fine, coarse = template.temporal.fine, template.temporal.coarse
    if fine is not None:  # Eq. 2-3
        n, w = fine.index.shape
        windows = x[:, :, fine.index] + p["temporal.fine.pos"][:, None, None]  # (R, B, N, w, D)
        out = _encoder(windows.reshape(r, b * n, w, d), p, "temporal.fine.", cfg.fine_depth, cfg.heads, drop)
        merged = torch.einsum("tk,rbkd->rbtd", fine.merge.to(out.dtype), out.reshape(r, b, n * w, d))
        parts.append(torch.where(fine.covered[None, None, :, None], merged, x))
    if coarse is not None:  # Eq. 4
        parts.append(
            _encoder(x + p["temporal.coarse.pos"][:, None], p, "temporal.coarse.", cfg.coarse_depth, cfg.heads, drop)
        )
    xi = _linear(torch.cat(parts or [x], dim=-1), p["temporal.fc.weight"], p["temporal.fc.bias"])  # (R, B, T, D)
    xfp, xcp = _text_features(template, p)  # Eq. 6, (R, C, D) each
    vp_cfg = template.visual_prompt
    align = scaled_cosine(xi, xfp[:, None], cfg.tau)  # Eq. 8, (R, B, T, C)
    hat = xfp.to(xi.dtype)[:, None].expand(r, b, -1, -1)  # (R, B, C, D)
    if vp_cfg.placement != "off":
        weights = align.softmax(dim=2) if vp_cfg.weights == "softmax" else align
        vp = F.normalize(weights.transpose(-1, -2) @ xi, dim=-1)  # (R, B, C, T) @ (R, B, T, D)   Eq. 7
        hat = hat + vp if vp_cfg.placement == "add" else torch.cat([vp, hat], dim=-1)  # Eq. 9 / prepend
    labels = _mlp(hat, p) + xcp.to(xi.dtype)[:, None]  # Eq. 10, (R, B, C, D)
    attn_tau = p["log_attn_tau"].exp()[:, None, None, None] if "log_attn_tau" in p else template.log_attn_tau.exp()
    bags = []
    if cfg.instances in ("temporal", "both"):
        scores = scaled_cosine(xi, labels, cfg.tau)  # Eq. 11, (R, B, T, C)
        weight_logits = align * (cfg.tau / attn_tau)
        bags.append(aggregate(scores.flatten(0, 1), weight_logits.flatten(0, 1), cfg.mil, cfg.topk).view(r, b, -1))
    if cfg.instances != "temporal":  # the frame stream (TGDFER._frame_stream)
        xv = x - cfg.frame_centre * x.mean(2, keepdim=True) if cfg.frame_centre > 0 else x
        xf = torch.matmul(xv, p["frame.weight"].transpose(1, 2)[:, None].to(xv.dtype))  # (R, B, T, D)
        if cfg.frame_labels == "plain":  # MLP(X^FP) + X^CP, no video's context
            plain = _mlp(plain_input(xfp, vp_cfg.placement).to(xi.dtype), p) + xcp.to(xi.dtype)  # (R, C, D)
            labels = plain[:, None].expand(r, b, -1, -1)
        scores = scaled_cosine(xf, labels, cfg.tau)  # (R, B, T, C)
        weight_logits = scaled_cosine(xf, xfp[:, None], 1.0) / attn_tau
        bags.append(
            aggregate(scores.flatten(0, 1), weight_logits.flatten(0, 1), cfg.frame_mil, cfg.topk).view(r, b, -1)
        )
    logits = torch.stack(bags).mean(0)  # (R, B, C)
    return logits, bags[-1] if cfg.aux_loss and len(bags) > 1 else None


def _mlp(h: torch.Tensor, p: dict) -> torch.Tensor:
    """The visual prompt's MLP per run: (R, ..., in) -> (R, ..., D)."""
    h = F.gelu(_linear(h, p["visual_prompt.mlp.0.weight"], p["visual_prompt.mlp.0.bias"]))
    return _linear(h, p["visual_prompt.mlp.2.weight"], p["visual_prompt.mlp.2.bias"])


@dataclass(eq=False)
class _Run:
    cfg: RunConfig
    run: RunDir
    data: FoldData
    model: TGDFER
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # this run's dropout stream
    history: list
    start_epoch: int
    split: str
    trainable: int
    identity: dict
    started: float = 0.0


def _trainable_names(model: TGDFER) -> list[str]:
    return [n for n, q in model.named_parameters() if q.requires_grad and not n.startswith(FROZEN_PREFIX)]


def _stack(runs: list[_Run]) -> dict[str, torch.Tensor]:
    """Stack every run's trainable parameters into (R, ...) leaves; each module parameter becomes a view of its
    run's slice, so the per-run optimizers update the stacked tensors in place."""
    stacked = {}
    for name in _trainable_names(runs[0].model):
        params = [dict(r.model.named_parameters())[name] for r in runs]
        leaf = torch.stack([q.detach() for q in params]).requires_grad_(True)
        for i, q in enumerate(params):
            q.data = leaf.detach()[i]
        stacked[name] = leaf
    return stacked


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


def _epoch_draw(data: FoldData, cfg, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) train view of each clip and (n,) order for an epoch: the draw of ``engine.train_one_epoch``."""
    device = data.features.device
    n, k = data.train_choices.shape
    g = epoch_generator(cfg.seed, epoch)
    choice = torch.randint(0, k, (n,), generator=g).to(device)
    order = torch.randperm(n, generator=g).to(device)
    return data.train_choices[torch.arange(n, device=device), choice], order


def train_epoch_batched(runs: list[_Run], stacked: dict[str, torch.Tensor], epoch: int) -> list[dict | Exception]:
    """One epoch of every run, stepped together -> per run its stats (as ``train_one_epoch``) or its error."""
    template, cfg = runs[0].model, runs[0].cfg.train
    device, batch = runs[0].data.features.device, cfg.batch_size
    for r in runs:
        r.model.train()
    draws = [_epoch_draw(r.data, r.cfg.train, epoch) for r in runs]
    steps = [math.ceil(len(o) / batch) for _, o in draws]
    losses = [torch.zeros(s, device=device) for s in steps]
    correct = [torch.zeros((), device=device) for _ in runs]
    mean = torch.stack([r.model.feature_mean for r in runs])  # (R, D)
    features = runs[0].data.features
    for step in range(max(steps)):
        rows, labels, valid = [], [], []
        for (views, order), r in zip(draws, runs, strict=True):
            idx = order[step * batch : (step + 1) * batch]
            valid.append(len(idx))
            labels.append(r.data.train_labels[idx])
            pad = views[idx[:1] if len(idx) else order[:1]].expand(batch - len(idx))  # never reaches a loss
            rows.append(torch.cat([views[idx], pad]))
        x = features[torch.stack(rows)].float()  # (R, B, T, D), converted per batch
        drop = _Dropout(template.cfg.dropout, [r.generator for r in runs], valid, batch)
        with autocast(device, cfg.amp):
            logits, aux = batched_forward(template, stacked, mean, x, drop)
        total = 0
        run_losses = {}
        for i, y in enumerate(labels):
            if valid[i]:
                run_losses[i] = F.cross_entropy(logits[i, : valid[i]].float(), y)
                if aux is not None:  # the frame stream's own bag, as engine.train_one_epoch
                    run_losses[i] = run_losses[i] + F.cross_entropy(aux[i, : valid[i]].float(), y)
                total = total + run_losses[i]
        for leaf in stacked.values():
            leaf.grad = None
        total.backward()
        for i, r in enumerate(runs):
            if not valid[i]:
                continue  # this run's epoch has ended: no step, as alone
            for name, q in r.model.named_parameters():
                if name in stacked:
                    q.grad = stacked[name].grad[i]
            if r.cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(r.model.parameters(), r.cfg.train.grad_clip)
            r.optimizer.step()
            losses[i][step] = run_losses[i].detach()
            correct[i] += (logits[i, : valid[i]].argmax(1) == labels[i]).sum()
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
    """Build one run as ``engine.fit`` does (same seed, init, optimizer, resume), its data on the shared features."""
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
    generator = torch.Generator(device)
    if device.type == "cpu":
        generator.set_state(torch.get_rng_state())  # the global stream the run alone continues with
    else:
        generator.manual_seed(cfg.train.seed)
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
        start_epoch, history = _resume(run, cfg, identity, model, optimizer, scheduler, device)
        if device.type == "cpu":
            generator.set_state(torch.get_rng_state())
        log(f"resumed {run.path} after epoch {start_epoch}")
    elif resume:
        log(f"--resume: no checkpoint in {run.path}; starting from epoch 1")
    run.write_config(cfg, identity)
    return _Run(
        cfg, run, data, model, optimizer, scheduler, generator, history, start_epoch, split, trainable, identity
    )


def fit_batched(
    cfgs: list[RunConfig],
    resume: bool | list[bool] = False,
    cache: FeatureCache | None = None,
    clip: FrozenClip | None = None,
    on_epoch_end: Callable[[int, int, dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict | Exception]:
    """Train runs of one model shape (``shape_key``) together; each writes its own run directory.

    Returns per config its final metrics (what ``engine.fit`` returns) or the exception that stopped it; the
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


def _train_group(group, members, start, results, on_epoch_end, log) -> None:
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
            r = group[k]
            try:
                if isinstance(s, Exception):
                    raise s
                r.scheduler.step()
                row = {"epoch": epoch + 1, "lr": lr, **s, "test_war": "", "test_uar": ""}
                every = r.cfg.train.eval_every
                if epoch + 1 == epochs or (every > 0 and (epoch + 1) % every == 0):
                    e = evaluate(r.model, r.data, r.cfg.train.amp)
                    row.update(test_war=e.war, test_uar=e.uar)
                row["seconds"] = time.perf_counter() - t0
                r.history.append(row)
                r.run.write_log(r.history)
                with _owned(r.model):
                    save_checkpoint(
                        r.run,
                        r.model,
                        r.optimizer,
                        r.scheduler,
                        epoch + 1,
                        r.history,
                        r.cfg,
                        r.identity,
                        r.data.features.device,
                        rng=r.generator.get_state() if r.generator.device.type == "cpu" else None,
                    )
                log(f"{r.run.path.name}: {_epoch_line(row, epochs)}")
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
