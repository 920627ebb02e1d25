"""import-features: video_features-style folders and arrays in memory become a per-frame cache that trains;
every bad input is refused in one line with nothing written."""

import csv
import json

import numpy as np
import pytest

from tgdfer.apps.import_features import import_arrays
from tgdfer.cli import main
from tgdfer.data.datasets import TEST
from tgdfer.features.cache import load_cache
from tgdfer.features.frames import FrameCache
from tgdfer.features.store import shard_dir

LABELS = ("happy", "sad", "neutral", "angry", "surprised", "disgusted", "fearful")


def _folder(root, per_class=10, dim=32, lengths=(8, 40), seed=0):
    """video_features outputs for per_class clips of each class: <stem>_clip.npy (frames, D) float64 raw
    features (class signal over an apex stretch plus per-frame noise), _timestamps_ms.npy, _fps.npy; and a CSV."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(0, 1, (len(LABELS), dim))
    root.mkdir(parents=True, exist_ok=True)
    rows, feats = [], {}
    for c, label in enumerate(LABELS):
        for i in range(per_class):
            stem = f"{label}_{i:02d}"
            n = int(rng.integers(*lengths))
            apex = np.zeros(n)
            apex[n // 4 : n // 4 + max(2, n // 2)] = 1.0
            x = 2.0 * apex[:, None] * protos[c] + rng.normal(0, 1, (n, dim))
            np.save(root / f"{stem}_clip.npy", x)
            np.save(root / f"{stem}_timestamps_ms.npy", np.arange(n) * 40.0)
            np.save(root / f"{stem}_fps.npy", np.array(25.0))
            rows.append((f"videos/{stem}.mp4", label, "test" if i < 3 else "train"))
            feats[f"videos/{stem}.mp4"] = x
    _write_csv(root / "labels.csv", rows)
    return root / "labels.csv", rows, feats


def _write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)


@pytest.mark.integration
def test_import_of_a_video_features_folder_trains_end_to_end(tmp_path, tiny_clip_path, tiny_clip, capsys):
    labels_csv, rows, feats = _folder(tmp_path / "vf")
    rows.append(("videos/gone.mp4", "happy", "train"))  # no features on disk: a logged skip
    _write_csv(labels_csv, rows)
    out = tmp_path / "imported.h5"
    args = ["import-features", str(tmp_path / "vf"), "--annotations", str(labels_csv), "--clip", str(tiny_clip_path)]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped missing or unreadable features" in printed and "gone_clip.npy" in printed
    assert "70 clips" in printed and "float64 stored fp16" in printed and "raw features" in printed
    cache = load_cache(out)
    assert isinstance(cache, FrameCache) and cache.features.dtype == np.float16 and cache.passes == 1
    assert cache.attrs["clip_sha256"] == tiny_clip.sha256 and cache.attrs["input_normalised"] is False
    assert len(cache.failures) == 1 and cache.failures[0][0] == "videos/gone.mp4"
    row = list(cache.clip_ids).index("videos/sad_04.mp4")
    x = feats["videos/sad_04.mp4"]
    assert np.array_equal(cache.clip_frames(row), x.astype(np.float16))
    assert (
        cache.timestamps_ms[cache.offsets[row] : cache.offsets[row + 1]].tolist() == (np.arange(len(x)) * 40.0).tolist()
    )
    assert cache.class_names == ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")  # sorted

    run = tmp_path / "run"
    sets = ["train.epochs=8", "train.batch_size=8", "optim.milestones=6,7"]
    assert (
        main(
            [
                "train",
                "--features",
                str(out),
                "--out",
                str(run),
                "--device",
                "cpu",
                *[a for s in sets for a in ("--set", s)],
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_clips"] == 49 and metrics["test_clips"] == 21
    assert metrics["war"] > 3 * 100 / 7, metrics["war"]  # chance is 14.3%
    assert main(["info", str(out)]) == 0
    assert "per-frame cache: 70 clips" in capsys.readouterr().out


def _bad(tmp_path, case):
    root = tmp_path / "vf"
    labels_csv, rows, _ = _folder(root, per_class=1)
    if case == "dim":
        np.save(root / "happy_00_clip.npy", np.zeros((12, 16)))
    elif case == "nan":
        x = np.ones((9, 32))
        x[4, 7] = np.nan
        np.save(root / "sad_00_clip.npy", x)
    elif case == "overflow":
        np.save(root / "sad_00_clip.npy", np.full((9, 32), 1e6, np.float32))
    elif case == "empty":
        np.save(root / "happy_00_clip.npy", np.zeros((0, 32)))
    elif case == "1d":
        np.save(root / "happy_00_clip.npy", np.zeros(32))
    elif case == "twice":
        rows.append(("other/happy_00.mp4", "happy", "train"))
    elif case == "typo":
        rows[0] = (rows[0][0], "hapiness", rows[0][2])
    elif case == "timestamps":
        np.save(root / "happy_00_clip.npy", np.ones((21, 32)))
        np.save(root / "happy_00_timestamps_ms.npy", np.zeros(3))
    _write_csv(labels_csv, rows)
    return root, labels_csv


BAD = {
    "dim": "happy_00_clip.npy: expected D=32 (the embedding width of the --clip model), found shape (12, 16); "
    "pass the CLIP model that made these features",
    "nan": "sad_00_clip.npy: expected finite features (fp16 range), found nan at frame 4, column 7; fix or drop "
    "this clip",
    "overflow": "sad_00_clip.npy: expected finite features (fp16 range), found 1000000.0 at frame 0, column 0; "
    "fix or drop this clip",
    "empty": "happy_00_clip.npy: expected at least 1 frame, found shape (0, 32)",
    "1d": "happy_00_clip.npy: expected a (frames, 32) array, found shape (32,); save one row per frame",
    "twice": "labels.csv: expected each feature file once, found {root}/happy_00_clip.npy for both "
    "'other/happy_00.mp4' and 'videos/happy_00.mp4' (video_features names outputs by stem: rename one video)",
    "typo": "labels.csv:2: expected a label such as 'happiness', found 'hapiness', a near-duplicate of that "
    "emotion's name; fix the label, or pass --classes including hapiness to keep it as written",
    "timestamps": "happy_00_clip.npy: expected 21 timestamps, one per frame, found 3",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(case, tmp_path, tiny_clip_path, capsys):
    root, labels_csv = _bad(tmp_path, case)
    out = tmp_path / "x.h5"
    argv = ["import-features", str(root), "--annotations", str(labels_csv), "--clip", str(tiny_clip_path)]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert err.endswith(BAD[case].format(root=root)), err
    assert not out.exists() and not shard_dir(out).exists()


def test_arrays_in_memory_normalised_input_is_stated(tmp_path, tiny_clip_path):
    rng = np.random.default_rng(0)
    feats = {f"c{i}": rng.normal(size=(int(rng.integers(3, 30)), 32)).astype(np.float32) for i in range(12)}
    feats = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in feats.items()}
    labels = {k: ("happiness", "pain")[i % 2] for i, k in enumerate(sorted(feats))}  # "pain": users' own class
    splits = {k: "test" if i < 4 else "train" for i, k in enumerate(sorted(feats))}
    lines = []
    result = import_arrays(feats, labels, str(tiny_clip_path), str(tmp_path / "m.h5"), splits=splits, log=lines.append)
    assert result["normalised"] is True and "L2-normalised input detected" in lines[-1]
    cache = load_cache(tmp_path / "m.h5")
    assert cache.class_names == ("happiness", "pain") and cache.attrs["input_normalised"] is True
    assert (cache.membership[:, 0] == TEST).sum() == 4 and cache.counts.tolist() == [
        len(feats[k]) for k in sorted(feats)
    ]
    assert np.isnan(cache.timestamps_ms).all()
