"""Every setting of tgdfer as frozen dataclasses, with the reason for each default.

Stage 2 defaults are the paper's (§4.2, and the best rows of Tables 3-5); anything can be overridden from the
command line with ``--set section.field=value`` (``apply_overrides``). Modules receive plain arguments drawn
from these, never a whole run config.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from tgdfer.errors import ConfigError

Dataset = Literal["dfew", "ferv39k", "mafw", "csv"]  # the annotation readers of tgdfer.data.datasets
Precision = Literal["auto", "fp32", "fp16", "bf16"]
PromptText = Literal["descriptors", "class"]  # a prompt's words: movement descriptors or the class name
Amp = Literal["auto", "on", "off"]  # train.amp: bf16 autocast where it pays, always, or never


def amp_choice(value: str | bool) -> str:
    """train.amp's value; a bool is the setting before it had three values (True: auto, False: off), as checkpoints
    written before then store it and older callers pass it."""
    return ("auto" if value else "off") if isinstance(value, bool) else value


def _checked(cfg: Any, rules: dict[str, tuple[Any, str]]) -> None:
    """Refuse a config whose Literal fields hold other values, or whose fields break ``rules``.

    ``rules`` maps a field to (predicate, what it must be); messages name the ``--set`` key and both values.
    """
    section = _SECTIONS.get(type(cfg).__name__, "")
    for f in dataclasses.fields(cfg):
        kind = _hints(type(cfg))[f.name]
        value = getattr(cfg, f.name)
        if typing.get_origin(kind) is Literal and value not in typing.get_args(kind):
            choices = ", ".join(map(str, typing.get_args(kind)))
            raise ConfigError(f"{section}{f.name}: expected one of {choices}, found {value!r}")
    for name, (ok, what) in rules.items():
        value = getattr(cfg, name)
        if not ok(value):
            raise ConfigError(f"{section}{name}: expected {what}, found {value!r}")


_SECTIONS = {"ModelConfig": "model.", "OptimConfig": "optim.", "TrainConfig": "train.", "AugmentConfig": "augment."}
_SECTIONS["LauncherConfig"] = "launcher."
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _positive(x) -> bool:
    return x > 0


def _at_least(n):
    return lambda x: x >= n


def _set(cfg: Any, **values: Any) -> None:
    """Normalise fields of a frozen config in its ``__post_init__`` (a default that depends on other fields)."""
    for name, value in values.items():
        object.__setattr__(cfg, name, value)


def _default_of(cfg: Any, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cfg) if f.name == name)


def _shard_range_ok(text: str | None) -> bool:
    """None, or "A:B" with 0 <= A < B."""
    if text is None:
        return True
    parts = str(text).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return False
    return int(parts[0]) < int(parts[1])


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

    dataset: Dataset  # dfew | ferv39k | mafw | csv: which annotation reader
    root: str  # dataset root folder
    out: str | None = None  # entry file; shards go to <out stem>.shards/ beside it; None: cache/<dataset>.h5, so
    #                         each dataset gets its own cache without a flag
    annotations: str | None = None  # split files folder (or the CSV), when not at the dataset's usual place
    clip: str = "ViT-B/32"  # paper §3.2.1 backbone; a name clip can download, or a checkpoint path
    frames: int | str = 16  # T, paper §4.2; "all" (--frames all) is short for frames_mode "all" with T 16 (the T
    #                         stage 2 samples), so one option names both layouts; text digits are T
    views: int | None = None  # augmented train views per clip, besides the one test view; stage 2 draws one per
    #                           epoch; None: 4. With frames "all" a number given here becomes ``passes`` (--views K
    #                           with --frames all: K augmented passes) and views stays 4, so one flag serves both
    frames_mode: Literal["views", "all"] = "views"  # views: T-frame views (the design's cache) | all: every
    #                 frame once, a per-frame cache stage 2 draws a fresh T-frame sample from every epoch
    max_frames: int = 0  # frames_mode all: keep at most this many frames per clip, spread uniformly; 0: all
    passes: int = 0  # frames_mode all: augmented passes over the frames besides the plain one (--views with
    #                  --frames all); 0 keeps the encoder cost on DFEW about the 5 views' (77 vs 80 frames a clip)
    seed: int = 0  # seeds every train view's frames and augmentation, per (clip, view)
    batch_size: int = 512  # frames per encoder call; fits ViT-B/32 fp16 on any recent GPU
    workers: int = -1  # decode processes; -1: one per CPU core but one (decoding is the bottleneck)
    device: str = "auto"  # auto: CUDA when present (cuda:LOCAL_RANK under torchrun), else CPU
    precision: Precision = "auto"  # auto: fp16 on CUDA, fp32 on CPU; or fp32 | fp16 | bf16
    shard_clips: int = 256  # clips per shard: the most work a crash can lose
    face_crop: bool = False  # detect and crop faces first (for raw videos; DFEW/FERV39k frames are crops)
    overwrite: bool = False  # redo committed shards instead of skipping them
    strict: bool = False  # a bad clip stops extraction instead of being skipped and recorded
    download_root: str | None = None  # where clip keeps downloaded weights (default ~/.cache/clip)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Several machines (README "Cluster"): each process encodes a contiguous block of the shards, and whichever
    # finds all of them committed writes the entry. Shards are fixed by the annotation order, so the split changes
    # nothing in the cache.
    shard_range: str | None = None  # "A:B": only shards A..B-1 (clipped to the shard count); None: every shard
    array_task: int | None = None  # with array_tasks: this task's block, e.g. $SLURM_ARRAY_TASK_ID
    array_tasks: int | None = None  # how many blocks the shards are cut into, e.g. $SLURM_ARRAY_TASK_COUNT
    classes: tuple[str, ...] | None = None  # csv: these classes in this order; None: the CSV's labels, sorted
    test_fraction: float = 0.2  # csv without a split column: share of each class held out for testing (seeded)
    val_fraction: float = 0.0  # share of each split's train clips per class kept for validation (membership VAL)

    def __post_init__(self) -> None:
        if isinstance(self.frames, str):  # "all", or T as text: what --frames takes
            text = self.frames.strip().lower()
            if text == "all":
                given = {"passes": self.views} if self.views is not None else {}
                _set(self, frames_mode="all", frames=_default_of(self, "frames"), views=None, **given)
            elif text.isdigit():
                _set(self, frames=int(text))
            else:
                raise ConfigError(f"--frames: expected a number of frames or 'all', found {self.frames!r}")
        if self.views is None:
            _set(self, views=4)  # 4 train views + the test view: 5 T-frame encodings a clip (80 frames at T 16)
        if self.out is None:
            _set(self, out=f"cache/{self.dataset}.h5")
        _checked(
            self,
            {
                "shard_range": (_shard_range_ok, "A:B with 0 <= A < B, e.g. 0:40"),
                "array_tasks": (lambda n: n is None or n >= 1, ">= 1 array tasks"),
                "array_task": (
                    lambda i: (
                        (i is None) == (self.array_tasks is None)
                        and (i is None or 0 <= i < self.array_tasks)
                        and (i is None or self.shard_range is None)
                    ),
                    f"0 <= array_task < array_tasks={self.array_tasks}, both given or neither, and no shard_range",
                ),
                "test_fraction": (lambda x: 0 <= x < 1, "a fraction in [0, 1)"),
                "val_fraction": (lambda x: 0 <= x < 1, "a fraction in [0, 1)"),
                "frames": (_at_least(1), "T >= 1 frames per view"),
                "views": (_at_least(0), "0 or more train views"),
                "max_frames": (_at_least(0), "0 (every frame) or >= 1 frames per clip"),
                "passes": (_at_least(0), "0 or more augmented passes"),
                "batch_size": (_at_least(1), "a batch of >= 1 frames"),
                "workers": (_at_least(-1), "-1 (one per core but one) or >= 0 decode processes"),
                "shard_clips": (_at_least(1), ">= 1 clips per shard"),
            },
        )


@dataclass(frozen=True)
class ModelConfig:
    """The TG-DFER network (§3.2-3.3). Defaults are the paper's best setting (Table 3 e, Table 4, Table 5 h)."""

    # Settings that runs saved before they existed must read as the behaviour those runs trained with (a default
    # that later changed would otherwise rebuild another network for an old checkpoint): ``from_dict`` uses these
    # for keys a saved config lacks. Before issue 11 every run scored instances on X^I alone; before issue 23
    # two-stream runs predicted from the mean of both bags, trained as one, and had no frame label offset.
    WHEN_ABSENT: ClassVar[dict[str, Any]] = {"instances": "temporal", "bag": "mean", "frame_grad": "shared"}
    center: bool = True  # subtract the train split's mean frame feature first: CLIP face embeddings share most
    #                      of their direction (clips' mean pairwise cosine 0.93 in the demo cache), which drowned
    #                      the class differences and left training at chance; the paper is silent on it
    # Multi-grained temporal network, §3.2
    fine_depth: int = 1  # transformer layers per fine window (Eq. 2); Table 3 row e; 0 removes the module
    coarse_depth: int = 1  # transformer layers over all T frames (Eq. 4); Table 3 row e; 0 removes it
    window: int = 4  # fine window width w; Table 4 best
    stride: int = 1  # fine window stride s = w - overlap; Table 4 best; 0 means s = w (Table 4 "no stride")
    window_merge: Literal["mean", "first"] = (
        "mean"  # frame t of X^fine: mean over the windows covering t | first such window
    )
    heads: int = 8  # attention heads per temporal layer (D must divide by it); 512/8 = 64 as in CLIP
    ffn_mult: int = 4  # feed-forward width = ffn_mult * D, the transformer default
    dropout: float = 0.1  # in the temporal layers; the only regulariser besides augmentation
    # Text prompts, §3.3.1 (Eq. 6)
    n_ctx: int = 8  # learnable context tokens M before each prompt's words: DFER-CLIP's train_DFEW.sh passes
    #                 --contexts-number 8; n_ctx 4 / 8 / 16 were within seed noise on bench/learning.py
    class_specific_ctx: bool = False  # one context per class (CoOp's CSC, DFER-CLIP's scripts) | one shared
    #   by all. docs/pages/learning.md: default reading, sparse WAR 90.5 +- 1.7 shared vs 90.0 +- 2.0 per class (dense
    #   93.2 vs 92.7); on an independent generator per-class contexts cost 14 WAR and tripled the spread (issue
    #   23). Both text towers there are random: real CLIP, which can judge prompts, may favour per-class ones
    fine_text: PromptText = "descriptors"  # words of the fine prompt X^FP: descriptors | class
    fine_learnable: bool = True  # Eq. 6: learnable context before the descriptors
    coarse_text: PromptText = "class"  # words of the coarse prompt X^CP (Table 5's "Text Prompt"): class | descriptors
    coarse_learnable: bool = True  # Table 5 row h: learnable context before the class name
    descriptors: str | None = None  # JSON file of {class: descriptor} replacing tgdfer's descriptors
    # Visual prompt, §3.3.2 (Eq. 7-10)
    visual_prompt: Literal["add", "prepend", "off"] = (
        "add"  # Table 5: add (Eq. 9) | prepend (concatenate [V^P; X^FP]) | off
    )
    vp_weights: Literal["softmax", "raw"] = (
        "softmax"  # how A_I weights frames in Eq. 7: softmax over T | raw (VadCLIP's logits)
    )
    mlp_mult: int = 4  # hidden width of the Eq. 10 MLP = mlp_mult * D, as VadCLIP's
    tau: float = 0.01  # temperature of Eq. 8 and Eq. 11, paper §4.2
    # Bag prediction (Eq. 11) and where frame influence (Fig. 4, Table 6) is read; docs/pages/learning.md has the
    # figures of bench/learning.py (5 seeds, sparse and dense regimes) behind every default here (issues 11, 23)
    instances: Literal["temporal", "frame", "both"] = (
        "both"  # what instance scores are computed on: temporal (X^I of Eq. 5, the paper as written) | frame (a
        #         per-frame map of X^v, which no temporal layer mixes) | both (two streams, the prediction as
        #         ``bag`` says, influence from the frame stream). On X^I the coarse transformer spreads the class
        #         over every frame: temporal alone classifies (sparse WAR 88.5) but hit 0.26 and Table 6 is flat
    )
    mil: Literal["attention", "mean", "topk", "mixed"] = (
        "attention"  # temporal stream, T scores -> bag: attention (weights softmax_T cos(X^I, X^FP) / attn_tau) |
        #         mean | topk | mixed (mean of mean and topk). It need not localise: the best classifier measured
        #         on the independent generator of issue 23 (WAR 95.8 +- 0.7 with shared contexts)
    )
    frame_mil: Literal["attention", "mean", "topk", "mixed"] = (
        "mixed"  # frame stream's aggregation: with topk, whole classes learnt to rank off-burst frames highest
        #          (own loss: hit 0.81 +- 0.10, one class at 0.0 on seeds 4 and 5); the mean half gives every
        #          frame a gradient from the first step (hit 0.86 +- 0.04)
    )
    frame_labels: Literal["plain", "enhanced"] = (
        "plain"  # what the frame stream scores against: plain MLP(X^FP) + X^CP | enhanced X~^P (Eq. 10); V^P
        #          carries the clip's class from X^I into the labels (enhanced: highest-1 WAR 50.9 vs 67.7)
    )
    bag: Literal["mean", "temporal", "ensemble"] = (
        "ensemble"  # two streams' clip prediction: mean (the bags' mean, trained as one: the frame loss dragged
        #             the shared labels, sparse WAR 87.8 +- 3.8, worst seed 81.5) | temporal (the temporal bag;
        #             it cannot re-predict from one frame: Table 6 gap 12) | ensemble ((temporal + w frame) /
        #             (1 + w), each bag trained by its own loss alone, the sum trains nothing). With temporal or
        #             ensemble the frame stream trains by its own bag's loss. docs/pages/learning.md has the figures
    )
    frame_weight: float = 0.25  # bag="ensemble": w above. Sparse, 5 seeds: w 0 / 0.25 / 0.5 / 1 gave WAR 90.6 /
    #                             90.5 / 89.7 / 87.4 and Table 6 gap 12 / 29 / 44 / 57; dense 93.3 to 92.4: the
    #                             smallest weight at which Table 6 shows, at no measurable cost in WAR
    frame_grad: Literal["shared", "own"] = (
        "own"  # what the frame stream's loss trains: shared (also the prompts and the Eq. 10 MLP that the
        #        temporal stream scores against) | own (its frame map and a (C, D) offset added to the detached
        #        labels: localising costs the prediction nothing; the offset raised hit 0.79 / 0.83 to 0.87 /
        #        0.88 on seeds 1 / 2)
    )
    aux_loss: bool = True  # bag="mean": the frame stream's bag is also trained on the label by itself, so it
    #                        keeps learning once the mean bag is right (without: hit 0.84 +- 0.09); the other
    #                        bags always train each stream's own bag
    frame_centre: float = 0.0  # frame stream input x_t - a * mean_t(x): removes the clip's identity but leaves
    #                            an anti-class echo on every frame that the bag latched onto (a=1: hit 0.49)
    attn_tau: float = 1.0  # softmax_T temperature of mil=attention weights; at tau=0.01 they start one-hot on
    #                        random frames and training collapsed (WAR 77.7 +- 14.8 on bench/learning.py)
    learn_attn_tau: bool = False  # train attn_tau (log-parametrised); measured: hit 0.33, no better
    topk: int = 4  # frames averaged by topk / mixed; about the 2-5 decisive frames a 16-frame clip holds

    def __post_init__(self) -> None:
        _checked(
            self,
            {
                "fine_depth": (_at_least(0), "a depth >= 0 (0 removes the fine module)"),
                "coarse_depth": (_at_least(0), "a depth >= 0 (0 removes the coarse module)"),
                "window": (_at_least(1), "a window of >= 1 frames"),
                "stride": (_at_least(0), "a stride >= 1, or 0 for s = w"),
                "heads": (_at_least(1), ">= 1 attention heads"),
                "ffn_mult": (_at_least(1), "a multiple >= 1"),
                "dropout": (lambda x: 0 <= x < 1, "a probability in [0, 1)"),
                "n_ctx": (_at_least(1), ">= 1 context tokens"),
                "mlp_mult": (_at_least(1), "a multiple >= 1"),
                "tau": (_positive, "a temperature > 0"),
                "attn_tau": (_positive, "a temperature > 0"),
                "frame_centre": (lambda x: 0 <= x <= 1, "a share in [0, 1]"),
                "frame_weight": (_at_least(0), "a weight >= 0"),
                "topk": (_at_least(1), ">= 1 frames"),
            },
        )


