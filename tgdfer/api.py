"""The Python API: what a notebook needs, as ``tgdfer.<name>`` (``import tgdfer`` loads this module, and torch, on
first use of a name, so the import itself stays instant).

Clips and views. A cache holds C clips and V views of them. Clip rows (``cache.clip_ids``, ``labels``,
``clip_paths``, ``membership``, ``face_frames``) are sorted by clip id; view rows (``cache.features`` (V, T, D),
``view_clip``, ``view_kind``, ``view_frames``) hold every clip's *test view* (kind 0: the T segment-centre frames,
plain preprocessing; every clip has one, in the train split or not) and its augmented *train views* (kind 1).
``view_clip[v]`` is the clip row of view v. Training draws one train view per train clip and epoch; evaluation,
``predict`` and ``test_view_features`` use test views. Everything returned per input or per clip keeps the order
it was given in (inputs) or the clip row order (caches).

    extract_features(ExtractConfig) stage 1: clips -> feature cache (the ``tgdfer extract`` command)
    load_cache(path)                a cache in memory (``FeatureCache``)
    test_view_features(cache)       (C, T, D) test-view features, (C,) labels, C ids, in clip row order
    fit(RunConfig)                  stage 2 (``tgdfer train``): one split, or every split with fold="all"
    load_run(run_dir)               a trained run (``TrainedRun``), for the predict functions
    predict(paths, run)             video files or frame folders -> one result dict each
    predict_frames(clips, run)      frames in memory, one (n, H, W, 3) uint8 RGB array per clip -> result dicts
    predict_features(features, run) (N, T, D) features of one view each -> probabilities and frame influence
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tgdfer.apps.predict import predict as _predict
from tgdfer.config import (
    AugmentConfig,
    ExtractConfig,
    ModelConfig,
    OptimConfig,
    PredictConfig,
    RunConfig,
    SweepConfig,
    TrainConfig,
    apply_overrides,
)
from tgdfer.data.sampling import TEST_VIEW
from tgdfer.errors import ConfigError
from tgdfer.extract import extract as _extract
from tgdfer.features.cache import load_cache
from tgdfer.features.views import FeatureCache
from tgdfer.model.inference import predict_features as _model_features
from tgdfer.train.folds import train as _train
from tgdfer.train.runs import TrainedRun
from tgdfer.train.runs import load_run as _load_run

__all__ = [
    "AugmentConfig",
    "ExtractConfig",
    "FeatureCache",
    "ModelConfig",
    "OptimConfig",
    "PredictConfig",
    "RunConfig",
    "SweepConfig",
    "TrainConfig",
    "TrainedRun",
    "apply_overrides",
    "extract_features",
    "fit",
    "load_cache",
    "load_run",
    "predict",
    "predict_features",
    "predict_frames",
    "test_view_features",
]


def extract_features(cfg: ExtractConfig) -> dict:
    """Stage 1 as ``tgdfer extract``: encode every clip of ``cfg``'s dataset into the cache ``cfg.out``; returns
    the summary figures. A rerun with the same settings keeps what is done; other settings are refused by name."""
    return _extract(cfg)


def fit(cfg: RunConfig, resume: bool = False, log=print) -> dict:
    """Stage 2 as ``tgdfer train``: train on ``cfg.features`` split ``cfg.fold`` into the run directory ``cfg.out``
    and return the final epoch's metrics (``fold="all"``: every split under ``cfg.out/fold<k>``, and their mean
    and std). ``log`` gets the progress lines. The final epoch is reported; val clips, if any, are scored per
    epoch in log.csv for choosing ``train.epochs``, and the test clips are never used to choose anything."""
    return _train(cfg, resume=resume, log=log)


def load_run(run_dir: str | Path, device: str = "auto", clip: str | None = None) -> TrainedRun:
    """A run directory written by ``fit``/``tgdfer train``, rebuilt for inference on ``device`` with the CLIP
    weights it was trained with (``clip`` names another copy of them; other weights are refused)."""
    return _load_run(run_dir, device, clip)


def _as_run(run: TrainedRun | str | Path, device: str) -> TrainedRun:
    return run if isinstance(run, TrainedRun) else load_run(run, device)


def test_view_features(cache: FeatureCache) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every clip's test view: ((C, T, D) float16 features, (C,) int64 labels, C clip ids), in clip row order.

    "Test view" is the view kind (segment-centre frames, what evaluation and predict see), not the test split:
    select a split's clips with ``cache.membership[:, split] == TEST`` (or ``TRAIN``, ``VAL``: the membership codes
    of ``tgdfer.data.datasets``) on the same rows.
    """
    by_clip = cache.views_by_clip(TEST_VIEW)
    rows = np.array([by_clip[c][0] for c in range(len(cache.clip_ids))], dtype=np.int64)
    return cache.features[rows], cache.labels.copy(), [str(i) for i in cache.clip_ids]


