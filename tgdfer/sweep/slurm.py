"""Runs beyond one machine: a sweep's training runs (``tgdfer ablate``, ``train --fold all``) as one SLURM array job.

``launch`` cuts the runs still to train into chunks of ``runs_per_task`` and submits one array task per chunk through
submitit (``cluster="local"`` runs the same tasks as processes here, which is how the tests drive this code). Each
task trains its runs one after another, or ``runs_per_gpu`` at once per GPU in spawned processes, into the same run
directories the local pool uses, so a run is keyed by its settings and the cache fingerprint whatever trained it:
a resubmitted sweep skips finished runs, retries failed ones and continues partial ones from their checkpoints.

A task near its time limit, or preempted, gets SIGUSR2 from SLURM (90 s before the end); submitit
then calls ``Task.checkpoint`` and requeues it. The epoch checkpoints are on disk already, so the requeued task
only re-reads its run directories and calls ``fit_fold(resume=True)`` on those holding a checkpoint.

Submitit is imported inside the functions that submit, so nothing else needs it installed. Its files (pickled
tasks, results, each task's log ``<job id>_0_log.out`` and ``.err``) go to ``<sweep folder>/slurm/``; the sweep
folder and the cache must be on a file system the nodes share.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tgdfer.atomic import write_text
from tgdfer.config import LauncherConfig, RunConfig
from tgdfer.errors import TrainingError
from tgdfer.sweep import slurm_queue
from tgdfer.sweep.plan import Jobs
from tgdfer.sweep.pool import Outcome, died, run_all, train_run
from tgdfer.train.folds import fit_folds
from tgdfer.train.runs import RunDir

SUBMITIT = "slurm"  # submitit's folder inside the sweep folder: each task's pickles and logs, named by its job id

__all__ = ["Task", "chunks", "launch", "make_executor", "train_folds"]


def chunks(keys: list[str], size: int) -> list[list[str]]:
    """['a', 'b', 'c'], 2 -> [['a', 'b'], ['c']]: consecutive runs share a task."""
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def _cores(cpus_per_task: int) -> int:
    """Cores this task may use: its allocation (the CPU affinity SLURM sets), at most cpus_per_task."""
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus_per_task, visible))


def _outcome_on_disk(cfg: RunConfig) -> Outcome | None:
    """A finished run's outcome from its metrics.json; None when it has not finished."""
    run = RunDir(Path(cfg.out))
    if run.status() != "done":
        return None
    metrics = run.read_metrics()
    return True, metrics, float(metrics.get("train_seconds", 0.0))


def _record(cfg: RunConfig, outcome: Outcome) -> None:
    """Leave a failed run's traceback in error.txt (the sweep's failure record); a success clears an old one."""
    path = RunDir(Path(cfg.out)).error
    if outcome[0]:
        path.unlink(missing_ok=True)
    else:
        write_text(path, outcome[1])