@dataclass(frozen=True)
class OptimConfig:
    """SGD as in §4.2."""

    lr: float = 1e-2  # temporal network, visual prompt and MLP (§4.2)
    lr_prompt: float = 1e-3  # learnable prompt context (§4.2)
    momentum: float = 0.9  # §4.2
    weight_decay: float = 1e-4  # not given in the paper; DFER-CLIP's value
    milestones: tuple[int, ...] = (30, 40)  # MultiStepLR epochs (§4.2)
    gamma: float = 0.1  # MultiStepLR factor (§4.2)

    def __post_init__(self) -> None:
        _checked(
            self,
            {
                "lr": (_positive, "a learning rate > 0"),
                "lr_prompt": (_at_least(0), "a learning rate >= 0"),
                "momentum": (lambda x: 0 <= x < 1, "a momentum in [0, 1)"),
                "weight_decay": (_at_least(0), "a weight decay >= 0"),
                "milestones": (
                    lambda m: all(a <= b for a, b in itertools.pairwise(m)) and all(x > 0 for x in m),
                    "non-decreasing epochs > 0",
                ),
                "gamma": (_positive, "a factor > 0"),
            },
        )


@dataclass(frozen=True)
class TrainConfig:
    """The loop around the model."""

    epochs: int = 50  # §4.2 schedule: milestones at 30 and 40
    batch_size: int = 48  # §4.2
    seed: int = 1  # seeds initialisation, dropout, view choice and shuffling
    amp: Amp = "auto"  # bf16 autocast. auto: on CUDA and on CPUs with AMX (1.55x per step, issue 25), fp32 on
    #                    other CPUs, where bf16 is slower; on: everywhere (to compare bf16 on any CPU); off: fp32
    eval_every: int = 1  # test-view metrics every k epochs, for the curves only; the final epoch is reported
    grad_clip: float = 0.0  # max gradient norm; 0 disables (the paper uses none)

    def __post_init__(self) -> None:
        _set(self, amp=amp_choice(self.amp))  # a checkpoint's bool from before amp had three values
        _checked(
            self,
            {
                "epochs": (_at_least(1), ">= 1 epochs (0 would report an untrained model)"),
                "batch_size": (_at_least(1), "a batch of >= 1 clips"),
                "eval_every": (_at_least(0), "0 (final epoch only) or >= 1 epochs"),
                "grad_clip": (_at_least(0), "a norm >= 0 (0 disables clipping)"),
            },
        )