def predict(
    paths: list[str | Path],
    run: TrainedRun | str | Path,
    face_crop: bool | None = None,
    require_face: bool = False,
    device: str = "auto",
    batch_clips: int = 16,
    workers: int = -1,
) -> list[dict]:
    """Classify video files or frame folders with a run (loaded, or its directory): one dict per path, in order
    (keys as ``tgdfer.apps.predict.predict``: ok, predicted, probabilities, influence, face_found, warning, ...).

    Frames are sampled (the test view) and preprocessed as the run's cache was; ``face_crop`` True/False overrides
    the cache's face-crop setting (the result's "note" says so). ``require_face`` fails inputs with no face.
    """
    loaded = _as_run(run, device)
    cfg = PredictConfig(
        run=str(run) if not isinstance(run, TrainedRun) else "(loaded)",
        device=device,
        face_crop=face_crop,
        require_face=require_face,
        batch_clips=batch_clips,
        workers=workers,
    )
    return _predict([str(p) for p in paths], cfg, run=loaded)


def predict_frames(
    clips: list,
    run: TrainedRun | str | Path,
    names: list[str] | None = None,
    face_crop: bool | None = None,
    require_face: bool = False,
    device: str = "auto",
    batch_clips: int = 16,
) -> list[dict]:
    """Classify clips already in memory: ``clips`` holds one (n, H, W, 3) uint8 RGB array (or a list of n
    (H, W, 3) frames) per clip, any n >= 1. Each is sampled and preprocessed exactly as a frame folder holding the
    same frames would be. Returns ``predict``'s dicts in the order of ``clips``; "path" is ``names[i]`` (default
    "frames[i]")."""
    names = [f"frames[{i}]" for i in range(len(clips))] if names is None else [str(n) for n in names]
    if len(names) != len(clips):
        raise ConfigError(f"names: expected one per clip ({len(clips)}), found {len(names)}")
    loaded = _as_run(run, device)
    cfg = PredictConfig(
        run="(loaded)", device=device, face_crop=face_crop, require_face=require_face, batch_clips=batch_clips
    )
    return _predict(names, cfg, run=loaded, frames=list(clips))


def predict_features(features, run: TrainedRun | str | Path, batch_size: int = 1024, device: str = "auto") -> dict:
    """Run a trained model on features already encoded: (N, T, D) (numpy or torch), one view per row, T and D
    the run's (e.g. ``test_view_features(cache)[0]``).

    Returns {"class_names": C names, "probabilities": (N, C) float32, "predicted": N class names,
    "influence": (N, T, C) float32 instance scores of every frame for every class (Eq. 11 before pooling)},
    rows in the order of ``features``.
    """
    loaded = _as_run(run, device)
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    frames, dim = int(loaded.identity["frames"]), int(loaded.identity["dim"])
    if x.ndim != 3 or tuple(x.shape[1:]) != (frames, dim):
        raise ConfigError(
            f"features: expected (N, T={frames}, D={dim}) for this run, found {tuple(x.shape)}; pass one view per "
            "row, encoded with the run's CLIP (e.g. test_view_features(cache)[0])"
        )
    model_device = next(loaded.model.parameters()).device
    out = _model_features(loaded.model, x.to(model_device), amp=loaded.config.train.amp, batch_size=batch_size)
    probs = out["probs"].cpu().numpy().astype(np.float32)
    names = loaded.class_names
    return {
        "class_names": names,
        "probabilities": probs,
        "predicted": [names[int(k)] for k in probs.argmax(1)],
        "influence": out["scores"].cpu().numpy().astype(np.float32),
    }
