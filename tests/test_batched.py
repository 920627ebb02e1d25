"""Batched runs (``tgdfer.train.batched``): R runs of one model shape stepped as one model give each run what it
gives alone. Measured on the CPU: the batched forward equals ``TGDFER.forward`` bit for bit with dropout on
(same masks from the same RNG stream, partial batches included); gradients differ by float rounding (relative
<= 1.1e-6: batched matmuls sum in another order); after one epoch of 5 steps per fold the logged losses differ
by <= 3e-4 and parameters by <= 4e-4, the metrics and RNG states are equal. The bounds below sit 3-10x above that
and far below what a wrong mask, order or view draw gives (losses off by > 1e-2 from the first step).

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
from tgdfer.train import batched
from tgdfer.train.batched import _Dropout, _trainable_names, batched_forward, fit_batched, shape_key
from tgdfer.train.engine import fit
from tgdfer.train.runs import load_checkpoint

ONE_EPOCH = ["train.epochs=1", "train.batch_size=40"]


def _cfg(cache, out, fold, *overrides):
    return apply_overrides(RunConfig(features=str(cache), fold=fold, out=str(out), device="cpu"), list(overrides))


def _models(clip, seeds, **model):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(TGDFER(ModelConfig(**model), clip.model, CLASS_NAMES["dfew"], 16, clip.dim).train())
    return models


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
def test_batched_forward_draws_each_runs_dropout_and_equals_the_model(tiny_clip, model):
    models = _models(tiny_clip, [3, 4], **model)
    params = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in _trainable_names(models[0])
    }
    params = {n: p.requires_grad_(True) for n, p in params.items()}
    mean = torch.randn(2, tiny_clip.dim)
    for m, mu in zip(models, mean, strict=True):
        m.set_feature_mean(mu)
    x = torch.randn(2, 6, 16, tiny_clip.dim)
    y = torch.randint(0, 7, (2, 6))
    valid = [6, 4]  # run 1's last batch is short: padded rows are computed but never drawn for or reached
    gens = [torch.Generator().manual_seed(10 + r) for r in range(2)]
    logits, aux = batched_forward(models[0], params, torch.stack(mean.unbind()), x, _Dropout(0.1, gens, valid, 6))
    bags = [logits] if aux is None else [logits, aux]
    sum(F.cross_entropy(b[r, : valid[r]], y[r, : valid[r]]) for r in range(2) for b in bags).backward()
    for r, m in enumerate(models):
        torch.manual_seed(10 + r)
        out = m(x[r, : valid[r]])
        assert torch.allclose(logits[r, : valid[r]], out.logits, rtol=0, atol=1e-4)  # measured: bit-equal
        assert len(out.aux) == (aux is not None)
        assert torch.equal(torch.get_rng_state(), gens[r].get_state())  # the same draws, in the same amounts
        sum(F.cross_entropy(b, y[r, : valid[r]]) for b in (out.logits, *out.aux)).backward()
        for name, p in m.named_parameters():
            if name in params:
                scale = p.grad.abs().max().clamp(min=1e-12)
                assert (params[name].grad[r] - p.grad).abs().max() / scale < 1e-5, name


def _log(path):
    with open(path / "log.csv") as fh:
        return list(csv.DictReader(fh))


def test_batched_runs_match_runs_alone_and_write_the_same_run_directories(feature_cache, tmp_path, tiny_clip):
    path, _ = feature_cache
    folds = ["1", "2", "3"]
    alone = [fit(_cfg(path, tmp_path / f"a{f}", f, *ONE_EPOCH), clip=tiny_clip, log=lambda s: None) for f in folds]
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
        assert abs(float(la[0]["loss"]) - float(lb[0]["loss"])) < 1e-3
        assert la[0]["train_acc"] == lb[0]["train_acc"]
        ca, cb = load_checkpoint(ra / "checkpoint.pt"), load_checkpoint(rb / "checkpoint.pt")
        assert (
            set(ca) == set(cb) and set(ca["model"]) == set(cb["model"]) and ca["config"]["fold"] == cb["config"]["fold"]
        )
        assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])  # each run kept its own dropout stream
        assert max((ca["model"][k] - cb["model"][k]).abs().max().item() for k in ca["model"]) < 2e-3
        assert all(cb["model"][k].untyped_storage().nbytes() == cb["model"][k].nbytes for k in cb["model"])  # no views
        assert json.loads((rb / "metrics.json").read_text())["war"] == b["war"]


def test_a_batched_run_killed_after_an_epoch_resumes_alone(feature_cache, tmp_path, tiny_clip):
    """Fold 2 is killed after epoch 1 of a batched pair and resumed alone; a batched pair that was not killed is
    the reference: epoch 1 is the same computation (equal), epoch 2 differs by one epoch of rounding only."""
    path, _ = feature_cache
    two = ["train.epochs=2", "train.batch_size=40"]

    def crash(index, epoch, row):
        if index == 1 and epoch == 1:
            raise RuntimeError("killed after epoch 1")

    cfgs = [_cfg(path, tmp_path / f"k{f}", f, *two) for f in ("1", "2")]
    out = fit_batched(cfgs, clip=tiny_clip, on_epoch_end=crash, log=lambda s: None)
    assert not isinstance(out[0], Exception) and str(out[1]) == "killed after epoch 1"
    assert not (tmp_path / "k2" / "metrics.json").exists() and len(_log(tmp_path / "k2")) == 1
    resumed = fit(cfgs[1], resume=True, clip=tiny_clip, log=lambda s: None)
    fit_batched([_cfg(path, tmp_path / f"u{f}", f, *two) for f in ("1", "2")], clip=tiny_clip, log=lambda s: None)
    assert resumed["epoch"] == 2
    (k1, k2), (u1, u2) = _log(tmp_path / "k2"), _log(tmp_path / "u2")
    assert (k1["loss"], k1["train_acc"], k1["test_war"]) == (u1["loss"], u1["train_acc"], u1["test_war"])
    assert abs(float(k2["loss"]) - float(u2["loss"])) < 1e-3
    ck, cu = load_checkpoint(tmp_path / "k2" / "checkpoint.pt"), load_checkpoint(tmp_path / "u2" / "checkpoint.pt")
    assert torch.equal(ck["rng"]["torch"], cu["rng"]["torch"])  # the stream saved batched continues alone
    assert max((ck["model"][k] - cu["model"][k]).abs().max().item() for k in ck["model"]) < 2e-3


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


def test_ablate_batches_runs_of_one_shape_and_no_batch_keeps_the_old_path(feature_cache, tmp_path, monkeypatch):
    from tgdfer.config import SweepConfig
    from tgdfer.sweep.runner import run_table

    path, _ = feature_cache
    calls = []
    real = batched.fit_batched

    def spy(cfgs, *args, **kwargs):
        calls.append([(c.model.fine_depth, c.fold) for c in cfgs])
        return real(cfgs, *args, **kwargs)

    monkeypatch.setattr(batched, "fit_batched", spy)
    kwargs = dict(table="3", features=str(path), folds=("1", "2"), rows=("a", "e"), overrides=tuple(ONE_EPOCH))
    result = run_table(SweepConfig(**kwargs, out=str(tmp_path / "b"), device="cpu", batch=True), log=lambda s: None)
    assert result["ran"] == 4 and result["failed"] == []
    assert calls == [[(0, "1"), (0, "2")], [(1, "1"), (1, "2")]]
    calls.clear()
    old = run_table(SweepConfig(**kwargs, out=str(tmp_path / "n"), device="cpu"), log=lambda s: None)  # default
    assert calls == [] and old["ran"] == 4
    for new_row, old_row in zip(result["rows"], old["rows"], strict=True):
        assert new_row["war"] == old_row["war"] and new_row["uar"] == old_row["uar"]


def test_cli_batch_flag_batches_and_the_default_trains_one_by_one(tmp_path, tiny_clip_path, tiny_clip, monkeypatch):
    from tgdfer.cli import main
    from tgdfer.testing.synthetic import write_feature_cache

    path = tmp_path / "c.h5"
    write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=40, views=1, folds=2)
    calls = []
    real = batched.fit_batched
    monkeypatch.setattr(batched, "fit_batched", lambda cfgs, *a, **k: calls.append(len(cfgs)) or real(cfgs, *a, **k))
    common = ["train", "--features", str(path), "--fold", "all", "--device", "cpu", "--set", "train.epochs=1"]
    assert main([*common, "--out", str(tmp_path / "b"), "--batch"]) == 0
    assert calls == [2] and json.loads((tmp_path / "b" / "summary.json").read_text())["folds"] == ["1", "2"]
    assert main([*common, "--out", str(tmp_path / "n")]) == 0  # default: one by one
    assert calls == [2] and (tmp_path / "n" / "fold2" / "metrics.json").exists()
    sweep = ["ablate", "--table", "3", "--features", str(path), "--rows", "e", "--set", "train.epochs=1"]
    assert main([*sweep, "--out", str(tmp_path / "s"), "--device", "cpu"]) == 0 and calls == [2]
    assert main([*sweep, "--out", str(tmp_path / "t"), "--batch", "--device", "cpu"]) == 0 and calls == [2, 2]
