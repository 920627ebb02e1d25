"""``tgdfer ablate``: run a paper table (``ablation_tables``) as rows × folds × seeds training runs, and report it.

Each run is keyed by a hash of its resolved RunConfig (less ``out`` and ``device``, which do not change what is
learnt) and the cache's fingerprint, and lives in ``<out>/runs/<hash>/``, the run directory ``engine.fit`` writes.
So identical settings are trained once, across rows and tables sharing an out directory (Table 3 e, Table 4
s1-w4, Table 5 h and Table 6's trained model are one run per fold and seed), and a killed sweep resumes: a run
with metrics.json is reused, one with only checkpoint.pt continues from it. A run that fails leaves error.txt
(its traceback) and the sweep goes on; a rerun retries it.

Runs that share a model shape (the folds and seeds of a row) train together as one batched model
(``tgdfer.sweep.grouped``, ``tgdfer.train.batched``) unless ``SweepConfig.batch`` is off (``--no-batch``).
``workers > 1`` trains that many runs at once in spawned processes (a small run leaves most of a GPU idle), each
loading the cache and CLIP once, spread over the GPUs round-robin; a slurm ``launcher`` trains them as one SLURM
array job instead (``tgdfer.sweep.launchers``). Workers die with the sweep (``_die_with_parent``): a killed sweep
leaves no orphan training on, and each run directory is locked by the process training it. The report is
``<out>/table<N>.md`` and ``.csv``: UAR and WAR mean ± std over folds and seeds per row, the number of runs behind
each, the paper's figures.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tgdfer.atomic import write_text
from tgdfer.config import LauncherConfig, RunConfig, SweepConfig, apply_overrides, to_dict
from tgdfer.errors import ConfigError
from tgdfer.sweep.tables import TABLES, Row, Table, render
from tgdfer.train.runs import ERROR, METRICS, RunDir

SELECT = "select.json"  # the sweep's own file in a run directory: Table 6's re-predictions of that run

__all__ = ["parse_folds", "parse_seeds", "run_key", "run_table"]


def _int_list(text: str, what: str) -> list[int]:
    """'1-3' or '1,2,3' (or a mix, '1-2,5') -> [1, 2, 3]."""
    values: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        try:
            if "-" in part.lstrip("-"):
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                values += range(lo, hi + 1)
            else:
                values.append(int(part))
        except ValueError:
            raise ConfigError(f"--{what}: expected numbers or ranges such as 1-5 or 1,3, found {text!r}") from None
    return list(dict.fromkeys(values))


def parse_folds(text: str | None, features: str | None = None) -> list[str] | None:
    """'1-5' -> ['1'..'5'], '1,3' -> ['1', '3']; 'all' or None -> every split of ``features`` (None without it)."""
    if text is None or str(text).strip().lower() in ("", "all"):
        from tgdfer.features.cache import folds_of

        return folds_of(features, "all") if features else None
    return [str(k) for k in _int_list(text, "folds")]


def parse_seeds(text: str) -> list[int]:
    """'1,2,3' or '1-3' -> [1, 2, 3]."""
    return _int_list(text, "seeds")


def run_key(cfg: RunConfig, fingerprint: str) -> str:
    """12 hex digits naming a run: its settings (less out and device) and the cache's contents."""
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "device")}
    text = json.dumps({"config": settings, "fingerprint": fingerprint}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _diff(cfg: RunConfig) -> str:
    """Settings that differ from `tgdfer train`'s defaults, as --set strings."""
    ours, base = to_dict(cfg), to_dict(RunConfig())
    changed = [f"clip={ours['clip']}"] if ours["clip"] != base["clip"] else []
    for section in ("model", "optim", "train"):
        changed += [f"{section}.{k}={v}" for k, v in ours[section].items() if v != base[section][k]]
    return " ".join(changed) or "(defaults)"


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# One process's cache and CLIP (workers load them once), and its device when the parent assigned one.
_STATE: dict = {}


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int, poll_s: float = 0.5) -> None:
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
    """Pool initializer: die with the sweep; take a worker number; pick its GPU (round-robin) and CPU threads."""
    _die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)
    index = slots.get()
    if device in ("auto", "cuda") and torch.cuda.is_available():
        _STATE["device"] = f"cuda:{index % torch.cuda.device_count()}"


