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
        from tgdfer.engine import TrainingError
        from tgdfer.extract import ExtractError
        from tgdfer.features import CacheError

        _USER_ERRORS = (
            AnnotationError,
            CacheError,
            ClipLoadError,
            ExtractError,
            TrainingError,
            ValueError,
            FileNotFoundError,
        )
    return _USER_ERRORS


@app.command()
def extract(
    dataset: Annotated[str, typer.Option(help="dfew | ferv39k | mafw | csv")],
    root: Annotated[Path, typer.Option(help="Dataset root folder")],
    out: Annotated[Path, typer.Option(help="Entry file of the cache; shards go beside it")] = Path("cache/dfew.h5"),
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
        out=str(out),
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
