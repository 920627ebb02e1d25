"""The per-frame cache: layout round trip, extract --frames all, per-epoch TSN samples, training and resume."""

import json

import h5py
import numpy as np
import pytest
import torch

from tgdfer.apps.info import info
from tgdfer.config import ExtractConfig, RunConfig, apply_overrides
from tgdfer.data.datasets import TEST, TRAIN, Annotations, ClipRecord
from tgdfer.data.sampling import centre_indices, every_frame_indices, segment_bounds, tsn_positions
from tgdfer.errors import CacheError, TrainingError
from tgdfer.extract import extract
from tgdfer.features.cache import load_cache
from tgdfer.features.frames import FrameCache, FrameShardData, write_frame_entry, write_frame_shard
from tgdfer.features.store import shard_dir, shard_path
from tgdfer.testing.synthetic import write_frame_feature_cache
from tgdfer.train.engine import epoch_generator, fit_fold
from tgdfer.train.splits import fold_data, train_feature_mean

CPU = torch.device("cpu")


def _shard(index, rows, counts, rng, passes=2, dim=8):
    n = int(sum(counts))
    return FrameShardData(
        index=index,
        features=rng.normal(size=(n, passes, dim)).astype(np.float16),
        counts=np.array(counts, np.int32),
        source_frames=np.concatenate([np.arange(c) * 2 for c in counts]).astype(np.int32),
        timestamps_ms=np.where(np.arange(n) % 2, np.nan, np.arange(n) * 40.0),
        pass_kind=np.array([0] + [1] * (passes - 1), np.int8),
        clip_rows=np.array(rows, np.int32),
        num_frames=np.array(counts, np.int32) * 2,
        failed_rows=np.empty(0, np.int32),
        failed_reasons=(),
    )


def test_layout_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    clips = tuple(ClipRecord(f"c{i}", i % 3, f"/data/c{i}") for i in range(5))
    membership = np.array([[1], [2], [1], [1], [2]], np.int8)
    ann = Annotations("csv", ("a", "b", "c"), ("default",), clips, membership, ())
    entry = tmp_path / "f.h5"
    shards = [_shard(0, [0, 1], [3, 200], rng), _shard(1, [2, 3, 4], [1, 17, 40], rng)]
    files = [shard_path(entry, s.index) for s in shards]
    for s, f in zip(shards, files, strict=True):
        write_frame_shard(f, s, "fp", {})
    totals = write_frame_entry(entry, ann, files, {"clip_model": "m", "clip_sha256": "x"})
    assert totals["clips"] == 5 and totals["frames"] == 261 and totals["passes"] == 2

    cache = load_cache(entry)
    assert isinstance(cache, FrameCache) and cache.attrs["layout"] == "frames" and cache.frames == 16
    assert cache.offsets.tolist() == [0, 3, 203, 204, 221, 261] and cache.passes == 2 and cache.dim == 8
    assert np.array_equal(cache.features, np.concatenate([s.features for s in shards]))
    assert np.array_equal(cache.clip_frames(1, 1), shards[0].features[3:203, 1])
    assert cache.source_frames.tolist()[:5] == [0, 2, 4, 0, 2] and cache.num_frames.tolist() == [6, 400, 2, 34, 80]
    times = np.concatenate([s.timestamps_ms for s in shards])
    assert np.array_equal(np.isnan(cache.timestamps_ms), np.isnan(times))
    assert np.array_equal(cache.timestamps_ms[~np.isnan(times)], times[~np.isnan(times)])
    assert cache.pass_kind.tolist() == [0, 1] and list(cache.clip_ids) == [c.id for c in clips]
    assert cache.labels.tolist() == [0, 1, 2, 0, 1] and cache.split_names == ("default",)
    assert cache.clips_in(0, TEST).tolist() == [1, 4]
    with h5py.File(entry) as f:
        assert f["features"].is_virtual and f["features"].shape == (261, 2, 8)
    with h5py.File(files[0]) as f:
        assert f["features"].chunks == (128, 2, 8)  # a clip's slice is one or two chunk reads
    files[1].unlink()
    with pytest.raises(CacheError, match=r"shard-00001\.h5 is missing"):
        load_cache(entry)