def _train(cfg: RunConfig, resume: bool) -> tuple[bool, dict | str, float]:
    """Train one run quietly -> (ok, metrics or traceback text, seconds). Never raises: the sweep goes on."""
    started = time.perf_counter()
    try:
        import torch

        from tgdfer.backbone import load_clip
        from tgdfer.features.cache import load_cache
        from tgdfer.train.engine import fit

        source = (cfg.features, cfg.clip)
        if _STATE.get("source") != source:  # one cache in memory per process (a DFEW cache is about 1 GB)
            _STATE.pop("resources", None)
            cache = load_cache(cfg.features)
            clip = load_clip(cfg.clip or cache.attrs["clip_model"], "cpu", torch.float32)
            _STATE.update(source=source, resources=(cache, clip))
        cache, clip = _STATE["resources"]
        if "device" in _STATE:
            cfg = replace(cfg, device=_STATE["device"])
        metrics = fit(cfg, resume=resume, cache=cache, clip=clip, log=lambda _: None)
        return True, metrics, time.perf_counter() - started
    except Exception:
        return False, traceback.format_exc(), time.perf_counter() - started


def _status(run_dir: Path) -> str:
    return RunDir(run_dir).status()


def _train_all(
    jobs: dict[str, tuple[RunConfig, str]],
    workers: int,
    device: str,
    log: Callable[[str], None],
    launcher: LauncherConfig | None = None,
    folder: Path | None = None,
    batch: bool = False,
) -> int:
    """Train the jobs ({key: (config, label)}) not finished yet; one line per finished run. Returns how many ran.

    With a slurm ``launcher`` they train as an array job (``tgdfer.sweep.launchers``, its files under ``folder``);
    with ``batch`` runs of one model shape train as one batched model (``tgdfer.sweep.grouped``).
    """
    todo = {k: job for k, job in jobs.items() if _status(Path(job[0].out)) != "done"}
    done0 = len(jobs) - len(todo)
    if done0:
        log(f"{done0} of {len(jobs)} runs finished earlier: reusing them")
    if not todo:
        return 0
    started = time.perf_counter()

    def report(key: str, ok: bool, result, seconds: float, finished: int) -> None:
        cfg, label = todo[key]
        run_dir = Path(cfg.out)
        if ok:
            (run_dir / ERROR).unlink(missing_ok=True)
            what = f"WAR {result['war']:.2f} UAR {result['uar']:.2f}"
        else:
            write_text(run_dir / ERROR, result)
            what = f"FAILED {result.strip().splitlines()[-1]} (see {run_dir / ERROR})"
        eta = (time.perf_counter() - started) / finished * (len(todo) - finished)
        log(f"[{done0 + finished}/{len(jobs)}] {label}: {what} ({seconds:.1f} s) — ETA {_duration(eta)}")

    def resume(cfg: RunConfig) -> bool:
        return _status(Path(cfg.out)) == "partial"

    if launcher is not None and launcher.kind == "slurm":
        from tgdfer.sweep.launchers import launch

        for n, (key, outcome) in enumerate(launch(todo, launcher, folder or Path("."), device, log), 1):
            report(key, *outcome, n)
        return len(todo)
    if batch:  # runs of one model shape train as one batched model (tgdfer.sweep.grouped)
        from tgdfer.sweep.grouped import train_groups

        train_groups(todo, resume, report, workers, device)
        return len(todo)
    workers = min(workers, len(todo))
    if workers == 1:
        try:
            for n, (key, (cfg, _)) in enumerate(todo.items(), 1):
                report(key, *_train(cfg, resume(cfg)), n)
        finally:
            _STATE.clear()  # free the cache and CLIP in this process
        return len(todo)
    ctx = multiprocessing.get_context("spawn")  # fork after torch/CUDA init is unsafe
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = cf.ProcessPoolExecutor(workers, ctx, _init_worker, (slots, device, threads, os.getpid()))
    try:
        futures = {pool.submit(_train, cfg, resume(cfg)): key for key, (cfg, _) in todo.items()}
        for n, future in enumerate(cf.as_completed(futures), 1):
            try:
                outcome = future.result()
            except Exception:  # the worker process died (killed, out of memory): record it like a failed run
                outcome = (False, traceback.format_exc(), 0.0)
            report(futures[future], *outcome, n)
    finally:  # on Ctrl-C, drop the queued runs instead of waiting for them all
        pool.shutdown(wait=True, cancel_futures=True)
    return len(todo)


