"""A real single-node SLURM on this machine, for the integration tests of ``--launcher slurm``.

Debian 12's packages (``slurmctld``, ``slurmd``, ``slurm-client``, ``munge``: SLURM 22.05, MUNGE 0.5), installed
with apt-get when missing (as root, the way ``.ci/run`` installs what it needs). The daemons are started directly
(no systemd): ``munged`` with its own key, ``slurmctld`` and ``slurmd`` in the foreground, all their state, logs and
sockets under one folder, and stopped by pid. One node with this machine's CPUs and memory in one partition
``debug``: ``proctrack/linuxproc``, ``task/none``, ``select/cons_tres``, no cgroups, no accounting (so ``sacct``
fails, as on many small clusters). Clients find the cluster through ``SLURM_CONF`` (``SlurmCluster.env``).

Two settings make a requeued job restart in about 12 s instead of 2.5 minutes: ``AuthInfo=cred_expire=10`` (a
requeued job waits for its old credential to expire; SLURM's default is 120 s) and
``SchedulerParameters=bf_interval=1,sched_interval=2`` (the scheduler looks at the queue every second or two).
Measured here: 12.3 s from ``scontrol requeue`` to running again; 36.4 s with cred_expire=30, bf_interval=5,
sched_interval=10.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "scontrol")
PARTITION = "debug"

CONF = """\
ClusterName=tgdfer
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket,cred_expire=10
StateSaveLocation={root}/ctld
SlurmdSpoolDir={root}/d
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=5
SchedulerParameters=bf_interval=1,sched_interval=2
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class Unavailable(Exception):
    """SLURM cannot be installed here (not root, no apt-get, no network); the one-line reason to skip with."""


class StartError(RuntimeError):
    """SLURM is installed but the cluster did not come up: a failure of the tests, not a reason to skip them."""


def _missing() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None]


def _apt(*args: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300", *args]  # another apt may hold the lock: wait for it
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        last = (run.stderr.strip() or run.stdout.strip() or "no output").splitlines()[-1]
        raise Unavailable(f"`{' '.join(cmd)}` failed ({run.returncode}): {last}")


def ensure_installed() -> float:
    """Install the Debian packages when a program is missing -> seconds it took (0 when all were there)."""
    missing = _missing()
    if not missing:
        return 0.0
    why = f"SLURM not installed ({', '.join(missing)} missing)"
    if os.geteuid() != 0:
        raise Unavailable(f"{why} and not root to apt-get install {' '.join(PACKAGES)}")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{why} and no apt-get to install {' '.join(PACKAGES)}")
    started = time.perf_counter()
    _apt("update")
    _apt("install", "-y", "--no-install-recommends", *PACKAGES)
    if _missing():
        raise Unavailable(f"{' '.join(PACKAGES)} installed but {', '.join(_missing())} still not on PATH")
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    """This machine's memory in MB, less 10% (what slurmd itself reports is a little below the total)."""
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    return int(total_kb / 1024 * 0.9)


@dataclass
class SlurmCluster:
    """A running single-node cluster: its folder, node, CPUs, and the daemons it started."""

    root: Path
    node: str
    cpus: int
    partition: str = PARTITION
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The variables a client (sbatch, squeue, tgdfer) needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster (``squeue``, ``scancel``, ...)."""
        env = {**os.environ, **self.env}
        return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)

    def log(self, daemon: str) -> str:
        path = self.root / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def drain(self, timeout: float = 30) -> None:
        """Cancel every job and wait until none runs: a step still running when slurmd stops is left behind."""
        if self.processes:
            self.command("scancel", "--partition", self.partition)
        deadline = time.time() + timeout
        while self.processes and time.time() < deadline:
            if not self.command("squeue", "-h", "-o", "%i").stdout.strip():
                return
            time.sleep(0.5)

    def stop(self, drain: bool = True) -> None:
        """Drain the jobs, then SIGTERM each daemon by pid (slurmd first), SIGKILL what is left after 10 s."""
        if drain:
            self.drain()
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.processes.clear()


def _daemon(cluster: SlurmCluster, name: str, args: list[str]) -> None:
    out = open(cluster.root / f"{name}.out", "wb")  # noqa: SIM115 (the daemon writes to it until stopped)
    env = {**os.environ, **cluster.env}
    cluster.processes.append(subprocess.Popen([name, *args], stdout=out, stderr=subprocess.STDOUT, env=env))


def _wait_idle(cluster: SlurmCluster, timeout: float) -> None:
    """Until sinfo shows the node idle (slurmd registered with slurmctld)."""
    deadline, state = time.time() + timeout, ""
    while time.time() < deadline:
        for proc in cluster.processes:
            if proc.poll() is not None:
                out = (cluster.root / f"{proc.args[0]}.out").read_text(errors="replace")
                raise StartError(f"{proc.args[0]} exited ({proc.returncode}): {out.strip()[-300:]}")
        run = cluster.command("sinfo", "-h", "-N", "-o", "%T", timeout=10)
        state = run.stdout.strip() or run.stderr.strip()
        if state == "idle":
            return
        time.sleep(0.2)
    raise StartError(f"the node was not idle {timeout:.0f} s after start (sinfo: {state!r}); see {cluster.root}")


def start(root: Path, timeout: float = 60) -> SlurmCluster:
    """Start munged, slurmctld and slurmd with all their files under ``root`` -> the cluster, its node idle."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("ctld", "d"):
        (root / sub).mkdir(exist_ok=True)
    cluster = SlurmCluster(root, socket.gethostname(), os.cpu_count() or 1)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    values = dict(node=cluster.node, root=root, cpus=cluster.cpus, mem_mb=_memory_mb(), partition=cluster.partition)
    cluster.conf.write_text(CONF.format(ctld_port=_free_port(), d_port=_free_port(), **values))
    try:
        munge = [f"--key-file={key}", f"--socket={root}/munge.socket", f"--pid-file={root}/munged.pid"]
        munge += [f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"]
        _daemon(cluster, "munged", ["--foreground", "--force", *munge])
        _daemon(cluster, "slurmctld", ["-D", "-c", "-f", str(cluster.conf)])
        _daemon(cluster, "slurmd", ["-D", "-f", str(cluster.conf), "-N", cluster.node])
        _wait_idle(cluster, timeout)
    except BaseException:
        cluster.stop(drain=False)  # no job ran yet, and the controller may not answer
        raise
    return cluster
