"""Batched runs (``tgdfer.train.batched``): R runs of one model shape stepped together through the model's own
forward (``torch.func.vmap`` over ``functional_call``) give each run what it gives alone.

Dropout draws each run's masks independently from the global RNG (vmap's ``randomness="different"``), so a batched
run equals its run alone only without dropout; these tests compare at ``model.dropout=0``. Measured on the CPU:
``run_forward`` vs ``TGDFER.forward`` (the configs below), logits differ by <= 8e-6 and gradients by <= 1.1e-5
relative (batched matmuls sum in another order); three folds trained batched vs alone (240 clips, batch 40), the
logged losses differ by <= 4.8e-7 and parameters by <= 5.5e-7 after one epoch (<= 1.2e-6 and 2.9e-6 after three),
and WAR, UAR and confusion are equal. The bounds sit 10-40x above that and far below what a wrong order, view draw,
padding or dropout mask gives (with dropout 0.1 the losses differ by 5e-2 after three epochs).

Longer comparisons cannot be tighter: training itself is that sensitive. Scaling one weight matrix by 1 + 1e-7 in
a run alone moves its epoch losses by 1e-5, 9e-4, 7e-3 over epochs 1-3 (the 1/tau = 100 logits), so two runs
equal up to rounding drift apart at the same rate whether batched or not."""

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from tgdfer.config import ModelConfig, RunConfig, apply_overrides
from tgdfer.labels import CLASS_NAMES
from tgdfer.model.network import TGDFER
from tgdfer.train import folds as train_folds
from tgdfer.train.batched import fit_batched, run_forward, run_state_names, shape_key
from tgdfer.train.engine import fit_fold
from tgdfer.train.runs import load_checkpoint

NO_DROPOUT = ["model.dropout=0"]
ONE_EPOCH = ["train.epochs=1", "train.batch_size=40", *NO_DROPOUT]


def _cfg(cache, out, fold, *overrides):
    return apply_overrides(RunConfig(features=str(cache), fold=fold, out=str(out), device="cpu"), list(overrides))


def _models(clip, seeds, **model):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(TGDFER(ModelConfig(**model), clip.model, CLASS_NAMES["dfew"], 16, clip.dim).train())
    return models


def _stacked(models):
    """{name: (R, ...)} of every run's state, as ``fit_batched`` stacks it."""
    states = [m.state_dict(keep_vars=True) for m in models]
    return {
        n: torch.stack([s[n].detach() for s in states]).requires_grad_(states[0][n].requires_grad)
        for n in run_state_names(models[0])
    }


@pytest.mark.parametrize(
    "model",
    [
        {},
        {"coarse_learnable": False, "visual_prompt": "prepend", "mil": "topk", "fine_depth": 2, "stride": 2},
        {"instances": "temporal", "mil": "attention"},
        {"instances": "frame", "frame_labels": "enhanced", "frame_mil": "attention", "learn_attn_tau": True},
        {"frame_centre": 0.5, "aux_loss": False, "visual_prompt": "prepend"},
    ],
)
def test_run_forward_is_the_models_forward_per_run(tiny_clip, model):
    models = _models(tiny_clip, [3, 4], dropout=0.0, **model)
    for m, mu in zip(models, torch.randn(2, tiny_clip.dim), strict=True):
        m.set_feature_mean(mu)
    state = _stacked(models)
    x = torch.randn(2, 6, 16, tiny_clip.dim)
    y = torch.randint(0, 7, (2, 6))
    logits, aux = run_forward(models[0], state, x)
    sum(F.cross_entropy(b[r], y[r]) for r in range(2) for b in (logits, *aux)).backward()
    for r, m in enumerate(models):
        out = m(x[r])
        assert torch.allclose(logits[r], out.logits, rtol=0, atol=5e-5)  # measured <= 8e-6
        assert len(out.aux) == len(aux)
        sum(F.cross_entropy(b, y[r]) for b in (out.logits, *out.aux)).backward()
        for name, p in m.named_parameters():
            if name in state:
                scale = p.grad.abs().max().clamp(min=1e-12)
                assert (state[name].grad[r] - p.grad).abs().max() / scale < 1e-4, name  # measured <= 1.1e-5


def test_run_forward_draws_each_runs_dropout_apart(tiny_clip):
    """Two identical runs stacked get different dropout masks (one shared mask would make their outputs equal)."""
    models = _models(tiny_clip, [3, 3], dropout=0.5)
    x = torch.randn(6, 16, tiny_clip.dim).expand(2, -1, -1, -1)
    logits, _ = run_forward(models[0], _stacked(models), x)
    assert not torch.allclose(logits[0], logits[1])
    models[0].eval()
    logits, _ = run_forward(models[0], _stacked(models), x)  # eval: no dropout, the runs agree
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


