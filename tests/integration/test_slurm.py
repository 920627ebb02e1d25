"""``--launcher slurm`` and stage 1 as an array job on a real single-node SLURM (``slurm_cluster.py``).

Through the CLI, as a user runs it: ``ablate`` and ``train --fold all`` give the local pool's results bit for bit,
a preempted task resumes to identical metrics, and stage 1 as an sbatch array writes the one-process cache. The five
ways it failed for a new user: sbatch's refusals, a job pending for ever, a task killed before its result, SIGTERM to
tgdfer, and the sacct noise of a cluster without accounting.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tgdfer.cli import main
from tgdfer.features.cache import load_cache
from tgdfer.testing.synthetic import write_feature_cache

pytestmark = pytest.mark.integration

# 10 epochs of about 0.1 s: a task trains for a second or two after loading, time to preempt it mid-run
FAST = ("--set", "train.epochs=10", "--set", "train.batch_size=16", "--device", "cpu")
CPU_TASK = (
    "--launcher",
    "slurm",
    "--slurm-gpus",
    "0",
    "--slurm-cpus",
    "1",
    "--slurm-mem-gb",
    "1",
    "--slurm-time",
    "10",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_clip_path, tiny_clip) -> str:
    """60 generated clips, one train view each, two folds."""
    path = tmp_path_factory.mktemp("slurm-cache") / "c.h5"
    write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=60, views=1, folds=2)
    return str(path)


def _one_thread(argv: list[str]) -> int:
    """``main(argv)`` on one torch thread, as each array task of --slurm-cpus 1 trains."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


def _ablate(cache: str, out: Path) -> list[str]:
    return ["ablate", "--table", "3", "--rows", "e", "--folds", "1-2", "--features", cache, "--out", str(out), *FAST]


@pytest.fixture(scope="module")
def local_table(cache, tmp_path_factory) -> Path:
    """Table 3 row e, folds 1-2, trained by the local pool: what every SLURM run must equal."""
    out = tmp_path_factory.mktemp("local")
    assert _one_thread(_ablate(cache, out)) == 0
    return out


def _tasks(slurm, array_id: str) -> dict[str, str]:
    """{task id: state} of an array job, ended tasks included."""
    run = slurm.command("squeue", "-h", "-r", "-t", "all", "-j", array_id, "-o", "%i|%T")
    return dict(line.split("|") for line in run.stdout.split())


def _array_id(text: str) -> str:
    return re.search(r"\(slurm, job (\d+)\)", text).group(1)


def test_ablate_through_slurm_writes_the_local_pools_table(slurm, cache, local_table, tmp_path, capfd):
    out = tmp_path / "ablate"
    assert main([*_ablate(cache, out), *CPU_TASK]) == 0
    printed, errors = capfd.readouterr()
    assert "submitted 2 runs as 2 array tasks of up to 1 runs (slurm, job " in printed
    assert (out / "table3.csv").read_bytes() == (local_table / "table3.csv").read_bytes()
    assert (out / "table3.md").read_text() == (local_table / "table3.md").read_text().replace(
        str(local_table), str(out)
    )
    assert "sacct" not in printed + errors  # no accounting here: tgdfer asks squeue, never sacct


def test_train_all_folds_through_slurm_gives_the_local_runs_metrics(slurm, cache, local_table, tmp_path, capfd):
    out = tmp_path / "train"
    assert main(["train", "--features", cache, "--fold", "all", "--out", str(out), *FAST, *CPU_TASK]) == 0
    assert "2 folds trained through slurm" in capfd.readouterr().out
    local = [json.loads(run.read_text()) for run in (local_table / "runs").glob("*/metrics.json")]
    for fold in ("1", "2"):  # Table 3 row e is train's defaults: the same two runs, in other directories
        ours = json.loads((out / f"fold{fold}" / "metrics.json").read_text())
        assert [(m["war"], m["uar"], m["confusion"]) for m in local].count(
            (ours["war"], ours["uar"], ours["confusion"])
        ) == 1
    assert (out / "summary.json").exists()


