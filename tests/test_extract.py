"""Stage 1 end to end with a tiny random CLIP: layout, correctness, failures, resume, SIGKILL, two ranks."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tgdfer.config import ExtractConfig
from tgdfer.data.datasets import TEST, AnnotationError
from tgdfer.data.preprocess import clip_view, normalize
from tgdfer.data.sampling import TEST_VIEW, centre_indices
from tgdfer.data.video import list_frames
from tgdfer.extract import ExtractError, extract
from tgdfer.features.cache import load_cache
from tgdfer.features.store import shard_dir
from tgdfer.testing.synthetic import make_clip, make_dfew_tree, write_frame_folder


def _cfg(root, out, clip, **kw):
    base = dict(
        dataset="dfew",
        root=str(root),
        out=str(out),
        clip=str(clip),
        views=2,
        workers=0,
        batch_size=64,
        shard_clips=5,
    )
    return ExtractConfig(**{**base, **kw})


def test_extract_writes_the_cache_contract(dfew_root, tiny_clip_path, tiny_clip, tmp_path):
    summary = extract(_cfg(dfew_root, tmp_path / "dfew.h5", tiny_clip_path))
    cache = load_cache(tmp_path / "dfew.h5")
    assert summary["totals"]["clips"] == 12 and summary["totals"]["failures"] == 0
    assert cache.features.shape == (36, 16, tiny_clip.dim)  # 12 clips x (1 test + 2 train views), once each
    assert len(set(cache.clip_ids)) == 12  # the five folds share one pool
    assert (cache.membership == TEST).sum(0).tolist() == [3, 3, 2, 2, 2]
    for key in (
        "clip_model",
        "clip_sha256",
        "frames",
        "sampling",
        "preprocess",
        "augment",
        "train_views",
        "dataset",
        "tgdfer_version",
        "seed",
        "fingerprint",
    ):
        assert key in cache.attrs, key
    assert cache.attrs["clip_sha256"] == tiny_clip.sha256 and cache.attrs["frames"] == 16

    # The test view of clip 00004 equals encoding its segment-centre frames by hand.
    row = list(cache.clip_ids).index("00004")
    view = int(np.flatnonzero((cache.view_clip == row) & (cache.view_kind == TEST_VIEW))[0])
    files = list_frames(Path(cache.clip_paths[row]))
    idx = centre_indices(len(files), 16)
    assert cache.view_frames[view].tolist() == idx.tolist() and cache.num_frames[row] == len(files)
    frames = np.stack([clip_view(cv2.cvtColor(cv2.imread(str(files[i])), cv2.COLOR_BGR2RGB), 224) for i in idx])
    expected = tiny_clip.encode_images(normalize(torch.from_numpy(frames), torch.float32)).half().float()
    assert torch.allclose(torch.from_numpy(cache.features[view]).float(), expected, atol=2e-3)


def test_bad_clips_are_skipped_and_recorded(tmp_path, tiny_clip_path):
    root = make_dfew_tree(tmp_path / "d", 6, frames=(10, 14), size=64)
    clips = root / "Clip" / "clip_224x224"
    for f in (clips / "00002").iterdir():
        f.unlink()  # no frames
    (clips / "00004" / "3.jpg").write_bytes(b"broken")  # undecodable frame
    for f in (clips / "00005").iterdir():
        f.unlink()
    (clips / "00005").rmdir()  # missing folder
    out = tmp_path / "c.h5"
    extract(_cfg(root, out, tiny_clip_path))
    cache = load_cache(out)
    assert sorted(cache.clip_ids) == ["00001", "00003", "00006"]
    reasons = {i: r for i, _, r in cache.failures}
    assert set(reasons) == {"00002", "00004", "00005"}
    assert "no image frames" in reasons["00002"] and "could not be decoded" in reasons["00004"]
    with open(tmp_path / "c.failures.csv") as fh:
        assert {r["id"] for r in csv.DictReader(fh)} == {"00002", "00004", "00005"}
    assert not np.isnan(cache.features).any() and np.abs(cache.features).sum(axis=(1, 2)).min() > 0
    with pytest.raises(ExtractError, match="--strict"):
        extract(_cfg(root, tmp_path / "strict.h5", tiny_clip_path, strict=True))


def test_bad_annotations_stop_before_any_encoding(tmp_path, tiny_clip_path):
    root = make_dfew_tree(tmp_path / "d", 3, frames=(10, 12), size=32)
    csv_path = root / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_2.csv"
    csv_path.write_text(csv_path.read_text() + "3,9\n")
    with pytest.raises(AnnotationError, match=r"set_2.csv:\d+: .*found '9'"):
        extract(_cfg(root, tmp_path / "c.h5", tiny_clip_path))
    assert not shard_dir(tmp_path / "c.h5").exists()


@pytest.mark.integration
def test_rerun_skips_committed_shards_and_refuses_other_settings(dfew_root, tiny_clip_path, tmp_path):
    out = tmp_path / "c.h5"
    extract(_cfg(dfew_root, out, tiny_clip_path))
    stamps = {p.name: p.stat().st_mtime_ns for p in shard_dir(out).iterdir()}
    second = extract(_cfg(dfew_root, out, tiny_clip_path))
    assert second["clips"] == 0 and second["shards"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in shard_dir(out).iterdir()} == stamps
    with pytest.raises(ExtractError, match="--overwrite"):
        extract(_cfg(dfew_root, out, tiny_clip_path, views=3))
    assert extract(_cfg(dfew_root, out, tiny_clip_path, views=3, overwrite=True))["clips"] == 12


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tgdfer", "extract", *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _in_process(args: list[str]) -> None:
    """Run the extract command here with one thread, as the subprocesses run (threads change float sums)."""
    from tgdfer.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["extract", *args]) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.mark.integration
def test_sigkill_mid_run_then_rerun_gives_identical_features(tmp_path, tiny_clip_path):
    root = make_dfew_tree(tmp_path / "d", 24, frames=(30, 40), size=160, seed=3)
    args = [
        "--dataset",
        "dfew",
        "--root",
        str(root),
        "--clip",
        str(tiny_clip_path),
        "--views",
        "2",
        "--workers",
        "0",
        "--shard-clips",
        "2",
        "--batch-size",
        "32",
    ]
    killed = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        _cli(*args, "--out", str(killed)), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shard_dir(killed).glob("shard-*.h5"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = len(list(shard_dir(killed).glob("shard-*.h5")))
    assert 3 <= committed < 12 and not killed.exists(), f"not killed mid-run: {committed} of 12 shards"
    subprocess.run(_cli(*args, "--out", str(killed)), env=_env(), check=True, capture_output=True)
    clean = tmp_path / "clean.h5"
    _in_process([*args, "--out", str(clean)])
    a, b = load_cache(killed), load_cache(clean)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.view_frames, b.view_frames)
    assert list(a.clip_ids) == list(b.clip_ids)


@pytest.mark.integration
def test_two_ranks_write_the_same_features_as_one(dfew_root, tiny_clip_path, tmp_path):
    args = [
        "--dataset",
        "dfew",
        "--root",
        str(dfew_root),
        "--clip",
        str(tiny_clip_path),
        "--views",
        "1",
        "--workers",
        "0",
        "--shard-clips",
        "3",
    ]
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    _in_process([*args, "--out", str(one)])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "tgdfer",
            "extract",
            *args,
            "--out",
            str(two),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    a, b = load_cache(one), load_cache(two)
    assert np.array_equal(a.features, b.features) and list(a.clip_ids) == list(b.clip_ids)
    assert np.array_equal(a.membership, b.membership)


def test_csv_dataset_with_videos_and_folders(tmp_path, tiny_clip_path):
    from tgdfer.testing.synthetic import make_csv_dataset

    csv_path = make_csv_dataset(
        tmp_path / "own", per_class=2, classes=("happiness", "sadness"), frames=(12, 20), size=64, videos=True
    )
    frames, _ = make_clip("happiness", 9, 64, np.random.default_rng(0))
    write_frame_folder(tmp_path / "own" / "extra", frames)
    with open(csv_path, "a") as fh:
        fh.write("extra,happiness,train\n")
    extract(
        ExtractConfig(
            dataset="csv",
            root=str(tmp_path / "own"),
            annotations=str(csv_path),
            out=str(tmp_path / "own.h5"),
            clip=str(tiny_clip_path),
            views=1,
            workers=0,
        )
    )
    cache = load_cache(tmp_path / "own.h5")
    assert len(cache.clip_ids) == 5 and cache.failures == ()
    assert cache.split_names == ("default",) and (cache.membership[:, 0] == TEST).sum() == 2


def test_a_variable_frame_rate_video_extracts_as_its_frames(tmp_path, tiny_clip_path):
    """A VFR video (gaps of 20 to 200 ms, written with PyAV) gives the features of a folder of its decoded frames:
    every frame is counted and sampled by its place in presentation order."""
    import av

    from tgdfer.testing.synthetic import write_video_pts

    rng = np.random.default_rng(6)
    frames, _ = make_clip("sadness", 30, 64, rng)
    root = tmp_path / "vfr"
    write_video_pts(root / "v.mkv", frames, np.cumsum(np.r_[0, rng.integers(20, 201, 29)]))
    with av.open(str(root / "v.mkv")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for k, frame in enumerate(decoded):  # PNG: lossless, the same pixels
        (root / "f").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "f" / f"{k}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (root / "a.csv").write_text("path,label\nv.mkv,sadness\nf,sadness\n")
    cfg = ExtractConfig(
        dataset="csv",
        root=str(root),
        annotations=str(root / "a.csv"),
        out=str(tmp_path / "c.h5"),
        clip=str(tiny_clip_path),
    )
    extract(_replace(cfg, views=0, workers=0))
    cache = load_cache(tmp_path / "c.h5")
    assert cache.failures == () and list(cache.num_frames) == [30, 30]
    features = cache.features[:]  # (2 clips, T, D): the video and its frame folder
    assert np.array_equal(features[0], features[1])


def _replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)