@dataclass(frozen=True)
class RunConfig:
    """One training run of stage 2: a cache, a fold, a model, an optimiser, a loop."""

    features: str = "cache/dfew.h5"  # the stage-1 entry file
    fold: str = "1"  # DFEW/MAFW fold 1..5 (FERV39k and CSV caches have one split: 1)
    out: str | None = None  # run directory; None: cache/runs/<cache stem>-fold<fold>, one per cache and fold, so
    #                         runs on different caches or folds never overwrite each other
    device: str = "auto"  # auto: CUDA when present, else CPU
    clip: str | None = None  # CLIP weights for the text tower; default: the ones the cache was made with
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.out is None:
            _set(self, out=str(Path("cache/runs") / f"{Path(self.features).stem}-fold{self.fold}"))


@dataclass(frozen=True)
class PredictConfig:
    """``tgdfer predict`` / ``explain``: a trained run applied to new clips."""

    run: str = "cache/runs/dfew-fold1"  # run directory written by `tgdfer train`
    device: str = "auto"  # auto: CUDA when present, else CPU
    face_crop: bool | None = None  # None: as the run's cache was made (its face_crop); True/False overrides it
    require_face: bool = False  # an input with no face in any sampled frame fails (ok=False) instead of a warning
    batch_clips: int = 16  # clips per encoder call: B*T frames through CLIP at once
    workers: int = -1  # decode processes; -1: one per CPU core but one
    clip: str | None = None  # CLIP weights; default the run's own (checked by SHA-256)

    def __post_init__(self) -> None:
        _checked(
            self,
            {
                "batch_clips": (_at_least(1), ">= 1 clips per batch"),
                "workers": (_at_least(-1), "-1 (one per core but one) or >= 0 decode processes"),
            },
        )


