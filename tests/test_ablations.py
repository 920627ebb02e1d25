"""``tgdfer ablate``: the paper's tables expand to exactly their rows; a table runs, resumes, survives failures."""

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from tgdfer.config import SweepConfig
from tgdfer.sweep.plan import parse_folds, parse_seeds
from tgdfer.sweep.runner import run_table as _run_table
from tgdfer.sweep.tables import TABLES
from tgdfer.testing.synthetic import write_feature_cache

FAST = ["train.epochs=1", "train.batch_size=16"]

# The paper's rows, written out independently of tgdfer/ablation_tables.py: (label, overrides, UAR, WAR).
PAPER = {
    "3": [
        (label, (f"model.fine_depth={f}", f"model.coarse_depth={c}"), u, w)
        for label, f, c, u, w in [
            ("a", 0, 0, 57.66, 69.14),
            ("b", 0, 1, 59.83, 71.34),
            ("c", 0, 2, 59.45, 71.18),
            ("d", 1, 0, 58.50, 69.24),
            ("e", 1, 1, 60.17, 71.62),
            ("f", 1, 2, 60.58, 71.46),
            ("g", 2, 0, 57.73, 69.27),
            ("h", 2, 1, 60.40, 71.51),
            ("i", 2, 2, 60.27, 71.51),
            ("j", 1, 7, 59.10, 70.93),
            ("k", 7, 1, 59.24, 70.84),
            ("l", 7, 7, 59.29, 70.92),
        ]
    ],
    "4": [
        (label, (f"model.stride={s}", f"model.window={w}"), u, war)
        for label, s, w, u, war in [
            ("nostride-w2", 0, 2, 59.58, 71.39),
            ("nostride-w4", 0, 4, 59.58, 71.32),
            ("nostride-w8", 0, 8, 59.50, 71.43),
            ("s1-w2", 1, 2, 59.59, 71.19),
            ("s1-w4", 1, 4, 60.17, 71.62),
            ("s1-w8", 1, 8, 59.83, 71.51),
            ("s2-w4", 2, 4, 60.09, 71.48),
            ("s2-w8", 2, 8, 59.76, 71.51),
            ("s3-w4", 3, 4, 59.81, 71.48),
        ]
    ],
    "5": [
        (label, (f"model.coarse_text={t}", f"model.coarse_learnable={learn}", f"model.visual_prompt={vp}"), u, w)
        for label, t, learn, vp, u, w in [
            ("a", "class", "false", "off", 59.12, 71.40),
            ("b", "class", "false", "add", 60.07, 71.58),
            ("c", "class", "false", "prepend", 59.58, 71.49),
            ("d", "descriptors", "false", "off", 59.12, 71.34),
            ("e", "descriptors", "false", "add", 60.23, 71.54),
            ("f", "descriptors", "false", "prepend", 59.14, 71.43),
            ("g", "class", "true", "off", 59.46, 71.07),
            ("h", "class", "true", "add", 60.17, 71.62),
            ("i", "class", "true", "prepend", 60.36, 71.47),
            ("j", "descriptors", "true", "off", 58.56, 71.17),
            ("k", "descriptors", "true", "add", 59.23, 71.32),
            ("l", "descriptors", "true", "prepend", 59.75, 71.62),
        ]
    ],
    "6": [
        ("highest-1", (), 59.97, 71.12),
        ("highest-2", (), 60.09, 71.27),
        ("highest-3", (), 59.74, 71.12),
        ("lowest-1", (), 55.41, 67.39),
        ("lowest-2", (), 57.18, 68.88),
        ("lowest-3", (), 58.00, 69.63),
    ],
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_clip_path, tiny_clip):
    """60 generated clips, one train view each, two folds, recorded as DFEW's (so the paper's figures apply): a run
    of one epoch takes about a second."""
    path = tmp_path_factory.mktemp("ablate") / "c.h5"
    write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=60, views=1, folds=2, dataset="dfew")
    return str(path)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core runner then cannot oversubscribe its cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_table(table, features, dry_run=False, log=lambda _: None, **settings):
    """The sweep as the CLI builds it: a SweepConfig from these settings."""
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    cfg = SweepConfig(table=str(table), features=str(features), **settings)
    return _run_table(cfg, dry_run=dry_run, log=log)


def _quiet(_):
    pass


def _metrics(result, row):
    entry = next(r for r in result["rows"] if r["label"] == row)
    return [json.loads(Path(d, "metrics.json").read_text()) for d in entry["run_dirs"]]


