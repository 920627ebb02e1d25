"""The ``tgdfer`` command. One pattern for every command: build its config from the dataclass defaults
(``tgdfer.config``), the flags the user gave and ``--set section.field=value``, then call one library function with
keywords. Flags default to None ("not given"), so every default lives in the dataclass alone; help texts quote it.

Nothing heavy is imported here: ``tgdfer --help`` and argument errors answer without loading torch. Errors a user
can fix (``tgdfer.errors.TgdferError``) print as one line and exit with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tgdfer import __version__
from tgdfer.config import (
    ExtractConfig,
    LauncherConfig,
    PredictConfig,
    RunConfig,
    SweepConfig,
    TimelineConfig,
    apply_overrides,
)
from tgdfer.errors import TgdferError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="TG-DFER: text-guided weakly supervised dynamic facial expression recognition on cached CLIP features.",
)


def _version(value: bool) -> None:
    if value:
        print(f"tgdfer {__version__}")
        raise typer.Exit()


@app.callback()
def _group(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit")
    ] = False,
) -> None:
    """TG-DFER: text-guided weakly supervised dynamic facial expression recognition on cached CLIP features."""


def _default(cls: type, name: str) -> str:
    """The dataclass default of ``cls.name`` for a help text."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = f.default if f.default is not dataclasses.MISSING else "required"
    return f"default {value}"


def _build(cls: type, flags: dict[str, Any], overrides: list[str] | None = None) -> Any:
    """``cls`` from its defaults, the flags that were given (not None), then ``--set`` overrides."""
    given = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None}
    return apply_overrides(cls(**given), overrides or [])


_SET_HELP = "Override any setting, e.g. model.window=4 (repeatable)"
Sets = Annotated[list[str] | None, typer.Option("--set", help=_SET_HELP)]


@app.command()
def extract(
    dataset: Annotated[str, typer.Option(help="dfew | ferv39k | mafw | csv")],
    root: Annotated[Path, typer.Option(help="Dataset root folder")],
    out: Annotated[Path | None, typer.Option(help="Entry file of the cache (default cache/<dataset>.h5)")] = None,
    annotations: Annotated[
        Path | None, typer.Option(help="Split files folder or CSV, if not at the dataset's usual place")
    ] = None,
    clip: Annotated[str | None, typer.Option(help=f"CLIP name or file ({_default(ExtractConfig, 'clip')})")] = None,
    frames: Annotated[
        str | None,
        typer.Option(help=f"Frames per view T ({_default(ExtractConfig, 'frames')}), or all: a per-frame cache"),
    ] = None,
    max_frames: Annotated[
        int | None, typer.Option(help="With --frames all: at most N frames per clip, spread uniformly (default all)")
    ] = None,
    views: Annotated[
        int | None,
        typer.Option(
            help=f"Augmented train views per clip ({_default(ExtractConfig, 'views')}); with --frames all, "
            "augmented passes over every frame (default 0)"
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=f"Frames per encoder call ({_default(ExtractConfig, 'batch_size')})")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help=f"Decode processes, -1 per core less one ({_default(ExtractConfig, 'workers')})"),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N (default auto)")] = None,
    precision: Annotated[str | None, typer.Option(help="auto | fp32 | fp16 | bf16 (default auto)")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of train-view sampling and augmentation (default 0)")] = None,
    shard_clips: Annotated[
        int | None, typer.Option(help=f"Clips per shard ({_default(ExtractConfig, 'shard_clips')})")
    ] = None,
    face_crop: Annotated[bool | None, typer.Option(help="Crop faces first (raw videos; default off)")] = None,
    overwrite: Annotated[bool | None, typer.Option(help="Redo committed shards")] = None,
    strict: Annotated[bool | None, typer.Option(help="Stop at the first bad clip instead of skipping it")] = None,
    shard_range: Annotated[
        str | None, typer.Option(help="Only shards A..B-1, as A:B; the last process to finish writes the entry")
    ] = None,
    array_task: Annotated[
        int | None, typer.Option(help="This task's block of the shards, e.g. $SLURM_ARRAY_TASK_ID (README Cluster)")
    ] = None,
    array_tasks: Annotated[
        int | None, typer.Option(help="Blocks the shards are cut into, e.g. $SLURM_ARRAY_TASK_COUNT")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="csv: the classes, in order, e.g. sad,surprise,happy (default: the labels)")
    ] = None,
    test_fraction: Annotated[
        float | None,
        typer.Option(
            help=f"csv without a split column: test share per class ({_default(ExtractConfig, 'test_fraction')})"
        ),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help=f"Share of train clips per class kept for validation ({_default(ExtractConfig, 'val_fraction')})"
        ),
    ] = None,
    set_: Sets = None,
) -> None:
    """Stage 1: encode every clip's sampled frames with frozen CLIP into an HDF5 feature cache."""
    flags = {k: v for k, v in locals().items() if k != "set_"}
    flags["classes"] = tuple(c.strip() for c in classes.split(",") if c.strip()) if classes is not None else None
    from tgdfer.extract import extract as run_extract

    run_extract(_build(ExtractConfig, flags, set_))  # --frames all, --views with it and the default --out: config


