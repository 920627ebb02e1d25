"""Users' own data: a CSV of their labels through extract (classes, splits, faces, refused reruns), info, training
with a validation split, progress in logs, figures, and ablations that show the paper's DFEW figures only on DFEW."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tgdfer.apps.info import info
from tgdfer.config import ExtractConfig, RunConfig, apply_overrides
from tgdfer.data.datasets import TEST, TRAIN, VAL
from tgdfer.errors import ExtractError
from tgdfer.extract import extract, settings_diff
from tgdfer.features.cache import load_cache
from tgdfer.features.store import seal_entry
from tgdfer.plots import confusion_cells, influence_png, influence_png_size
from tgdfer.progress import Progress
from tgdfer.sweep.tables import TABLES, render
from tgdfer.testing.synthetic import make_clip, make_csv_dataset, write_feature_cache, write_video
from tgdfer.train.engine import fit_fold

CLASSES = ("sad", "surprise", "happy")  # as a user writes them; they fold to sadness, surprise, happiness
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str, language: str) -> str:
    """The first ```language block after the line ``heading`` in README.md."""
    text = README.read_text()
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, text.index(f"\n{heading}\n"))
    assert match is not None, f"no {language} block after {heading!r}"
    return match.group(1)


def _wall(n: int) -> list[np.ndarray]:
    """A slowly changing grey ramp: no face anywhere."""
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    return [np.dstack([np.tile(ramp, (48, 1))] * 3).astype(np.uint8) // (1 + k % 2) for k in range(n)]


@pytest.fixture(scope="module")
def own(tmp_path_factory, tiny_clip_path):
    """A CSV without a split column (5 clips per class, plus a faceless video labelled happy), extracted with face
    crops and a validation split: (csv path, cache path, summary, stderr lines)."""
    root = tmp_path_factory.mktemp("own")
    csv_path = make_csv_dataset(
        root / "data", per_class=5, classes=CLASSES, frames=(8, 12), size=48, seed=1, split_column=False
    )
    write_video(root / "data" / "clips" / "wall.mp4", _wall(10))
    with open(csv_path, "a") as fh:
        fh.write("./clips//wall.mp4,happy\n")  # an un-normalised path: the id becomes clips/wall.mp4
    cfg = _extract_cfg(csv_path, root / "own.h5", tiny_clip_path)
    return csv_path, root / "own.h5", extract(cfg), cfg


def _extract_cfg(csv_path, out, clip, **changes) -> ExtractConfig:
    settings = dict(dataset="csv", root=str(csv_path.parent), out=str(out), clip=str(clip), frames=4, views=1)
    settings |= dict(workers=0, batch_size=32, face_crop=True, val_fraction=0.25)
    return ExtractConfig(**(settings | changes))


@pytest.mark.integration
def test_own_csv_extracts_its_classes_splits_and_faces(own):
    _, out, _, _ = own
    cache = load_cache(out)
    assert cache.class_names == ("happiness", "sadness", "surprise")  # its own labels, sorted; no DFEW seven
    assert cache.attrs["dataset"] == "csv" and len(cache.clip_ids) == 16 and cache.failures == ()
    col, labels = cache.membership[:, 0], cache.labels
    # per class: round(0.2 n) test clips (n = 6, 5, 5 -> 1 each), then round(0.25 of the rest) val (5, 4, 4 -> 1)
    for c, train in ((0, 4), (1, 3), (2, 3)):
        assert [int(((col == role) & (labels == c)).sum()) for role in (TRAIN, VAL, TEST)] == [train, 1, 1]
    wall = list(cache.clip_ids).index("clips/wall.mp4")
    for clip in range(16):  # distinct frames sampled over the test view and the train view
        frames = cache.view_frames[cache.view_clip == clip]
        assert cache.sampled_frames[clip] == len(np.unique(frames))
    assert cache.face_frames[wall] == 0 and (cache.face_frames <= cache.sampled_frames).all()
    text = info(str(out)).splitlines()
    assert "  split default: 10 train, 3 val, 3 test clips" in text
    per_class = (
        "happiness 6 (4 train, 1 val, 1 test), sadness 5 (3 train, 1 val, 1 test), surprise 5 (3 train, 1 val, 1 test)"
    )
    assert f"  clips per class: {per_class}" in text
    faces = next(line for line in text if line.startswith("  faces: "))
    found, sampled = int(cache.face_frames.sum()), int(cache.sampled_frames.sum())
    assert faces.startswith(f"  faces: found in {found} of {sampled} sampled frames")
    assert "clips/wall.mp4" in next(line for line in text if line.startswith("  no face: "))


@pytest.mark.integration
def test_a_refused_rerun_names_the_settings_that_differ(own, tiny_clip_path):
    csv_path, out, _, _ = own
    with pytest.raises(ExtractError) as refused:
        extract(_extract_cfg(csv_path, out, tiny_clip_path, face_crop=False, views=2))
    message = str(refused.value)
    assert "made with other settings than this run's: --face-crop: True -> False; --views: 1 -> 2." in message
    assert message.endswith("Pass --overwrite to redo it, or choose another --out")
    assert settings_diff({"augment": {"flip": 0.5}, "seed": 0}, {"augment": {"flip": 0.3}, "seed": 0}) == [
        "--set augment.flip: 0.5 -> 0.3"
    ]


@pytest.mark.integration
def test_validation_is_scored_every_epoch_and_the_final_epoch_reported(tmp_path, tiny_clip_path, tiny_clip):
    path = tmp_path / "c.h5"
    write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=60, views=1, folds=2)
    with h5py.File(path, "r+") as f:  # fold 1: even clips test, odd ones train; 10 of those become val
        membership = f["clips/membership"][()]
        membership[1:20:2, 0] = VAL
        f["clips/membership"][...] = membership
        seal_entry(f)  # re-seal the edited entry, as write_entry would
    lines = []
    cfg = RunConfig(features=str(path), out=str(tmp_path / "run"), device="cpu")
    metrics = fit_fold(apply_overrides(cfg, ["train.epochs=3", "train.batch_size=16"]), log=lines.append)
    assert lines[0].startswith("train: 20 train / 30 test / 10 val clips, split fold1")
    with open(tmp_path / "run" / "log.csv") as fh:
        log = list(csv.DictReader(fh))
    assert list(log[0])[:8] == ["epoch", "lr", "loss", "train_acc", "test_war", "test_uar", "val_war", "val_uar"]
    assert all(row["val_war"] != "" and row["val_uar"] != "" for row in log)
    assert metrics["epoch"] == 3 and metrics["war"] == pytest.approx(float(log[-1]["test_war"]))  # final epoch
    assert metrics["val"]["clips"] == 10 and metrics["val"]["war"] == pytest.approx(float(log[-1]["val_war"]))
    best = max(log, key=lambda r: (float(r["val_uar"]), float(r["val_war"]), -int(r["epoch"])))
    assert metrics["val_best_epoch"] == int(best["epoch"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val_best_epoch"] == metrics["val_best_epoch"]


def test_progress_prints_lines_with_rate_and_eta_when_not_a_terminal():
    times = iter([0.0, 5.0, 16.0, 20.0, 40.0, 41.0])
    stream = io.StringIO()
    bar = Progress(4, "extract", stream=stream, interval=15, tty=False, clock=lambda: next(times))
    bar.set_postfix(failed=1)
    for _ in range(4):
        bar.update(1)
    bar.close()
    assert stream.getvalue().splitlines() == [
        "extract: 2/4 clips (50%), 0.1 clips/s, ETA 16s, failed=1",  # at 16 s; 5 s was too soon
        "extract: 4/4 clips (100%), 0.1 clips/s, done in 41s, failed=1",  # the end, as lines were printed
    ]
    quiet = io.StringIO()
    times = iter([0.0, 1.0, 2.0])
    short = Progress(2, "predict", stream=quiet, interval=15, tty=False, clock=lambda: next(times))
    short.update(2)
    short.close()
    assert quiet.getvalue() == ""  # work shorter than the interval prints nothing


@pytest.mark.integration
def test_paper_figures_only_beside_a_dfew_cache(tmp_path, tiny_clip_path, tiny_clip):
    summary = [{"label": "e", "setting": "fine 1, coarse 1", "uar": [50.0], "war": [60.0], "runs": 1, "failed": 0}]
    summary[0] |= {"paper_uar": 60.17, "paper_war": 71.62}
    dfew_md, dfew_csv = render(TABLES["3"], summary, "ctx", dataset="dfew")
    assert "| e | fine 1, coarse 1 | 50.00 ± 0.00 | 60.00 ± 0.00 | 1 | 60.17 | 71.62 |" in dfew_md
    own_md, own_csv = render(TABLES["3"], summary, "ctx", dataset="csv")
    assert "| row | setting | UAR (%) | WAR (%) | runs |" in own_md and "paper" not in own_md.split("\n\n")[1]
    assert "| e | fine 1, coarse 1 | 50.00 ± 0.00 | 60.00 ± 0.00 | 1 |" in own_md and "71.62" not in own_md
    assert "this cache's dataset is csv, so none are shown" in own_md
    assert list(csv.reader(io.StringIO(own_csv)))[1][-2:] == ["", ""] and "71.62" in dfew_csv

    from tgdfer.config import SweepConfig
    from tgdfer.sweep.runner import run_table

    path = tmp_path / "own.h5"
    write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=40, views=1, folds=2, dataset="csv")
    fast = ("train.epochs=1", "train.batch_size=16")
    sweep = SweepConfig(
        table="3", features=str(path), folds=("1",), rows=("e",), out=str(tmp_path / "ab"), overrides=fast
    )
    run_table(sweep, log=lambda _: None)
    table = (tmp_path / "ab" / "table3.md").read_text()
    assert "paper UAR" not in table and "dataset is csv, so none are shown" in table


def test_confusion_cells_show_percent_and_count():
    pct, texts = confusion_cells(np.array([[9, 1], [0, 0]]))
    assert texts == [["90.0%\n(9)", "10.0%\n(1)"], ["0.0%\n(0)", "0.0%\n(0)"]]
    assert pct.tolist() == [[90.0, 10.0], [0.0, 0.0]]


def test_explain_strip_of_16_frames_is_two_rows_readable_at_page_width(tmp_path):
    frames = np.stack(make_clip("happiness", 16, 96, np.random.default_rng(0))[0])
    png = influence_png(frames, np.linspace(0, 1, 16), tmp_path / "s.png", title="t", frame_numbers=np.arange(16))
    width, height = influence_png_size(16)
    assert Image.open(png).size == (width, height) == (1524, 556)  # 8 cells of 160 px per row; was 2140 x 232
    assert influence_png_size(8) == (1524, 310) and influence_png_size(32) == (1524, 1048)


# The README's "Your own data" walk-through, command by command -------------------------------------------------

FAST = {  # appended to the README's commands: the tiny random CLIP, few epochs, one decode process
    "extract": ["--workers", "0", "--batch-size", "64", "--frames", "8", "--views", "1"],
    "train": ["--set", "train.epochs=3", "--set", "train.batch_size=8", "--device", "cpu"],
    "predict": ["--device", "cpu", "--json"],
    "explain": ["--device", "cpu"],
    "ablate": ["--set", "train.epochs=1", "--device", "cpu"],
}


@pytest.mark.integration
def test_the_readme_walk_through_runs_on_a_csv_of_own_labels(tmp_path, tiny_clip_path, monkeypatch, capsys):
    import shlex

    from tgdfer.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TGDFER_PROGRESS_SECONDS", "0")  # a line per clip: stdout is captured, not a terminal
    make_csv_dataset(
        tmp_path / "data" / "mine", per_class=5, classes=CLASSES, frames=(12, 20), size=64, seed=2, split_column=False
    )
    write_video(tmp_path / "new_clip.mp4", make_clip("surprise", 24, 96, np.random.default_rng(5))[0])
    commands = [shlex.split(line) for line in readme_block("## Your own data", "bash").splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [
        ["tgdfer", name] for name in ("extract", "info", "train", "predict", "explain", "ablate")
    ]
    outputs = {}
    for command in commands:
        name = command[1]
        extra = FAST.get(name, []) + (["--clip", str(tiny_clip_path)] if name == "extract" else [])
        assert main([*command[1:], *extra]) == 0, command
        outputs[name] = capsys.readouterr()
    progress = [line for line in outputs["extract"].out.splitlines() if line.startswith("extract: ")]
    assert re.fullmatch(r"extract: 1/15 clips \(7%\), [0-9.]+ clips/s, ETA \w+, frames_s=\d+, failed=0", progress[0])
    assert re.fullmatch(r"extract: 15/15 clips \(100%\), [0-9.]+ clips/s, done in \w+, .*", progress[-2])
    assert len(progress) == 16 and progress[-1].startswith("extract: 15 clips, 30 views")  # then the summary
    info = outputs["info"].out
    assert "dataset csv, classes ['happiness', 'sadness', 'surprise']" in info
    assert (
        "  split default: 9 train, 3 val, 3 test clips" in info
        and "happiness 5 (3 train, 1 val, 1 test), sadness 5" in info
    )
    assert "  faces: found in " in info
    metrics = json.loads((tmp_path / "cache/runs/mine/metrics.json").read_text())
    assert metrics["class_names"] == ["happiness", "sadness", "surprise"] and metrics["val"]["clips"] == 3
    [result] = json.loads(outputs["predict"].out)
    assert result["ok"] and list(result["probabilities"]) == ["happiness", "sadness", "surprise"]
    assert result["face_crop"] is True and result["note"] is None  # the run's cache was face-cropped: so is this
    assert (tmp_path / "explain.png").is_file()
    table = (tmp_path / "cache/ablate-mine/table3.md").read_text()
    assert "| e | fine 1, coarse 1 |" in table and "paper UAR" not in table and "dataset is csv" in table

    assert (
        main(["predict", "new_clip.mp4", "data/mine/clips/sad_000", "--run", "cache/runs/mine", "--device", "cpu"]) == 0
    )
    printed = capsys.readouterr()
    assert [line.split(",")[0] for line in printed.err.splitlines() if line.startswith("predict: ")] == [
        "predict: 1/2 clips (50%)",
        "predict: 2/2 clips (100%)",
    ]  # on stderr: stdout holds the table (or --json)
    assert printed.out.splitlines()[-1] == "2 of 2 clips predicted"
    write_video(tmp_path / "wall.mp4", _wall(12))  # no face: a warning line by default, a failure when required
    assert main(["predict", "wall.mp4", "--run", "cache/runs/mine", "--device", "cpu"]) == 0
    assert "warning: wall.mp4: no face found in any sampled frame: the full frames were used" in capsys.readouterr().out
    assert main(["predict", "wall.mp4", "--run", "cache/runs/mine", "--device", "cpu", "--require-face"]) == 1
    table = capsys.readouterr().out.splitlines()
    assert table[-2].endswith("no face found in any of the 8 sampled frames (--require-face): wall.mp4")
    assert table[-1] == "0 of 1 clips predicted, 1 failed"


def test_extract_flags_for_own_data_and_their_errors(tmp_path, capsys):
    from tgdfer.cli import main

    root = tmp_path / "mine"
    (root / "clips").mkdir(parents=True)
    (root / "annotations.csv").write_text("path,label\nclips/a,sad\nclips/b,sad\nclips/c,happy\n")
    base = ["extract", "--dataset", "csv", "--root", str(root), "--out", str(tmp_path / "c.h5")]
    assert main([*base, "--classes", "sad,surprise"]) == 2
    assert capsys.readouterr().err == (
        f"error: {root / 'annotations.csv'}:4: expected a label among sadness, surprise (--classes), found 'happy'; "
        "add it to --classes or fix the label\n"
    )
    assert main([*base, "--test-fraction", "1.5"]) == 2
    assert capsys.readouterr().err == "error: test_fraction: expected a fraction in [0, 1), found 1.5\n"
    assert main([*base, "--val-fraction", "0.5", "--clip", str(tmp_path / "no-clip.pt")]) == 2
    err = capsys.readouterr().err.splitlines()  # the notes come first: the annotations are read before CLIP loads
    note = "label 'happy' is used by 1 clip only (a typo?); its class cannot be tested"
    assert err[0] == f"note: {root / 'annotations.csv'}:4: {note}"
    assert err[-1].startswith("error: ") and "no-clip.pt" in err[-1]
