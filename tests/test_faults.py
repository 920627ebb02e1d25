"""Faults injected one at a time, each as a user would meet it: crafted checkpoints, damaged shards and entries,
two writers on one output, orphaned sweep workers, a full disk, stale temporary files, bad frames, bad settings."""

import dataclasses
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tgdfer.cli import main
from tgdfer.config import ExtractConfig, RunConfig, SweepConfig
from tgdfer.data.video import FrameFolder
from tgdfer.errors import BusyError, CacheError, ClipError, RunError
from tgdfer.extract import extract
from tgdfer.features import store
from tgdfer.features.cache import load_cache, verify_cache
from tgdfer.features.store import RERUN, seal_entry, shard_dir, shard_path
from tgdfer.features.views import read_shard, write_shard
from tgdfer.locks import acquire, lock_path
from tgdfer.sweep.runner import run_table
from tgdfer.testing.synthetic import make_clip, make_dfew_tree, write_frame_folder
from tgdfer.train.engine import fit_fold
from tgdfer.train.runs import load_run

# Fault injection: SIGKILL, flipped bytes, lock holders, full disks, dying ranks: real processes and extractions.
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _extract_cfg(root, out, clip, **kw) -> ExtractConfig:
    base = dict(dataset="dfew", root=str(root), out=str(out), clip=str(clip), views=1, workers=0, shard_clips=3)
    return ExtractConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, dfew_root, tiny_clip_path) -> Path:
    """A real stage-1 cache of the 12 generated DFEW clips: 4 shards of 3 clips, 24 views."""
    out = tmp_path_factory.mktemp("extracted") / "dfew.h5"
    extract(_extract_cfg(dfew_root, out, tiny_clip_path))
    return out


def _copy(entry: Path, folder: Path) -> Path:
    """A private copy of a cache (the entry refers to its shards by relative path)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(entry, folder / entry.name)
    shutil.copytree(shard_dir(entry), shard_dir(folder / entry.name))
    return folder / entry.name


def _flip(path: Path, offset: int, mask: int = 0x40) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ mask]))


def _data_offset(path: Path, dataset: str) -> int:
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
    assert offset is not None, f"{dataset} of {path} is not stored contiguously"
    return offset


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _train_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--features",
        str(cache),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--set",
        "train.epochs=2",
        "--set",
        "train.batch_size=4",
        *extra,
    ]


# --- crafted checkpoints: loading a run never runs code ---------------------------------------------------------


class _Payload:
    """Unpickling this object runs code that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _craft(path: Path, marker: Path, kind: str) -> None:
    state = {"format": 2, "model": _Payload(marker), "config": "{}", "cache": "{}", "history": "[]", "epoch": 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "torch":
        torch.save(state, path)
        torch.load(path, weights_only=False)  # the control: loading it unsafely does run the payload ...
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))
        pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()  # ... so its absence below proves that no command ran it


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_crafted_checkpoint_runs_no_code_anywhere(kind, tmp_path, extracted, dfew_root, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    _craft(run / "checkpoint.pt", marker, kind)
    expected = f"error: {run / 'checkpoint.pt'}: expected a tgdfer checkpoint (format 2) written by `tgdfer train`"

    with pytest.raises(RunError, match="expected a tgdfer checkpoint"):
        load_run(run, device="cpu")
    clip_dir = str(dfew_root / "Clip" / "clip_224x224" / "00003")
    code, _, err = _cli(["predict", clip_dir, "--run", str(run), "--no-face-crop", "--device", "cpu"], capsys)
    assert code == 2 and _one_line_error(err).startswith(expected)
    png = tmp_path / "x.png"
    code, _, err = _cli(["explain", clip_dir, "--run", str(run), "--png", str(png), "--no-face-crop"], capsys)
    assert code == 2 and _one_line_error(err).startswith(expected) and not png.exists()
    code, _, err = _cli(_train_args(extracted, run, "--resume"), capsys)
    assert code == 2 and _one_line_error(err).startswith(expected)

    sweep = SweepConfig(table="3", features=str(extracted), folds=("1",), rows=("e",), out=str(tmp_path / "ab"))
    [planned] = run_table(sweep, dry_run=True, log=lambda _: None)["rows"][0]["run_dirs"]
    _craft(Path(planned) / "checkpoint.pt", marker, kind)
    code, _, _ = _cli(
        [
            "ablate",
            "--table",
            "3",
            "--features",
            str(extracted),
            "--folds",
            "1",
            "--rows",
            "e",
            "--out",
            str(tmp_path / "ab"),
        ],
        capsys,
    )
    assert code == 1 and "expected a tgdfer checkpoint" in (Path(planned) / "error.txt").read_text()
    assert not marker.exists()


# --- settings that once gave tracebacks or untrained models -----------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.batch_size=0", "error: train.batch_size: expected a batch of >= 1 clips, found 0"),
        ("model.n_ctx=-1", "error: model.n_ctx: expected"),
        ("model.tau=0", "error: model.tau: expected"),
        ("train.epochs=0", "error: train.epochs: expected"),
    ],
)
def test_bad_settings_exit_2_with_one_line(setting, message, tmp_path, extracted, capsys):
    code, _, err = _cli(_train_args(extracted, tmp_path / "run", "--set", setting), capsys)
    assert code == 2 and _one_line_error(err).startswith(message)
    assert not (tmp_path / "run").exists()