# Where runs train (LauncherConfig; README "Cluster"), for `train` and `ablate`; --set launcher.<field>=... too.
Launcher = Annotated[str | None, typer.Option(help="local (this machine) | slurm (an array job through submitit)")]
SlurmPartition = Annotated[str | None, typer.Option(help="SLURM partition (default: the cluster's)")]
SlurmGpus = Annotated[int | None, typer.Option(help=f"GPUs per task ({_default(LauncherConfig, 'gpus_per_task')})")]
SlurmCpus = Annotated[int | None, typer.Option(help=f"CPUs per task ({_default(LauncherConfig, 'cpus_per_task')})")]
SlurmMemGb = Annotated[float | None, typer.Option(help=f"GB per task ({_default(LauncherConfig, 'mem_gb')})")]
SlurmTime = Annotated[int | None, typer.Option(help=f"Minutes per task ({_default(LauncherConfig, 'time_min')})")]
SlurmMaxParallel = Annotated[int | None, typer.Option(help="Tasks at once, 0: no limit (default 0)")]
RunsPerTask = Annotated[int | None, typer.Option(help="Runs one array task trains (default 1)")]
RunsPerGpu = Annotated[int | None, typer.Option(help="Of a task's runs, how many train at once per GPU (default 1)")]


def _launcher(flags: dict[str, Any], sets: list[str] | None) -> tuple[LauncherConfig, list[str]]:
    """The LauncherConfig of the flags given and the --set launcher.* items -> (it, the other --set items)."""
    ours = [s for s in sets or [] if s.strip().startswith("launcher.")]
    holder = SweepConfig(table="", launcher=_build(LauncherConfig, flags))  # --set keys then read launcher.<field>
    return apply_overrides(holder, ours).launcher, [s for s in sets or [] if s not in ours]