@dataclass(frozen=True)
class LauncherConfig:
    """Where a sweep's (or ``train --fold all``'s) runs train: this machine's pool, or a SLURM array (submitit).

    Runs keep their run directories, so the sweep folder and the cache must be on a file system every node sees.
    """

    kind: Literal["local", "slurm"] = "local"  # local: --workers processes here; slurm: one array job
    cluster: Literal["slurm", "local"] = "slurm"  # submitit executor: slurm (sbatch), or local (the same
    #                                              array tasks as processes on this machine, for tests and trials)
    partition: str | None = None  # SLURM partition; None: the cluster's default
    gpus_per_task: int = 1  # GPUs of one array task; 0 trains on CPUs
    cpus_per_task: int = 4  # cores of one task, shared by its runs' torch threads (a run is mostly GPU work)
    mem_gb: float = 16.0  # memory of one task: the cache in RAM (a DFEW cache is about 1 GB) per process, and CLIP
    time_min: int = 240  # time limit of one task; near it SLURM signals, the task checkpoints and is requeued
    max_parallel: int = 0  # array tasks running at once (sbatch --array=...%N); 0: as many as SLURM allows
    runs_per_task: int = 1  # runs one task trains: stage-2 runs are small, so one GPU can take several
    runs_per_gpu: int = 1  # of a task's runs, how many train at once per GPU (one process each); 1: one by one
    setup: tuple[str, ...] = ()  # shell lines run before each task, e.g. "source ~/venv/bin/activate"
    sbatch: tuple[str, ...] = ()  # more sbatch options as key=value, e.g. account=proj1, qos=high

    def __post_init__(self) -> None:
        _checked(
            self,
            {
                "gpus_per_task": (_at_least(0), ">= 0 GPUs per task"),
                "cpus_per_task": (_at_least(1), ">= 1 CPUs per task"),
                "mem_gb": (_positive, "a memory > 0 GB"),
                "time_min": (_at_least(1), "a time limit >= 1 minute"),
                "max_parallel": (_at_least(0), "0 (no limit) or >= 1 tasks at once"),
                "runs_per_task": (_at_least(1), ">= 1 runs per task"),
                "runs_per_gpu": (_at_least(1), ">= 1 runs at once per GPU"),
                "sbatch": (lambda items: all("=" in x for x in items), "key=value items, e.g. account=proj1"),
            },
        )