def _evaluate_selected(rows: list[Row], run_dirs: list[Path], features: str, device: str, log) -> dict[Path, str]:
    """Table 6: re-predict each finished run from its selected frames into <run>/select.json -> {run: error}.

    ``run_dirs`` come in fold order, so each fold's data goes to the device once and alone.
    """
    from tgdfer.devices import resolve_device
    from tgdfer.features.cache import load_cache
    from tgdfer.train.engine import evaluate
    from tgdfer.train.runs import load_run
    from tgdfer.train.splits import fold_data

    cache, data, errors = None, None, {}
    for run_dir in run_dirs:
        path = run_dir / SELECT
        done = json.loads(path.read_text()) if path.exists() else {}
        missing = [r for r in rows if r.label not in done]
        if not missing or _status(run_dir) != "done":
            continue  # evaluated earlier, or its training failed (reported from error.txt)
        try:
            cache, dev = cache or load_cache(features), resolve_device(device)
            run = load_run(run_dir, device=str(dev))
            fold = run.config.fold
            if data is None or data[0] != fold:
                data = None  # free the previous fold's device copy of the cache first
                data = (fold, fold_data(cache, fold, dev))
            for r in missing:
                s = evaluate(run.model, data[1], run.config.train.amp, select=r.select)
                done[r.label] = {"war": s.war, "uar": s.uar}
            write_text(path, json.dumps(done, indent=2))
            log(f"{run_dir.name} fold {fold}: evaluated {', '.join(r.label for r in missing)}")
        except Exception:
            errors[run_dir] = traceback.format_exc().strip().splitlines()[-1]
            log(f"{run_dir.name}: evaluation FAILED {errors[run_dir]}")
    return errors


def _plan(spec: Table, rows: list[Row], features: str, fingerprint: str, folds, seeds, out: Path, overrides, device):
    """Every (row, fold, seed) entry and the distinct runs behind them: ([entry], {key: (config, label)})."""
    plan, configs, names = [], {}, {}
    for row in rows:
        for fold in folds:
            for seed in seeds:
                base = RunConfig(features=str(features), fold=fold, device=device)
                cfg = apply_overrides(base, [f"train.seed={seed}", *row.overrides, *overrides])
                key = run_key(cfg, fingerprint)
                configs[key] = replace(cfg, out=str(out / "runs" / key))
                name = "default" if spec.evaluates else row.label  # Table 6 rows share one trained run
                names[key] = [*names.get(key, []), *([name] if name not in names.get(key, []) else [])]
                plan.append({"row": row, "fold": fold, "seed": seed, "run_dir": Path(configs[key].out)})
    label = "table{} {} fold{} seed{}"
    jobs = {k: (c, label.format(spec.number, ",".join(names[k]), c.fold, c.train.seed)) for k, c in configs.items()}
    return plan, jobs


def _summarize(spec: Table, rows: list[Row], plan: list[dict], errors: dict[Path, str]) -> tuple[list, list]:
    """Per row: UAR/WAR of every finished (fold, seed), counts of runs and failures; and the failed entries."""
    summary, failed = [], []
    for row in rows:
        s = {"label": row.label, "setting": row.description, "paper_uar": row.paper_uar, "paper_war": row.paper_war}
        s.update(uar=[], war=[], runs=0, failed=0, run_dirs=[])
        for p in (p for p in plan if p["row"] is row):
            run_dir = p["run_dir"]
            s["run_dirs"].append(str(run_dir))
            source = run_dir / (SELECT if spec.evaluates else METRICS)
            m = json.loads(source.read_text()) if source.exists() else {}
            m = m.get(row.label, {}) if spec.evaluates else m
            if "uar" in m:
                s["uar"].append(m["uar"])
                s["war"].append(m["war"])
                s["runs"] += 1
            elif run_dir in errors or (run_dir / ERROR).exists():
                error = errors.get(run_dir) or (run_dir / ERROR).read_text().strip().splitlines()[-1]
                failed.append({"row": row.label, "fold": p["fold"], "seed": p["seed"], "run_dir": str(run_dir)})
                failed[-1]["error"] = error
                s["failed"] += 1
        summary.append(s)
    return summary, failed


