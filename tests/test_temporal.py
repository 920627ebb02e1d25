"""The multi-grained temporal network: window arithmetic (Eq. 3), merging, removal by depth 0."""

import pytest
import torch

from tgdfer.model.temporal import MultiGrainedTemporal, merge_matrix, window_starts


@pytest.mark.parametrize(
    ("w", "s", "n"), [(4, 1, 13), (4, 2, 7), (4, 3, 5), (8, 2, 5), (2, 2, 8), (8, 8, 2), (5, 3, 4)]
)
def test_window_count_is_floor_t_minus_w_over_s_plus_one(w, s, n):
    assert len(window_starts(16, w, s)) == n == (16 - w) // s + 1


def test_merge_mean_averages_covering_windows_and_first_takes_the_first():
    m = merge_matrix(6, 3, 1, "mean")  # windows [0-2], [1-3], [2-4], [3-5]
    assert m.shape == (6, 12)
    assert torch.allclose(m.sum(1), torch.ones(6))
    assert m[2].nonzero().flatten().tolist() == [2, 4, 6]  # frame 2 sits in windows 0, 1, 2
    f = merge_matrix(6, 3, 1, "first")
    assert f[2].nonzero().flatten().tolist() == [2] and torch.allclose(f.sum(1), torch.ones(6))


def test_uncovered_frames_keep_their_input():
    net = MultiGrainedTemporal(
        16, 32, fine_depth=1, coarse_depth=0, window=5, stride=3, merge="mean", heads=4, ffn_mult=2, dropout=0.0
    )
    assert window_starts(16, 5, 3) == [0, 3, 6, 9]  # frames 14 and 15 are in no window
    x = torch.randn(2, 16, 32)
    fine = net.fine(x)
    assert torch.equal(fine[:, 14:], x[:, 14:]) and not torch.equal(fine[:, :14], x[:, :14])


@pytest.mark.parametrize(("fine", "coarse"), [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (7, 1)])
def test_every_table3_depth_builds_and_keeps_shapes(fine, coarse):
    net = MultiGrainedTemporal(
        16, 32, fine_depth=fine, coarse_depth=coarse, window=4, stride=1, merge="mean", heads=8, ffn_mult=4, dropout=0.1
    )
    assert (net.fine is None) == (fine == 0) and (net.coarse is None) == (coarse == 0)
    assert net.fc.in_features == 32 * max(1, (fine > 0) + (coarse > 0))
    if fine:
        assert len(net.fine.encoder.layers) == fine
    assert net(torch.randn(3, 16, 32)).shape == (3, 16, 32)


def test_no_stride_means_non_overlapping_windows():
    net = MultiGrainedTemporal(
        16, 32, fine_depth=1, coarse_depth=0, window=4, stride=0, merge="mean", heads=4, ffn_mult=2, dropout=0.0
    )
    assert net.fine.index.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]


def test_bad_settings_say_what_was_expected():
    with pytest.raises(ValueError, match="expected 1 <= w <= T=16, found 20"):
        window_starts(16, 20, 1)
    with pytest.raises(ValueError, match="must divide by the head count"):
        MultiGrainedTemporal(
            16, 30, fine_depth=1, coarse_depth=1, window=4, stride=1, merge="mean", heads=8, ffn_mult=2, dropout=0.0
        )
