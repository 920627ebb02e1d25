"""``tgdfer demo`` (``make demo``): the whole pipeline on generated clips, end to end, on a CPU in minutes.

1. generate drawn face clips of the 7 DFEW classes (frame folders, plus a few .mp4 videos) and a CSV of them;
2. stage 1: extract CLIP features into ``<out>/cache.h5``;
3. stage 2: train TG-DFER on them, evaluate the test split (metrics, confusion matrix, curves);
4. predict on held-out clips and draw the influence strip (Fig. 4) of one of them.

It uses OpenAI's real ViT-B/32 weights when they are in the clip cache folder or can be downloaded, and
otherwise a tiny random CLIP, saying loudly which: with random weights the pipeline runs, but its accuracy
means nothing for real faces.

The drawn expressions alone move about 1% of a tiny random CLIP's feature variance, so a demo on them ended at
chance (WAR 14.3 of 7 classes) and showed a pipeline that cannot learn. The generated clips therefore also carry a
large class-coloured stripe pattern over the face, as strong as the expression's intensity (``DemoConfig.cue``,
``testing.synthetic.make_clip``): the class lives only in the clip's expression frames, as in DFEW, and even random
weights keep it, so the demo shows stage 2 learning from clip labels.
"""

from __future__ import annotations

import csv
import json
import shutil
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

_WEIGHTS_FILE = "ViT-B-32.pt"  # the file name clip gives OpenAI's ViT-B/32 download
_WEIGHTS_HOST = ("openaipublic.azureedge.net", 443)


@dataclass(frozen=True)
class DemoConfig:
    out: str = "cache/demo"  # everything the demo writes
    clip: str = "auto"  # auto: real ViT-B/32 when present or downloadable, else tiny random; or a name/path
    per_class: int = 0  # generated clips per class, 30% held out for testing; 0: 30 with the tiny CLIP (10 gave
    #                     WAR 28.6: 49 train clips were too few), 10 with real weights (ViT-B/32 on a CPU is slow)
    epochs: int = 0  # 0: 60 with the tiny CLIP (WAR 82.5 at 30, 90.5 at 60 with issue 23's default reading; 74.6
    #                  and 84.1 before), 10 with real weights (each step runs the text tower)
    device: str = "auto"
    download_root: str | None = None  # clip's weights folder (default ~/.cache/clip)
    seed: int = 0
    cue: float = 0.8  # opacity of the class pattern at full intensity; 0 draws faces only (chance with random weights)


# The model's default reading (tgdfer/config.py ModelConfig, docs/pages/learning.md), said at the start of every demo.
_READING = [
    "Model: the default reading (docs/pages/learning.md). The clip's class comes from the temporal stream (the",
    "paper's X^I, attention bag), which classifies best, plus 1/4 of a per-frame stream, which finds the",
    "expression frames (the influence strip); each stream trains by its own loss. bench/learning.py, 5 seeds:",
    "sparse bursts WAR 90.5 +- 1.7 (best probe 60.0), burst frame found for 0.86 of clips; dense WAR 93.2 +- 1.5.",
]


def _banner(lines: list[str]) -> str:
    width = max(len(s) for s in lines) + 4
    return "\n".join(["#" * width, *[f"# {s.ljust(width - 4)} #" for s in lines], "#" * width])


def choose_clip(cfg: DemoConfig, out: Path, log=print) -> tuple[str, str]:
    """(--clip value to use, its kind: "openai" pretrained weights by name, "random", or "file" given by the user)."""
    from tgdfer.backbone import ClipLoadError, available_models, load_clip, save_random_clip

    if cfg.clip != "auto":
        return cfg.clip, "openai" if cfg.clip in available_models() else "file"
    root = Path(cfg.download_root or Path.home() / ".cache" / "clip")
    have = (root / _WEIGHTS_FILE).is_file()
    if not have:
        try:
            socket.create_connection(_WEIGHTS_HOST, timeout=3).close()
            have = True
        except OSError:
            log(f"demo: no {_WEIGHTS_FILE} in {root} and OpenAI's download host is unreachable")
    if have:
        try:
            load_clip("ViT-B/32", download_root=cfg.download_root)  # downloads once, checks the SHA-256
            return "ViT-B/32", "openai"
        except ClipLoadError as exc:
            log(f"demo: real ViT-B/32 weights unavailable ({exc})")
    path = save_random_clip(out / "tiny-random-clip.pt", "tiny", seed=cfg.seed)
    return str(path), "random"


def _held_out_videos(root: Path, seed: int, cue: float) -> list[Path]:
    """Two clips no run has seen, as .mp4 videos: what `tgdfer predict` is for."""
    from tgdfer.testing.synthetic import make_clip, write_video

    rng = np.random.default_rng(seed + 1)
    return [
        write_video(root / f"new_{name}.mp4", make_clip(name, 40, 160, rng, cue)[0])
        for name in ("happiness", "surprise")
    ]