def test_an_unknown_device_is_a_config_error(tmp_path, extracted, capsys):
    argv = ["train", "--features", str(extracted), "--out", str(tmp_path / "run"), "--device", "tpu"]
    code, _, err = _cli(argv, capsys)
    assert code == 2 and _one_line_error(err) == "error: --device: expected auto, cpu, cuda or cuda:N, found 'tpu'"


# --- shard and entry integrity --------------------------------------------------------------------------------


def test_a_flipped_feature_byte_is_caught_by_load_info_train_and_verify(tmp_path, extracted, capsys):
    cache = _copy(extracted, tmp_path / "c")
    code, out, _ = _cli(["verify", str(cache)], capsys)
    size = sum(p.stat().st_size for p in shard_dir(cache).glob("shard-*.h5"))
    assert code == 0 and out.strip() == f"{cache}: 4 shards, 24 views, {size:,} bytes verified"
    shard = shard_path(cache, 2)
    _flip(shard, _data_offset(shard, "features") + 2 * 32 * 5 + 1)  # high byte of one fp16 value of view 0
    with pytest.raises(CacheError, match=rf"shard {shard} fails its check \(data hash to [0-9a-f]{{12}}, its digest"):
        load_cache(cache)
    for argv in (["info", str(cache)], _train_args(cache, tmp_path / "run"), ["verify", str(cache)]):
        code, _, err = _cli(argv, capsys)
        line = _one_line_error(err)
        assert code == 2 and str(shard) in line and line.endswith(RERUN), line
    assert "1 of 4 failing" in line


def test_a_flipped_view_clip_index_in_the_entry_is_caught(tmp_path, extracted):
    cache = _copy(extracted, tmp_path / "c")
    _flip(cache, _data_offset(cache, "views/clip") + 4 * 7, 0x01)  # view 7 now points at another clip
    with h5py.File(cache) as f, h5py.File(extracted) as g:
        assert f["views/clip"][7] != g["views/clip"][7]
    with pytest.raises(CacheError, match=r"expected entry digest [0-9a-f]{12}, found [0-9a-f]{12}: the entry file"):
        load_cache(cache)
    with pytest.raises(CacheError, match="expected entry digest"):
        verify_cache(cache)


def test_a_truncated_shard_is_caught_by_its_size(tmp_path, extracted):
    cache = _copy(extracted, tmp_path / "c")
    shard = shard_path(cache, 1)
    size = shard.stat().st_size
    with open(shard, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(CacheError, match=rf"expected shard {shard} of {size} bytes, found {size - 100} bytes"):
        load_cache(cache)


def test_shard_data_are_hashed_once_per_process(tmp_path, extracted, monkeypatch):
    cache = _copy(extracted, tmp_path / "c")
    calls = []
    real = store.shard_data_problem
    monkeypatch.setattr(store, "shard_data_problem", lambda *a: calls.append(a[0]) or real(*a))
    load_cache(cache)
    load_cache(cache)
    assert len(calls) == 4  # the second open checks sizes and header digests only
    shard = shard_path(cache, 3)
    _flip(shard, _data_offset(shard, "features") + 11)  # a rewritten file (new mtime) is hashed again
    with pytest.raises(CacheError, match="fails its check"):
        load_cache(cache)


def test_an_extract_rerun_reencodes_a_damaged_shard(tmp_path, extracted, dfew_root, tiny_clip_path, capsys):
    cache = _copy(extracted, tmp_path / "c")
    shard = shard_path(cache, 2)
    _flip(shard, _data_offset(shard, "features") + 101)
    extract(_extract_cfg(dfew_root, cache, tiny_clip_path))
    assert f"{shard} fails its check (data hash to" in capsys.readouterr().out
    a, b = load_cache(cache), load_cache(extracted)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.view_clip, b.view_clip)