def test_tsn_positions_follow_the_sampling_rules():
    counts = torch.arange(1, 80)
    centres = tsn_positions(counts, 16)
    for n in range(1, 80):
        assert centres[n - 1].tolist() == centre_indices(n, 16).tolist()
    u = torch.rand((len(counts), 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    drawn = tsn_positions(counts, 16, u)
    for n in range(16, 80):
        starts, ends = segment_bounds(n, 16)
        assert ((drawn[n - 1].numpy() >= starts) & (drawn[n - 1].numpy() < ends)).all()
    assert drawn[4].tolist() == [0, 1, 2, 3, 4] + [4] * 11  # 5 frames: every frame once, then the last
    assert every_frame_indices(10, 0).tolist() == list(range(10)) and every_frame_indices(10, 20).size == 10
    assert every_frame_indices(100, 4).tolist() == [12, 37, 62, 87]


def _dfew_cfg(root, out, clip, **kw):
    base = dict(dataset="dfew", root=str(root), out=str(out), clip=str(clip), workers=0, batch_size=64, shard_clips=5)
    return ExtractConfig(**{**base, **kw})


@pytest.mark.integration
def test_extract_every_frame_matches_the_view_cache(dfew_root, tiny_clip_path, tmp_path):
    views = _dfew_cfg(dfew_root, tmp_path / "v.h5", tiny_clip_path, views=1)
    extract(views)
    summary = extract(_dfew_cfg(dfew_root, tmp_path / "f.h5", tiny_clip_path, frames_mode="all", passes=1))
    view_cache, frame_cache = load_cache(tmp_path / "v.h5"), load_cache(tmp_path / "f.h5")
    assert isinstance(frame_cache, FrameCache) and frame_cache.passes == 2
    assert summary["totals"]["frames"] == int(view_cache.num_frames.sum())  # every frame once per pass
    assert frame_cache.counts.tolist() == view_cache.num_frames.tolist()
    assert frame_cache.source_frames.tolist() == [t for n in view_cache.num_frames for t in range(n)]
    assert np.isnan(frame_cache.timestamps_ms).all()  # frame folders carry no time
    for fold in ("1", "4"):  # the test sample holds the frames of the view cache's test view
        v, f = fold_data(view_cache, fold, CPU), fold_data(frame_cache, fold, CPU)
        assert v.test_clips.tolist() == f.test_clips.tolist()
        a, b = v.features[v.test_rows].float(), f.features[f.test_rows].float()  # (m, T, D) each
        assert a.shape == b.shape and torch.allclose(a, b, atol=2e-3, rtol=1e-3), (a - b).abs().max()
        assert not torch.allclose(a, f.features[f.test_rows + 1].float(), atol=0.05)  # pass 1 is augmented
    text = info(str(tmp_path / "f.h5"))
    counts = np.sort(view_cache.num_frames)
    assert f"frames per clip min {counts[0]} / median {int(np.median(counts))} / max {counts[-1]}" in text
    assert "per-frame cache: 12 clips" in text and "2 passes (1 plain, 1 augmented)" in text

    again = extract(_dfew_cfg(dfew_root, tmp_path / "f.h5", tiny_clip_path, frames_mode="all", passes=1))
    assert again["shards"] == 0  # resumed: every shard kept
    capped = extract(_dfew_cfg(dfew_root, tmp_path / "m.h5", tiny_clip_path, frames_mode="all", max_frames=12))
    cache = load_cache(tmp_path / "m.h5")
    assert capped["totals"]["frames"] == int(np.minimum(view_cache.num_frames, 12).sum()) and cache.passes == 1
    long = int(np.argmax(view_cache.num_frames))
    n = int(view_cache.num_frames[long])
    got = cache.source_frames[cache.offsets[long] : cache.offsets[long + 1]]
    assert got.tolist() == every_frame_indices(n, 12).tolist()


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory, tiny_clip_path, tiny_clip):
    path = tmp_path_factory.mktemp("frames") / "gen.h5"
    feats = write_frame_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=150, passes=3, seed=0)
    return path, feats


