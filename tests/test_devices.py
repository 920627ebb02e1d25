"""Where train.amp runs bf16 autocast (CUDA and AMX CPUs), and that a bf16 step on the CPU trains like fp32."""

from __future__ import annotations

import pytest
import torch

from tgdfer import devices
from tgdfer.config import RunConfig, TrainConfig, apply_overrides
from tgdfer.errors import ConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda:0")  # a device object needs no GPU: the decision is pure


@pytest.mark.parametrize(
    ("amp", "device", "has_amx", "bf16"),
    [
        ("auto", CUDA, False, True),
        ("auto", CPU, True, True),
        ("auto", CPU, False, False),
        ("on", CPU, False, True),
        ("on", CUDA, False, True),
        ("off", CUDA, True, False),
        ("off", CPU, True, False),
        (True, CPU, True, True),  # the setting before it had three values: True is auto
        (True, CPU, False, False),
        (False, CUDA, False, False),
    ],
)
def test_amp_is_on_for_cuda_and_amx_cpus_only(amp, device, has_amx, bf16):
    assert devices.amp_enabled(amp, device, has_amx=has_amx) is bf16


@pytest.mark.parametrize("has_amx", [True, False])
def test_auto_asks_the_amx_probe(monkeypatch, has_amx):
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: has_amx)
    with devices.autocast(CPU, TrainConfig().amp):
        assert torch.is_autocast_enabled("cpu") is has_amx
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_amp_setting_values():
    assert TrainConfig().amp == "auto"
    assert TrainConfig(amp=True).amp == "auto" and TrainConfig(amp=False).amp == "off"  # older checkpoints
    assert apply_overrides(RunConfig(), ["train.amp=on"]).train.amp == "on"
    with pytest.raises(ConfigError, match="expected one of auto, on, off, found 'fast'"):
        apply_overrides(RunConfig(), ["train.amp=fast"])
    with pytest.raises(ConfigError, match=r"train\.amp: expected one of auto, on, off"):
        devices.amp_enabled("fast", CPU)


def _one_epoch(feature_cache, tiny_clip, amp: str):
    """One epoch (4 steps of 48 clips) from the same initial weights and draws -> mean loss, model, test views."""
    from tgdfer.features.cache import load_cache
    from tgdfer.train.engine import make_optimizer, train_one_epoch
    from tgdfer.train.runs import build_model, cache_identity
    from tgdfer.train.splits import fold_data

    cache = load_cache(feature_cache[0])
    cfg = apply_overrides(RunConfig(features=str(feature_cache[0]), device="cpu"), [f"train.amp={amp}"])
    data = fold_data(cache, "1", CPU)
    model, _ = build_model(cfg, cache_identity(cache), CPU, tiny_clip)
    optimizer, _ = make_optimizer(model, cfg)
    loss = train_one_epoch(model, optimizer, data, cfg.train, 0)["loss"]
    return loss, model, data.features[data.test_rows]  # (m, T, D)


def test_a_forced_bf16_cpu_epoch_trains_like_fp32(feature_cache, tiny_clip):
    """train.amp=on runs the trainer's steps and inference in bf16 on any CPU: finite, and close to fp32."""
    from tgdfer.model.inference import predict_features

    loss32, _, _ = _one_epoch(feature_cache, tiny_clip, "off")
    loss16, model, x = _one_epoch(feature_cache, tiny_clip, "on")
    assert torch.isfinite(torch.tensor(loss16)) and loss16 != loss32
    assert loss16 == pytest.approx(loss32, rel=0.02)  # measured: 6.340 vs 6.361
    probs16, probs32 = (predict_features(model, x, amp)["probs"] for amp in ("on", "off"))
    assert not torch.equal(probs16, probs32)  # inference ran in bf16
    torch.testing.assert_close(probs16, probs32, atol=0.06, rtol=0)  # measured: 0.022 at most


def test_a_run_saved_with_a_boolean_amp_resumes_under_the_choice_it_means():
    """Runs saved when train.amp was a bool: True reads as auto (no difference to resume over), False as off."""
    from tgdfer.config import RunConfig, to_dict
    from tgdfer.train.runs import differing_settings

    stored = to_dict(RunConfig())
    stored["train"]["amp"] = True
    assert differing_settings(RunConfig(), stored) == []
    stored["train"]["amp"] = False
    assert differing_settings(RunConfig(), stored) == ["train.amp"]
