"""TG-DFER assembled: shapes, gradient flow (trainable parts get gradients, frozen CLIP none), variants."""

import copy
import dataclasses

import pytest
import torch

from tgdfer.config import ModelConfig
from tgdfer.labels import CLASS_NAMES
from tgdfer.model.mil import aggregate
from tgdfer.model.network import FROZEN_PREFIX, TGDFER, count_parameters


@pytest.fixture()
def clip_model(tiny_clip_path):
    from tgdfer.backbone import load_clip

    return load_clip(str(tiny_clip_path)).model


def _model(clip_model, **overrides) -> TGDFER:
    return TGDFER(dataclasses.replace(ModelConfig(), **overrides), clip_model, CLASS_NAMES["dfew"], 16, 32)


def test_every_trainable_parameter_gets_a_gradient_and_clip_none(clip_model):
    model = _model(clip_model, dropout=0.0)
    out = model(torch.randn(4, 16, 32))
    assert out.logits.shape == (4, 7) and out.scores.shape == (4, 16, 7) and out.align.shape == (4, 16, 7)
    y = torch.tensor([0, 1, 2, 3])
    sum(torch.nn.functional.cross_entropy(bag, y) for bag in (out.logits, *out.aux)).backward()  # the engine's loss
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert name.startswith(FROZEN_PREFIX) and p.grad is None, name
    trainable, frozen = count_parameters(model)
    assert trainable > 0 and frozen > 0
    prompt, rest = model.parameter_groups()
    assert len(prompt) == 2 and sum(p.numel() for p in prompt + rest) == trainable


@pytest.mark.parametrize("placement", ["add", "prepend", "off"])
@pytest.mark.parametrize("mil", ["attention", "mean", "topk"])
def test_variants_run(clip_model, placement, mil):
    model = _model(clip_model, visual_prompt=placement, mil=mil)
    assert model(torch.randn(2, 16, 32)).logits.shape == (2, 7)


@pytest.mark.parametrize(
    ("fine_text", "fine_learnable", "coarse_text", "coarse_learnable"),
    [
        ("class", False, "class", False),
        ("descriptors", False, "descriptors", True),
        ("descriptors", True, "class", False),
    ],
)
def test_table5_prompt_settings_run(clip_model, fine_text, fine_learnable, coarse_text, coarse_learnable):
    model = _model(
        clip_model,
        fine_text=fine_text,
        fine_learnable=fine_learnable,
        coarse_text=coarse_text,
        coarse_learnable=coarse_learnable,
    )
    prompt, _ = model.parameter_groups()
    assert len(prompt) == fine_learnable + coarse_learnable
    assert model(torch.randn(2, 16, 32)).logits.shape == (2, 7)


def test_frame_mask_confines_the_bag_to_chosen_frames(clip_model):
    model = _model(clip_model, dropout=0.0).eval()
    x = torch.randn(2, 16, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 3] = True
    out = model(x, frame_mask=mask)
    for mode in ("attention", "mean", "topk"):
        bag = aggregate(out.scores, out.align, mode, 4, mask)
        assert torch.allclose(bag, out.scores[:, 3], atol=1e-5), mode


def test_checkpoint_state_leaves_out_clip(clip_model):
    model = _model(clip_model)
    state = model.trainable_state()
    assert state and not any(k.startswith(FROZEN_PREFIX) for k in state)
    other = _model(clip_model)
    other.load_trainable_state(state)
    x = torch.randn(2, 16, 32)
    model.eval(), other.eval()
    assert torch.equal(model(x).logits, other(x).logits)
    with pytest.raises(ValueError, match="does not fit"):
        _model(clip_model, fine_depth=2).load_trainable_state(state)


@pytest.mark.parametrize("placement", ["add", "prepend", "off"])
def test_bf16_autocast_trains_and_keeps_scores_fp32(clip_model, placement):
    """CUDA training runs under bf16 autocast; CPU autocast takes the same dtype paths."""
    model = _model(clip_model, visual_prompt=placement)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(3, 16, 32))
    assert out.scores.dtype == torch.float32 and out.align.dtype == torch.float32
    y = torch.tensor([0, 1, 2])
    sum(torch.nn.functional.cross_entropy(bag.float(), y) for bag in (out.logits, *out.aux)).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


READINGS = [
    {},
    {"mil": "attention"},
    {"mil": "mean"},
    {"mil": "topk", "topk": 2},
    {"instances": "temporal"},
    {"instances": "frame"},
    {"instances": "both"},
    {"visual_prompt": "prepend"},
    {"visual_prompt": "off"},
    {"vp_weights": "raw"},
    {"window_merge": "first"},
    {"stride": 0},
    {"stride": 3},
    {"coarse_depth": 0},
    {"fine_depth": 0, "coarse_depth": 2},
]