def test_each_epoch_draws_a_fresh_sample_that_repeats_for_its_seed(frame_cache):
    path, feats = frame_cache
    cache = load_cache(path)
    data = fold_data(cache, "2", CPU)
    assert data.features.dtype == torch.float16 and data.features.shape == (len(cache.features) * 3, 32)
    assert data.train_choices.shape == (120, 2) and set(data.train_choices.unique().tolist()) == {1, 2}

    def draw(seed, epoch):
        g = epoch_generator(seed, epoch)
        choice = torch.randint(0, 2, (120,), generator=g)
        torch.randperm(120, generator=g)
        return data.epoch_rows(choice, g)  # (n, T) frame rows

    first = draw(0, 3)
    assert first.shape == (120, 16) and torch.equal(first, draw(0, 3))
    assert not torch.equal(first, draw(0, 4)) and not torch.equal(first, draw(1, 3))
    assert (first % 3 != 0).all()  # train samples come from the augmented passes only
    frames = first // 3
    train = cache.clips_in(cache.split_index("2"), TRAIN)
    for row, c in enumerate(train):
        start, n = cache.offsets[c], int(cache.counts[c])
        pos = frames[row].numpy() - start
        if n >= 16:
            starts, ends = segment_bounds(n, 16)
            assert ((pos >= starts) & (pos < ends)).all()
        else:
            assert pos.tolist() == np.minimum(np.arange(16), n - 1).tolist()
    batch = data.features[first[:8]]  # the one indexed read of a batch
    c = int(train[0])
    expected = feats[c][(first[0] // 3 - cache.offsets[c]).numpy(), (first[0] % 3).numpy()]
    assert batch.shape == (8, 16, 32) and torch.allclose(batch[0].float(), torch.from_numpy(expected), atol=1e-2)
    seen = {tuple(draw(0, e)[row].tolist()) for e in range(6) for row in [0]}
    assert len(seen) == 6 or cache.counts[train[0]] < 32  # a long clip gives a new sample each epoch
    mean = train_feature_mean(data)
    every = np.concatenate([feats[c][:, 1:] for c in train]).reshape(-1, 32)
    assert torch.allclose(mean, torch.from_numpy(every.mean(0)), atol=1e-3)


FAST = ["train.epochs=4", "train.batch_size=16", "optim.milestones=2,3"]


def _run(cache, out, *overrides):
    return apply_overrides(RunConfig(features=str(cache), out=str(out), device="cpu"), [*FAST, *overrides])


@pytest.mark.integration
def test_resumed_run_on_a_frame_cache_equals_an_uninterrupted_one(frame_cache, tmp_path):
    path, _ = frame_cache
    whole = fit_fold(_run(path, tmp_path / "whole"), log=lambda s: None)
    assert whole["train_clips"] == 120 and whole["test_clips"] == 30

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_fold(_run(path, tmp_path / "cut"), on_epoch_end=interrupt, log=lambda s: None)
    with pytest.raises(TrainingError, match="--resume"):
        fit_fold(_run(path, tmp_path / "cut"), log=lambda s: None)
    resumed = fit_fold(_run(path, tmp_path / "cut"), resume=True, log=lambda s: None)
    assert resumed["war"] == whole["war"] and resumed["confusion"] == whole["confusion"]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frame_cache_info_lists_frames_passes_and_bytes(frame_cache):
    path, feats = frame_cache
    text = info(str(path))
    counts = np.sort([len(f) for f in feats])
    assert text.splitlines()[0].startswith(f"{path}: per-frame cache: 150 clips, {counts.sum()} frames x 3 passes")
    assert f"frames per clip min {counts[0]} / median {int(np.median(counts))} / max {counts[-1]}" in text
    on_disk = sum(p.stat().st_size for p in shard_dir(path).iterdir()) + path.stat().st_size
    assert f"{on_disk:,} bytes on disk" in text


@pytest.mark.integration
def test_cli_extract_frames_all_then_train_every_fold(dfew_root, tiny_clip_path, tmp_path, capsys):
    from tgdfer.cli import main

    out = tmp_path / "f.h5"
    base = ["extract", "--dataset", "dfew", "--root", str(dfew_root), "--clip", str(tiny_clip_path), "--workers", "0"]
    assert main([*base, "--out", str(out), "--frames", "all", "--max-frames", "20"]) == 0
    cache = load_cache(out)
    assert cache.passes == 1 and cache.counts.max() == 20 and cache.attrs["max_frames"] == 20  # --views: 0
    assert main([*base, "--out", str(tmp_path / "x.h5"), "--frames", "lots"]) == 2
    assert capsys.readouterr().err == "error: --frames: expected a number of frames or 'all', found 'lots'\n"
    assert main([*base, "--out", str(tmp_path / "x.h5"), "--max-frames", "8"]) == 2
    assert capsys.readouterr().err == (
        "error: max_frames and passes apply to a per-frame cache only: expected --frames all with them, found "
        "frames_mode views with max_frames=8, passes=0\n"
    )
    assert not (tmp_path / "x.h5").exists()
    sets = [a for s in ("train.epochs=1", "train.batch_size=8") for a in ("--set", s)]
    run = tmp_path / "runs"
    assert main(["train", "--features", str(out), "--fold", "all", "--out", str(run), "--device", "cpu", *sets]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["folds"] == ["1", "2", "3", "4", "5"] and len(list(run.glob("fold*/metrics.json"))) == 5
    clip_dir = dfew_root / "Clip" / "clip_224x224" / "00003"
    capsys.readouterr()
    assert main(["predict", str(clip_dir), "--run", str(run / "fold1"), "--no-face-crop", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)  # a run trained on a per-frame cache predicts new clips
    assert result["ok"] and abs(sum(result["probabilities"].values()) - 1) < 1e-4


@pytest.mark.integration
def test_ablate_table6_runs_on_a_frame_cache(frame_cache, tmp_path):
    from tgdfer.config import SweepConfig
    from tgdfer.sweep.runner import run_table

    path, _ = frame_cache
    cfg = SweepConfig(
        table="6", features=str(path), folds=("1",), out=str(tmp_path / "out"), overrides=("train.epochs=1",)
    )
    result = run_table(cfg, log=lambda s: None)
    assert result["ran"] == 1 and result["planned"] == 6 and result["failed"] == []
    assert all(r["war"][0] is not None for r in result["rows"])


def test_every_frame_extraction_skips_and_records_bad_clips(tmp_path, tiny_clip_path):
    from tgdfer.testing.synthetic import make_dfew_tree

    root = make_dfew_tree(tmp_path / "d", 6, frames=(10, 14), size=64)
    for f in (root / "Clip" / "clip_224x224" / "00002").iterdir():
        f.unlink()  # no frames
    summary = extract(_dfew_cfg(root, tmp_path / "f.h5", tiny_clip_path, frames_mode="all", shard_clips=2))
    cache = load_cache(tmp_path / "f.h5")
    assert summary["totals"]["failures"] == 1 and list(cache.clip_ids) == ["00001", "00003", "00004", "00005", "00006"]
    assert cache.failures[0][0] == "00002" and "no image frames" in cache.failures[0][2]
    assert (tmp_path / "f.failures.csv").read_text().splitlines()[1].startswith("00002,")
    assert len(cache.offsets) == 6 and int(cache.offsets[-1]) == len(cache.features)


def test_video_clips_get_timestamps_from_the_frame_rate(tmp_path, tiny_clip_path):
    from tgdfer.testing.synthetic import make_csv_dataset

    csv_path = make_csv_dataset(
        tmp_path / "v", 1, classes=("happiness", "sadness"), frames=(9, 12), size=64, videos=True
    )
    cfg = ExtractConfig(
        dataset="csv",
        root=str(tmp_path / "v"),
        annotations=str(csv_path),
        out=str(tmp_path / "f.h5"),
        clip=str(tiny_clip_path),
        frames_mode="all",
        workers=0,
    )
    extract(cfg)
    cache = load_cache(tmp_path / "f.h5")
    assert cache.counts.tolist() == cache.num_frames.tolist() and len(cache.clip_ids) == 2
    assert np.allclose(cache.timestamps_ms, cache.source_frames * 40.0)  # written at 25 fps
