"""Every setting of tgdfer as frozen dataclasses, with the reason for each default.

Stage 2 defaults are the paper's (§4.2, and the best rows of Tables 3-5); anything can be overridden from the
command line with ``--set section.field=value`` (``apply_overrides``). Modules receive plain arguments drawn
from these, never a whole run config.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AugmentConfig:
    """One augmentation per train view, shared by all its frames (paper §4.2)."""

    crop_scale: tuple[float, float] = (
        0.8,
        1.0,
    )  # area kept by the random crop; the frames are tight face crops
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect range, torchvision's RandomResizedCrop default
    max_rotation: float = 10.0  # degrees either way; small, so faces stay upright
    flip: float = 0.5  # probability of a horizontal flip; expressions are near-symmetric
    brightness: float = 0.2  # factors drawn in [1 - x, 1 + x], mild so expressions stay visible
    contrast: float = 0.2
    saturation: float = 0.2


@dataclass(frozen=True)
class ExtractConfig:
    """Stage 1: frozen CLIP frame features for every clip of a dataset."""

    dataset: str  # dfew | ferv39k | mafw | csv: which annotation reader
    root: str  # dataset root folder
    out: str = "cache/dfew.h5"  # entry file; shards go to <out stem>.shards/ beside it
    annotations: str | None = None  # split files folder (or the CSV), when not at the dataset's usual place
    clip: str = "ViT-B/32"  # paper §3.2.1 backbone; a name clip can download, or a checkpoint path
    frames: int = 16  # T, paper §4.2
    views: int = 4  # augmented train views per clip, besides the one test view; stage 2 draws one per epoch
    seed: int = 0  # seeds every train view's frames and augmentation, per (clip, view)
    batch_size: int = 512  # frames per encoder call; fits ViT-B/32 fp16 on any recent GPU
    workers: int = -1  # decode processes; -1: one per CPU core but one (decoding is the bottleneck)
    device: str = "auto"  # auto: CUDA when present (cuda:LOCAL_RANK under torchrun), else CPU
    precision: str = "auto"  # auto: fp16 on CUDA, fp32 on CPU; or fp32 | fp16 | bf16
    shard_clips: int = 256  # clips per shard: the most work a crash can lose
    face_crop: bool = False  # detect and crop faces first (for raw videos; DFEW/FERV39k frames are crops)
    overwrite: bool = False  # redo committed shards instead of skipping them
    strict: bool = False  # a bad clip stops extraction instead of being skipped and recorded
    download_root: str | None = None  # where clip keeps downloaded weights (default ~/.cache/clip)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The TG-DFER network (§3.2-3.3). Defaults are the paper's best setting (Table 3 e, Table 4, Table 5 h)."""

    center: bool = True  # subtract the train split's mean frame feature first: CLIP face embeddings share most
    #                      of their direction (clips' mean pairwise cosine 0.93 in the demo cache), which drowned
    #                      the class differences and left training at chance; the paper is silent on it
    # Multi-grained temporal network, §3.2
    fine_depth: int = 1  # transformer layers per fine window (Eq. 2); Table 3 row e; 0 removes the module
    coarse_depth: int = 1  # transformer layers over all T frames (Eq. 4); Table 3 row e; 0 removes it
    window: int = 4  # fine window width w; Table 4 best
    stride: int = 1  # fine window stride s = w - overlap; Table 4 best; 0 means s = w (Table 4 "no stride")
    window_merge: str = "mean"  # frame t of X^fine: mean over the windows covering t | first such window
    heads: int = 8  # attention heads per temporal layer (D must divide by it); 512/8 = 64 as in CLIP
    ffn_mult: int = 4  # feed-forward width = ffn_mult * D, the transformer default
    dropout: float = 0.1  # in the temporal layers; the only regulariser besides augmentation
    # Text prompts, §3.3.1 (Eq. 6)
    n_ctx: int = 8  # learnable context tokens M before each prompt's words: DFER-CLIP's train_DFEW.sh passes
    #                 --contexts-number 8; n_ctx 4 / 8 / 16 were within seed noise on bench/learning.py
    class_specific_ctx: bool = True  # one context per class (CoOp's CSC), as DFER-CLIP's published scripts
    #                                  (--class-specific-contexts True); shared vs class-specific were within
    #                                  seed noise on bench/learning.py, whose random text tower means nothing
    fine_text: str = "descriptors"  # words of the fine prompt X^FP: descriptors | class
    fine_learnable: bool = True  # Eq. 6: learnable context before the descriptors
    coarse_text: str = "class"  # words of the coarse prompt X^CP (Table 5's "Text Prompt"): class | descriptors
    coarse_learnable: bool = True  # Table 5 row h: learnable context before the class name
    descriptors: str | None = None  # JSON file of {class: descriptor} replacing tgdfer's descriptors
    # Visual prompt, §3.3.2 (Eq. 7-10)
    visual_prompt: str = "add"  # Table 5: add (Eq. 9) | prepend (concatenate [V^P; X^FP]) | off
    vp_weights: str = "softmax"  # how A_I weights frames in Eq. 7: softmax over T | raw (VadCLIP's logits)
    mlp_mult: int = 4  # hidden width of the Eq. 10 MLP = mlp_mult * D, as VadCLIP's
    tau: float = 0.01  # temperature of Eq. 8 and Eq. 11, paper §4.2
    # Bag prediction (Eq. 11) and where frame influence (Fig. 4, Table 6) is read; README "Frame influence" has
    # the figures of bench/learning.py behind every default here (issue 11)
    instances: str = "both"  # what instance scores are computed on: temporal (X^I of Eq. 5, the paper as
    #                          written) | frame (a per-frame map of X^v, which no temporal layer mixes) | both
    #                          (two streams, bag = their mean, influence from the frame stream). On X^I the
    #                          coarse transformer spreads the class over every frame: WAR 91.8 but the top frame
    #                          hits the burst for 0.29 of clips; both: WAR 88.6, hit 0.91 (3 seeds)
    mil: str = "mean"  # temporal stream, T scores -> bag: attention (weights softmax_T cos(X^I, X^FP) /
    #                    attn_tau) | mean | topk | mixed (mean of mean and topk); it need not localise, and mean
    #                    is the plain reading (attention at attn_tau 1 is a mean in effect)
    frame_mil: str = "mixed"  # frame stream's aggregation, same choices: with topk, whole classes learnt to
    #                           rank off-burst frames highest (two streams: hit 0.76 +- 0.09); the mean half
    #                           gives every frame a gradient from the first step
    frame_labels: str = "plain"  # what the frame stream scores against: plain MLP(X^FP) + X^CP | enhanced X~^P
    #                              (Eq. 10); V^P carries the clip's class from X^I into the labels (enhanced:
    #                              highest-1 WAR 50.9 vs 67.7)
    aux_loss: bool = True  # with two streams, the frame stream's bag is also trained on the label by itself,
    #                        so it keeps learning once the mean bag is right (without: hit 0.84 +- 0.09)
    frame_centre: float = 0.0  # frame stream input x_t - a * mean_t(x): removes the clip's identity but leaves
    #                            an anti-class echo on every frame that the bag latched onto (a=1: hit 0.49)
    attn_tau: float = 1.0  # softmax_T temperature of mil=attention weights; at tau=0.01 they start one-hot on
    #                        random frames and training collapsed (WAR 77.7 +- 14.8 on bench/learning.py)
    learn_attn_tau: bool = False  # train attn_tau (log-parametrised); measured: hit 0.33, no better
    topk: int = 4  # frames averaged by topk / mixed; about the 2-5 decisive frames a 16-frame clip holds


