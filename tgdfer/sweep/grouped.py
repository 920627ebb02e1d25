"""A sweep's runs trained in groups of one model shape (``tgdfer.train.batched``), the default of ``ablate``.

``train_groups`` takes the runs ``runner`` has still to train, groups them by ``batched.shape_key`` (the folds and
seeds of a row, and rows that differ only in optimiser settings, share a shape), and trains each group as one
batched model; a group of one trains alone with ``engine.fit``. With ``workers > 1`` groups go to spawned worker
processes like single runs do. Each run is reported as it would be alone: its metrics, or its traceback (a failed
run does not stop the others of its group); its seconds are the group's time divided among its runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import replace

from tgdfer.config import RunConfig
from tgdfer.sweep import runner


def _train_group(cfgs: list[RunConfig], resumes: list[bool]) -> list[tuple[bool, dict | str, float]]:
    """Train one group quietly -> per run (ok, metrics or traceback text, seconds). Never raises."""
    if len(cfgs) == 1:
        return [runner._train(cfgs[0], resumes[0])]
    started = time.perf_counter()
    try:
        import torch

        from tgdfer.backbone import load_clip
        from tgdfer.features.cache import load_cache
        from tgdfer.train.batched import fit_batched

        state = runner._STATE
        source = (cfgs[0].features, cfgs[0].clip)
        if state.get("source") != source:  # one cache in memory per process
            state.pop("resources", None)
            cache = load_cache(cfgs[0].features)
            clip = load_clip(cfgs[0].clip or cache.attrs["clip_model"], "cpu", torch.float32)
            state.update(source=source, resources=(cache, clip))
        cache, clip = state["resources"]
        if "device" in state:
            cfgs = [replace(c, device=state["device"]) for c in cfgs]
        outcomes = fit_batched(cfgs, resumes, cache, clip, log=lambda _: None)
    except Exception:
        text = traceback.format_exc()
        return [(False, text, (time.perf_counter() - started) / len(cfgs))] * len(cfgs)
    seconds = (time.perf_counter() - started) / len(cfgs)
    return [
        (False, "".join(traceback.format_exception(o)), seconds) if isinstance(o, Exception) else (True, o, seconds)
        for o in outcomes
    ]


def train_groups(
    todo: dict[str, tuple[RunConfig, str]],
    resume: Callable[[RunConfig], bool],
    report: Callable[[str, bool, dict | str, float, int], None],
    workers: int,
    device: str,
) -> None:
    """Train ``todo`` ({key: (config, label)}) in shape groups; ``report(key, ok, result, seconds, finished)``."""
    from tgdfer.train.batched import shape_key

    groups: dict[str, list[str]] = {}
    for key, (cfg, _) in todo.items():
        groups.setdefault(shape_key(cfg), []).append(key)
    jobs = [(keys, [todo[k][0] for k in keys]) for keys in groups.values()]
    finished = 0

    def done(keys: list[str], outcomes) -> None:
        nonlocal finished
        for key, outcome in zip(keys, outcomes, strict=True):
            finished += 1
            report(key, *outcome, finished)

    workers = min(workers, len(jobs))
    if workers == 1:
        try:
            for keys, cfgs in jobs:
                done(keys, _train_group(cfgs, [resume(c) for c in cfgs]))
        finally:
            runner._STATE.clear()
        return
    ctx = multiprocessing.get_context("spawn")
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = cf.ProcessPoolExecutor(workers, ctx, runner._init_worker, (slots, device, threads))
    try:
        futures = {pool.submit(_train_group, cfgs, [resume(c) for c in cfgs]): (keys, cfgs) for keys, cfgs in jobs}
        for future in cf.as_completed(futures):
            keys, _ = futures[future]
            try:
                outcomes = future.result()
            except Exception:  # the worker process died: every run of its group failed
                outcomes = [(False, traceback.format_exc(), 0.0)] * len(keys)
            done(keys, outcomes)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