@app.command()
def train(
    features: Annotated[Path | None, typer.Option(help="Entry file of a stage-1 cache (default cache/dfew.h5)")] = None,
    fold: Annotated[str | None, typer.Option(help="1..5 for DFEW/MAFW, 1 otherwise, or all (default 1)")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default cache/runs/<cache>-fold<k>)")] = None,
    set_: Sets = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N (default auto)")] = None,
    clip: Annotated[str | None, typer.Option(help="CLIP weights for the text tower (default: the cache's)")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint")] = False,
    launcher: Launcher = None,
    slurm_partition: SlurmPartition = None,
    slurm_gpus: SlurmGpus = None,
    slurm_cpus: SlurmCpus = None,
    slurm_mem_gb: SlurmMemGb = None,
    slurm_time: SlurmTime = None,
    slurm_max_parallel: SlurmMaxParallel = None,
    batch: Annotated[
        bool, typer.Option(help="--fold all: train the folds together as one batched model (default: one by one)")
    ] = False,
) -> None:
    """Stage 2: train the temporal network and prompts on a cache; --fold all runs every fold."""
    from tgdfer.train.folds import train as run_train

    where, set_ = _launcher(
        {"kind": launcher, "partition": slurm_partition, "gpus_per_task": slurm_gpus, "cpus_per_task": slurm_cpus}
        | {"mem_gb": slurm_mem_gb, "time_min": slurm_time, "max_parallel": slurm_max_parallel},
        set_,
    )
    cfg = _build(RunConfig, {"features": features, "fold": fold, "device": device, "clip": clip, "out": out}, set_)
    if where.kind == "slurm":
        from tgdfer.features.cache import folds_of
        from tgdfer.sweep.slurm import train_folds

        train_folds(cfg, folds_of(cfg.features, cfg.fold), where, resume=resume)
        return
    run_train(cfg, resume=resume, batch=batch)


@app.command()
def ablate(
    table: Annotated[str, typer.Option(help="Paper table: 3 (depths), 4 (stride/window), 5 (prompts), 6 (frames)")],
    features: Annotated[Path | None, typer.Option(help="Entry file of a stage-1 cache (default cache/dfew.h5)")] = None,
    folds: Annotated[str | None, typer.Option(help="e.g. 1-5, 1,3 or all (default all)")] = None,
    seeds: Annotated[str | None, typer.Option(help="e.g. 1,2,3 or 1-3 (default 1)")] = None,
    workers: Annotated[int | None, typer.Option(help="Trainings at once (default 1)")] = None,
    out: Annotated[Path | None, typer.Option(help="Sweep folder (default cache/ablate)")] = None,
    rows: Annotated[str | None, typer.Option(help="Only these row labels, comma-separated")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override applied to every row")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (default auto)")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the planned runs and their settings, train nothing")] = False,
    launcher: Launcher = None,
    slurm_partition: SlurmPartition = None,
    slurm_gpus: SlurmGpus = None,
    slurm_cpus: SlurmCpus = None,
    slurm_mem_gb: SlurmMemGb = None,
    slurm_time: SlurmTime = None,
    slurm_max_parallel: SlurmMaxParallel = None,
    runs_per_task: RunsPerTask = None,
    runs_per_gpu: RunsPerGpu = None,
    batch: Annotated[
        bool | None,
        typer.Option(help="Train runs of one model shape as one batched model (default: one at a time)"),
    ] = None,
) -> None:
    """Run a paper ablation table as a resumable sweep and write it beside the paper's figures."""
    from tgdfer.sweep.plan import parse_folds, parse_seeds
    from tgdfer.sweep.runner import run_table

    where, set_ = _launcher(
        {"kind": launcher, "partition": slurm_partition, "gpus_per_task": slurm_gpus, "cpus_per_task": slurm_cpus}
        | {"mem_gb": slurm_mem_gb, "time_min": slurm_time, "max_parallel": slurm_max_parallel}
        | {"runs_per_task": runs_per_task, "runs_per_gpu": runs_per_gpu},
        set_,
    )
    flags = {"table": table, "features": features, "workers": workers, "out": out, "device": device}
    flags["launcher"] = where
    flags["batch"] = batch
    flags["rows"] = tuple(r.strip() for r in rows.split(",")) if rows else None
    flags["seeds"] = tuple(parse_seeds(seeds)) if seeds else None
    flags["folds"] = tuple(parse_folds(folds)) if folds and folds.strip().lower() != "all" else None
    flags["overrides"] = tuple(set_ or ())
    result = run_table(_build(SweepConfig, flags), dry_run=dry_run)
    if result.get("failed"):
        raise typer.Exit(1)


_FACE_HELP = "Crop faces first, or not; default: as the run's cache was made (an override is reported)"


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Video files or folders of frames")],
    run: Annotated[Path, typer.Option(help="Run directory written by `tgdfer train`")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    face_crop: Annotated[bool | None, typer.Option(help=_FACE_HELP)] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (default auto)")] = None,
    batch_clips: Annotated[
        int | None, typer.Option(help=f"Clips per encoder batch ({_default(PredictConfig, 'batch_clips')})")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Decode processes; -1: one per core but one (default -1)")] = None,
    clip: Annotated[str | None, typer.Option(help="CLIP weights (default: the run's)")] = None,
    require_face: Annotated[
        bool | None, typer.Option("--require-face", help="Fail inputs with no face in any sampled frame")
    ] = None,
) -> None:
    """Classify clips with a trained run: class, probabilities, per-frame influence."""
    import json

    from tgdfer.apps.predict import format_predictions
    from tgdfer.apps.predict import predict as run_predict

    flags = {"run": run, "face_crop": face_crop, "device": device, "batch_clips": batch_clips, "workers": workers}
    flags["require_face"] = require_face
    results = run_predict([str(p) for p in paths], _build(PredictConfig, {**flags, "clip": clip}))
    print(json.dumps(results, indent=2) if json_ else format_predictions(results))
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)  # every readable input was still predicted and printed


@app.command()
def explain(
    path: Annotated[Path, typer.Argument(help="A video file or a folder of frames")],
    run: Annotated[Path, typer.Option(help="Run directory written by `tgdfer train`")],
    png: Annotated[Path, typer.Option(help="Where to write the figure")] = Path("explain.png"),
    target: Annotated[str | None, typer.Option(help="Explain this class instead of the predicted one")] = None,
    face_crop: Annotated[bool | None, typer.Option(help=_FACE_HELP)] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (default auto)")] = None,
    clip: Annotated[str | None, typer.Option(help="CLIP weights (default: the run's)")] = None,
) -> None:
    """Fig. 4 of the paper: the sampled frames with their normalised influence as a colour bar."""
    from tgdfer.apps.predict import explain as run_explain

    cfg = _build(PredictConfig, {"run": run, "face_crop": face_crop, "device": device, "clip": clip, "workers": 0})
    result = run_explain(str(path), cfg, png=str(png), target=target)
    print(f"{path}: predicted {result['predicted']}; influence on {result['explained']} drawn to {result['png']}")


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Folder for everything the demo writes (default cache/demo)")] = None,
    clip: Annotated[
        str | None, typer.Option(help="auto (real ViT-B/32 if available, else tiny random), a name or a path")
    ] = None,
    per_class: Annotated[
        int | None, typer.Option(help="Generated clips per class (0: 30 with a tiny CLIP, 10 with real weights)")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (0: 60 with a tiny CLIP, 10 with real weights)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (default auto)")] = None,
    cue: Annotated[
        float | None,
        typer.Option(help="Opacity of the class-coloured pattern in expression frames (0: faces only; default 0.8)"),
    ] = None,
) -> None:
    """Generate clips, extract, train, evaluate, predict and explain: the whole pipeline in minutes."""
    from tgdfer.apps.demo import DemoConfig, run_demo

    given = {"out": out, "clip": clip, "per_class": per_class, "epochs": epochs, "device": device, "cue": cue}
    run_demo(_build(DemoConfig, given))


@app.command()
def info(features: Annotated[Path, typer.Argument(help="Entry file of a stage-1 cache")]) -> None:
    """Describe a feature cache: how it was made, its clips, views, splits and failures."""
    from tgdfer.apps.info import info as describe

    print(describe(str(features)))


@app.command()
def verify(features: Annotated[Path, typer.Argument(help="Entry file of a stage-1 cache")]) -> None:
    """Check a feature cache in full: its entry and every shard's size, digest over the data, finite values."""
    from tgdfer.features.cache import verify_cache

    result = verify_cache(path=str(features))
    rows = f"{result['rows']} {result['layout']}"  # views, or frames of a per-frame cache
    print(f"{result['entry']}: {result['shards']} shards, {rows}, {result['bytes']:,} bytes verified")


@app.command("import-features")
def import_features(
    folder: Annotated[Path, typer.Argument(help="Folder of video_features outputs or one .npy/.npz per clip")],
    annotations: Annotated[Path, typer.Option(help="CSV path,label[,split] as --dataset csv reads it")],
    clip: Annotated[str, typer.Option(help="The CLIP model (name or file) that made the features")],
    out: Annotated[Path | None, typer.Option(help="Entry file of the cache (default cache/imported.h5)")] = None,
    frames: Annotated[int | None, typer.Option(help="T of the samples stage 2 draws (default 16)")] = None,
    shard_clips: Annotated[int | None, typer.Option(help="Clips per shard (default 256)")] = None,
) -> None:
    """A per-frame cache from CLIP features made elsewhere (checked first; nothing is written on a refusal)."""
    from tgdfer.apps.import_features import ImportConfig
    from tgdfer.apps.import_features import import_features as run_import

    flags = {"folder": folder, "annotations": annotations, "clip": clip, "out": out, "frames": frames}
    run_import(_build(ImportConfig, {**flags, "shard_clips": shard_clips}))


_WINDOW_HELP = (
    "Window length, seconds (2, 2.5s) or frames (16f); default the run's clip length when its cache records one, "
    "else 2 s: the model was trained on clips of a few seconds, and its T frames spread over the window"
)


@app.command()
def timeline(
    videos: Annotated[
        list[Path], typer.Argument(help="Video files (minutes to hours), or .features.npz files of earlier timelines")
    ],
    run: Annotated[Path, typer.Option(help="Run directory written by `tgdfer train`")],
    out: Annotated[Path | None, typer.Option(help=f"Output folder ({_default(TimelineConfig, 'out')})")] = None,
    window: Annotated[str | None, typer.Option(help=_WINDOW_HELP)] = None,
    stride: Annotated[
        str | None, typer.Option(help=f"Window start to next start, s or f ({_default(TimelineConfig, 'stride')})")
    ] = None,
    face_crop: Annotated[
        bool | None, typer.Option(help="Crop the followed face; default: as the run's cache was made")
    ] = None,
    face: Annotated[int | None, typer.Option(help="Face to follow by size: 0 the largest (default 0)")] = None,
    detect_every: Annotated[
        int | None, typer.Option(help=f"Detect every k sampled frames ({_default(TimelineConfig, 'detect_every')})")
    ] = None,
    min_face: Annotated[
        float | None, typer.Option(help=f"Face share a window needs ({_default(TimelineConfig, 'min_face')})")
    ] = None,
    smooth: Annotated[str | None, typer.Option(help="none | mean | ema: adds smoothed columns (default none)")] = None,
    smooth_windows: Annotated[
        int | None, typer.Option(help=f"Smoothing span in windows ({_default(TimelineConfig, 'smooth_windows')})")
    ] = None,
    save_features: Annotated[bool | None, typer.Option(help="Also write <stem>.features.npz")] = None,
    resume: Annotated[bool | None, typer.Option(help="Continue interrupted timelines (same settings only)")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the results as JSON instead of summaries")] = False,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (default auto)")] = None,
    batch_frames: Annotated[
        int | None, typer.Option(help=f"Frames per encoder call ({_default(TimelineConfig, 'batch_frames')})")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="Image encoder: auto (bf16 on a CPU with AMX) | fp32 | fp16 | bf16")
    ] = None,
    clip: Annotated[str | None, typer.Option(help="CLIP weights (default: the run's)")] = None,
    people: Annotated[
        str | None, typer.Option(help="all: every person, one row per (window, person); N: the N most seen")
    ] = None,
    people_map: Annotated[
        str | None, typer.Option(help='JSON merging/renaming persons: {"p3": "p1", "p1": "Anna"}')
    ] = None,
    report: Annotated[bool | None, typer.Option(help="Write <stem>.report.html beside the CSV (default on)")] = None,
    embed_video: Annotated[bool | None, typer.Option(help="Inline the video in the report (small videos)")] = None,
    set_: Sets = None,
) -> None:
    """An emotion timeline of long videos: one CSV row per window, a JSON header, a plot, a summary."""
    flags = {k: v for k, v in locals().items() if k not in ("videos", "json_", "set_")}
    import json

    from tgdfer.apps.timeline import format_summary
    from tgdfer.apps.timeline import timeline as run_timeline

    results = run_timeline([str(v) for v in videos], _build(TimelineConfig, flags, set_))
    print(json.dumps(results, indent=2) if json_ else "\n".join(format_summary(r) for r in results))
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)  # every readable video still has its timeline


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status instead of raising SystemExit when called from Python."""
    try:
        app(args=argv, prog_name="tgdfer", standalone_mode=True)
    except TgdferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # typer's own exit, with usage errors already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