def _log(path):
    with open(path / "log.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.integration
def test_batched_runs_match_runs_alone_and_write_the_same_run_directories(feature_cache, tmp_path, tiny_clip):
    path, _ = feature_cache
    folds = ["1", "2", "3"]
    alone = [fit_fold(_cfg(path, tmp_path / f"a{f}", f, *ONE_EPOCH), clip=tiny_clip, log=lambda s: None) for f in folds]
    together = fit_batched(
        [_cfg(path, tmp_path / f"b{f}", f, *ONE_EPOCH) for f in folds], clip=tiny_clip, log=lambda s: None
    )
    for f, a, b in zip(folds, alone, together, strict=True):
        assert not isinstance(b, Exception), b
        assert (a["war"], a["uar"], a["confusion"], a["train_clips"]) == (
            b["war"],
            b["uar"],
            b["confusion"],
            b["train_clips"],
        )
        ra, rb = tmp_path / f"a{f}", tmp_path / f"b{f}"
        assert {p.name for p in ra.iterdir()} == {p.name for p in rb.iterdir()}
        la, lb = _log(ra), _log(rb)
        assert list(la[0]) == list(lb[0]) and len(la) == len(lb) == 1
        # the default model's loss sums three bags' losses (about 6): float32 sums in another order, relative
        # difference measured <= 1.1e-5
        assert abs(float(la[0]["loss"]) - float(lb[0]["loss"])) < 1e-4 * abs(float(lb[0]["loss"]))
        assert la[0]["train_acc"] == lb[0]["train_acc"]
        ca, cb = load_checkpoint(ra / "checkpoint.pt"), load_checkpoint(rb / "checkpoint.pt")
        assert (
            set(ca) == set(cb) and set(ca["model"]) == set(cb["model"]) and ca["config"]["fold"] == cb["config"]["fold"]
        )
        assert (
            max((ca["model"][k] - cb["model"][k]).abs().max().item() for k in ca["model"]) < 2e-4
        )  # measured <= 4.9e-5
        assert all(cb["model"][k].untyped_storage().nbytes() == cb["model"][k].nbytes for k in cb["model"])  # no views
        assert json.loads((rb / "metrics.json").read_text())["war"] == b["war"]


@pytest.mark.integration
def test_a_batched_run_killed_after_an_epoch_resumes_alone(feature_cache, tmp_path, tiny_clip):
    """Fold 2 is killed after epoch 1 of a batched pair and resumed alone; a batched pair that was not killed is
    the reference: epoch 1 is the same computation (equal), epoch 2 differs by one epoch of rounding only."""
    path, _ = feature_cache
    two = ["train.epochs=2", "train.batch_size=40", *NO_DROPOUT]

    def crash(index, epoch, row):
        if index == 1 and epoch == 1:
            raise RuntimeError("killed after epoch 1")

    cfgs = [_cfg(path, tmp_path / f"k{f}", f, *two) for f in ("1", "2")]
    out = fit_batched(cfgs, clip=tiny_clip, on_epoch_end=crash, log=lambda s: None)
    assert not isinstance(out[0], Exception) and str(out[1]) == "killed after epoch 1"
    assert not (tmp_path / "k2" / "metrics.json").exists() and len(_log(tmp_path / "k2")) == 1
    resumed = fit_fold(cfgs[1], resume=True, clip=tiny_clip, log=lambda s: None)
    fit_batched([_cfg(path, tmp_path / f"u{f}", f, *two) for f in ("1", "2")], clip=tiny_clip, log=lambda s: None)
    assert resumed["epoch"] == 2
    (k1, k2), (u1, u2) = _log(tmp_path / "k2"), _log(tmp_path / "u2")
    assert (k1["loss"], k1["train_acc"], k1["test_war"]) == (u1["loss"], u1["train_acc"], u1["test_war"])
    assert abs(float(k2["loss"]) - float(u2["loss"])) < 1e-4 * abs(float(u2["loss"]))
    ck, cu = load_checkpoint(tmp_path / "k2" / "checkpoint.pt"), load_checkpoint(tmp_path / "u2" / "checkpoint.pt")
    assert max((ck["model"][k] - cu["model"][k]).abs().max().item() for k in ck["model"]) < 5e-5


def test_shape_key_groups_folds_seeds_and_optimiser_settings_only(feature_cache):
    path, _ = feature_cache
    base = _cfg(path, "x", "1")
    same = [
        _cfg(path, "y", "2", "train.seed=5"),
        _cfg(path, "z", "3", "optim.lr=0.1", "train.grad_clip=1"),
    ]
    other = [_cfg(path, "x", "1", "model.window=8"), _cfg(path, "x", "1", "train.batch_size=8")]
    assert all(shape_key(c) == shape_key(base) for c in same)
    assert all(shape_key(c) != shape_key(base) for c in other)
    with pytest.raises(Exception, match="expected runs of one model shape, found 2 shapes"):
        fit_batched([base, other[0]])


@pytest.mark.integration
def test_ablate_batches_runs_of_one_shape_and_no_batch_keeps_the_old_path(feature_cache, tmp_path, monkeypatch):
    from tgdfer.config import SweepConfig
    from tgdfer.sweep import pool
    from tgdfer.sweep.runner import run_table

    path, _ = feature_cache
    calls = []
    real = pool.fit_batched

    def spy(cfgs, *args, **kwargs):
        calls.append([(c.model.fine_depth, c.fold) for c in cfgs])
        return real(cfgs, *args, **kwargs)

    monkeypatch.setattr(pool, "fit_batched", spy)
    kwargs = dict(table="3", features=str(path), folds=("1", "2"), rows=("a", "e"), overrides=tuple(ONE_EPOCH))
    result = run_table(SweepConfig(**kwargs, out=str(tmp_path / "b"), device="cpu", batch=True), log=lambda s: None)
    assert result["ran"] == 4 and result["failed"] == []
    assert calls == [[(0, "1"), (0, "2")], [(1, "1"), (1, "2")]]  # without dropout: equal to the runs alone
    calls.clear()
    old = run_table(SweepConfig(**kwargs, out=str(tmp_path / "n"), device="cpu"), log=lambda s: None)  # default
    assert calls == [] and old["ran"] == 4
    for new_row, old_row in zip(result["rows"], old["rows"], strict=True):
        assert new_row["war"] == old_row["war"] and new_row["uar"] == old_row["uar"]


@pytest.mark.integration
def test_cli_batch_flag_batches_and_the_default_trains_one_by_one(tmp_path, tiny_clip_path, tiny_clip, monkeypatch):
    from tgdfer.cli import main
    from tgdfer.testing.synthetic import write_feature_cache

    path = tmp_path / "c.h5"
    write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=40, views=1, folds=2)
    from tgdfer.sweep import pool

    calls = []
    real = pool.fit_batched
    spy = lambda cfgs, *a, **k: calls.append(len(cfgs)) or real(cfgs, *a, **k)  # noqa: E731
    monkeypatch.setattr(pool, "fit_batched", spy)
    monkeypatch.setattr(train_folds, "fit_batched", spy)
    common = ["train", "--features", str(path), "--fold", "all", "--device", "cpu", "--set", "train.epochs=1"]
    assert main([*common, "--out", str(tmp_path / "b"), "--batch"]) == 0
    assert calls == [2] and json.loads((tmp_path / "b" / "summary.json").read_text())["folds"] == ["1", "2"]
    assert main([*common, "--out", str(tmp_path / "n")]) == 0  # default: one by one
    assert calls == [2] and (tmp_path / "n" / "fold2" / "metrics.json").exists()
    sweep = ["ablate", "--table", "3", "--features", str(path), "--rows", "e", "--set", "train.epochs=1"]
    assert main([*sweep, "--out", str(tmp_path / "s"), "--device", "cpu"]) == 0 and calls == [2]
    assert main([*sweep, "--out", str(tmp_path / "t"), "--batch", "--device", "cpu"]) == 0 and calls == [2, 2]


@pytest.mark.integration
def test_ablate_batch_with_two_workers_finishes_every_run(feature_cache, tmp_path):
    """Batched groups in two spawned worker processes (``tgdfer.sweep.pool``): every run of both rows finishes,
    with the metrics of the same sweep in one process."""
    from tgdfer.cli import main

    path, _ = feature_cache
    sweep = ["ablate", "--table", "3", "--features", str(path), "--rows", "e,f", "--folds", "1-2", "--device", "cpu"]
    sweep += ["--batch", "--set", "train.epochs=1", "--set", "train.batch_size=40", "--set", "model.dropout=0"]
    assert main([*sweep, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    assert main([*sweep, "--workers", "1", "--out", str(tmp_path / "one")]) == 0
    two, one = (list(csv.DictReader((tmp_path / d / "table3.csv").read_text().splitlines())) for d in ("two", "one"))
    runs = sorted((tmp_path / "two" / "runs").iterdir())
    assert len(runs) == 4 and all((r / "metrics.json").is_file() and not (r / "error.txt").exists() for r in runs)
    assert [r["runs"] for r in two] == ["2", "2"] and two == one
