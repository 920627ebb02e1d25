"""Eq. 11's bag prediction and the scaled cosine, on values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from tgdfer.errors import ConfigError
from tgdfer.model.influence import minmax, scaled_cosine
from tgdfer.model.mil import aggregate, instance_scores

# One clip, two frames, one class: frame scores 1 and 3; attention logits 0 and ln 3, so weights 1/4 and 3/4.
SCORES = torch.tensor([[[1.0], [3.0]]])  # (B=1, T=2, C=1)
LOGITS = torch.tensor([[[0.0], [math.log(3.0)]]])


@pytest.mark.parametrize(
    ("mode", "topk", "expected"),
    [("attention", 1, 2.5), ("mean", 1, 2.0), ("topk", 1, 3.0), ("mixed", 1, 2.5)],
)
def test_each_reading_on_hand_computed_values(mode, topk, expected):
    assert aggregate(SCORES, LOGITS, mode, topk).item() == pytest.approx(expected, abs=1e-6)


def test_topk_averages_the_k_highest_frames():
    scores = torch.tensor([[[4.0], [1.0], [2.0], [0.0]]])  # (1, 4, 1)
    assert aggregate(scores, torch.zeros_like(scores), "topk", 2).item() == pytest.approx(3.0)
    assert aggregate(scores, torch.zeros_like(scores), "topk", 9).item() == pytest.approx(7.0 / 4)  # k capped at T


@pytest.mark.parametrize("mode", ["attention", "mean", "topk", "mixed"])
def test_a_mask_leaves_only_the_chosen_frames(mode):
    mask = torch.tensor([[True, False]])  # frame 0 only: its score 1, whatever frame 1 holds
    assert aggregate(SCORES, LOGITS, mode, 2, mask).item() == pytest.approx(1.0, abs=1e-6)


def test_an_unknown_reading_is_refused():
    with pytest.raises(ConfigError, match=r"model\.mil: expected one of attention, mean, topk, mixed, found 'max'"):
        aggregate(SCORES, LOGITS, "max", 1)


def test_instance_scores_are_cosines_over_tau():
    xi = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])  # (1, 2, 2): lengths do not matter, directions do
    labels = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])  # (1, C=2, 2)
    expected = torch.tensor([[[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]]]) / 0.5
    assert torch.allclose(instance_scores(xi, labels, 0.5), expected, atol=1e-6)
    shared = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # (C, D) text, as Eq. 8's X^FP
    assert torch.allclose(scaled_cosine(xi, shared, 0.5), expected, atol=1e-6)


def test_minmax_is_eq_12():
    assert minmax(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert minmax(np.array([5.0, 5.0])).tolist() == [0.0, 0.0]
