"""The ``tgdfer`` command. Each command builds a config and calls one library function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="TG-DFER: text-guided weakly supervised dynamic facial expression recognition on cached CLIP features.",
)


@app.callback()
def _group() -> None:
    """TG-DFER: text-guided weakly supervised dynamic facial expression recognition on cached CLIP features."""


# Errors a user can fix: printed as one line, exit status 2, no traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = ()


def _user_errors() -> tuple[type[BaseException], ...]:
    global _USER_ERRORS
    if not _USER_ERRORS:
        from tgdfer.backbone import ClipLoadError
        from tgdfer.datasets import AnnotationError
        from tgdfer.extract import ExtractError
        from tgdfer.faces import FaceDetectorError
        from tgdfer.features import CacheError
        from tgdfer.predict import PredictError
        from tgdfer.runs import TrainingError

        _USER_ERRORS = (
            AnnotationError,
            CacheError,
            ClipLoadError,
            ExtractError,
            TrainingError,
            PredictError,
            FaceDetectorError,
            ValueError,
            FileNotFoundError,
        )
    return _USER_ERRORS


@app.command()
def extract(
    dataset: Annotated[str, typer.Option(help="dfew | ferv39k | mafw | csv")],
    root: Annotated[Path, typer.Option(help="Dataset root folder")],
    out: Annotated[Path | None, typer.Option(help="Entry file of the cache (default cache/<dataset>.h5)")] = None,
    annotations: Annotated[
        Path | None, typer.Option(help="Split files folder or CSV, if not at the dataset's usual place")
    ] = None,
    clip: Annotated[str, typer.Option(help="CLIP model name (downloaded) or checkpoint path")] = "ViT-B/32",
    frames: Annotated[int, typer.Option(help="Frames per view, T")] = 16,
    views: Annotated[int, typer.Option(help="Augmented train views per clip (plus one test view)")] = 4,
    batch_size: Annotated[int, typer.Option(help="Frames per encoder call")] = 512,
    workers: Annotated[int, typer.Option(help="Decode processes; -1: one per core but one")] = -1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | fp16 | bf16")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of train-view sampling and augmentation")] = 0,
    shard_clips: Annotated[int, typer.Option(help="Clips per shard (the most a crash can lose)")] = 256,
    face_crop: Annotated[bool, typer.Option(help="Detect and crop faces first (raw videos)")] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo committed shards")] = False,
    strict: Annotated[bool, typer.Option(help="Stop at the first bad clip instead of skipping it")] = False,
) -> None:
    """Stage 1: encode every clip's sampled frames with frozen CLIP into an HDF5 feature cache."""
    from tgdfer.config import ExtractConfig
    from tgdfer.extract import extract as run_extract

    cfg = ExtractConfig(
        dataset=dataset,
        root=str(root),
        out=str(out or Path("cache") / f"{dataset}.h5"),
        annotations=str(annotations) if annotations else None,
        clip=clip,
        frames=frames,
        views=views,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        seed=seed,
        shard_clips=shard_clips,
        face_crop=face_crop,
        overwrite=overwrite,
        strict=strict,
    )
    run_extract(cfg)