@dataclass(frozen=True)
class SweepConfig:
    """``tgdfer ablate``: one paper table as rows x folds x seeds training runs."""

    table: str  # the paper's table: 3 (depths), 4 (stride/window), 5 (prompts), 6 (frames)
    features: str = "cache/dfew.h5"  # the stage-1 entry file every run trains on
    folds: tuple[str, ...] | None = None  # None: every split of the cache (DFEW's five folds)
    seeds: tuple[int, ...] = (1,)  # train.seed of each repetition
    workers: int = 1  # trainings at once (they share the GPUs, or split the CPU)
    out: str = "cache/ablate"  # sweep folder: runs/<key>/ and table<N>.md/.csv
    rows: tuple[str, ...] | None = None  # only these row labels; None: the whole table
    overrides: tuple[str, ...] = ()  # --set applied to every row, after the row's own settings
    device: str = "auto"  # auto: CUDA when present, else CPU
    launcher: LauncherConfig = field(default_factory=LauncherConfig)  # local pool, or a SLURM array
    batch: bool = False  # runs of one model shape (a row's folds and seeds) train as one batched model (opt-in:
    #                      on CPU it measured 1.04x one at a time; without dropout it equals runs alone within
    #                      float tolerance, with dropout its masks are another draw); False trains each
    #                      bit-identical to `tgdfer train`

    def __post_init__(self) -> None:
        _checked(self, {"workers": (_at_least(1), ">= 1 trainings at once"), "seeds": (len, "at least one seed")})
        if self.workers > 1 and self.launcher.kind != "local":
            raise ConfigError(
                f"workers: expected 1 with --launcher {self.launcher.kind} (a task's runs at once are "
                f"launcher.runs_per_gpu), found {self.workers}"
            )


