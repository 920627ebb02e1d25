"""Frame sampling: pure functions of (n, T, seed, clip, view)."""

import numpy as np
import pytest

from tgdfer.data.sampling import centre_indices, segment_bounds, train_indices, view_rng


@pytest.mark.parametrize("n", [16, 17, 31, 77, 847])
def test_test_view_takes_segment_centres(n):
    idx = centre_indices(n, 16)
    starts, ends = segment_bounds(n, 16)
    assert idx.shape == (16,)
    assert np.all(idx == (starts + ends - 1) // 2)
    assert np.all(np.diff(idx) > 0) and idx[0] < n / 16 and idx[-1] >= n - n / 16 - 1


def test_short_clips_pad_with_the_last_frame():
    assert centre_indices(5, 8).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert train_indices(1, 4, view_rng(0, "a", 0)).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("n", [16, 20, 31, 77])
def test_train_view_draws_one_frame_per_segment_over_the_whole_clip(n):
    starts, ends = segment_bounds(n, 16)
    seen = set()
    for view in range(50):
        idx = train_indices(n, 16, view_rng(0, "00001", view))
        assert np.all((idx >= starts) & (idx < ends))
        seen.update(idx.tolist())
    assert max(seen) >= n - (n // 16) - 1  # reaches the clip's end (not frames 0..15 only)
    assert len(seen) == n  # every frame can be drawn


def test_train_views_depend_only_on_seed_clip_and_view():
    a = train_indices(77, 16, view_rng(3, "00042", 1))
    assert np.array_equal(a, train_indices(77, 16, view_rng(3, "00042", 1)))
    assert not np.array_equal(a, train_indices(77, 16, view_rng(3, "00042", 2)))
    assert not np.array_equal(a, train_indices(77, 16, view_rng(4, "00042", 1)))
    assert not np.array_equal(a, train_indices(77, 16, view_rng(3, "00043", 1)))


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="at least 1 frame"):
        centre_indices(0, 16)