def _rewrite_shard(entry: Path, k: int, change) -> None:
    """Re-commit shard k with ``change(features)`` applied and update the entry's records to match (a cache that
    was written so, not damaged)."""
    path = shard_path(entry, k)
    with h5py.File(path) as f:
        fingerprint, settings = f.attrs["fingerprint"], f.attrs["settings"]
    data = read_shard(path)
    features = data.features.copy()
    change(features)
    digest = write_shard(path, dataclasses.replace(data, features=features), str(fingerprint), json.loads(settings))
    with h5py.File(entry, "r+") as f:
        f["shards/digest"][k] = digest
        f["shards/size"][k] = path.stat().st_size
        seal_entry(f)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_features_are_reported_at_their_view(value, tmp_path, tiny_clip_path, tiny_clip, capsys):
    from tgdfer.testing.synthetic import write_feature_cache

    cache = tmp_path / "gen.h5"
    write_feature_cache(cache, str(tiny_clip_path), tiny_clip.sha256, n_clips=60, views=2, shard_clips=20)

    def poison(features):
        features[100 - 60, 3, 5] = float(value)  # view 100 is row 40 of shard 1 (60 views per shard)

    _rewrite_shard(cache, 1, poison)
    word = "NaN" if value == "nan" else "Inf"
    expected = f"expected finite features, found {word} at view 100 (clip 00033, shard {shard_path(cache, 1)})"
    with pytest.raises(CacheError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_cache(cache)
    code, _, err = _cli(_train_args(cache, tmp_path / "run"), capsys)
    line = _one_line_error(err)
    assert code == 2 and expected in line and "optim.lr" not in line


# --- truncated frames ------------------------------------------------------------------------------------------


def test_a_truncated_jpeg_frame_is_a_clip_failure_not_a_grey_frame(tmp_path, tiny_clip_path):
    frames, _ = make_clip("happy", 8, 96, np.random.default_rng(0))
    folder = write_frame_folder(tmp_path / "clip", frames)
    victim = folder / "5.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 2 // 3])  # OpenCV decodes this, the bottom third grey
    with pytest.raises(ClipError, match=rf"truncated JPEG \(no end-of-image marker\): {victim}"):
        FrameFolder(folder).read(range(8))
    assert len(FrameFolder(folder).read([0, 1, 2, 3, 5, 6, 7])) == 7  # the intact frames still read

    root = make_dfew_tree(tmp_path / "d", 6, frames=(10, 12), size=64, seed=1)
    bad = sorted((root / "Clip" / "clip_224x224" / "00002").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:-400])
    summary = extract(_extract_cfg(root, tmp_path / "c.h5", tiny_clip_path))
    [(clip_id, _, reason)] = load_cache(tmp_path / "c.h5").failures
    assert summary["totals"]["clips"] == 5 and clip_id == "00002" and "truncated JPEG" in reason


# --- locks and stale temporaries ------------------------------------------------------------------------------


