"""Beyond one machine (README "Cluster"): sweeps and ``train --fold all`` through submitit's local executor (the
array-job code path, with tasks as processes here): submit, kill a task, preempt one, resubmit; the SLURM script
submitit writes from our options; extraction as array blocks run as two processes, and torchrun across two nodes.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tgdfer.cli import main
from tgdfer.config import ExtractConfig, LauncherConfig, SweepConfig
from tgdfer.errors import ConfigError, TrainingError
from tgdfer.extract import extract, shard_block
from tgdfer.features.cache import load_cache
from tgdfer.features.store import shard_dir
from tgdfer.sweep.runner import run_table
from tgdfer.sweep.slurm import Task, chunks, make_executor
from tgdfer.testing.synthetic import write_feature_cache

FAST = ("train.epochs=2", "train.batch_size=16")
# The array tasks as processes on this machine: CPU only, one core (and so one torch thread) each.
LOCAL = LauncherConfig(kind="slurm", cluster="local", gpus_per_task=0, cpus_per_task=1, time_min=10)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_clip_path, tiny_clip):
    """60 generated clips, one train view each, two folds: a run of two epochs takes about a second."""
    path = tmp_path_factory.mktemp("cluster") / "c.h5"
    write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=60, views=1, folds=2)
    return str(path)


def _sweep(cache, out, rows=("a", "e"), **launcher) -> SweepConfig:
    kwargs = dict(rows=rows, out=str(out), overrides=FAST, device="cpu")
    return SweepConfig(table="3", features=cache, launcher=replace(LOCAL, **launcher), **kwargs)


def _rows(result) -> list:
    return [(r["label"], r["uar"], r["war"], r["runs"], r["failed"]) for r in result["rows"]]


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    """Table 3 rows a and e trained here by the local pool on one thread, as each array task trains."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_table(replace(_sweep(cache, out), launcher=LauncherConfig()), log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    assert result["ran"] == 4 and result["failed"] == []
    return result, (out / "table3.csv").read_text()