def _run_in_thread(argv: list[str]) -> tuple[threading.Thread, dict]:
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(rc=_one_thread(argv)), daemon=True)
    thread.start()
    return thread, box


def _partial_run(out: Path, runs: str, timeout: float = 120) -> tuple[str, Path]:
    """Wait until a task trains a run (``out/runs``) past its first epoch checkpoint -> (its job id, run dir); the
    job id of a task is '12_0' for an array, '12' for a job of one task (submitit submits that without --array)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for log in (out / "slurm").glob("*_0_log.out"):
            text = log.read_text()
            for run in out.glob(runs):
                if str(run) in text and (run / "checkpoint.pt").exists() and not (run / "metrics.json").exists():
                    return re.search(r"JobEnvironment\(job_id=([\d_]+),", text).group(1), run
        time.sleep(0.01)
    raise AssertionError(f"no task reached a partial run within {timeout} s")


def test_a_preempted_task_requeues_and_resumes_to_identical_metrics(slurm, cache, local_table, tmp_path, capfd):
    out = tmp_path / "preempt"
    both = ("--set", "launcher.runs_per_task=2")  # one task trains both runs, one after the other
    thread, box = _run_in_thread([*_ablate(cache, out), *CPU_TASK, *both])
    task, run = _partial_run(out, "runs/*")
    assert slurm.command("scancel", "--signal=USR2", task).returncode == 0  # what SLURM sends before preempting
    thread.join(240)
    assert box == {"rc": 0}
    (log,) = (path.read_text() for path in (out / "slurm").glob("*_log.out"))
    assert "Calling checkpoint method" in log and "Requeued job" in log
    assert f"(resuming from its checkpoint) in {run}" in log
    assert (out / "table3.csv").read_bytes() == (local_table / "table3.csv").read_bytes()
    printed = capfd.readouterr().out  # while requeued, the task waits; the command says why
    assert re.search(rf"^array job {task}: 1 task pending \(\w+\)$", printed, re.MULTILINE), printed


def _extract_args(root: Path, clip: Path) -> list[str]:
    args = {"--dataset": "dfew", "--root": root, "--clip": clip, "--views": 1, "--workers": 0, "--shard-clips": 3}
    return [str(x) for pair in args.items() for x in pair]


def test_stage_one_as_an_sbatch_array_writes_the_one_process_cache(slurm, dfew_root, tiny_clip_path, tmp_path):
    """README's array script: each task encodes its block of the shards; the last one writes the entry."""
    one, array = tmp_path / "one.h5", tmp_path / "array.h5"
    assert _one_thread(["extract", *_extract_args(dfew_root, tiny_clip_path), "--out", str(one)]) == 0
    script = tmp_path / "extract.sh"
    command = [sys.executable, "-m", "tgdfer", "extract", *_extract_args(dfew_root, tiny_clip_path)]
    script.write_text(
        f"#!/bin/bash\n#SBATCH --array=0-1 --cpus-per-task=1 --mem=1G --output={tmp_path}/extract-%A_%a.out\n"
        "export OMP_NUM_THREADS=1 TQDM_DISABLE=1\n"
        f'exec {" ".join(command)} --out {array} --array-task "$SLURM_ARRAY_TASK_ID" '
        '--array-tasks "$SLURM_ARRAY_TASK_COUNT"\n'
    )
    run = slurm.command("sbatch", "--wait", str(script), timeout=300)
    logs = {p.name: p.read_text() for p in tmp_path.glob("extract-*.out")}
    assert run.returncode == 0, (run.stderr, logs)
    assert sorted(re.sub(r"^extract-\d+_", "", name) for name in logs) == ["0.out", "1.out"]
    assert sum(f"cache {array} holds 12 clips" in text for text in logs.values()) == 1
    a, b = load_cache(one), load_cache(array)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.view_frames, b.view_frames)
    assert list(a.clip_ids) == list(b.clip_ids) and np.array_equal(a.membership, b.membership)


# The five failures ------------------------------------------------------------------------------------------------