def _holder(lock: Path) -> subprocess.Popen:
    """A separate process that takes ``lock`` and keeps it until killed."""
    code = "import sys; from tgdfer.locks import acquire; acquire(sys.argv[1], 'x'); print('held', flush=True); input()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _sleeper() -> subprocess.Popen:
    """Another live process, whose pid names a concurrent writer's temporary file."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_second_trainer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, extracted, capsys):
    run = tmp_path / "run"
    holder = _holder(run / ".lock")
    try:
        with pytest.raises(BusyError) as info:
            fit_fold(RunConfig(features=str(extracted), out=str(run), device="cpu"))
        assert str(info.value) == (
            f"run directory {run}: expected no other tgdfer process writing it, found process {holder.pid} holding "
            f"{run / '.lock'}; wait for it to finish or stop it, or choose another output"
        )
        code, _, err = _cli(_train_args(extracted, run), capsys)
        assert code == 2 and f"found process {holder.pid} holding" in _one_line_error(err)
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".lock").read_text().strip() == str(holder.pid)  # left behind by the killed holder
    dead, live = _dead_pid(), _sleeper()
    (run / f"log.csv.tmp-{dead}").write_text("stale")
    (run / f"checkpoint.pt.tmp-{dead}").write_text("stale")
    (run / f"log.csv.tmp-{live.pid}").write_text("a live writer's")
    try:
        code, _, _ = _cli(_train_args(extracted, run), capsys)
    finally:
        live.kill()
        live.wait()
    assert code == 0 and (run / "metrics.json").exists() and not (run / ".lock").exists()
    assert sorted(p.name for p in run.glob("*.tmp-*")) == [f"log.csv.tmp-{live.pid}"]


def test_a_second_extract_is_refused_and_leaves_the_first_ones_files(tmp_path, dfew_root, tiny_clip_path):
    out = tmp_path / "c.h5"
    holder = _holder(lock_path(shard_path(out, 1)))
    live_tmp = shard_dir(out) / f"shard-00001.h5.tmp-{holder.pid}"
    live_tmp.write_bytes(b"in flight")
    try:
        with pytest.raises(
            BusyError,
            match=rf"^{out}: shard 1: expected no other tgdfer process writing it, found process {holder.pid}",
        ):
            extract(_extract_cfg(dfew_root, out, tiny_clip_path))
        assert live_tmp.read_bytes() == b"in flight" and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    live_tmp.unlink()
    dead = _dead_pid()
    stale = [out.with_name(f"c.h5.tmp-{dead}"), out.with_name(f"c.failures.csv.tmp-{dead}")]
    stale.append(shard_dir(out) / f"shard-00003.h5.tmp-{dead}")
    for p in stale:
        p.write_bytes(b"stale")
    extract(_extract_cfg(dfew_root, out, tiny_clip_path))
    assert not any(p.exists() for p in stale) and not list(tmp_path.rglob("*.lock"))
    assert load_cache(out).features.shape[0] == 24


def test_a_lock_names_its_holder_and_is_free_after_release(tmp_path):
    lock = tmp_path / "x.lock"
    fd = acquire(lock, "thing")
    assert lock.read_text() == f"{os.getpid()}\n"
    with pytest.raises(
        BusyError, match=rf"^thing: expected no other tgdfer process writing it, found process {os.getpid()}"
    ):
        acquire(lock, "thing")
    from tgdfer.locks import release

    release(lock, fd)
    assert not lock.exists()
    release(lock, acquire(lock, "thing"))


# --- orphaned sweep workers -----------------------------------------------------------------------------------

_SWEEP_PARENT = """
import os, sys, time
from tgdfer.sweep.pool import worker_pool
if __name__ == "__main__":
    pool = worker_pool(1, "cpu", 1)
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 300)  # a training that would go on for minutes
    time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_sweep_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_SWEEP_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], env=_env(), stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(0.5)
    assert not _gone(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and not _gone(worker):
        time.sleep(0.05)
    alive = not _gone(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the pool worker outlived its killed parent"


# --- disk full ------------------------------------------------------------------------------------------------


def _fill_disk_under(monkeypatch, folder: Path, after_bytes: int) -> list[int]:
    """Make os.write fail with ENOSPC for files under ``folder`` once ``after_bytes`` went there; returns a
    counter of bytes written under it."""
    real = os.write
    written = [0]
    folder = str(folder.resolve())

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(folder):
            if written[0] + len(data) > after_bytes:
                n = max(0, after_bytes - written[0])
                if n:
                    written[0] += real(fd, bytes(data[:n]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written[0] += len(data)
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return written


def test_disk_full_during_extraction_is_one_line_and_a_rerun_completes(
    tmp_path, dfew_root, tiny_clip_path, extracted, monkeypatch, capsys
):
    out = tmp_path / "full" / "dfew.h5"
    one_shard = shard_path(extracted, 0).stat().st_size
    _fill_disk_under(monkeypatch, tmp_path / "full", int(2.5 * one_shard))
    argv = ["extract", "--dataset", "dfew", "--root", str(dfew_root), "--out", str(out), "--clip", str(tiny_clip_path)]
    argv += ["--views", "1", "--workers", "0", "--shard-clips", "3"]
    code, _, err = _cli(argv, capsys)
    assert code == 2
    assert _one_line_error(err) == (
        f"error: no space left on the device holding {shard_path(out, 2)}; 2 shards are committed in "
        f"{shard_dir(out)}, free space and rerun the same command (it keeps them)"
    )
    assert sorted(p.name for p in (tmp_path / "full").rglob("*") if p.is_file()) == ["shard-00000.h5", "shard-00001.h5"]
    monkeypatch.undo()
    assert _cli(argv, capsys)[0] == 0
    assert np.array_equal(load_cache(out).features, load_cache(extracted).features)


def test_disk_full_during_training_is_one_line_and_resume_completes(tmp_path, extracted, monkeypatch, capsys):
    run = tmp_path / "run"
    calls = []
    from tgdfer.train import runs

    real = runs.save_checkpoint

    def save_then_fill(*args, **kw):  # the disk fills up after the first checkpoint
        real(*args, **kw)
        calls.append(1)
        if len(calls) == 1:
            _fill_disk_under(monkeypatch, run, 0)

    monkeypatch.setattr("tgdfer.train.engine.save_checkpoint", save_then_fill)
    code, _, err = _cli(_train_args(extracted, run, "--set", "train.epochs=3"), capsys)
    assert code == 2
    assert _one_line_error(err) == (
        f"error: no space left on the device holding {run / 'log.csv'}; 1 epochs are checkpointed in "
        f"{run / 'checkpoint.pt'}, free space and rerun with --resume"
    )
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "log.csv"]
    monkeypatch.undo()
    code, out, _ = _cli(_train_args(extracted, run, "--set", "train.epochs=3", "--resume"), capsys)
    assert code == 0 and "resumed" in out and (run / "metrics.json").exists()


def test_a_real_full_disk_during_extraction(tmp_path, dfew_root, tiny_clip_path, extracted, capsys):
    """The same on a small tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    page = os.sysconf("SC_PAGE_SIZE")
    shard_pages = -(-shard_path(extracted, 0).stat().st_size // page)
    size = (2 * shard_pages + shard_pages // 2 + 6) * page  # two shards, half a third, the lock files
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = mnt / "dfew.h5"
        argv = ["extract", "--dataset", "dfew", "--root", str(dfew_root), "--out", str(out)]
        argv += ["--clip", str(tiny_clip_path), "--views", "1", "--workers", "0", "--shard-clips", "3"]
        code, _, err = _cli(argv, capsys)
        line = _one_line_error(err)
        committed = sorted(p.name for p in shard_dir(out).iterdir())
        assert (
            code == 2 and 1 <= len(committed) < 4 and committed == [f"shard-{k:05d}.h5" for k in range(len(committed))]
        )
        assert line == (
            f"error: no space left on the device holding {shard_path(out, len(committed))}; {len(committed)} shards "
            f"are committed in {shard_dir(out)}, free space and rerun the same command (it keeps them)"
        )
        subprocess.run(["mount", "-o", f"remount,size={size * 4}", str(mnt)], check=True)
        assert _cli(argv, capsys)[0] == 0
        assert np.array_equal(load_cache(out).features, load_cache(extracted).features)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_every_torchrun_rank_stops_when_one_finds_its_shard_taken(tmp_path, dfew_root, tiny_clip_path):
    out = tmp_path / "c.h5"
    holder = _holder(lock_path(shard_path(out, 1)))  # rank 1 of 2 plans shards 1 and 3
    try:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        argv = ["extract", "--dataset", "dfew", "--root", str(dfew_root), "--out", str(out)]
        argv += ["--clip", str(tiny_clip_path), "--views", "1", "--workers", "0", "--shard-clips", "3"]
        run = subprocess.run(
            [*torchrun, "-m", "tgdfer", *argv],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    expected = f"error: {out}: shard 1: expected no other tgdfer process writing it, found process {holder.pid}"
    assert run.returncode != 0 and run.stderr.count(expected) == 2, run.stderr[-3000:]
    assert not out.exists() and not list(shard_dir(out).glob("shard-*.h5"))
