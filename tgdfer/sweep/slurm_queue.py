"""What the SLURM cluster answers about an array job, and the wait for its tasks (``--launcher slurm``).

- sbatch's refusals (a partition that does not exist, GPUs on a partition without any) become one
  ``TrainingError`` naming the setting, the cluster's answer and what ``sinfo`` says the partitions offer;
- ``squeue`` tells each task's state, so a task that ended without writing its result (killed, out of memory,
  node lost) is reported as failed instead of waited on for ever, and a job pending for a reason that cannot
  resolve by waiting (more CPUs than any node of the partition: ``PartitionConfig``) is cancelled and reported with
  the reason and the fix. It also works without accounting, where submitit's ``sacct`` calls fail on every poll;
- the poll interval grows with the time waited (about a tenth of it, from ``low`` to 30 s): seconds for short
  tasks, few ``squeue`` calls for long ones;
- SIGTERM (``timeout``, a CI runner, a login node's reaper) cancels the array job as Ctrl-C does.

The same wait runs submitit's local executor (``launcher.cluster=local``), where the task processes' exit codes
stand in for squeue's states. Only ``subprocess`` calls to the SLURM clients and submitit's public job API.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from tgdfer.config import LauncherConfig
from tgdfer.errors import TrainingError

__all__ = ["cancel", "poll_interval", "refusal", "wait"]

# Job states in which a task may still write its result (squeue(1) "JOB STATE CODES"); any other state has ended
ACTIVE = frozenset(
    [
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "SPECIAL_EXIT",
        "RESV_DEL_HOLD",
    ]
)
# Pending reasons that waiting does not resolve (squeue(1) "JOB REASON CODES") -> what they mean for our settings
HOPELESS = {
    "PartitionConfig": "it asks for more than a node of its partition has (--slurm-cpus, --slurm-mem-gb, --slurm-gpus)",
    "PartitionNodeLimit": "it needs more nodes than its partition allows, or the partition's nodes are down",
    "PartitionTimeLimit": "--slurm-time is beyond its partition's time limit",
    "BadConstraints": "its constraints (launcher.sbatch) cannot be met by any node",
    "InvalidAccount": "its account (launcher.sbatch account=...) is not valid here",
    "InvalidQOS": "its QOS (launcher.sbatch qos=...) is not valid here",
}
POLL_MAX = 30.0  # seconds between squeue calls once the tasks have run for 5 minutes


def poll_interval(elapsed: float, low: float) -> float:
    """Seconds to the next look at the tasks, ``elapsed`` seconds after submitting: a tenth of the time waited,
    between ``low`` and POLL_MAX (a task ending is noticed at most ~10% after it ends)."""
    return min(POLL_MAX, max(low, elapsed / 10))


def _client(*args: str) -> subprocess.CompletedProcess | None:
    """Run a SLURM client command -> its result; None when it cannot run (not installed, hung)."""
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


def partitions(partition: str | None = None) -> str:
    """What sinfo says the partitions (or the one named) offer, for a message: 'debug* (nodes of 2 CPUs, 21694 MB,
    GRES none)'; '' when sinfo cannot tell."""
    run = _client("sinfo", "-h", "-o", "%P|%c|%m|%G", *(["-p", partition] if partition else []))
    if run is None or run.returncode != 0:
        return ""
    offers = []
    for line in run.stdout.split("\n"):
        name, cpus, mem, gres = ([*line.strip().split("|"), "", "", ""])[:4]
        if name:
            offers.append(f"{name} (nodes of {cpus} CPUs, {mem} MB, GRES {gres.replace('(null)', 'none')})")
    return ", ".join(offers)


def _refused_setting(answer: str, launcher: LauncherConfig) -> tuple[str, str]:
    """The launcher setting an sbatch error is about -> (its flag, the flag with the value the user gave)."""
    text = answer.lower()
    if "partition" in text:  # first: the partition's name may be 'gpu'
        return "--slurm-partition", f"--slurm-partition {launcher.partition or '(the cluster default)'}"
    if "gres" in text or "gpu" in text:
        return "--slurm-gpus", f"--slurm-gpus {launcher.gpus_per_task} (0 trains on CPUs)"
    if "memory" in text:
        return "--slurm-mem-gb", f"--slurm-mem-gb {launcher.mem_gb:g}"
    if "time limit" in text:
        return "--slurm-time", f"--slurm-time {launcher.time_min}"
    if "cpu" in text or "node configuration" in text:
        return "--slurm-cpus", f"--slurm-cpus {launcher.cpus_per_task}"
    if launcher.sbatch:
        return "launcher.sbatch", f"launcher.sbatch {list(launcher.sbatch)}"
    return "the --slurm-* settings", "the --slurm-* settings"


def refusal(stderr: str, launcher: LauncherConfig) -> TrainingError:
    """sbatch's error text (submitit's FailedJobError) -> one line: the setting, the answer, what partitions offer."""
    lines = [line.strip().removeprefix("sbatch: error: ") for line in stderr.strip().splitlines() if line.strip()]
    answer = "; ".join(lines) or "no reason given"
    offer = partitions()
    offers = f"; the partitions here: {offer}" if offer else ""
    flag, setting = _refused_setting(answer, launcher)
    return TrainingError(
        f"--launcher slurm: expected sbatch to accept the array job, found it refused with {setting}: "
        f"'{answer}'{offers}. Change {flag} to what the cluster offers"
    )


