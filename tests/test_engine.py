"""Stage 2 on generated caches: it learns what the paper claims, reproducibly, resumably, and refuses misfits."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tgdfer.config import RunConfig, apply_overrides
from tgdfer.errors import TrainingError
from tgdfer.features.cache import CacheError, load_cache
from tgdfer.model.inference import predict_features as predict_views
from tgdfer.testing.synthetic import write_feature_cache
from tgdfer.train.engine import fit_fold
from tgdfer.train.folds import fit_folds
from tgdfer.train.splits import fold_data

FAST = ["train.epochs=4", "train.batch_size=16"]


def _cfg(cache, out, *overrides):
    return apply_overrides(RunConfig(features=str(cache), out=str(out), device="cpu"), list(overrides))


@pytest.mark.integration
def test_learns_and_localises_the_expression_burst_from_clip_labels(tmp_path, tiny_clip_path, tiny_clip):
    """CLIP-like features (one shared direction, a per-clip identity, per-frame noise) whose class shows only in
    one burst of 2-5 consecutive frames of 16, some clips with a weaker burst of another class; 7 balanced
    classes; clip labels only. The default model must classify the clips, rank a burst frame highest for the
    true class, and re-predict better from that 1 frame than from the 1 frame it ranks lowest (Table 6).

    Measured spread with the default of issue 23 (8 seeds, each seeding cache and training, x 1 and 2 torch
    threads, 16 runs, this exact setting, torch 2.14 CPU): WAR 61.3 / 77.3 / 87.5 (min / mean / max), UAR 61.4 /
    77.3 / 86.8, hit rate 0.838 / 0.938 / 0.994, highest-1 WAR 70.6 / 83.5 / 90.0, lowest-1 WAR 9.4 / 12.7 / 16.9,
    highest-1 minus lowest-1 59.4 / 70.8 / 78.1; the two thread counts gave different WAR on 5 seeds of 8 (by at
    most 3.7: seed 4, 78.8 vs 82.5). Chance: WAR 14.3, hit rate about 0.22 (the burst's share of
    frames). The bars sit far below every run: WAR 35, hit rate 0.5, highest-1 minus lowest-1 30.
    """
    from tgdfer.testing.synthetic import write_burst_cache
    from tgdfer.train.engine import evaluate
    from tgdfer.train.runs import load_run

    path = tmp_path / "bursts.h5"
    info = write_burst_cache(
        path, str(tiny_clip_path), tiny_clip.sha256, n_clips=800, shares=None, views=2, signal=1.5, seed=1
    )
    overrides = ("train.epochs=15", "train.seed=1", "train.eval_every=0", "optim.milestones=9,12")
    metrics = fit_fold(_cfg(path, tmp_path / "run", *overrides), log=lambda s: None)
    assert metrics["war"] > 35 and metrics["uar"] > 35, metrics

    data = fold_data(load_cache(path), "1", torch.device("cpu"))
    run = load_run(tmp_path / "run", device="cpu")
    assert run.epoch == 15 and run.class_names == data.class_names
    out = predict_views(run.model, data.features[data.test_rows], amp=False)
    y = data.test_labels.numpy()
    top = out["scores"].numpy()[np.arange(len(y)), :, y].argmax(1)  # frame of highest influence, true class
    hit_rate = info["burst"][data.test_rows.numpy(), top].mean()
    assert hit_rate > 0.5, hit_rate
    highest = evaluate(run.model, data, amp=False, select=("highest", 1)).war
    lowest = evaluate(run.model, data, amp=False, select=("lowest", 1)).war
    assert highest - lowest > 30, (highest, lowest)


@pytest.mark.integration
def test_same_seed_same_metrics(feature_cache, tmp_path):
    path, _ = feature_cache
    a = fit_fold(_cfg(path, tmp_path / "a", *FAST), log=lambda s: None)
    b = fit_fold(_cfg(path, tmp_path / "b", *FAST), log=lambda s: None)
    assert a["war"] == b["war"] and a["uar"] == b["uar"] and a["confusion"] == b["confusion"]
    log_a = (tmp_path / "a" / "log.csv").read_text().splitlines()
    log_b = (tmp_path / "b" / "log.csv").read_text().splitlines()
    strip = [lambda line: line.rsplit(",", 1)[0]]  # last column is wall-clock seconds
    assert [strip[0](x) for x in log_a] == [strip[0](x) for x in log_b]


@pytest.mark.integration
def test_resume_reaches_the_uninterrupted_metrics(feature_cache, tmp_path):
    path, _ = feature_cache
    overrides = [*FAST, "optim.milestones=2,3"]  # the schedule changes inside the interrupted span
    whole = fit_fold(_cfg(path, tmp_path / "whole", *overrides), log=lambda s: None)

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_fold(_cfg(path, tmp_path / "cut", *overrides), on_epoch_end=interrupt, log=lambda s: None)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    with pytest.raises(TrainingError, match="--resume"):
        fit_fold(_cfg(path, tmp_path / "cut", *overrides), log=lambda s: None)
    resumed = fit_fold(_cfg(path, tmp_path / "cut", *overrides), resume=True, log=lambda s: None)
    assert resumed["war"] == whole["war"] and resumed["confusion"] == whole["confusion"]
    with pytest.raises(TrainingError, match="other settings"):
        (tmp_path / "cut" / "metrics.json").unlink()
        fit_fold(_cfg(path, tmp_path / "cut", *overrides, "model.window=2"), resume=True, log=lambda s: None)


@pytest.mark.integration
def test_run_directory_holds_everything(feature_cache, tmp_path):
    path, _ = feature_cache
    out = tmp_path / "run"
    metrics = fit_fold(_cfg(path, out, *FAST, "train.eval_every=2"), log=lambda s: None)
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "log.csv",
        "checkpoint.pt",
        "metrics.json",
        "confusion.png",
        "curves.png",
    }
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["war"] == metrics["war"] and saved["epoch"] == 4 and len(saved["per_class"]) == 7
    assert json.loads((out / "config.json").read_text())["model"]["window"] == 4
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("epoch,lr,loss,train_acc,test_war,test_uar")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)  # tensors and plain types only
    assert set(ckpt) >= {"format", "model", "optimizer", "scheduler", "rng", "epoch", "config", "cache", "history"}
    assert json.loads(ckpt["config"])["train"]["epochs"] == 4
    assert not any(k.startswith("prompts.tower.") for k in ckpt["model"])
    for name, size in (("confusion.png", (725, 652)), ("curves.png", (1000, 380))):
        with Image.open(out / name) as img:
            assert img.size == size and img.getextrema() != ((255, 255),) * 3


@pytest.mark.integration
def test_all_folds_report_mean_and_std(tmp_path, tiny_clip_path, tiny_clip):
    path = tmp_path / "c.h5"
    write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=60, views=1, folds=3)
    summary = fit_folds(
        _cfg(path, tmp_path / "all", "train.epochs=1", "train.batch_size=16"),
        ["1", "2", "3"],
        log=lambda s: None,
    )
    wars = [json.loads((tmp_path / "all" / f"fold{k}" / "metrics.json").read_text())["war"] for k in (1, 2, 3)]
    assert summary["war_mean"] == pytest.approx(np.mean(wars)) and summary["war_std"] == pytest.approx(np.std(wars))
    assert (tmp_path / "all" / "summary.json").exists() and (tmp_path / "all" / "confusion.png").exists()


def test_non_finite_loss_stops_and_says_where(tmp_path, tiny_clip_path, tiny_clip):
    path = tmp_path / "c.h5"
    write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=40, views=1)
    # a diverging learning rate (an Inf in the cache is refused by load_cache, naming its view: test_faults.py)
    with pytest.raises(TrainingError, match=r"non-finite loss .* epoch 1, step 2 of .* Try a lower optim.lr"):
        fit_fold(_cfg(path, tmp_path / "run", *FAST, "optim.lr=1e30", "train.grad_clip=0"), log=lambda s: None)


def test_misfit_caches_are_refused(tmp_path, tiny_clip_path, tiny_clip, feature_cache):
    no_train = tmp_path / "test-only.h5"
    write_feature_cache(no_train, str(tiny_clip_path), tiny_clip.sha256, n_clips=20, views=0)
    with pytest.raises(CacheError, match=r"expected augmented train views.*found none"):
        fit_fold(_cfg(no_train, tmp_path / "a", *FAST), log=lambda s: None)
    path, _ = feature_cache
    with pytest.raises(CacheError, match="found '6'"):
        fit_fold(_cfg(path, tmp_path / "b", *FAST, "fold=6"), log=lambda s: None)
    from tgdfer.backbone import save_random_clip

    other = save_random_clip(tmp_path / "other.pt", seed=1)
    with pytest.raises(CacheError, match=r"sha256 .* but .* was extracted with"):
        fit_fold(_cfg(path, tmp_path / "c", *FAST, f"clip={other}"), log=lambda s: None)