def _in_thread(target) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run():
        try:
            box["result"] = target()
        except BaseException as exc:  # surfaced by the test after join
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _task_training_a_partial_run(out: Path, timeout: float = 180) -> tuple[int, Path, Path]:
    """Wait until a task's run holds a checkpoint after its first epoch but no metrics -> (pid, run dir, log)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for log in (out / "slurm").glob("*_log.out"):
            text = log.read_text()
            pid = re.search(r"pid (\d+)", text)
            for run in (out / "runs").glob("*") if pid else ():
                if str(run) in text and (run / "checkpoint.pt").exists() and not (run / "metrics.json").exists():
                    return int(pid.group(1)), run, log
        time.sleep(0.005)
    raise AssertionError(f"no task reached a partial run within {timeout} s")


@pytest.mark.integration
def test_kill_a_task_then_resubmit_gives_the_local_pools_table(cache, reference, tmp_path):
    out, lines = tmp_path / "sweep", []
    thread, box = _in_thread(lambda: run_table(_sweep(cache, out, runs_per_task=2), log=lines.append))
    pid, _, _ = _task_training_a_partial_run(out)
    os.kill(pid, signal.SIGKILL)  # a node lost mid-run: the task leaves no result
    thread.join(300)
    first = box["result"]
    assert lines[0].startswith("submitted 4 runs as 2 array tasks of up to 2 runs (local, job ")
    assert first["ran"] == 4 and 1 <= len(first["failed"]) <= 2  # the killed task's unfinished runs
    for failure in first["failed"]:
        assert "ended before this run finished" in failure["error"] and "a rerun resumes" in failure["error"]
        assert Path(failure["run_dir"], "error.txt").exists()
    killed = len(first["failed"])

    again = run_table(_sweep(cache, out, runs_per_task=2), log=lines.append)
    assert (again["ran"], again["skipped"], again["failed"]) == (killed, 4 - killed, [])
    assert f"{4 - killed} of 4 runs finished earlier: reusing them" in lines
    assert _rows(again) == _rows(reference[0])  # exact figures: resumed runs equal uninterrupted ones
    assert (out / "table3.csv").read_text() == reference[1]
    assert not any(Path(d, "error.txt").exists() for r in again["rows"] for d in r["run_dirs"])

    submitted = sum(line.startswith("submitted") for line in lines)
    third = run_table(_sweep(cache, out, runs_per_task=2), log=lines.append)
    assert third["ran"] == 0 and sum(line.startswith("submitted") for line in lines) == submitted == 2


@pytest.mark.integration
def test_a_preempted_task_requeues_and_resumes_from_its_checkpoint(cache, reference, tmp_path):
    out = tmp_path / "sweep"
    thread, box = _in_thread(lambda: run_table(_sweep(cache, out, rows=("e",), runs_per_task=2), log=lambda _: None))
    pid, run, log = _task_training_a_partial_run(out)
    os.kill(pid, signal.SIGUSR2)  # what SLURM sends before a time limit or a preemption
    thread.join(300)
    result = box["result"]
    assert result["ran"] == 2 and result["failed"] == []
    text = log.read_text()
    assert "Calling checkpoint method" in text and "Requeued job" in text
    assert f"table3 e fold{json.loads((run / 'config.json').read_text())['fold']} seed1: partial " in text
    assert f"(resuming from its checkpoint) in {run}" in text
    assert _rows(result) == [row for row in _rows(reference[0]) if row[0] == "e"]


@pytest.mark.integration
def test_train_all_folds_as_an_array_job(cache, reference, tmp_path, capsys):
    out = tmp_path / "train"
    args = ["train", "--features", cache, "--fold", "all", "--out", str(out), "--device", "cpu"]
    args += ["--launcher", "slurm", "--slurm-gpus", "0", "--slurm-cpus", "1", "--set", "launcher.cluster=local"]
    args += [item for s in FAST for item in ("--set", s)]
    args += ["--set", "launcher.runs_per_task=2", "--set", "launcher.runs_per_gpu=2"]  # both folds in one task
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "submitted 2 runs as 1 array tasks of up to 2 runs (local, job " in printed
    (log,) = (out / "slurm").glob("*_log.out")
    assert ": 2 of 2 runs to train, 2 at once on no GPUs, 1 threads each" in log.read_text()
    e = next(r for r in reference[0]["rows"] if r["label"] == "e")  # Table 3 row e is train's defaults
    for fold, run_dir in zip(("1", "2"), e["run_dirs"], strict=True):
        ours, theirs = (json.loads(Path(d, "metrics.json").read_text()) for d in (out / f"fold{fold}", run_dir))
        assert (ours["war"], ours["uar"], ours["confusion"]) == (theirs["war"], theirs["uar"], theirs["confusion"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["war_mean"] == pytest.approx(sum(e["war"]) / 2, abs=1e-9)
    assert main(args) == 0 and "submitted" not in capsys.readouterr().out  # every fold done: only the summary


def test_launcher_settings_from_the_command_line(cache, capsys):
    base = ["ablate", "--table", "3", "--features", cache, "--dry-run"]
    assert main([*base, "--workers", "2", "--launcher", "slurm"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: workers: expected 1 with --launcher slurm (a task's runs at once are launcher.runs_per_gpu), found 2"
    )
    assert main([*base, "--set", "launcher.gpus_per_task=-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: launcher.gpus_per_task: expected >= 0 GPUs per task, found -1"
    assert main([*base, "--set", "launcher.bogus=1"]) == 2
    assert capsys.readouterr().err.startswith("error: --set launcher.bogus: unknown setting 'bogus'; expected one of")
    assert main([*base, "--launcher", "cloud"]) == 2
    assert "launcher.kind: expected one of local, slurm, found 'cloud'" in capsys.readouterr().err
    # launcher.* items configure the launcher; the others still reach every row
    assert main([*base, "--rows", "e", "--set", "launcher.partition=gpu", "--set", "model.window=2"]) == 0
    assert "model.window=2" in capsys.readouterr().out


def test_the_sbatch_script_carries_the_launcher_options(tmp_path, monkeypatch):
    """A stand-in sbatch on PATH records the script submitit hands it; nothing is waited for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {tmp_path / "script.sh"}\necho "Submitted batch job 4242"\n')
    sbatch.chmod(0o755)
    (bin_dir / "srun").symlink_to("/bin/true")  # submitit looks for srun to tell it is on a SLURM cluster
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    launcher = LauncherConfig(
        kind="slurm",
        partition="gpu",
        gpus_per_task=2,
        cpus_per_task=8,
        mem_gb=32,
        time_min=90,
        max_parallel=3,
        setup=("source /shared/venv/bin/activate",),
        sbatch=("account=proj1",),
    )
    executor = make_executor(launcher, tmp_path / "slurm", "tgdfer-sweep", 5)
    jobs = executor.submit_array([Task({}, "auto", 8, 1) for _ in range(5)])
    assert [j.job_id for j in jobs] == [f"4242_{i}" for i in range(5)]
    script = (tmp_path / "script.sh").read_text().splitlines()
    for line in [
        "#SBATCH --array=0-4%3",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=90",
        "#SBATCH --account=proj1",
        "#SBATCH --signal=USR2@90",
        "#SBATCH --job-name=tgdfer-sweep",
        f"#SBATCH --output={tmp_path / 'slurm'}/%A_%a_0_log.out",
        "source /shared/venv/bin/activate",
    ]:
        assert line in script