@dataclass(frozen=True)
class OptimConfig:
    """SGD as in §4.2."""

    lr: float = 1e-2  # temporal network, visual prompt and MLP (§4.2)
    lr_prompt: float = 1e-3  # learnable prompt context (§4.2)
    momentum: float = 0.9  # §4.2
    weight_decay: float = 1e-4  # not given in the paper; DFER-CLIP's value
    milestones: tuple[int, ...] = (30, 40)  # MultiStepLR epochs (§4.2)
    gamma: float = 0.1  # MultiStepLR factor (§4.2)


@dataclass(frozen=True)
class TrainConfig:
    """The loop around the model."""

    epochs: int = 50  # §4.2 schedule: milestones at 30 and 40
    batch_size: int = 48  # §4.2
    seed: int = 1  # seeds initialisation, dropout, view choice and shuffling
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    eval_every: int = 1  # test-view metrics every k epochs, for the curves only; the final epoch is reported
    grad_clip: float = 0.0  # max gradient norm; 0 disables (the paper uses none)


@dataclass(frozen=True)
class RunConfig:
    """One training run of stage 2: a cache, a fold, a model, an optimiser, a loop."""

    features: str = "cache/dfew.h5"  # the stage-1 entry file
    fold: str = "1"  # DFEW/MAFW fold 1..5 (FERV39k and CSV caches have one split: 1)
    out: str = "cache/runs/dfew-fold1"  # run directory
    device: str = "auto"  # auto: CUDA when present, else CPU
    clip: str | None = None  # CLIP weights for the text tower; default: the ones the cache was made with
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a (nested) config dataclass from ``to_dict`` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}; expected some of {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = from_dict(kind, value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _parse(text: str, kind: Any, key: str) -> Any:
    """Parse ``text`` as a value of type ``kind`` (int, float, bool, str, tuples, optionals)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if text.lower() in ("none", "null", ""):
            return None
        return _parse(text, options[0], key)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(_parse(p.strip(), item, key) for p in parts)
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}: expected true or false, found {text!r}")
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"--set {key}: expected {getattr(kind, '__name__', kind)}, found {text!r}") from None


def _replace(cfg: Any, path: list[str], text: str, key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    name = path[0]
    if name not in fields:
        raise ValueError(f"--set {key}: unknown setting {name!r}; expected one of {sorted(fields)}")
    if len(path) == 1:
        if dataclasses.is_dataclass(hints[name]):
            raise ValueError(f"--set {key}: {name!r} is a section; set one of its fields, e.g. {name}.<field>=...")
        return dataclasses.replace(cfg, **{name: _parse(text, hints[name], key)})
    child = getattr(cfg, name)
    if not dataclasses.is_dataclass(child):
        raise ValueError(f"--set {key}: {name!r} has no fields")
    return dataclasses.replace(cfg, **{name: _replace(child, path[1:], text, key)})


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Apply ``section.field=value`` strings to a frozen config; errors name the key and what was expected."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set: expected key=value (e.g. model.window=4), found {item!r}")
        key, text = item.split("=", 1)
        cfg = _replace(cfg, key.strip().split("."), text.strip(), key.strip())
    return cfg


def setting_names(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key --set accepts for this config."""
    names = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            names += setting_names(value, f"{prefix}{f.name}.")
        else:
            names.append(f"{prefix}{f.name}")
    return names
