"""Eq. 7-10, the visual prompt, on a two-frame clip worked out by hand (D = 2, one class, tau = 1).

X^I = [[1, 0], [0, 1]], X^FP = [[1, 0]]: A_I = cos = [1, 0]; softmax over T gives weights e/(e+1) and 1/(e+1);
V^P = N(weights . X^I) = (e, 1) / |(e, 1)|. The MLP's input is X^FP + V^P (add), [V^P; X^FP] (prepend) or X^FP
(off); the output is MLP(input) + X^CP.
"""

import math

import pytest
import torch

from tgdfer.errors import ConfigError
from tgdfer.model.visual_prompt import VisualPrompt

XI = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, T=2, D=2)
XFP = torch.tensor([[1.0, 0.0]])  # (C=1, D)
XCP = torch.tensor([[0.5, -0.5]])
E = math.e
VP = [E / math.hypot(E, 1.0), 1.0 / math.hypot(E, 1.0)]


def _mlp_input(placement: str, weights: str = "softmax", mask=None) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    vp = VisualPrompt(2, placement, weights, mlp_mult=1, tau=1.0)
    seen = {}
    vp.mlp.register_forward_hook(lambda module, args, out: seen.update(x=args[0], y=out))
    out, align = vp(XI, XFP, XCP, mask)
    assert torch.allclose(out, seen["y"] + XCP, atol=1e-6)  # Eq. 10: MLP(.) + X^CP
    return seen["x"][0, 0].tolist(), align, out


def test_add_is_eq_9():
    x, align, out = _mlp_input("add")
    assert x == pytest.approx([1.0 + VP[0], VP[1]], abs=1e-6)
    assert align[0, :, 0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)  # Eq. 8
    assert out.shape == (1, 1, 2)


def test_prepend_puts_the_visual_context_before_the_text():
    x, _, _ = _mlp_input("prepend")
    assert x == pytest.approx([VP[0], VP[1], 1.0, 0.0], abs=1e-6)


def test_off_leaves_the_text_feature_alone():
    x, _, _ = _mlp_input("off")
    assert x == pytest.approx([1.0, 0.0], abs=1e-6)


def test_raw_weights_use_the_scores_themselves():
    x, _, _ = _mlp_input("add", "raw")  # weights (1, 0): V^P = N(X^I_0) = (1, 0)
    assert x == pytest.approx([2.0, 0.0], abs=1e-6)


@pytest.mark.parametrize(("weights", "expected"), [("softmax", [1.0, 1.0]), ("raw", [1.0, 0.0])])
def test_masked_frames_get_no_weight(weights, expected):
    """Frame 1 alone: softmax gives it all the weight (V^P = (0, 1)); raw keeps its score 0, so V^P = 0."""
    x, _, _ = _mlp_input("add", weights, mask=torch.tensor([[False, True]]))
    assert x == pytest.approx(expected, abs=1e-6)


def test_an_unknown_placement_is_refused():
    with pytest.raises(ConfigError, match=r"model\.visual_prompt: expected one of"):
        VisualPrompt(2, "append", "softmax", 1, 1.0)