def _clip_banner(cfg: DemoConfig, clip: str, kind: str) -> list[str]:
    """What the demo's CLIP is, and what its accuracy can mean, as banner lines."""
    what = {
        "openai": [f"CLIP: OpenAI {clip}, pretrained weights."],
        "random": [
            "CLIP: a TINY RANDOM CLIP (no real ViT-B/32 weights here, and none could be downloaded).",
            "The pipeline runs end to end, but ACCURACY FROM RANDOM WEIGHTS SAYS NOTHING ABOUT REAL FACES:",
            "the generated clips carry a class-coloured pattern in their expression frames, which even random",
            "weights keep, so the demo shows stage 2 learning from clip labels, not recognising expressions.",
            "Put OpenAI's ViT-B-32.pt in ~/.cache/clip (or pass --clip PATH) for a meaningful demo.",
        ],
        "file": [f"CLIP: weights from {clip}.", "If they are random (as in tests), the accuracy means nothing."],
    }[kind]
    if cfg.cue > 0 and kind != "random":
        what.append(f"The clips carry a class-coloured pattern (--cue {cfg.cue}); --cue 0 draws the faces alone.")
    return what


def _generated_data(cfg: DemoConfig, data: Path, real: bool) -> list[Path]:
    """The demo's CSV dataset in ``data`` (kept from an earlier demo made the same) -> its held-out videos."""
    from tgdfer.testing.synthetic import make_csv_dataset

    per_class = cfg.per_class or (10 if real else 30)
    made = {"per_class": per_class, "seed": cfg.seed, "cue": cfg.cue}  # clips are kept only if made the same
    stamp = data / "generated.json"
    if not (data / "annotations.csv").exists() or not stamp.exists() or json.loads(stamp.read_text()) != made:
        shutil.rmtree(data, ignore_errors=True)
        make_csv_dataset(data, per_class=per_class, frames=(24, 48), size=112, seed=cfg.seed, cue=cfg.cue)
        stamp.write_text(json.dumps(made))
    return _held_out_videos(data / "new", cfg.seed, cfg.cue)


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Generate clips, extract, train, evaluate, predict and explain (module docstring) -> a summary dict."""
    from tgdfer.apps.predict import explain, format_predictions, predict
    from tgdfer.config import ExtractConfig, PredictConfig, RunConfig
    from tgdfer.extract import extract
    from tgdfer.train.engine import fit_fold

    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clip, kind = choose_clip(cfg, out, log)
    real = kind == "openai"
    log(_banner([*_clip_banner(cfg, clip, kind), "", *_READING]))
    for old in (out / "cache.shards", out / "run"):  # a demo starts fresh; its generated clips are kept
        shutil.rmtree(old, ignore_errors=True)
    for old in (out / "cache.h5", out / "cache.failures.csv"):
        old.unlink(missing_ok=True)

    log("demo 1/4: generating clips")
    data = out / "data"
    videos = _generated_data(cfg, data, real)

    log("demo 2/4: stage 1, extracting CLIP features")
    cache = out / "cache.h5"
    extract(
        ExtractConfig(
            dataset="csv",
            root=str(data),
            annotations=str(data / "annotations.csv"),
            out=str(cache),
            clip=clip,
            views=1 if real else 2,
            device=cfg.device,
            shard_clips=32,
            download_root=cfg.download_root,
        )
    )

    log("demo 3/4: stage 2, training and evaluating")
    epochs = cfg.epochs or (10 if real else 60)
    run_dir = out / "run"
    run = RunConfig(features=str(cache), out=str(run_dir), device=cfg.device)
    run = replace(
        run,
        train=replace(run.train, epochs=epochs, batch_size=16),
        optim=replace(run.optim, milestones=(round(epochs * 0.6), round(epochs * 0.8))),
    )
    metrics = fit_fold(run, log=log)

    log("demo 4/4: predicting new clips and explaining one")
    with open(data / "annotations.csv") as fh:
        test_clips = [str(data / r["path"]) for r in csv.DictReader(fh) if r["split"] == "test"]
    applied = PredictConfig(run=str(run_dir), device=cfg.device, face_crop=False)
    results = predict([*map(str, videos), *test_clips[:3]], applied)
    log(format_predictions(results))
    explained = explain(str(videos[0]), applied, png=str(out / "explain.png"))

    return _summary(clip, kind, metrics, time.perf_counter() - started, cache, run_dir, explained["png"], log)


def _summary(clip: str, kind: str, metrics: dict, seconds: float, cache: Path, run_dir: Path, png: str, log) -> dict:
    """The demo's result (CLIP, WAR/UAR, time, files written), also logged as a closing banner."""
    short = {
        "openai": f"OpenAI {clip}",
        "random": "TINY RANDOM CLIP on coloured cues: says nothing about real faces",
        "file": f"CLIP from {Path(clip).name}",
    }[kind]
    summary = {
        "clip": clip,
        "clip_kind": kind,
        "war": metrics["war"],
        "uar": metrics["uar"],
        "seconds": seconds,
        "files": {
            "cache": str(cache),
            "run": str(run_dir),
            "confusion": str(run_dir / "confusion.png"),
            "curves": str(run_dir / "curves.png"),
            "explain": png,
        },
    }
    log(
        _banner(
            [
                f"demo done in {seconds:.0f} s: test WAR {metrics['war']:.1f}  UAR {metrics['uar']:.1f} ({short})",
                *[f"{k}: {v}" for k, v in summary["files"].items()],
            ]
        )
    )
    return summary
