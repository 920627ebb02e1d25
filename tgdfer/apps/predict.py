"""Inference with a trained run on new clips: ``predict`` (class, probabilities, per-frame influence) and
``explain`` (the paper's Fig. 4 for one clip).

A clip goes through exactly the code stage 1 used for the run's cache: ``views.ClipViews`` with no train views
(the test view: T segment-centre frames, CLIP's resize and centre crop) and ``views.encode_frames`` with the run's
CLIP weights (``runs.load_run`` checks their SHA-256). Inputs are face-cropped (``tgdfer.data.faces``) exactly when
the run's cache was (its identity records ``face_crop``, T and the sampling rule); ``face_crop=True/False``
overrides that, and the override is reported (stderr and each result's "note"), as the model then sees other
pixels than it was trained on.

Batching: DataLoader workers decode and crop clips in parallel; ``batch_clips`` clips at a time go through the
image encoder as one (batch_clips * T, 3, S, S) batch and through the model as one (batch_clips, T, D) call.
An input that cannot be read gives ``ok=False`` with the reason and the others still run.

Influence is the model's instance score of each frame for a class (``Output.scores``, (B, T, C): the frame
stream's by default, see ``ModelConfig.instances``); the paper shows it min-max normalised per clip (Eq. 12),
for display only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tgdfer.backbone import FrozenClip
from tgdfer.config import AugmentConfig, PredictConfig
from tgdfer.data.sampling import SAMPLING_RULE
from tgdfer.data.views import ClipJob, ClipViews, decode_loader, decode_workers, encode_frames
from tgdfer.devices import resolve_dtype
from tgdfer.errors import ConfigError, PredictError
from tgdfer.model.inference import predict_features
from tgdfer.model.influence import minmax
from tgdfer.plots import influence_png
from tgdfer.progress import Progress
from tgdfer.train.runs import TrainedRun, load_run


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def preprocessing(run: TrainedRun, face_crop: bool | None) -> tuple[bool, str | None]:
    """(face crop or not, a note when that is not how the run's cache was made, else None).

    ``face_crop`` None follows the cache (a cache that did not record it, as generated ones, had no crops).
    """
    trained = bool(run.identity.get("face_crop") or False)
    notes = []
    if face_crop is not None and face_crop != trained:
        flag = "--face-crop" if face_crop else "--no-face-crop"
        made = "with" if trained else "without"
        notes.append(
            f"face crop {'on' if face_crop else 'off'} ({flag}), but the run's cache was extracted {made} face "
            "crops: the model sees other pixels than it was trained on"
        )
    sampling = run.identity.get("sampling")
    if sampling not in (None, SAMPLING_RULE, "generated"):  # "generated": caches of testing.synthetic, no frames
        notes.append(f"the run's cache sampled frames by another rule ({sampling!r}); this tgdfer samples by its own")
    return (trained if face_crop is None else bool(face_crop)), "; ".join(notes) or None


def image_encoder(run: TrainedRun) -> FrozenClip:
    """The run's CLIP with its image tower on the model's device, in the dtype its cache was encoded in (on CPU
    always fp32: half-precision CPU matmuls are slow). Only ``visual`` moves: the text tower is the model's."""
    device = next(run.model.parameters()).device
    stored = run.identity.get("dtype")
    dtype = resolve_dtype(stored if device.type == "cuda" and stored else "auto", device)
    run.clip.model.visual.to(device=device, dtype=dtype)
    return run.clip


def _failure(path: str, reason: str, face_crop: bool, note: str | None = None) -> dict:
    return {
        "path": path,
        "ok": False,
        "error": reason,
        "predicted": None,
        "probabilities": None,
        "frame_indices": [],
        "influence": [],
        "influence_norm": [],
        "face_crop": face_crop,
        "face_found": [],
        "frames_without_face": 0,
        "num_frames": None,
        "warning": None,
        "note": note,
    }


def _face_warning(found: np.ndarray, face_crop: bool) -> str | None:
    missing = int((~found).sum())
    if not face_crop or missing == 0:
        return None
    if missing == len(found):
        return "no face found in any sampled frame: the full frames were used"
    return f"no face found in {missing} of {len(found)} sampled frames: they use the nearest frame's face box"


def _result(
    path: str,
    item: dict,
    probs: np.ndarray,
    scores: np.ndarray,
    names: tuple[str, ...],
    face_crop: bool,
    note: str | None = None,
    require_face: bool = False,
) -> dict:
    """One input's dict from its ClipViews item, (C,) probabilities and (T, C) instance scores; with
    ``require_face``, an input without a face in any sampled frame becomes a failure that keeps the face fields."""
    pred = int(probs.argmax())
    found = np.asarray(item["face_found"], dtype=bool)[0]  # (V=1, T) -> (T,)
    raw = scores[:, pred]  # (T,) influence of each frame on the predicted class
    result = {
        "path": path,
        "ok": True,
        "error": None,
        "predicted": names[pred],
        "probabilities": {name: float(p) for name, p in zip(names, probs, strict=True)},
        "frame_indices": np.asarray(item["view_frames"])[0].tolist(),
        "influence": raw.tolist(),
        "influence_norm": minmax(raw).tolist(),  # Eq. 12
        "face_crop": face_crop,
        "face_found": found.tolist(),  # all True without face_crop: the frames are taken as face crops
        "frames_without_face": int((~found).sum()),
        "num_frames": int(item["num_frames"]),
        "warning": _face_warning(found, face_crop),
        "note": note,
    }
    if require_face and face_crop and not found.any():
        reason = f"no face found in any of the {len(found)} sampled frames (--require-face): {path}"
        failed = _failure(path, reason, face_crop, note)
        return failed | {k: result[k] for k in ("frame_indices", "face_found", "frames_without_face", "num_frames")}
    return result


def _run_clips(
    run: TrainedRun,
    paths: list[str],
    face_crop: bool,
    batch_clips: int,
    workers: int,
    keep: bool = False,
    note: str | None = None,
    require_face: bool = False,
    frames_in_memory: list | None = None,
) -> list[dict]:
    """Predict every path with a loaded run; with ``keep``, ok results also carry "_frames" (T, S, S, 3) uint8
    (the crops the model saw) and "_scores" (T, C) float (every class's influence). ``frames_in_memory`` gives
    each input's frames instead of reading ``paths`` (then only names)."""
    if batch_clips < 1:
        raise ConfigError(f"batch_clips: expected at least 1, found {batch_clips}")
    if require_face and not face_crop:
        raise ConfigError(
            "--require-face: expected face detection on, found face crop off (the run's cache was made without "
            "face crops, or --no-face-crop); pass --face-crop to detect faces"
        )
    if face_crop:
        from tgdfer.data.faces import FaceDetector

        FaceDetector().backend  # noqa: B018  (loads it: no detector at all fails once, here, not in every worker)
    clip = image_encoder(run)
    frames, names = int(run.identity["frames"]), run.class_names
    paths = [str(p) for p in paths]
    results: list[dict | None] = [None] * len(paths)
    memory = frames_in_memory or [None] * len(paths)
    jobs = [
        ClipJob(row=row, id=path, path=path, frames=data)
        for row, (path, data) in enumerate(zip(paths, memory, strict=True))
    ]
    # views=0: only the test view, the one stage 1 stores for evaluation; seed and augment are then unused.
    dataset = ClipViews(jobs, frames, 0, 0, clip.image_size, AugmentConfig(), face_crop)
    n_workers = 0 if frames_in_memory is not None else decode_workers(workers, len(jobs))
    prefetch = max(2, batch_clips // max(n_workers, 1) + 1)
    items = decode_loader(dataset, n_workers, pin_memory=clip.device.type == "cuda", prefetch=prefetch)

    def finish(items: list[dict]) -> None:
        pixels = torch.cat([item["frames"] for item in items])  # B x (T, S, S, 3) -> (B*T, S, S, 3)
        features = encode_frames(clip, pixels, batch_size=len(pixels))  # one encoder call: (B*T, D) fp16
        features = features.view(len(items), frames, -1)  # (B*T, D) -> (B, T, D)
        out = predict_features(run.model, features, amp=run.config.train.amp, batch_size=len(items))  # one model call
        probs, scores = out["probs"].cpu().numpy(), out["scores"].cpu().numpy()  # (B, C), (B, T, C)
        for b, item in enumerate(items):
            row = int(item["row"])
            results[row] = _result(paths[row], item, probs[b], scores[b], names, face_crop, note, require_face)
            if keep and results[row]["ok"]:
                results[row] |= {"_frames": item["frames"].numpy(), "_scores": scores[b]}

    pending: list[dict] = []
    bar = Progress(len(jobs), "predict", stream=sys.stderr, disable=len(jobs) <= 1)  # stdout may carry --json
    for item in items:
        if item["error"] is not None:
            row = int(item["row"])
            results[row] = _failure(paths[row], item["error"], face_crop, note)
        else:
            pending.append(item)
            if len(pending) == batch_clips:
                finish(pending)
                pending = []
        bar.update(1)
    if pending:
        finish(pending)
    bar.close()
    return [r for r in results if r is not None]


def predict(
    paths: list[str],
    cfg: PredictConfig,
    run: TrainedRun | None = None,
    log: Callable[[str], None] = _stderr,
    frames: list | None = None,
) -> list[dict]:
    """Classify each clip (a video file or a folder of frames) with the trained run ``cfg.run`` (or ``run``, already
    loaded). ``frames`` gives each input's frames in memory instead ((n, H, W, 3) uint8 RGB each; ``paths`` then
    only name them); they are sampled and preprocessed as a frame folder of the same frames would be.

    Returns one dict per input, in input order: path, ok, error (the reason when ok is False, else None),
    predicted (class name), probabilities {class: p}, frame_indices (T sampled frame numbers), influence (T raw
    instance scores of the predicted class), influence_norm (the same, min-max normalised, Eq. 12), face_crop,
    face_found (T bools), frames_without_face, num_frames (frames in the clip), warning (about faces, or None),
    note (preprocessing that differs from the run's cache, or None; also sent to ``log``).
    """
    run = run or load_run(cfg.run, cfg.device, cfg.clip)
    face_crop, note = preprocessing(run, cfg.face_crop)
    if note:
        log(f"predict: {note}")
    paths = [str(p) for p in paths]
    if frames is not None and len(frames) != len(paths):
        raise ConfigError(f"frames: expected one clip per name ({len(paths)}), found {len(frames)}")
    return _run_clips(
        run,
        paths,
        face_crop,
        cfg.batch_clips,
        cfg.workers,
        note=note,
        require_face=cfg.require_face,
        frames_in_memory=frames,
    )


def explain(path: str, cfg: PredictConfig, png: str, target: str | None = None) -> dict:
    """Draw the paper's Fig. 4 for one clip: its T sampled frames (the 224 x 224 crops the model saw) and the
    min-max normalised influence (Eq. 12) of each on the predicted class, or on ``target``, as a colour bar.

    Returns ``predict``'s dict with influence and influence_norm for the explained class, plus "explained"
    (that class) and "png" (the written path). Raises PredictError when the clip cannot be read.
    """
    run = load_run(cfg.run, cfg.device, cfg.clip)
    face_crop, note = preprocessing(run, cfg.face_crop)
    if note:
        _stderr(f"explain: {note}")
    names = run.class_names
    if target is not None and target not in names:
        raise ConfigError(f"--target: expected one of the run's classes {list(names)}, found {target!r}")
    result = _run_clips(run, [path], face_crop, 1, 0, keep=True, note=note, require_face=cfg.require_face)[0]
    if not result["ok"]:
        raise PredictError(f"cannot explain {path}: {result['error']}")
    frames, scores = result.pop("_frames"), result.pop("_scores")
    explained = target or result["predicted"]
    raw = scores[:, names.index(explained)]  # (T,) influence on the explained class
    found = np.array(result["face_found"], dtype=bool)
    title = (
        f"{Path(path).name}: predicted {result['predicted']} (p = {result['probabilities'][result['predicted']]:.2f})"
        f"; frame influence on {explained}, min-max normalised (Eq. 12)"
    )
    influence_png(
        frames,
        raw,
        png,
        title=title,
        frame_numbers=np.array(result["frame_indices"]),
        no_face=~found if face_crop else None,
    )
    return result | {
        "influence": raw.tolist(),
        "influence_norm": minmax(raw).tolist(),
        "explained": explained,
        "png": str(png),
    }


def _faces_cell(result: dict) -> str:
    if not result["ok"]:
        return "-"
    if not result["face_crop"]:
        return "not cropped"
    t = len(result["face_found"])
    cell = f"{t - result['frames_without_face']}/{t}"
    return cell + " (full frames)" if result["frames_without_face"] == t else cell


def format_predictions(results: list[dict]) -> str:
    """A table for the terminal: path, predicted class, its probability, frames with a face found, error."""
    header = ("path", "class", "p", "faces", "error")
    rows = [
        (
            r["path"],
            r["predicted"] if r["ok"] else "-",
            f"{r['probabilities'][r['predicted']]:.3f}" if r["ok"] else "-",
            _faces_cell(r),
            r["error"] or "",
        )
        for r in results
    ]
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in [header, *rows]
    ]
    failed = sum(not r["ok"] for r in results)
    lines += [f"warning: {r['path']}: {r['warning']}" for r in results if r["ok"] and r["warning"]]
    lines.append(
        f"{len(results) - failed} of {len(results)} clips predicted" + (f", {failed} failed" if failed else "")
    )
    return "\n".join(line.rstrip() for line in lines)
