"""The cache contract: round trip, checked shards, no fill values."""

import h5py
import numpy as np
import pytest

from tgdfer.data.datasets import TEST
from tgdfer.data.sampling import TEST_VIEW, TRAIN_VIEW
from tgdfer.errors import CacheError
from tgdfer.features.cache import load_cache
from tgdfer.features.store import shard_dir
from tgdfer.testing.synthetic import write_feature_cache


@pytest.fixture()
def small_cache(tmp_path, tiny_clip_path, tiny_clip):
    path = tmp_path / "c.h5"
    write_feature_cache(path, str(tiny_clip_path), tiny_clip.sha256, n_clips=20, views=2, shard_clips=8)
    return path


def test_round_trip_layout(small_cache):
    cache = load_cache(small_cache)
    assert cache.features.shape == (60, 16, 32) and cache.features.dtype == np.float16
    assert (cache.view_kind == TEST_VIEW).sum() == 20 and (cache.view_kind == TRAIN_VIEW).sum() == 40
    assert cache.membership.shape == (20, 5) and cache.split_names == tuple(f"fold{k}" for k in range(1, 6))
    for k in range(5):  # each clip tested in exactly one fold, trained on in the others
        assert set(np.flatnonzero(cache.membership[:, k] == TEST) % 5) == {k}
    assert (cache.membership == TEST).sum(1).tolist() == [1] * 20
    by_clip = cache.views_by_clip(TRAIN_VIEW)
    assert all(len(v) == 2 for v in by_clip.values()) and len(by_clip) == 20
    with h5py.File(small_cache) as f:
        assert f["features"].is_virtual


def test_missing_shard_is_refused_not_filled(small_cache):
    (shard_dir(small_cache) / "shard-00001.h5").unlink()
    with pytest.raises(CacheError, match=r"shard-00001\.h5 is missing"):
        load_cache(small_cache)


def test_rewritten_shard_is_refused(small_cache, tiny_clip_path, tiny_clip):
    other = small_cache.parent / "other.h5"
    write_feature_cache(other, str(tiny_clip_path), tiny_clip.sha256, n_clips=20, views=2, shard_clips=8, seed=9)
    target = shard_dir(small_cache) / "shard-00000.h5"
    target.write_bytes((shard_dir(other) / "shard-00000.h5").read_bytes())
    with pytest.raises(CacheError, match="digest"):
        load_cache(small_cache)


def test_fold_names(small_cache):
    cache = load_cache(small_cache)
    assert cache.split_index("3") == cache.split_index("fold3") == 2
    with pytest.raises(CacheError, match=r"expected one of \['1', '2', '3', '4', '5'\], found '7'"):
        cache.split_index("7")


def test_a_file_that_is_not_a_cache_is_refused_by_name(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match=r"bad\.h5: expected an HDF5 feature cache"):
        load_cache(bad)