@app.command()
def train(
    features: Annotated[Path, typer.Option(help="Entry file of a stage-1 cache")] = Path("cache/dfew.h5"),
    fold: Annotated[str, typer.Option(help="1..5 for DFEW/MAFW, 1 otherwise, or all")] = "1",
    out: Annotated[Path | None, typer.Option(help="Run directory (default cache/runs/<cache>-fold<k>)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting, e.g. model.window=4 (repeatable)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    clip: Annotated[str | None, typer.Option(help="CLIP weights for the text tower (default: the cache's)")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint")] = False,
) -> None:
    """Stage 2: train the temporal network and prompts on a cache; --fold all runs every fold."""
    from tgdfer.config import RunConfig, apply_overrides
    from tgdfer.engine import fit_folds, folds_of

    run_out = out or Path("cache/runs") / f"{features.stem}-fold{fold}"
    cfg = RunConfig(features=str(features), fold=fold, out=str(run_out), device=device, clip=clip)
    cfg = apply_overrides(cfg, set_ or [])
    fit_folds(cfg, folds_of(str(features), fold), resume=resume)


@app.command()
def ablate(
    table: Annotated[str, typer.Option(help="Paper table: 3 (depths), 4 (stride/window), 5 (prompts), 6 (frames)")],
    features: Annotated[Path, typer.Option(help="Entry file of a stage-1 cache")] = Path("cache/dfew.h5"),
    folds: Annotated[str, typer.Option(help="e.g. 1-5, 1,3 or all")] = "all",
    seeds: Annotated[str, typer.Option(help="e.g. 1,2,3 or 1-3")] = "1",
    workers: Annotated[int, typer.Option(help="Trainings at once (they share GPUs, or split the CPU)")] = 1,
    out: Annotated[Path, typer.Option(help="Sweep directory: runs/ and table<N>.md/.csv")] = Path("cache/ablate"),
    rows: Annotated[str | None, typer.Option(help="Only these row labels, comma-separated")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override applied to every row")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dry_run: Annotated[bool, typer.Option(help="Print the planned runs and their settings, train nothing")] = False,
) -> None:
    """Run a paper ablation table as a resumable sweep and write it beside the paper's figures."""
    from tgdfer.ablations import parse_folds, parse_seeds, run_table

    result = run_table(
        table,
        str(features),
        folds=parse_folds(folds, str(features)),
        seeds=parse_seeds(seeds),
        workers=workers,
        out=str(out),
        dry_run=dry_run,
        overrides=set_ or [],
        device=device,
        rows=[r.strip() for r in rows.split(",")] if rows else None,
    )
    if result.get("failed"):
        raise typer.Exit(1)


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Video files or folders of frames")],
    run: Annotated[Path, typer.Option(help="Run directory written by `tgdfer train`")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    face_crop: Annotated[
        bool, typer.Option(help="Detect and crop faces first; --no-face-crop when inputs are face crops already (DFEW)")
    ] = True,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    batch_clips: Annotated[int, typer.Option(help="Clips per encoder batch")] = 16,
    workers: Annotated[int, typer.Option(help="Decode processes; -1: one per core but one")] = -1,
    clip: Annotated[str | None, typer.Option(help="CLIP weights (default: the run's)")] = None,
) -> None:
    """Classify clips with a trained run: class, probabilities, per-frame influence."""
    import json

    from tgdfer.predict import format_predictions
    from tgdfer.predict import predict as run_predict

    results = run_predict([str(p) for p in paths], str(run), device, face_crop, batch_clips, workers, clip)
    print(json.dumps(results, indent=2) if json_ else format_predictions(results))
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)  # every readable input was still predicted and printed


@app.command()
def explain(
    path: Annotated[Path, typer.Argument(help="A video file or a folder of frames")],
    run: Annotated[Path, typer.Option(help="Run directory written by `tgdfer train`")],
    png: Annotated[Path, typer.Option(help="Where to write the figure")] = Path("explain.png"),
    target: Annotated[str | None, typer.Option(help="Explain this class instead of the predicted one")] = None,
    face_crop: Annotated[
        bool, typer.Option(help="Detect and crop faces first; --no-face-crop when inputs are face crops already (DFEW)")
    ] = True,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    clip: Annotated[str | None, typer.Option(help="CLIP weights (default: the run's)")] = None,
) -> None:
    """Fig. 4 of the paper: the sampled frames with their normalised influence as a colour bar."""
    from tgdfer.predict import explain as run_explain

    result = run_explain(str(path), str(run), str(png), device, face_crop, clip, target)
    print(f"{path}: predicted {result['predicted']}; influence on {result['explained']} drawn to {result['png']}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo writes")] = Path("cache/demo"),
    clip: Annotated[
        str, typer.Option(help="auto (real ViT-B/32 if available, else tiny random), a name or a path")
    ] = "auto",
    per_class: Annotated[
        int, typer.Option(help="Generated clips per class (0: 30 with a tiny CLIP, 10 with real weights)")
    ] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs (0: 60 with a tiny CLIP, 10 with real weights)")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    cue: Annotated[
        float | None,
        typer.Option(help="Opacity of the class-coloured pattern in expression frames (0: faces only; default 0.8)"),
    ] = None,
) -> None:
    """Generate clips, extract, train, evaluate, predict and explain: the whole pipeline in minutes."""
    from tgdfer.demo import DemoConfig, run_demo

    extra = {} if cue is None else {"cue": cue}
    run_demo(DemoConfig(out=str(out), clip=clip, per_class=per_class, epochs=epochs, device=device, **extra))


@app.command()
def info(features: Annotated[Path, typer.Argument(help="Entry file of a stage-1 cache")]) -> None:
    """Describe a feature cache: how it was made, its clips, views, splits and failures."""
    import numpy as np

    from tgdfer.features import load_cache

    cache = load_cache(features)
    a = cache.attrs
    print(
        f"{features}: {len(cache.clip_ids)} clips, {len(cache.view_kind)} views (T={cache.frames}, D={cache.dim}), "
        f"{len(cache.failures)} failures"
    )
    print(f"  dataset {a.get('dataset')}, classes {list(cache.class_names)}")
    print(
        f"  CLIP {a.get('clip_model')} sha256 {str(a.get('clip_sha256'))[:16]}..., dtype {a.get('dtype')}, "
        f"{a.get('train_views')} train views per clip, seed {a.get('seed')}, tgdfer {a.get('tgdfer_version')}"
    )
    for k, name in enumerate(cache.split_names):
        col = cache.membership[:, k]
        print(f"  split {name}: {int((col == 1).sum())} train, {int((col == 2).sum())} test clips")
    counts = np.bincount(cache.labels, minlength=len(cache.class_names))
    print("  clips per class: " + ", ".join(f"{c} {n}" for c, n in zip(cache.class_names, counts, strict=True)))


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status instead of raising SystemExit when called from Python."""
    try:
        app(args=argv, prog_name="tgdfer", standalone_mode=True)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # typer's own exit, with usage errors already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
