"""The trained run as the timeline uses it: loaded once, its CLIP image tower in the chosen precision, its text
prompts computed once and the text tower freed, and the face-crop choice said in words."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tgdfer.apps.predict import image_encoder
from tgdfer.backbone import cast_image_tower, drop_text_tower
from tgdfer.config import TimelineConfig
from tgdfer.devices import autocast, cpu_has_amx, dtype_name, resolve_dtype
from tgdfer.train.runs import TrainedRun, load_run


class PromptsOnce(torch.nn.Module):
    """The run's text prompts (X^FP, X^CP, Eq. 6) computed once, under the autocast a model call uses, and
    returned by every later call. In inference they depend only on the trained weights, yet ``TGDFER.forward``
    runs the CLIP text tower for them each call: 0.5-4.5 s on 2 CPU threads for ViT-B/32, more than a whole
    batch of windows costs otherwise. The values are the ones the uncached module returns."""

    def __init__(self, prompts: torch.nn.Module, device: torch.device, amp: bool):
        super().__init__()
        with torch.inference_mode(), autocast(device, amp):
            self.values = tuple(t.detach() for t in prompts())  # (C, D) each

    def forward(self) -> tuple[torch.Tensor, ...]:
        return self.values


def encoder_precision(run: TrainedRun, choice: str) -> str:
    """Put the run's image tower (after ``predict.image_encoder``) in the dtype ``choice`` names and say which, and
    why.

    auto keeps predict's dtype (on CUDA the cache's, fp16 for stage 1's caches; fp32 on CPU), except on a CPU with
    AMX, where bf16 runs the tower 3-4x faster than fp32 and moves the window probabilities by less than the
    tolerance the README states (measured there, bounded in tests/test_timeline.py); fp32 then reproduces
    predict exactly. Stage 1 on a GPU encodes in fp16 anyway, so a run's features were never exact fp32.
    """
    clip = run.clip
    why = "as asked"
    if choice == "auto":
        if clip.device.type == "cuda" or not cpu_has_amx():
            return f"image encoder {dtype_name(clip.dtype)} (auto: as predict; --precision to choose)"
        choice, why = "bf16", "auto: this CPU has AMX; --precision fp32 for predict's exact values"
    clip.model.visual.float()  # from fp32 (no copy on CPU): image_encoder casts all of it, LayerNorms too, on CUDA
    if choice != "fp32":
        cast_image_tower(clip.model, resolve_dtype(choice, clip.device))
    return f"image encoder {choice} ({why})"


def timeline_run(cfg: TimelineConfig, log: Callable[[str], None]) -> TrainedRun:
    """Load ``cfg.run`` for the timeline: the image tower on the model's device in ``cfg.precision``, the prompts
    computed once (this run object only) and the text tower freed (ViT-B/32: 253 MB)."""
    run = load_run(cfg.run, cfg.device, cfg.clip)
    image_encoder(run)  # the run's CLIP image tower on its device and dtype, as predict uses it
    device = next(run.model.parameters()).device
    run.model.prompts = PromptsOnce(run.model.prompts, device, run.config.train.amp)
    drop_text_tower(run.clip.model)  # the prompts were its only use here
    log(encoder_precision(run, cfg.precision))
    return run


def face_crop_choice(run: TrainedRun, asked: bool | None, log: Callable[[str], None]) -> bool:
    """Face crops on or off: as asked, else as the run's cache was made (on when it records nothing: raw video);
    said in ``log``, with a warning when the choice differs from the run's cache."""
    recorded = run.identity.get("face_crop")
    if asked is None:
        face_crop = True if recorded is None else bool(recorded)
        why = "the run records none; raw video" if recorded is None else "as the run's cache was made"
        log(f"face crop {'on' if face_crop else 'off'} ({why}; --face-crop/--no-face-crop override)")
        return face_crop
    if recorded is not None and bool(recorded) != asked:
        log(
            f"face crop {'on' if asked else 'off'} as asked, although the run's cache was made "
            f"{'with' if recorded else 'without'} face crops"
        )
    return asked