def test_slurm_without_srun_is_refused_with_a_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TrainingError, match=r"expected a SLURM cluster .* found no srun; .*launcher.cluster=local"):
        make_executor(LauncherConfig(kind="slurm"), tmp_path / "slurm", "tgdfer-sweep", 1)


def test_runs_are_cut_into_consecutive_chunks():
    assert chunks(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert chunks(["a", "b"], 5) == [["a", "b"]]
    with pytest.raises(ConfigError, match=r"^launcher.runs_per_task: expected >= 1 runs per task, found 0$"):
        LauncherConfig(runs_per_task=0)


# Extraction ----------------------------------------------------------------------------------------------------


def _extract_args(root, clip) -> list[str]:
    args = {"--dataset": "dfew", "--root": root, "--clip": clip, "--views": 1, "--workers": 0, "--shard-clips": 3}
    return [str(x) for pair in args.items() for x in pair]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def one_process(dfew_root, tiny_clip_path, tmp_path_factory):
    """The 12 clips in 4 shards by one process here, on one thread as the subprocesses run."""
    out = tmp_path_factory.mktemp("one") / "one.h5"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["extract", *_extract_args(dfew_root, tiny_clip_path), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return load_cache(out)


def _same(a, b) -> None:
    assert np.array_equal(a.features, b.features) and np.array_equal(a.view_frames, b.view_frames)
    assert list(a.clip_ids) == list(b.clip_ids) and np.array_equal(a.membership, b.membership)


def test_array_blocks_are_contiguous_and_cover_every_shard(capsys):
    for n_shards in (1, 4, 7, 10):
        for tasks in (1, 2, 3, 5):
            blocks = [
                shard_block(ExtractConfig("dfew", "r", array_task=i, array_tasks=tasks), n_shards) for i in range(tasks)
            ]
            assert [k for b in blocks for k in b] == list(range(n_shards))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert [list(shard_block(ExtractConfig("dfew", "r", array_task=i, array_tasks=3), 10)) for i in range(3)] == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8, 9],
    ]
    assert list(shard_block(ExtractConfig("dfew", "r", shard_range="2:5"), 4)) == [2, 3]
    with pytest.raises(ConfigError, match=r"^shard_range: expected A:B with 0 <= A < B, e.g. 0:40, found '5:2'$"):
        ExtractConfig("dfew", "r", shard_range="5:2")
    with pytest.raises(ConfigError, match=r"^array_task: expected 0 <= array_task < array_tasks=2, .* found 2$"):
        ExtractConfig("dfew", "r", array_task=2, array_tasks=2)
    with pytest.raises(ConfigError, match=r"^array_task: expected .*both given or neither.* found None$"):
        ExtractConfig("dfew", "r", array_tasks=2)
    assert main(["extract", "--dataset", "dfew", "--root", "r", "--array-task", "3", "--array-tasks", "2"]) == 2
    assert capsys.readouterr().err.startswith("error: array_task: expected 0 <= array_task < array_tasks=2, ")