def run_table(sweep: SweepConfig, dry_run: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run (or with ``dry_run`` only plan) a paper table; see the module docstring.

    Returns {"table", "rows": per-row summaries, "failed": failed (row, fold, seed) entries, "planned": rows ×
    folds × seeds, "trainings": distinct runs, "ran", "skipped", "table_md", "table_csv"}.
    """
    from tgdfer.features.cache import CacheError, folds_of, read_attrs

    table, features, folds, seeds, rows = sweep.table, sweep.features, sweep.folds, list(sweep.seeds), sweep.rows
    workers, out, overrides, device = sweep.workers, sweep.out, list(sweep.overrides), sweep.device
    if str(table) not in TABLES:
        raise ConfigError(f"--table: expected one of {sorted(TABLES)}, found {table!r}")
    spec = TABLES[str(table)]
    chosen = [spec.row(label) for label in rows] if rows else list(spec.rows)
    if not Path(features).is_file():
        raise CacheError(f"--features: expected a feature cache written by `tgdfer extract`, found no file {features}")
    attrs, valid = read_attrs(features), folds_of(features, "all")
    folds = [str(f) for f in folds] if folds else valid
    if any(f not in valid for f in folds):
        raise ConfigError(f"--folds: {features} has folds {valid}; found {folds}")
    out_dir, fingerprint = Path(out), str(attrs.get("fingerprint"))
    plan, jobs = _plan(spec, chosen, features, fingerprint, folds, seeds, out_dir, overrides, device)
    finished = sum(_status(Path(cfg.out)) == "done" for cfg, _ in jobs.values())
    result = {"table": spec.number, "planned": len(plan), "trainings": len(jobs), "table_md": None, "table_csv": None}
    if dry_run:
        for p in plan:
            what = f"select {p['row'].select[0]} {p['row'].select[1]} of " if p["row"].select else ""
            cfg = jobs[p["run_dir"].name][0]
            log(
                f"table{spec.number} {p['row'].label} fold {p['fold']} seed {p['seed']}: {what}{p['run_dir']} "
                f"[{_status(p['run_dir'])}] {_diff(cfg)}"
            )
        log(f"{len(plan)} entries, {len(jobs)} training runs, {finished} finished earlier (dry run: nothing trained)")
        summary, failed = _summarize(spec, chosen, plan, {})
        return {**result, "rows": summary, "failed": failed, "ran": 0, "skipped": finished}

    ran = _train_all(jobs, workers, device, log, sweep.launcher, out_dir, batch=sweep.batch)
    errors = (
        _evaluate_selected(chosen, list(dict.fromkeys(p["run_dir"] for p in plan)), features, device, log)
        if spec.evaluates
        else {}
    )
    summary, failed = _summarize(spec, chosen, plan, errors)
    context = (
        f"This table: {features} (dataset {attrs.get('dataset')}, fingerprint {fingerprint[:12]}), folds "
        f"{','.join(folds)}, seeds {','.join(map(str, seeds))}{', --set ' + ' '.join(overrides) if overrides else ''}"
        f"; runs under {out_dir / 'runs'}."
    )
    text, table_csv = render(spec, summary, context, dataset=str(attrs.get("dataset")))
    md, csv_path = out_dir / f"table{spec.number}.md", out_dir / f"table{spec.number}.csv"
    write_text(md, text)
    write_text(csv_path, table_csv)
    log(text)
    for f in failed:
        log(f"FAILED {f['row']} fold {f['fold']} seed {f['seed']}: {f['error']} (a rerun retries it; {f['run_dir']})")
    result.update(table_md=str(md), table_csv=str(csv_path), rows=summary, failed=failed)
    return {**result, "ran": ran, "skipped": len(jobs) - ran}