@dataclass
class Task:
    """One array task: train ``jobs`` (each run resumes when its directory holds a checkpoint)."""

    jobs: Jobs
    device: str  # the sweep's device setting: auto takes this task's GPUs
    cpus_per_task: int
    runs_per_gpu: int

    def __call__(self) -> dict[str, Outcome]:
        """Train the runs not finished yet -> {key: outcome} for every run of the task. Prints to the task's log."""
        outcomes, todo = {}, {}
        for key, (cfg, label) in self.jobs.items():
            status = RunDir(Path(cfg.out)).status()
            resuming = " (resuming from its checkpoint)" if status == "partial" else ""
            print(f"{label}: {status}{resuming} in {cfg.out}", flush=True)
            done = _outcome_on_disk(cfg)
            if done is not None:
                outcomes[key] = done
            else:
                todo[key] = cfg
        gpus = torch.cuda.device_count() if self.device in ("auto", "cuda") and torch.cuda.is_available() else 0
        processes = min(len(todo), self.runs_per_gpu * max(1, gpus))
        threads = max(1, _cores(self.cpus_per_task) // max(1, processes))
        print(
            f"tgdfer task on {socket.gethostname()}, pid {os.getpid()}: {len(todo)} of {len(self.jobs)} runs to "
            f"train, {max(1, processes)} at once on {gpus or 'no'} GPUs, {threads} threads each",
            flush=True,
        )

        def finish(key: str, outcome: Outcome) -> None:
            cfg, label = self.jobs[key]
            _record(cfg, outcome)
            outcomes[key] = outcome
            ok, result, seconds = outcome
            what = f"WAR {result['war']:.2f} UAR {result['uar']:.2f}" if ok else result.strip().splitlines()[-1]
            print(f"{label}: {'' if ok else 'FAILED '}{what} ({seconds:.1f} s)", flush=True)

        calls = [(cfg, RunDir(Path(cfg.out)).checkpoint.exists()) for cfg in todo.values()]  # resume if it can
        for i, outcome in run_all(train_run, calls, processes, self.device, threads):
            finish(list(todo)[i], died(outcome) if isinstance(outcome, BaseException) else outcome)
        return outcomes

    def checkpoint(self, *args, **kwargs):
        """Preempted or near the time limit: requeue this same task. Its runs checkpoint every epoch, so nothing
        needs saving now; the requeued call finds the checkpoints and resumes."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def make_executor(launcher: LauncherConfig, folder: Path, name: str, tasks: int):
    """A submitit executor for ``tasks`` array tasks of the launcher's resources; its files go to ``folder``."""
    try:
        import submitit
    except ImportError:
        raise TrainingError(
            "--launcher slurm: expected the submitit package, found it not installed; pip install submitit"
        ) from None
    if launcher.cluster == "slurm" and shutil.which("srun") is None:
        raise TrainingError(
            "--launcher slurm: expected a SLURM cluster (srun and sbatch on PATH), found no srun; submit from a "
            "login node, or --set launcher.cluster=local to run the array tasks as processes here"
        )
    executor = submitit.AutoExecutor(folder=str(folder), cluster=launcher.cluster)
    params = {
        "name": name,
        "timeout_min": launcher.time_min,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": launcher.gpus_per_task,
        "cpus_per_task": launcher.cpus_per_task,
        "mem_gb": launcher.mem_gb,
        "slurm_array_parallelism": launcher.max_parallel or tasks,
        "slurm_additional_parameters": dict(item.split("=", 1) for item in launcher.sbatch),
    }
    if launcher.partition:
        params["slurm_partition"] = launcher.partition
    if launcher.setup:
        params[f"{launcher.cluster}_setup"] = list(launcher.setup)
    executor.update_parameters(**params)
    return executor


def launch(jobs: Jobs, launcher: LauncherConfig, folder: Path, device: str, log: Callable[[str], None]):
    """Submit ``jobs`` as one array job and wait for it -> yields (key, outcome) as each task ends.

    A task that dies (killed, node failure, out of memory) yields a failure for each of its runs not finished;
    the next submission resumes them. Ctrl-C or SIGTERM cancels the array job.
    """
    parts = chunks(list(jobs), launcher.runs_per_task)
    tasks = [Task({k: jobs[k] for k in c}, device, launcher.cpus_per_task, launcher.runs_per_gpu) for c in parts]
    executor = make_executor(launcher, Path(folder) / SUBMITIT, f"tgdfer-{Path(folder).name}", len(tasks))
    submitted = _submit(executor, tasks, launcher)
    log(
        f"submitted {len(jobs)} runs as {len(tasks)} array tasks of up to {launcher.runs_per_task} runs "
        f"({launcher.cluster}, job {submitted[0].job_id.split('_')[0]}); task logs in {Path(folder) / SUBMITIT}/"
    )
    return _collect(submitted, tasks, launcher, log)


def _submit(executor, tasks: list[Task], launcher: LauncherConfig) -> list:
    """``executor.submit_array``; sbatch's refusal becomes one line naming the setting (``slurm_queue.refusal``)."""
    from submitit.core.utils import FailedJobError

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error, which ours carries
            return executor.submit_array(tasks)
    except FailedJobError as exc:
        raise slurm_queue.refusal(str(exc), launcher) from None


def _collect(
    submitted: list, tasks: list[Task], launcher: LauncherConfig, log: Callable[[str], None]
) -> Iterator[tuple[str, Outcome]]:
    """Yield (run key, outcome) as each task ends (``slurm_queue.wait``: squeue's states, Ctrl-C and SIGTERM)."""
    task_of = {job.job_id: task for job, task in zip(submitted, tasks, strict=True)}
    for job, ended in slurm_queue.wait(submitted, launcher, log):
        task = task_of[job.job_id]
        try:
            outcomes = job.result() if ended is None else {}
            reason = f"it ended without a result: {ended}"
        except Exception as exc:  # the task failed outside any run
            outcomes, reason = {}, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        for key, (cfg, _) in task.jobs.items():
            outcomes[key] = (
                outcomes.get(key)
                or _outcome_on_disk(cfg)
                or (
                    False,
                    f"array task {job.job_id} ended before this run finished ({reason[:200]}); its log: "
                    f"{job.paths.stdout}; a rerun resumes the run from its last checkpoint\n",
                    0.0,
                )
            )
        yield from ((key, outcomes[key]) for key in task.jobs)


def train_folds(
    cfg: RunConfig, folds: list[str], launcher: LauncherConfig, resume: bool = False, log: Callable[[str], None] = print
) -> dict:
    """``tgdfer train --fold all --launcher slurm``: one run per fold as an array job, then ``fit_folds``' summary.

    Run directories are ``fit_folds``' (``<out>/fold<k>``; ``<out>`` itself for a single split), so the two
    launchers can finish each other's work. Without ``resume`` a fold holding an unfinished run is refused, as
    ``tgdfer train`` refuses it.
    """
    single = len(folds) == 1
    jobs = {
        f"fold{f}": (replace(cfg, fold=f, out=cfg.out if single else str(Path(cfg.out) / f"fold{f}")), f"fold {f}")
        for f in folds
    }
    partial = [c.out for c, _ in jobs.values() if RunDir(Path(c.out)).status() == "partial"]
    if partial and not resume:
        raise TrainingError(f"{partial[0]} already holds a run: pass --resume to continue it, or choose another --out")
    todo = {k: job for k, job in jobs.items() if RunDir(Path(job[0].out)).status() != "done"}
    started, failed = time.perf_counter(), []
    if todo:
        for key, (ok, result, seconds) in launch(todo, launcher, Path(cfg.out), cfg.device, log):
            run_cfg, label = todo[key]
            _record(run_cfg, (ok, result, seconds))
            if ok:
                log(f"{label}: WAR {result['war']:.2f} UAR {result['uar']:.2f} ({seconds:.1f} s)")
            else:
                failed.append(f"{label} ({result.strip().splitlines()[-1]}; {RunDir(Path(run_cfg.out)).error})")
                log(f"{label}: FAILED {failed[-1]}")
        log(f"{len(todo)} folds trained through {launcher.cluster} in {time.perf_counter() - started:.0f} s")
    if failed:
        raise TrainingError(
            f"--launcher slurm: expected every fold trained, found {len(failed)} failed: {'; '.join(failed)}. "
            "Rerun the same command to retry them"
        )
    if single:
        return RunDir(Path(cfg.out)).read_metrics()
    return fit_folds(cfg, folds, resume=True, log=log)  # every fold is done: reads them, writes the summary
