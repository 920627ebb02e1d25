"""Every fold of a cache, one run each (``fit_folds``, ``tgdfer train --fold all``), and their summary.

Each fold trains into ``<out>/fold<k>`` with ``engine.fit_fold``, or the folds still to train step together as one
batched model (``tgdfer.train.batched``); then ``summary.json`` and the fold-summed confusion matrix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tgdfer.atomic import write_text
from tgdfer.backbone import load_clip
from tgdfer.config import RunConfig
from tgdfer.features.cache import folds_of, load_cache
from tgdfer.train.batched import fit_batched
from tgdfer.train.engine import fit_fold
from tgdfer.train.metrics import summarize
from tgdfer.train.runs import CONFUSION, RunDir


def fit_folds(
    cfg: RunConfig, folds: list[str], resume: bool = False, log: Callable[[str], None] = print, batch: bool = False
) -> dict:
    """One run per fold under cfg.out/fold<k>, then summary.json and the fold-summed confusion matrix.

    ``batch``: the folds still to train step together as one batched model (``tgdfer.train.batched``); False
    trains them one after another.
    """
    from tgdfer.plots import confusion_png  # matplotlib, only when figures are drawn

    if len(folds) == 1:
        return fit_fold(replace(cfg, fold=folds[0]), resume=resume, log=log)
    cache = load_cache(cfg.features)
    clip = load_clip(cfg.clip or cache.attrs["clip_model"], "cpu", torch.float32)
    results, todo = {}, []
    for fold in folds:
        run_cfg = replace(cfg, fold=fold, out=str(Path(cfg.out) / f"fold{fold}"))
        run = RunDir(Path(run_cfg.out))
        if run.status() == "done":
            log(f"fold {fold}: finished earlier, reading {run.metrics}")
            results[fold] = run.read_metrics()
        elif not batch:
            results[fold] = fit_fold(run_cfg, resume=resume, cache=cache, clip=clip, log=log)
        else:
            todo.append(run_cfg)
    if todo:
        for run_cfg, outcome in zip(todo, fit_batched(todo, resume, cache, clip, log=log), strict=True):
            if isinstance(outcome, Exception):
                raise outcome
            results[run_cfg.fold] = outcome
    results = [results[fold] for fold in folds]
    summary = summarize(results)
    write_text(Path(cfg.out) / "summary.json", json.dumps(summary, indent=2))
    confusion_png(
        np.array(summary["confusion_sum"]),
        tuple(summary["class_names"]),
        Path(cfg.out) / CONFUSION,
        f"{len(folds)} folds: WAR {summary['war_mean']:.2f}±{summary['war_std']:.2f}  "
        f"UAR {summary['uar_mean']:.2f}±{summary['uar_std']:.2f}",
    )
    log(
        f"{len(folds)} folds: WAR {summary['war_mean']:.2f} ± {summary['war_std']:.2f}  "
        f"UAR {summary['uar_mean']:.2f} ± {summary['uar_std']:.2f}  -> {cfg.out}/summary.json"
    )
    return summary


def train(cfg: RunConfig, resume: bool = False, log: Callable[[str], None] = print, batch: bool = False) -> dict:
    """``tgdfer train``: one fold (``fit_fold``), or with ``fold="all"`` every split of the cache (``fit_folds``,
    batched unless ``batch`` is False)."""
    return fit_folds(cfg, folds_of(cfg.features, cfg.fold), resume=resume, log=log, batch=batch)
