"""Inference with a trained run on new clips: ``predict`` (class, probabilities, per-frame influence) and
``explain`` (the paper's Fig. 4 for one clip).

A clip goes through exactly the code stage 1 used for the run's cache: ``views.ClipViews`` with no train views
(the test view: T segment-centre frames, CLIP's resize and centre crop) and ``views.encode_frames`` with the run's
CLIP weights (``runs.load_run`` checks their SHA-256). Raw videos get a face crop first (``tgdfer.faces``);
frame folders of face crops (DFEW, FERV39k) should pass ``face_crop=False``, as their cache was made without one.

Batching: DataLoader workers decode and crop clips in parallel; ``batch_clips`` clips at a time go through the
image encoder as one (batch_clips * T, 3, S, S) batch and through the model as one (batch_clips, T, D) call.
An input that cannot be read gives ``ok=False`` with the reason and the others still run.

Influence is the model's instance score of each frame for a class (``Output.scores``, (B, T, C): the frame
stream's by default, see ``ModelConfig.instances``); the paper shows it min-max normalised per clip (Eq. 12),
for display only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tgdfer.backbone import FrozenClip
from tgdfer.config import AugmentConfig
from tgdfer.devices import resolve_dtype
from tgdfer.engine import predict_views
from tgdfer.plots import influence_png, minmax
from tgdfer.runs import TrainedRun, load_run
from tgdfer.views import ClipJob, ClipViews, decode_loader, decode_workers, encode_frames


class PredictError(RuntimeError):
    """An input that ``explain`` cannot draw (unreadable, or not a clip); the message names it and says why."""


def _image_encoder(run: TrainedRun) -> FrozenClip:
    """The run's CLIP with its image tower on the model's device, in the dtype its cache was encoded in (on CPU
    always fp32: half-precision CPU matmuls are slow). Only ``visual`` moves: the text tower is the model's."""
    device = next(run.model.parameters()).device
    stored = run.identity.get("dtype")
    dtype = resolve_dtype(stored if device.type == "cuda" and stored else "auto", device)
    run.clip.model.visual.to(device=device, dtype=dtype)
    return run.clip


def _failure(path: str, reason: str, face_crop: bool) -> dict:
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
    }


def _face_warning(found: np.ndarray, face_crop: bool) -> str | None:
    missing = int((~found).sum())
    if not face_crop or missing == 0:
        return None
    if missing == len(found):
        return "no face found in any sampled frame: the full frames were used"
    return f"no face found in {missing} of {len(found)} sampled frames: they use the nearest frame's face box"


def _result(
    path: str, item: dict, probs: np.ndarray, scores: np.ndarray, names: tuple[str, ...], face_crop: bool
) -> dict:
    """One input's dict from its ClipViews item, (C,) probabilities and (T, C) instance scores."""
    pred = int(probs.argmax())
    found = np.asarray(item["face_found"], dtype=bool)[0]  # (V=1, T) -> (T,)
    raw = scores[:, pred]  # (T,) influence of each frame on the predicted class
    return {
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
    }


def _run_clips(
    run: TrainedRun,
    paths: list[str],
    face_crop: bool,
    batch_clips: int,
    workers: int,
    keep: bool = False,
) -> list[dict]:
    """Predict every path with a loaded run; with ``keep``, ok results also carry "_frames" (T, S, S, 3) uint8
    (the crops the model saw) and "_scores" (T, C) float (every class's influence)."""
    if batch_clips < 1:
        raise ValueError(f"batch_clips: expected at least 1, found {batch_clips}")
    if face_crop:
        from tgdfer.faces import cascade_path

        cascade_path()  # a missing cascade fails once, here, not inside every worker
    clip = _image_encoder(run)
    frames, names = int(run.identity["frames"]), run.class_names
    paths = [str(p) for p in paths]
    results: list[dict | None] = [None] * len(paths)
    jobs = [ClipJob(row=row, id=path, path=path) for row, path in enumerate(paths)]
    # views=0: only the test view, the one stage 1 stores for evaluation; seed and augment are then unused.
    dataset = ClipViews(jobs, frames, 0, 0, clip.image_size, AugmentConfig(), face_crop)
    n_workers = decode_workers(workers, len(jobs))
    prefetch = max(2, batch_clips // max(n_workers, 1) + 1)
    items = decode_loader(dataset, n_workers, pin_memory=clip.device.type == "cuda", prefetch=prefetch)

    def finish(items: list[dict]) -> None:
        pixels = torch.cat([item["frames"] for item in items])  # B x (T, S, S, 3) -> (B*T, S, S, 3)
        features = encode_frames(clip, pixels, batch_size=len(pixels))  # one encoder call: (B*T, D) fp16
        features = features.view(len(items), frames, -1)  # (B*T, D) -> (B, T, D)
        out = predict_views(run.model, features, amp=run.config.train.amp, batch_size=len(items))  # one model call
        probs, scores = out["probs"].cpu().numpy(), out["scores"].cpu().numpy()  # (B, C), (B, T, C)
        for b, item in enumerate(items):
            row = int(item["row"])
            results[row] = _result(paths[row], item, probs[b], scores[b], names, face_crop)
            if keep:
                results[row] |= {"_frames": item["frames"].numpy(), "_scores": scores[b]}

    pending: list[dict] = []
    bar = tqdm(total=len(jobs), unit="clip", desc="predict", disable=True if len(jobs) <= 1 else None)
    for item in items:
        if item["error"] is not None:
            row = int(item["row"])
            results[row] = _failure(paths[row], item["error"], face_crop)
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
    run_dir: str,
    device: str = "auto",
    face_crop: bool = True,
    batch_clips: int = 16,
    workers: int = -1,
    clip_source: str | None = None,
) -> list[dict]:
    """Classify each clip (a video file or a folder of frames) with the trained run in ``run_dir``.

    Returns one dict per input, in input order: path, ok, error (the reason when ok is False, else None),
    predicted (class name), probabilities {class: p}, frame_indices (T sampled frame numbers), influence (T raw
    instance scores of the predicted class), influence_norm (the same, min-max normalised, Eq. 12), face_crop,
    face_found (T bools), frames_without_face, num_frames (frames in the clip), warning (about faces, or None).
    """
    run = load_run(run_dir, device, clip_source)
    return _run_clips(run, list(paths), face_crop, batch_clips, workers)


def explain(
    path: str,
    run_dir: str,
    png: str,
    device: str = "auto",
    face_crop: bool = True,
    clip_source: str | None = None,
    target: str | None = None,
) -> dict:
    """Draw the paper's Fig. 4 for one clip: its T sampled frames (the 224 x 224 crops the model saw) and the
    min-max normalised influence (Eq. 12) of each on the predicted class, or on ``target``, as a colour bar.

    Returns ``predict``'s dict with influence and influence_norm for the explained class, plus "explained"
    (that class) and "png" (the written path). Raises PredictError when the clip cannot be read.
    """
    run = load_run(run_dir, device, clip_source)
    names = run.class_names
    if target is not None and target not in names:
        raise ValueError(f"--target: expected one of the run's classes {list(names)}, found {target!r}")
    result = _run_clips(run, [path], face_crop, batch_clips=1, workers=0, keep=True)[0]
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
    lines.append(
        f"{len(results) - failed} of {len(results)} clips predicted" + (f", {failed} failed" if failed else "")
    )
    return "\n".join(line.rstrip() for line in lines)
