"""The worker processes of a sweep: the one place that trains a sweep's runs, here or in spawned processes.

The local runner (``tgdfer.sweep.runner``), batched groups and the SLURM array tasks (``tgdfer.sweep.slurm``) all
train through ``run_all``: one job (``train_run``: one run; ``train_group``: runs of one model shape as one batched
model) after another in this process, or ``workers`` at once in spawned processes (fork after torch/CUDA init is
unsafe). Each process loads the cache and CLIP once and keeps them for every job it gets (a DFEW cache is about
1 GB); spawned workers take a worker number, a GPU round-robin when the sweep's device allows one, and
``threads`` CPU threads each, and die with the process that started them (``die_with_parent``): a killed sweep
leaves no orphan training on, and each run directory is locked by the process training it.

A job never raises: it returns (ok, metrics or traceback text, seconds) per run, so one failed run does not stop
the sweep. A worker that dies (killed, out of memory) comes back as its exception; ``died`` makes that an outcome.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from tgdfer.backbone import load_clip
from tgdfer.config import RunConfig
from tgdfer.features.cache import load_cache
from tgdfer.train.batched import fit_batched
from tgdfer.train.engine import fit_fold

Outcome = tuple[bool, dict | str, float]  # (ok, metrics or traceback text, seconds) of one run

# This process's cache and CLIP (loaded once, for every job), and its device when its pool assigned one.
_STATE: dict = {}

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """End this process when ``parent`` dies, however it dies (kill -9 included).

    On Linux the kernel sends SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG); a daemon thread that polls
    the parent pid covers other systems and a parent that died before the prctl call.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)  # orphaned: stop at once, leaving committed checkpoints for the rerun

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_worker(slots, device: str, threads: int, parent: int) -> None:
    """Pool initializer: die with the parent; take a worker number; pick its GPU (round-robin) and CPU threads."""
    die_with_parent(parent)
    torch.set_num_threads(threads)
    index = slots.get()
    if device in ("auto", "cuda") and torch.cuda.is_available():
        _STATE["device"] = f"cuda:{index % torch.cuda.device_count()}"


def worker_pool(workers: int, device: str, threads: int) -> cf.ProcessPoolExecutor:
    """``workers`` spawned processes of ``threads`` CPU threads each that die with this one; GPUs round-robin
    when ``device`` is auto or cuda."""
    ctx = multiprocessing.get_context("spawn")  # fork after torch/CUDA init is unsafe
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    return cf.ProcessPoolExecutor(workers, ctx, _init_worker, (slots, device, threads, os.getpid()))


def _resources(cfg: RunConfig):
    """(cache, clip) of ``cfg``, loaded once per process and kept while its jobs use the same ones."""
    source = (cfg.features, cfg.clip)
    if _STATE.get("source") != source:  # one cache in memory per process
        _STATE.pop("resources", None)
        cache = load_cache(cfg.features)
        clip = load_clip(cfg.clip or cache.attrs["clip_model"], "cpu", torch.float32)
        _STATE.update(source=source, resources=(cache, clip))
    return _STATE["resources"]


def train_run(cfg: RunConfig, resume: bool) -> Outcome:
    """Train one run quietly (``engine.fit_fold``) -> its outcome. Never raises: the sweep goes on."""
    started = time.perf_counter()
    try:
        cache, clip = _resources(cfg)
        if "device" in _STATE:
            cfg = replace(cfg, device=_STATE["device"])
        metrics = fit_fold(cfg, resume=resume, cache=cache, clip=clip, log=lambda _: None)
        return True, metrics, time.perf_counter() - started
    except Exception:
        return False, traceback.format_exc(), time.perf_counter() - started


def train_group(cfgs: list[RunConfig], resumes: list[bool]) -> list[Outcome]:
    """Train runs of one model shape as one batched model (``train.batched``) -> per run its outcome; a group of
    one trains alone. Each run's seconds are the group's time divided among its runs. Never raises."""
    if len(cfgs) == 1:
        return [train_run(cfgs[0], resumes[0])]
    started = time.perf_counter()
    try:
        cache, clip = _resources(cfgs[0])
        if "device" in _STATE:
            cfgs = [replace(c, device=_STATE["device"]) for c in cfgs]
        outcomes = fit_batched(cfgs, resumes, cache, clip, log=lambda _: None)
    except Exception:
        return [(False, traceback.format_exc(), (time.perf_counter() - started) / len(cfgs))] * len(cfgs)
    seconds = (time.perf_counter() - started) / len(cfgs)
    return [
        (False, "".join(traceback.format_exception(o)), seconds) if isinstance(o, Exception) else (True, o, seconds)
        for o in outcomes
    ]


def died(exc: BaseException) -> Outcome:
    """The outcome of a run whose worker process died before it ended."""
    return False, f"its training process died ({type(exc).__name__}: {exc}); a rerun resumes it\n", 0.0


def run_all(
    job: Callable, calls: list[tuple], workers: int, device: str, threads: int | None = None
) -> Iterator[tuple[int, object]]:
    """Run ``job(*args)`` for each args of ``calls`` -> yields (index, result) as each ends, or (index, exception)
    when the worker process running it died.

    ``workers <= 1``: one after another in this process (with ``threads`` CPU threads when given), the cache and
    CLIP freed at the end. Otherwise in ``worker_pool``s of ``threads`` (default: the cores shared out) each;
    Ctrl-C drops the queued jobs instead of waiting for them all.
    """
    workers = min(workers, len(calls))
    if workers <= 1:
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            for i, args in enumerate(calls):
                yield i, job(*args)
        finally:
            _STATE.clear()  # free the cache and CLIP in this process
        return
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    pool = worker_pool(workers, device, threads)
    try:
        futures = {pool.submit(job, *args): i for i, args in enumerate(calls)}
        for future in cf.as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:  # the worker process died (killed, out of memory)
                result = exc
            yield futures[future], result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