@pytest.mark.parametrize("number", ["3", "4", "5", "6"])
def test_dry_run_expands_exactly_the_papers_rows(cache, tmp_path, number):
    assert [(r.label, r.overrides, r.paper_uar, r.paper_war) for r in TABLES[number].rows] == PAPER[number]
    lines = []
    result = run_table(number, cache, seeds=[1, 2], out=str(tmp_path / "out"), dry_run=True, log=lines.append)
    n = len(PAPER[number]) * 2 * 2  # rows × the cache's two folds × two seeds
    assert result["planned"] == n and len(lines) == n + 1 and result["ran"] == 0
    assert [r["label"] for r in result["rows"]] == [label for label, *_ in PAPER[number]]
    assert result["trainings"] == (4 if number == "6" else n)  # Table 6 re-reads one trained run per fold × seed
    assert not (tmp_path / "out").exists()
    first = lines[0]
    assert first.startswith(f"table{number} {PAPER[number][0][0]} fold 1 seed 1: ") and "[new]" in first
    if number == "3":
        assert "model.fine_depth=0 model.coarse_depth=0" in first
        assert lines[4 * 4].endswith("(defaults)")  # row e is the paper's best setting, tgdfer's defaults


@pytest.mark.integration
def test_a_tiny_table_runs_end_to_end_and_a_rerun_trains_nothing(cache, tmp_path):
    out = tmp_path / "out"
    lines = []
    result = run_table(3, cache, out=str(out), overrides=FAST, rows=["a", "e"], log=lines.append)
    assert result["ran"] == 4 and result["skipped"] == 0 and result["failed"] == []
    assert [line.split(":")[0] for line in lines[:4]] == [
        "[1/4] table3 a fold1 seed1",
        "[2/4] table3 a fold2 seed1",
        "[3/4] table3 e fold1 seed1",
        "[4/4] table3 e fold2 seed1",
    ]
    assert all("ETA" in line for line in lines[:4])
    with open(out / "table3.csv") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == [
        *("row", "setting", "uar_mean", "uar_std", "war_mean", "war_std", "runs", "failed"),
        *("paper_uar", "paper_war"),
    ]
    assert [(r["row"], r["runs"], r["failed"], r["paper_uar"]) for r in table] == [
        ("a", "2", "0", "57.66"),
        ("e", "2", "0", "60.17"),
    ]
    wars = [m["war"] for m in _metrics(result, "e")]
    assert float(table[1]["war_mean"]) == pytest.approx(sum(wars) / 2, abs=1e-4)
    md = (out / "table3.md").read_text()
    assert "| row | setting | UAR (%) | WAR (%) | runs | paper UAR | paper WAR |" in md
    assert "| e | fine 1, coarse 1 |" in md and "frozen" in md and md in "\n".join(lines)

    # A finished run is reused: nothing retrains, nothing is rewritten.
    metrics_files = [out / "runs" / d / "metrics.json" for d in [p.name for p in (out / "runs").iterdir()]]
    stamps = {p: p.stat().st_mtime_ns for p in metrics_files}
    again = run_table(3, cache, out=str(out), overrides=FAST, rows=["a", "e"], log=_quiet)
    assert again["ran"] == 0 and again["skipped"] == 4
    assert {p: p.stat().st_mtime_ns for p in metrics_files} == stamps
    assert again["rows"] == result["rows"]

    # A run killed after its last checkpoint but before metrics.json continues from the checkpoint.
    metrics_files[0].unlink()
    resumed = run_table(3, cache, out=str(out), overrides=FAST, rows=["a", "e"], log=_quiet)
    assert resumed["ran"] == 1 and resumed["skipped"] == 3 and resumed["rows"] == result["rows"]


