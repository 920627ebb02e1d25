"""Slow and GPU tests, skipped by default (`make test-slow` runs them): the real ViT-B/32 architecture (random
weights, nothing downloads) and CUDA. On a GPU machine: `.venv/bin/python -m pytest -m "slow or gpu"`."""

import numpy as np
import pytest
import torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def vitb32(tmp_path_factory):
    from tgdfer.backbone import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("vitb") / "vitb32.pt", "ViT-B/32", seed=0)


@pytest.mark.slow
def test_truncated_text_tower_is_exact_for_vitb32(vitb32):
    from tgdfer.backbone import load_clip, tokenize
    from tgdfer.labels import CLASS_NAMES, fixed_prompts
    from tgdfer.model.prompts import TextTower

    clip = load_clip(str(vitb32)).model
    tokens = tokenize(fixed_prompts(CLASS_NAMES["mafw"], "descriptors"))
    reference = clip.encode_text(tokens)
    ours = TextTower(clip)(clip.token_embedding(tokens), tokens.argmax(-1))
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_extract_and_train_with_the_vitb32_architecture(tmp_path, vitb32):
    from tgdfer.config import ExtractConfig, RunConfig, apply_overrides
    from tgdfer.extract import extract
    from tgdfer.features.cache import load_cache
    from tgdfer.testing.synthetic import make_dfew_tree
    from tgdfer.train.engine import fit_fold

    root = make_dfew_tree(tmp_path / "d", 10, frames=(20, 30), size=224)
    extract(ExtractConfig(dataset="dfew", root=str(root), out=str(tmp_path / "c.h5"), clip=str(vitb32), views=1))
    cache = load_cache(tmp_path / "c.h5")
    assert cache.features.shape == (20, 16, 512)
    cfg = apply_overrides(
        RunConfig(features=str(tmp_path / "c.h5"), out=str(tmp_path / "run")), ["train.epochs=1", "train.batch_size=4"]
    )
    metrics = fit_fold(cfg, log=lambda s: None)
    assert metrics["test_clips"] == 2 and metrics["war"] in (0.0, 50.0, 100.0)  # fold 1 tests 2 of the 10 clips


@pytest.mark.gpu
@cuda
def test_cuda_extraction_matches_cpu(tmp_path, tiny_clip_path, dfew_root):
    from tgdfer.config import ExtractConfig
    from tgdfer.extract import extract
    from tgdfer.features.cache import load_cache

    base = dict(dataset="dfew", root=str(dfew_root), clip=str(tiny_clip_path), views=1, shard_clips=4)
    extract(ExtractConfig(**base, out=str(tmp_path / "cpu.h5"), device="cpu"))
    extract(ExtractConfig(**base, out=str(tmp_path / "gpu.h5"), device="cuda", precision="fp32"))
    a, b = load_cache(tmp_path / "cpu.h5"), load_cache(tmp_path / "gpu.h5")
    assert np.allclose(a.features.astype(np.float32), b.features.astype(np.float32), atol=5e-3)


@pytest.mark.gpu
@cuda
def test_cuda_training_learns_and_resumes(tmp_path, feature_cache):
    from tgdfer.config import RunConfig, apply_overrides
    from tgdfer.train.engine import fit_fold

    path, _ = feature_cache
    cfg = apply_overrides(
        RunConfig(features=str(path), out=str(tmp_path / "run"), device="cuda"),
        ["train.epochs=6", "train.batch_size=16"],
    )
    metrics = fit_fold(cfg, log=lambda s: None)
    assert metrics["war"] > 50