@pytest.mark.parametrize("overrides", READINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "grad"])
def test_table6_sees_only_the_chosen_frames(clip_model, overrides, grad):
    """Re-predicting from k frames (Table 6): the frames left out reach no module, so changing them changes
    nothing in the logits (they are never attention keys, in the fine windows or the coarse transformer, and
    get no weight in any pooling)."""
    model = _model(clip_model, dropout=0.0, **overrides).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, 32, generator=g)
    mask = torch.zeros(4, 16, dtype=torch.bool)
    for row, frames in enumerate(([2], [0, 5], [13, 14, 15], [7, 8, 9, 10])):
        mask[row, frames] = True
    other = torch.where(mask[:, :, None], x, 5 * torch.randn(x.shape, generator=g))
    with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
        a, b = model(x, frame_mask=mask).logits, model(other, frame_mask=mask).logits
        full = model(x).logits
    assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
    assert not torch.allclose(a, full, atol=1e-3)  # the mask does act


def test_a_run_saved_before_the_frame_stream_rebuilds_the_network_it_trained():
    """Configs saved before ``model.instances`` existed trained on X^I alone: they must not read as the new
    two-stream default (their checkpoints would not fit), while today's configs round-trip as saved."""
    from tgdfer.config import RunConfig, from_dict, to_dict

    saved = to_dict(RunConfig(features="c.h5", out="run"))
    assert from_dict(RunConfig, saved).model.instances == "both"
    del saved["model"]["instances"]
    assert from_dict(RunConfig, saved).model.instances == "temporal"


@pytest.mark.parametrize("bag", ["temporal", "ensemble"])
def test_each_stream_trains_by_its_own_loss(clip_model, bag):
    """frame_grad="own": the frame stream's bag (the last aux) trains its frame map and label offset only, never
    the prompts or the Eq. 10 MLP the temporal stream scores against. bag="temporal": the logits are the temporal
    bag; bag="ensemble": (temporal + w frame) / (1 + w), detached, each stream's bag in aux."""
    model = _model(clip_model, dropout=0.0, instances="both", bag=bag, frame_grad="own", frame_weight=0.25)
    x, y = torch.randn(4, 16, 32), torch.tensor([0, 1, 2, 3])
    out = model(x)
    if bag == "temporal":
        assert len(out.aux) == 1
        torch.nn.functional.cross_entropy(out.logits, y).backward()
    else:
        temporal, frame = out.aux
        assert not out.logits.requires_grad
        assert torch.allclose(out.logits, (temporal + 0.25 * frame) / 1.25, atol=1e-5)
        torch.nn.functional.cross_entropy(temporal, y).backward()
    assert model.frame.weight.grad is None and model.frame_offset.grad is None
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x).aux[-1], y).backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained == {"frame.weight", "frame_offset"}, trained


def test_runs_saved_before_the_temporal_bag_rebuild_the_mean_of_both_streams():
    """Two-stream runs saved before ``model.bag`` / ``model.frame_grad`` existed predicted from the mean of both
    bags and trained both streams jointly: absent keys read as that, not as today's defaults."""
    from tgdfer.config import RunConfig, from_dict, to_dict

    saved = to_dict(RunConfig(features="c.h5", out="run"))
    assert from_dict(RunConfig, saved).model == RunConfig(features="c.h5", out="run").model
    del saved["model"]["bag"], saved["model"]["frame_grad"]
    model = from_dict(RunConfig, saved).model
    assert (model.bag, model.frame_grad) == ("mean", "shared")


def test_the_forward_runs_under_vmap_over_stacked_models(clip_model):
    """The batched trainer calls TGDFER under torch.func.vmap (stack_module_state + functional_call): the forward
    has no tensor-valued Python control flow (the text tower's length is a Python int), and each run's logits and
    bags equal its own model's."""
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    models = [_model(clip_model, dropout=0.0) for _ in range(2)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")  # a copy: the models share the fixture's CLIP text modules
    x = torch.randn(2, 3, 16, 32)  # (R, B, T, D)

    def run(p, b, xr):
        out = functional_call(base, (p, b), (xr,))
        return out.logits, *out.aux

    batched = vmap(run, randomness="different")(params, buffers, x)
    for r, model in enumerate(models):
        out = model(x[r])
        for got, want in zip(batched, (out.logits, *out.aux), strict=True):
            assert torch.allclose(got[r], want, atol=1e-4)