@pytest.mark.integration
def test_a_failing_run_does_not_stop_the_table(tmp_path, tiny_clip_path, tiny_clip):
    """Clips of T=4 frames: Table 4's window of 8 cannot fit, so that row fails in fit; the other row trains."""
    path = tmp_path / "t4.h5"
    write_feature_cache(
        path, str(tiny_clip_path), tiny_clip.sha256, n_clips=40, frames=4, views=1, folds=2, dataset="dfew"
    )
    out, lines = tmp_path / "out", []
    kwargs = dict(folds=["1"], out=str(out), overrides=FAST, rows=["s1-w8", "s1-w4"])
    result = run_table(4, str(path), **kwargs, log=lines.append)
    assert result["ran"] == 2
    bad, good = result["rows"]
    assert (bad["runs"], bad["failed"], good["runs"], good["failed"]) == (0, 1, 1, 0)
    assert [(f["row"], f["fold"], f["seed"]) for f in result["failed"]] == [("s1-w8", "1", 1)]
    assert "model.window: expected 1 <= w <= T=4, found 8" in result["failed"][0]["error"]
    error = Path(bad["run_dirs"][0], "error.txt").read_text()
    assert error.startswith("Traceback") and "ConfigError" in error
    assert Path(good["run_dirs"][0], "metrics.json").exists() and Path(good["run_dirs"][0]).parent == out / "runs"
    assert "| s1-w8 | stride 1, window 8 | — | — | 0 (1 failed) | 59.83 | 71.51 |" in (out / "table4.md").read_text()
    assert any(line.startswith("FAILED s1-w8 fold 1 seed 1") for line in lines)
    again = run_table(4, str(path), **kwargs, log=_quiet)
    assert again["ran"] == 1 and again["skipped"] == 1 and len(again["failed"]) == 1  # the failed run is retried


@pytest.mark.integration
def test_table6_evaluates_the_trained_default_run(cache, tmp_path):
    out = str(tmp_path / "out")
    result = run_table(6, cache, folds=["1"], out=out, overrides=FAST, log=_quiet)
    assert result["ran"] == 1 and result["planned"] == 6 and result["failed"] == []
    assert [(r["label"], r["runs"]) for r in result["rows"]] == [(label, 1) for label, *_ in PAPER["6"]]
    run_dir = result["rows"][0]["run_dirs"][0]
    assert {r["run_dirs"][0] for r in result["rows"]} == {run_dir}
    selected = json.loads(Path(run_dir, "select.json").read_text())  # each row's figures are its re-prediction's
    assert [r["war"][0] for r in result["rows"]] == [selected[r["label"]]["war"] for r in result["rows"]]
    assert set(json.loads(Path(run_dir, "select.json").read_text())) == {label for label, *_ in PAPER["6"]}
    assert Path(out, "table6.md").read_text().count("| highest-") == 3
    # The trained run is Table 3 row e (the defaults): shared, not retrained.
    shared = run_table(3, cache, folds=["1"], out=out, overrides=FAST, rows=["e"], log=_quiet)
    assert shared["ran"] == 0 and shared["rows"][0]["run_dirs"] == [run_dir]


@pytest.mark.integration
def test_two_workers_give_the_same_metrics_as_one(cache, tmp_path):
    """Each of N workers gets cpu_count // N torch threads; CPU float sums depend on the thread count, so the
    one-worker sweep runs with as many threads as a worker of two gets."""
    kwargs = dict(folds=["1"], overrides=FAST, rows=["a", "e"], device="cpu", log=_quiet)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        one = run_table(3, cache, out=str(tmp_path / "one"), workers=1, **kwargs)
    finally:
        torch.set_num_threads(threads)
    two = run_table(3, cache, out=str(tmp_path / "two"), workers=2, **kwargs)
    assert two["ran"] == 2 and two["failed"] == []
    for row in ("a", "e"):
        a, b = _metrics(one, row)[0], _metrics(two, row)[0]
        assert (a["war"], a["uar"], a["confusion"]) == (b["war"], b["uar"], b["confusion"])


def test_folds_seeds_and_bad_arguments(cache, tmp_path):
    assert parse_folds("1-5") == ["1", "2", "3", "4", "5"] and parse_folds("1,3") == ["1", "3"]
    assert parse_folds("all", cache) == ["1", "2"] and parse_folds(None) is None
    assert parse_seeds("1,2,3") == parse_seeds("1-3") == [1, 2, 3]
    with pytest.raises(ValueError, match=r"--seeds: expected .* found 'x'"):
        parse_seeds("x")
    with pytest.raises(ValueError, match=r"--table: expected one of \['3', '4', '5', '6'\], found '7'"):
        run_table(7, cache, dry_run=True)
    with pytest.raises(ValueError, match=r"table 3: expected a row of .*found 'z'"):
        run_table(3, cache, rows=["z"], dry_run=True)
    with pytest.raises(ValueError, match=r"--folds: .* has folds \['1', '2'\]; found \['3'\]"):
        run_table(3, cache, folds=["3"], dry_run=True)
    with pytest.raises(Exception, match="found no file"):
        run_table(3, str(tmp_path / "missing.h5"), dry_run=True)