def _states(array_ids: set[str]) -> dict[str, tuple[str, str]] | None:
    """squeue -> {'12_0': (state, reason)} for every task of these array jobs it still knows (also ended ones, for
    a few minutes); None when squeue did not answer (then nothing is concluded from this poll)."""
    run = _client("squeue", "-h", "-r", "-t", "all", "-j", ",".join(sorted(array_ids)), "-o", "%i|%T|%r")
    if run is None:
        return None
    if run.returncode != 0:  # every id unknown (ended long ago) is an error to squeue; anything else is no answer
        return {} if "Invalid job id" in run.stderr else None
    found = {}
    for line in run.stdout.split("\n"):
        parts = line.strip().split("|")
        if len(parts) == 3:
            found[parts[0]] = (parts[1], parts[2])
    return found


def _state_of(job_id: str, states: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """A task's (state, reason); a pending array not split into tasks yet is listed under its array id alone."""
    array_id = job_id.split("_")[0]
    return states.get(job_id) or states.get(array_id)


def cancel(jobs: Sequence, cluster: str) -> None:
    """Cancel these tasks: one scancel of their array jobs on SLURM, SIGINT to each task process locally."""
    if cluster == "slurm":
        _client("scancel", *sorted({job.job_id.split("_")[0] for job in jobs}))
    else:
        for job in jobs:
            job.cancel(check=False)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here, as Ctrl-C does (main thread only: signals go there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ended(job, cluster: str, states: dict | None) -> str | None:
    """Why a task without a result has ended ('squeue state FAILED', 'gone from squeue'); None while it may still
    write one."""
    if cluster != "slurm":
        return None if not job.done() else "its process exited"
    if states is None:
        return None
    found = _state_of(job.job_id, states)
    if found is None:
        return "gone from squeue"
    return None if found[0] in ACTIVE else f"squeue state {found[0]}"


def _hopeless(jobs: Sequence, states: dict | None, launcher: LauncherConfig) -> TrainingError | None:
    """A pending task whose reason waiting cannot resolve -> the error to stop with; None otherwise."""
    for job in jobs:
        state, reason = _state_of(job.job_id, states or {}) or ("", "")
        if state == "PENDING" and reason in HOPELESS:
            offer = partitions(launcher.partition)
            return TrainingError(
                f"--launcher slurm: expected array job {job.job_id.split('_')[0]} to start, found it pending with "
                f"squeue's reason {reason}: {HOPELESS[reason]}"
                + (f"; sinfo: {offer}" if offer else "")
                + ". Cancelled it: lower those settings, or choose another --slurm-partition"
            )
    return None


def _pending(jobs: Sequence, states: dict | None) -> str:
    """'2 tasks pending (Resources)' for the tasks squeue holds back with a reason; '' when there are none."""
    reasons = Counter(
        found[1]
        for job in jobs
        if (found := _state_of(job.job_id, states or {})) and found[0] == "PENDING" and found[1] != "None"
    )
    return ", ".join(f"{n} task{'s' * (n > 1)} pending ({reason})" for reason, n in sorted(reasons.items()))


def wait(jobs: Sequence, launcher: LauncherConfig, log: Callable[[str], None]) -> Iterator[tuple[object, str | None]]:
    """Yield (job, None) as each task writes its result, (job, why) for a task that ended without one.

    Ctrl-C, SIGTERM, a hopeless pending reason or the caller stopping early cancel the tasks not finished.
    """
    cluster, left, started = launcher.cluster, list(jobs), time.monotonic()
    seen_ended: set[str] = set()  # ended without a result at the previous poll (a result may lag on NFS)
    low = 1.0 if cluster == "slurm" else 0.5
    pending = ""  # squeue's reasons for the tasks still pending, as last logged
    with _sigterm_interrupts():
        try:
            while left:
                states = _states({j.job_id.split("_")[0] for j in left}) if cluster == "slurm" else None
                error = _hopeless(left, states, launcher)
                if error is not None:
                    raise error
                previous, pending = pending, _pending(left, states)
                if pending and pending != previous:  # why the cluster holds tasks back, once each time it changes
                    log(f"array job {left[0].job_id.split('_')[0]}: {pending}")
                for job in list(left):
                    done = job.paths.result_pickle.exists()
                    why = None if done else _ended(job, cluster, states)
                    if done or (why is not None and job.job_id in seen_ended):
                        left.remove(job)
                        yield job, why
                    elif why is not None:
                        seen_ended.add(job.job_id)
                if left:
                    time.sleep(poll_interval(time.monotonic() - started, low))
        except (KeyboardInterrupt, TrainingError, GeneratorExit):
            if left:
                cancel(left, cluster)
                log(f"cancelled {len(left)} array tasks not finished ({cluster}, job {left[0].job_id.split('_')[0]})")
            raise
