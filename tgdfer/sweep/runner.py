"""``tgdfer ablate``: run a paper table (``tgdfer.sweep.tables``) as rows × folds × seeds training runs, and report it.

Each run is keyed by its settings and the cache's fingerprint (``tgdfer.sweep.plan``) and lives in
``<out>/runs/<key>/``, the run directory ``engine.fit_fold`` writes. So identical settings are trained once, across
rows and tables sharing an out directory (Table 3 e, Table 4 s1-w4, Table 5 h and Table 6's trained model are one
run per fold and seed), and a killed sweep resumes: a run with metrics.json is reused, one with only checkpoint.pt
continues from it. A run that fails leaves error.txt (its traceback) and the sweep goes on; a rerun retries it.

The runs train through ``tgdfer.sweep.pool``: one at a time here, or ``workers > 1`` at once in spawned processes
(a small run leaves most of a GPU idle) spread over the GPUs round-robin; with ``SweepConfig.batch`` (``--batch``)
runs that share a model shape (the folds and seeds of a row) train together as one batched model
(``tgdfer.train.batched``). A slurm ``launcher`` trains them as one SLURM array job instead
(``tgdfer.sweep.slurm``). The report is ``<out>/table<N>.md`` and ``.csv``: UAR and WAR mean ± std over folds and
seeds per row, the number of runs behind each, the paper's figures.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tgdfer.atomic import write_text
from tgdfer.config import LauncherConfig, SweepConfig
from tgdfer.devices import resolve_device
from tgdfer.errors import CacheError, ConfigError
from tgdfer.features.cache import folds_of, load_cache, read_attrs
from tgdfer.sweep.plan import Jobs, describe, plan_runs
from tgdfer.sweep.pool import Outcome, died, run_all, train_group
from tgdfer.sweep.slurm import launch
from tgdfer.sweep.tables import TABLES, Row, Table, render
from tgdfer.train.batched import shape_key
from tgdfer.train.engine import evaluate
from tgdfer.train.runs import ERROR, METRICS, RunDir, load_run
from tgdfer.train.splits import fold_data

SELECT = "select.json"  # the sweep's own file in a run directory: Table 6's re-predictions of that run

__all__ = ["run_table"]


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _status(run_dir: Path) -> str:
    return RunDir(run_dir).status()


def _train_all(
    jobs: Jobs,
    workers: int,
    device: str,
    log: Callable[[str], None],
    launcher: LauncherConfig | None = None,
    folder: Path | None = None,
    batch: bool = False,
) -> int:
    """Train the jobs ({key: (config, label)}) not finished yet; one line per finished run. Returns how many ran.

    With a slurm ``launcher`` they train as an array job (``tgdfer.sweep.slurm``, its files under ``folder``);
    otherwise through ``tgdfer.sweep.pool``, with ``batch`` runs of one model shape as one batched model.
    """
    todo = {k: job for k, job in jobs.items() if _status(Path(job[0].out)) != "done"}
    done0 = len(jobs) - len(todo)
    if done0:
        log(f"{done0} of {len(jobs)} runs finished earlier: reusing them")
    if not todo:
        return 0
    started, finished = time.perf_counter(), 0

    def report(key: str, outcome: Outcome) -> None:
        nonlocal finished
        finished += 1
        (cfg, label), (ok, result, seconds) = todo[key], outcome
        run_dir = Path(cfg.out)
        if ok:
            (run_dir / ERROR).unlink(missing_ok=True)
            what = f"WAR {result['war']:.2f} UAR {result['uar']:.2f}"
        else:
            write_text(run_dir / ERROR, result)
            what = f"FAILED {result.strip().splitlines()[-1]} (see {run_dir / ERROR})"
        eta = (time.perf_counter() - started) / finished * (len(todo) - finished)
        log(f"[{done0 + finished}/{len(jobs)}] {label}: {what} ({seconds:.1f} s) — ETA {_duration(eta)}")

    if launcher is not None and launcher.kind == "slurm":
        for key, outcome in launch(todo, launcher, folder or Path("."), device, log):
            report(key, outcome)
        return len(todo)
    groups: dict[str, list[str]] = {}
    for key, (cfg, _) in todo.items():  # batched: runs of one model shape (a row's folds and seeds) train as one
        groups.setdefault(shape_key(cfg) if batch else key, []).append(key)
    keys = list(groups.values())
    calls = [([todo[k][0] for k in ks], [_status(Path(todo[k][0].out)) == "partial" for k in ks]) for ks in keys]
    for i, outcomes in run_all(train_group, calls, workers, device):
        if isinstance(outcomes, BaseException):  # the worker process died: every run of its group failed
            outcomes = [died(outcomes)] * len(keys[i])
        for key, outcome in zip(keys[i], outcomes, strict=True):
            report(key, outcome)
    return len(todo)


def _evaluate_selected(rows: list[Row], run_dirs: list[Path], features: str, device: str, log) -> dict[Path, str]:
    """Table 6: re-predict each finished run from its selected frames into <run>/select.json -> {run: error}.

    ``run_dirs`` come in fold order, so each fold's data goes to the device once and alone.
    """
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
    plan, jobs = plan_runs(spec, chosen, features, fingerprint, folds, seeds, out_dir, overrides, device)
    finished = sum(_status(Path(cfg.out)) == "done" for cfg, _ in jobs.values())
    result = {"table": spec.number, "planned": len(plan), "trainings": len(jobs), "table_md": None, "table_csv": None}
    if dry_run:
        for p in plan:
            what = f"select {p['row'].select[0]} {p['row'].select[1]} of " if p["row"].select else ""
            cfg = jobs[p["run_dir"].name][0]
            log(
                f"table{spec.number} {p['row'].label} fold {p['fold']} seed {p['seed']}: {what}{p['run_dir']} "
                f"[{_status(p['run_dir'])}] {describe(cfg)}"
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