@pytest.mark.integration
def test_two_array_tasks_as_two_processes_write_one_cache(dfew_root, tiny_clip_path, one_process, tmp_path, capsys):
    out = tmp_path / "array.h5"
    cmd = [sys.executable, "-m", "tgdfer", "extract", *_extract_args(dfew_root, tiny_clip_path), "--out", str(out)]
    procs = [
        subprocess.Popen([*cmd, "--array-task", str(i), "--array-tasks", "2"], env=_env(), stdout=subprocess.PIPE)
        for i in range(2)
    ]
    printed = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], printed
    assert "extract: shards 0..1 of 4: 6 clips" in printed[0] and "extract: shards 2..3 of 4: 6 clips" in printed[1]
    assert sum(f"cache {out} holds 12 clips" in text for text in printed) == 1  # exactly one wrote the entry
    _same(load_cache(out), one_process)

    out.unlink()  # the entry lost (or never written): a rerun of any task writes it from the committed shards
    assert main([*cmd[3:], "--array-task", "0", "--array-tasks", "2"]) == 0  # here: it only reads and writes
    rerun = capsys.readouterr().out
    assert "resuming: 2 committed shards kept, 0 to encode" in rerun
    assert "extract: shards 0..1 of 4: 0 clips, 0 frames, 0 failures encoded in" in rerun
    assert f"cache {out} holds 12 clips" in rerun
    _same(load_cache(out), one_process)


@pytest.mark.integration
def test_a_shard_range_leaves_the_entry_to_the_process_that_completes_it(
    dfew_root, tiny_clip_path, one_process, tmp_path, capsys
):
    out = tmp_path / "range.h5"
    cfg = ExtractConfig("dfew", str(dfew_root), out=str(out), clip=str(tiny_clip_path), views=1, workers=0)
    cfg = replace(cfg, shard_clips=3, batch_size=512)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = extract(replace(cfg, shard_range="0:3"))
        assert first["totals"] is None and first["shards"] == 3 and not out.exists()
        assert "extract: 1 of 4 shards not committed yet (e.g. [3])" in capsys.readouterr().out
        assert len(list(shard_dir(out).glob("shard-*.h5"))) == 3
        last = extract(replace(cfg, shard_range="3:100"))  # clipped to the shard count
        assert last["totals"]["clips"] == 12 and last["shards"] == 1
        again = extract(replace(cfg, shard_range="3:4"))  # the entry is there with this fingerprint: left alone
        assert again["totals"] is None and "was written by another process" in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    _same(load_cache(out), one_process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_torchrun_across_two_nodes_writes_the_same_cache(dfew_root, tiny_clip_path, one_process, tmp_path):
    """README's multi-node command, with both "nodes" on this machine: --nnodes 2, one rank each."""
    out, port = tmp_path / "nodes.h5", _free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    torchrun += ["--master-addr", "127.0.0.1", "--master-port", str(port)]
    cmd = ["-m", "tgdfer", "extract", *_extract_args(dfew_root, tiny_clip_path), "--out", str(out)]
    procs = [
        subprocess.Popen(
            [*torchrun, "--node-rank", str(node), *cmd],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for node in range(2)
    ]
    printed = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [t[-2000:] for t in printed]
    assert "on cpu x2; cache" in printed[0]
    _same(load_cache(out), one_process)