@dataclass(frozen=True)
class TimelineConfig:
    """``tgdfer timeline``: a trained run over long videos, one row per sliding window of a few seconds."""

    run: str = "cache/runs/dfew-fold1"  # run directory written by `tgdfer train`
    out: str = "timeline"  # folder for <stem>.timeline.csv / .json / .png of each video
    window: str | None = None  # seconds ("2", "2.5s") or frames ("16f"); None: the run's clip length if its
    #                            cache records one, else 2 s (the model was trained on clips of a few seconds)
    stride: str = "1s"  # from one window's start to the next: one row per second, windows overlapping
    face_crop: bool | None = None  # None: as the run's cache was made (its recorded face_crop); a flag overrides
    face: int = 0  # which face to follow, by size at its first detection: 0 the largest, 1 the next, ...
    detect_every: int = 4  # the face tracker looks at every k-th sampled frame; the box is held between
    min_face: float = 0.5  # share of a window's T frames that need a face, else its row is no_face
    smooth: Literal["none", "mean", "ema"] = "none"  # extra smoothed columns over windows; raw ones always stay
    smooth_windows: int = 5  # centred moving-average width, or EMA span (alpha = 2 / (span + 1)), in windows
    batch_frames: int = 64  # frames per encoder call: CPU throughput is flat beyond ~32, GPUs want more
    precision: Precision = "auto"  # image encoder dtype. auto: on CUDA the cache's (fp16, as predict); on CPU bf16
    #                              where it has AMX (3-4x fp32's speed, within a measured tolerance), else fp32
    batch_windows: int = 32  # windows per model call (25 ms a window at 64, 100 ms at 8 on 2 CPU threads); rows
    #                          reach the CSV in groups of this many
    save_features: bool = False  # also write <stem>.features.npz: the per-frame features, frames, timestamps
    resume: bool = False  # append to an interrupted timeline instead of starting over (same settings only)
    plot: bool = True  # draw <stem>.timeline.png
    log_every: float = 30.0  # seconds between progress lines when stderr is not a terminal (a bar when it is)
    device: str = "auto"  # auto: CUDA when present, else CPU
    clip: str | None = None  # CLIP weights; default the run's own (checked by SHA-256)
    people: str | None = None  # None: one face followed; "all": every person, one row per (window, person); "N":
    #                            the N persons with the most screen time
    people_map: str | None = None  # JSON file merging and renaming persons ({"p3": "p1", "p1": "Anna"})
    report: bool = True  # write <stem>.report.html beside the CSV
    embed_video: bool = False  # inline the video in the report (small videos only), else a relative path

    def __post_init__(self) -> None:
        _checked(
            self,
            {
                "people": (lambda x: x is None or x == "all" or (str(x).isdigit() and int(x) > 0), "all or N > 0"),
                "face": (_at_least(0), "0 (the largest face) or more"),
                "detect_every": (_at_least(1), "a detection every >= 1 sampled frames"),
                "min_face": (lambda x: 0 <= x <= 1, "a share in [0, 1]"),
                "smooth_windows": (_at_least(2), ">= 2 windows"),
                "batch_frames": (_at_least(1), ">= 1 frames per batch"),
                "batch_windows": (_at_least(1), ">= 1 windows per model call"),
                "log_every": (_positive, "seconds > 0"),
            },
        )


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a (nested) config dataclass from ``to_dict`` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}; expected some of {sorted(names)}")
    kwargs = {k: v for k, v in getattr(cls, "WHEN_ABSENT", {}).items() if k not in data}
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
    if origin is Literal:
        choices = typing.get_args(kind)
        if text not in choices:
            raise ConfigError(f"--set {key}: expected one of {', '.join(map(str, choices))}, found {text!r}")
        return text
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
        raise ConfigError(f"--set {key}: expected true or false, found {text!r}")
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ConfigError(f"--set {key}: expected {getattr(kind, '__name__', kind)}, found {text!r}") from None


def _replace(cfg: Any, path: list[str], text: str, key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    name = path[0]
    if name not in fields:
        raise ConfigError(f"--set {key}: unknown setting {name!r}; expected one of {sorted(fields)}")
    if len(path) == 1:
        if dataclasses.is_dataclass(hints[name]):
            raise ConfigError(f"--set {key}: {name!r} is a section; set one of its fields, e.g. {name}.<field>=...")
        return dataclasses.replace(cfg, **{name: _parse(text, hints[name], key)})
    child = getattr(cfg, name)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"--set {key}: {name!r} has no fields")
    return dataclasses.replace(cfg, **{name: _replace(child, path[1:], text, key)})


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Apply ``section.field=value`` strings to a frozen config; errors name the key and what was expected."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set: expected key=value (e.g. model.window=4), found {item!r}")
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