def test_sbatch_refusals_name_the_setting_and_the_clusters_answer(slurm, cache, tmp_path, capfd):
    base = [*_ablate(cache, tmp_path / "refused"), "--launcher", "slurm", "--slurm-cpus", "1"]
    assert main(base) == 2  # the default --slurm-gpus 1, on a cluster without GPUs
    errors = capfd.readouterr().err
    assert errors.count("\n") == 1 and "Traceback" not in errors
    assert errors.startswith(
        "error: --launcher slurm: expected sbatch to accept the array job, found it refused with --slurm-gpus 1 "
        "(0 trains on CPUs): 'Invalid generic resource (gres) specification'; the partitions here: debug* (nodes "
        f"of {slurm.cpus} CPUs, "
    )
    assert errors.rstrip().endswith("GRES none). Change --slurm-gpus to what the cluster offers")

    assert main([*base, "--slurm-gpus", "0", "--slurm-partition", "gpu"]) == 2
    errors = capfd.readouterr().err
    assert errors.count("\n") == 1 and "Traceback" not in errors
    assert "found it refused with --slurm-partition gpu: 'invalid partition specified: gpu; Batch job" in errors
    assert "the partitions here: debug* (nodes of" in errors and "Change --slurm-partition to" in errors


def test_a_job_that_cannot_start_is_cancelled_with_squeues_reason(slurm, cache, tmp_path, capfd):
    too_many = str(slurm.cpus + 2)  # more CPUs than the only node has: sbatch accepts it, SLURM never starts it
    argv = [*_ablate(cache, tmp_path / "pending"), "--launcher", "slurm", "--slurm-gpus", "0", "--slurm-cpus", too_many]
    thread, box = _run_in_thread(argv)
    thread.join(60)
    assert box == {"rc": 2}
    printed, errors = capfd.readouterr()
    assert errors.count("\n") == 1
    assert re.match(
        r"error: --launcher slurm: expected array job \d+ to start, found it pending with squeue's reason "
        r"PartitionConfig: it asks for more than a node of its partition has \(--slurm-cpus, --slurm-mem-gb, "
        rf"--slurm-gpus\); sinfo: debug\* \(nodes of {slurm.cpus} CPUs, \d+ MB, GRES none\)\. Cancelled it: lower "
        "those settings, or choose another --slurm-partition$",
        errors.strip(),
    )
    assert set(_tasks(slurm, _array_id(printed)).values()) == {"CANCELLED"}


def test_a_task_killed_before_its_result_is_reported_not_waited_on(slurm, cache, tmp_path, capfd):
    out = tmp_path / "killed"
    argv = ["train", "--features", cache, "--fold", "all", "--out", str(out), *FAST, *CPU_TASK]
    thread, box = _run_in_thread(argv)
    task, _ = _partial_run(out, "fold*")
    (log,) = (out / "slurm").glob(f"{task}_0_log.out")
    os.kill(int(re.search(r"pid (\d+)", log.read_text()).group(1)), signal.SIGKILL)  # what the OOM killer does
    thread.join(60)
    assert box == {"rc": 2}
    errors = capfd.readouterr().err
    fold = "1" if task.endswith("_0") else "2"
    assert errors.startswith("error: --launcher slurm: expected every fold trained, found 1 failed: ")
    assert f"fold {fold} (array task {task} ended before this run finished (it ended without a result: " in errors
    assert "Rerun the same command to retry them" in errors
    assert main([*argv, "--resume"]) == 0  # the rerun trains the killed fold from its last checkpoint
    assert f"fold {fold}: WAR" in capfd.readouterr().out and (out / "summary.json").exists()


def test_sigterm_cancels_the_array_job_as_ctrl_c_does(slurm, cache, tmp_path):
    cmd = [sys.executable, "-m", "tgdfer", *_ablate(cache, tmp_path / "term"), *CPU_TASK]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("submitted"):
            break
    time.sleep(1)  # into the wait for the tasks
    proc.send_signal(signal.SIGTERM)  # what timeout(1), a CI runner or a login node's reaper sends
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "cancelled 2 array tasks not finished (slurm, job " in rest
    assert set(_tasks(slurm, _array_id("".join(lines))).values()) == {"CANCELLED"}
