"""Generated face clips and dataset trees, for tests, benchmarks and the demo; no real data needed.

Each clip is a drawn face that starts neutral, shows its class's expression for a stretch of frames (the apex),
and relaxes again, like the in-the-wild clips of DFEW where only some frames carry the emotion. Expressions differ
in the drawn movements the descriptors name (mouth corners, brows, eye opening), so a good image encoder can
tell them apart; pose, size, lighting and background vary per clip.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from tgdfer.labels import CLASS_NAMES, canonical


@dataclass(frozen=True)
class Expression:
    """Drawing parameters at full intensity; neutral is all zeros."""

    smile: float = 0.0  # mouth-corner lift, -1 (down) .. 1 (up)
    mouth_open: float = 0.0  # 0 .. 1
    mouth_wide: float = 0.0  # lips stretched sideways, 0 .. 1
    brow_raise: float = 0.0  # -1 (lowered) .. 1 (raised)
    brow_knit: float = 0.0  # inner ends tilted: -1 (inner up, sad/fear) .. 1 (inner down, anger)
    eye_open: float = 0.0  # -1 (narrowed) .. 1 (wide)
    nose_wrinkle: float = 0.0  # 0 .. 1
    asymmetry: float = 0.0  # one mouth corner higher (contempt/disgust), 0 .. 1


EXPRESSIONS: dict[str, Expression] = {
    "happiness": Expression(smile=1.0, eye_open=-0.4, mouth_open=0.3),
    "sadness": Expression(smile=-0.9, brow_knit=-0.9, eye_open=-0.5),
    "neutral": Expression(),
    "anger": Expression(brow_raise=-0.8, brow_knit=1.0, smile=-0.2, eye_open=-0.3),
    "surprise": Expression(brow_raise=1.0, eye_open=1.0, mouth_open=1.0),
    "disgust": Expression(nose_wrinkle=1.0, asymmetry=0.8, eye_open=-0.6, smile=-0.3),
    "fear": Expression(brow_raise=0.7, brow_knit=-0.7, eye_open=0.9, mouth_wide=1.0, mouth_open=0.4),
    "contempt": Expression(asymmetry=1.0, smile=0.2),
    "anxiety": Expression(brow_knit=-0.5, mouth_wide=0.5, eye_open=0.3),
    "helplessness": Expression(brow_knit=-0.8, mouth_open=0.5, eye_open=-0.4),
    "disappointment": Expression(smile=-0.6, eye_open=-0.7),
}


def intensity_curve(n: int, rng: np.random.Generator, apex_fraction: tuple[float, float] = (0.25, 0.6)) -> np.ndarray:
    """(n,) expression intensity in [0, 1]: neutral, a ramp up, an apex plateau, a ramp down."""
    width = max(1, round(n * rng.uniform(*apex_fraction)))
    start = int(rng.integers(0, max(1, n - width + 1)))
    t = np.arange(n, dtype=np.float64)
    ramp = max(1.0, width * 0.25)
    rise = np.clip((t - start + ramp) / ramp, 0, 1)
    fall = np.clip((start + width + ramp - 1 - t) / ramp, 0, 1)
    return np.minimum(rise, fall)


def draw_face(expr: Expression, intensity: float, size: int, look: dict) -> np.ndarray:
    """One (size, size, 3) RGB uint8 frame of a face showing ``expr`` at ``intensity``."""
    s = size / 224.0
    img = np.empty((size, size, 3), np.uint8)
    img[:] = look["background"]
    img = cv2.add(img, look["texture"])
    cx, cy = size / 2 + look["dx"] * s, size / 2 + look["dy"] * s
    k = look["scale"] * s
    e = {f: getattr(expr, f) * intensity for f in expr.__dataclass_fields__}

    def pt(x: float, y: float) -> tuple[int, int]:
        return round(cx + x * k), round(cy + y * k)

    cv2.ellipse(img, pt(0, 0), (int(70 * k), int(92 * k)), 0, 0, 360, look["skin"], -1, cv2.LINE_AA)
    dark = (40, 30, 30)
    for side in (-1, 1):  # eyes and brows
        ex, ey = 28 * side, -22
        eye_h = max(1, int((9 + 6 * e["eye_open"]) * k))
        cv2.ellipse(img, pt(ex, ey), (int(13 * k), eye_h), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(img, pt(ex, ey), max(1, int(5 * k)), dark, -1, cv2.LINE_AA)
        lift = -14 * e["brow_raise"]
        inner = 10 * e["brow_knit"]
        p_outer, p_inner = pt(ex + 16 * side, ey - 20 + lift), pt(ex - 14 * side, ey - 20 + lift + inner)
        cv2.line(img, p_outer, p_inner, dark, max(1, int(4 * k)), cv2.LINE_AA)
    if e["nose_wrinkle"] > 0.05:
        for dy in (-4, 2):
            cv2.line(img, pt(-8, dy), pt(8, dy - 3), (90, 60, 60), max(1, int(2 * k)), cv2.LINE_AA)
    cv2.line(img, pt(0, -6), pt(-6, 18), (120, 80, 80), max(1, int(2 * k)), cv2.LINE_AA)
    half = 24 + 14 * e["mouth_wide"]  # mouth: a curve whose corners lift with smile
    xs = np.linspace(-half, half, 21)
    corner_lift = 16 * e["smile"]
    ys = 46 - corner_lift * (xs / half) ** 2 + 6 * e["asymmetry"] * (xs / half) * -1
    upper = np.stack([cx + xs * k, cy + ys * k], 1)
    lower = np.stack([cx + xs * k, cy + (ys + 22 * e["mouth_open"] * (1 - (xs / half) ** 2)) * k], 1)
    poly = np.concatenate([upper, lower[::-1]]).round().astype(np.int32)
    cv2.fillPoly(img, [poly], (110, 30, 40), cv2.LINE_AA)
    cv2.polylines(img, [upper.round().astype(np.int32)], False, (90, 20, 30), max(1, int(3 * k)), cv2.LINE_AA)
    if look["angle"]:
        m = cv2.getRotationMatrix2D((size / 2, size / 2), look["angle"], 1.0)
        img = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT_101)
    return cv2.convertScaleAbs(img, alpha=look["contrast"], beta=look["brightness"])


def random_look(rng: np.random.Generator, size: int) -> dict:
    """Per-clip appearance: position, scale, tilt, skin, lighting, background."""
    texture = rng.normal(0, 12, (size // 8, size // 8, 3))
    texture = cv2.resize(np.clip(texture + 12, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    return {
        "dx": rng.uniform(-10, 10),
        "dy": rng.uniform(-8, 8),
        "scale": rng.uniform(0.9, 1.1),
        "angle": rng.uniform(-8, 8),
        "skin": tuple(int(v) for v in rng.uniform([150, 110, 90], [235, 190, 170])),
        "background": tuple(int(v) for v in rng.uniform(20, 120, 3)),
        "texture": texture,
        "brightness": rng.uniform(-20, 20),
        "contrast": rng.uniform(0.85, 1.15),
    }


# Class cues for random-weight encoders: (RGB colour, stripe angle in degrees, stripe period as a share of the
# frame). Drawn expressions move about 1% of a tiny random CLIP's feature variance (issue 11), so ``cue`` paints
# one of these large high-contrast patterns over the face, in proportion to the expression's intensity.
CUES: dict[str, tuple[tuple[int, int, int], float, float]] = {
    "happiness": ((250, 250, 60), 0.0, 0.22),
    "sadness": ((20, 60, 255), 90.0, 0.14),
    "neutral": ((235, 235, 235), 45.0, 0.25),
    "anger": ((255, 20, 20), 135.0, 0.1),
    "surprise": ((0, 230, 230), 0.0, 0.3),
    "disgust": ((20, 200, 40), 90.0, 0.3),
    "fear": ((190, 40, 255), 45.0, 0.1),
}


def cue_pattern(label: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8 stripes in the class's colour on black (other label sets: drawn from the name)."""
    if canonical(label) in CUES:
        colour, angle, period = CUES[canonical(label)]
    else:
        r = np.random.default_rng(sum(map(ord, label)))
        colour, angle, period = (
            tuple(int(v) for v in r.integers(0, 256, 3)),
            float(r.uniform(0, 180)),
            0.1 + 0.2 * r.random(),
        )
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = xx * math.cos(math.radians(angle)) + yy * math.sin(math.radians(angle))
    on = (phase / period) % 1.0 < 0.5  # (size, size)
    return (on[:, :, None] * np.array(colour, np.float32)).astype(np.uint8)


def make_clip(
    label: str, n: int, size: int, rng: np.random.Generator, cue: float = 0.0
) -> tuple[list[np.ndarray], np.ndarray]:
    """(frames as RGB uint8, (n,) intensity) of one generated clip of class ``label``.

    ``cue`` in [0, 1]: how opaque the class's stripe pattern is over the face at full intensity (0: none)."""
    look = random_look(rng, size)
    curve = intensity_curve(n, rng)
    expr = EXPRESSIONS.get(canonical(label), Expression(smile=math.sin(sum(map(ord, label)))))  # "sad" = sadness
    jitter = rng.normal(0, 0.8, (n, 2)).cumsum(0).clip(-6, 6)
    pattern = cue_pattern(label, size).astype(np.float32) if cue > 0 else None
    frames = []
    for i in range(n):
        frame_look = {**look, "dx": look["dx"] + jitter[i, 0], "dy": look["dy"] + jitter[i, 1]}
        frame = draw_face(expr, float(curve[i]), size, frame_look)
        if pattern is not None and curve[i] > 0:
            alpha = cue * float(curve[i]) * _face_mask(size, frame_look)  # (size, size, 1)
            frame = (frame * (1 - alpha) + pattern * alpha).round().astype(np.uint8)
        frames.append(frame)
    return frames, curve


def _face_mask(size: int, look: dict) -> np.ndarray:
    """(size, size, 1) float32: 1 inside the drawn face ellipse, 0 outside."""
    s = size / 224.0
    k = look["scale"] * s
    mask = np.zeros((size, size), np.uint8)
    centre = (round(size / 2 + look["dx"] * s), round(size / 2 + look["dy"] * s))
    cv2.ellipse(mask, centre, (int(70 * k), int(92 * k)), 0, 0, 360, 1, -1)
    return mask[:, :, None].astype(np.float32)


def write_frame_folder(folder: str | Path, frames: list[np.ndarray], quality: int = 90) -> Path:
    """Frames as 1.jpg, 2.jpg, ... (numeric names, as DFEW's folders)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, 1):
        cv2.imwrite(
            str(folder / f"{i}.jpg"),
            cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, quality],
        )
    return folder


def write_video(path: str | Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """An MPEG-4 Part 2 .mp4 (the codec every OpenCV wheel can write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with the mp4v codec")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def make_dfew_tree(
    root: str | Path, n_clips: int, frames: tuple[int, int] = (40, 110), size: int = 224, seed: int = 0
) -> Path:
    """A DFEW-shaped tree: EmoLabel_DataSplit CSVs of 5 folds and Clip/clip_224x224/<id>/<n>.jpg folders.

    Frame counts are uniform in ``frames`` (DFEW's mean is about 77); clip k is in the test set of fold k % 5.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = CLASS_NAMES["dfew"]
    labels = rng.integers(0, len(classes), n_clips)
    for k in range(n_clips):
        clip_frames, _ = make_clip(classes[labels[k]], int(rng.integers(frames[0], frames[1] + 1)), size, rng)
        write_frame_folder(root / "Clip" / "clip_224x224" / f"{k + 1:05d}", clip_frames)
    for fold in range(1, 6):
        for part in ("train", "test"):
            folder = root / "EmoLabel_DataSplit" / f"{part}(single-labeled)"
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"set_{fold}.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["video_name", "label"])
                for k in range(n_clips):
                    if (k % 5 == fold - 1) == (part == "test"):
                        writer.writerow([k + 1, labels[k] + 1])
    return root


def make_csv_dataset(
    root: str | Path,
    per_class: int,
    classes: tuple[str, ...] = CLASS_NAMES["dfew"],
    frames: tuple[int, int] = (24, 48),
    size: int = 224,
    test_fraction: float = 0.3,
    videos: bool = False,
    seed: int = 0,
    split_column: bool = True,
    cue: float = 0.0,
) -> Path:
    """A users'-own-data tree: clips (frame folders, or .mp4 with ``videos``) and ``annotations.csv``
    with columns path,label,split (path,label without ``split_column``: extract then splits it). Labels are
    written as given in ``classes``. ``cue`` as in ``make_clip``. Returns the CSV path."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            clip_frames, _ = make_clip(name, int(rng.integers(frames[0], frames[1] + 1)), size, rng, cue)
            rel = f"clips/{name}_{i:03d}" + (".mp4" if videos else "")
            if videos:
                write_video(root / rel, clip_frames)
            else:
                write_frame_folder(root / rel, clip_frames)
            split = "test" if i < max(1, round(per_class * test_fraction)) else "train"
            rows.append((rel, name, split, c))
    path = root / "annotations.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"] if split_column else ["path", "label"])
        writer.writerows(r[:3] if split_column else r[:2] for r in rows)
    return path


def write_feature_cache(
    path: str | Path,
    clip_model: str,
    clip_sha256: str,
    n_clips: int = 240,
    classes: tuple[str, ...] = CLASS_NAMES["dfew"],
    frames: int = 16,
    dim: int = 32,
    views: int = 2,
    signal_frames: int = 3,
    signal: float = 1.0,
    noise: float = 1.0,
    folds: int = 5,
    shard_clips: int = 4096,
    seed: int = 0,
    dataset: str = "synthetic",
) -> np.ndarray:
    """A stage-1 cache of generated features, written through the real writer (stage 2 cannot tell).

        Every view of a clip holds its class signal in only ``signal_frames`` of its T frames, at random positions:
        those frames are ``signal * prototype[class] + noise``; all other frames are noise drawn the same way for
        every class. Clip k is in the test set of fold k % folds. ``dataset`` is the name the cache records (``ablate``
    shows the paper's figures only beside a "dfew" cache). Returns the (V, T) bool mask of signal frames.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(0, 1, (len(classes), dim))
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True) / math.sqrt(dim)  # per-coordinate scale ~1
    labels = rng.integers(0, len(classes), n_clips)
    per_clip = 1 + views
    # The noise is drawn in shard-sized pieces (the same numbers as one draw of every clip, since the generator's
    # normals come one after another): all of it at once in float64 took 6x the cache's size in memory.
    noise_state = rng.bit_generator.state
    for start in range(0, n_clips, shard_clips):  # advance past the noise to draw the signal positions
        rng.normal(0, noise, (min(shard_clips, n_clips - start), per_clip, frames, dim))
    mask = np.zeros((n_clips, per_clip, frames), dtype=bool)
    for c in range(n_clips):
        for v in range(per_clip):
            mask[c, v, rng.choice(frames, size=signal_frames, replace=False)] = True
    noise_rng = np.random.default_rng()
    noise_rng.bit_generator.state = noise_state

    def shard_features(rows: np.ndarray) -> np.ndarray:
        """(len(rows) * per_clip, T, D) float16 features of consecutive clip rows."""
        feats = noise_rng.normal(0, noise, (len(rows), per_clip, frames, dim)).astype(np.float32)
        for i, c in enumerate(rows):
            for v in range(per_clip):
                feats[i, v, mask[c, v]] += signal * prototypes[labels[c]]
        return feats.reshape(-1, frames, dim).astype(np.float16)

    settings = {"generated": True, "seed": seed, "signal_frames": signal_frames}
    _write_generated(
        path,
        shard_features,
        labels,
        classes,
        views,
        frames,
        clip_model,
        clip_sha256,
        folds,
        shard_clips,
        f"generated-{seed}",
        settings,
        dataset,
    )
    return mask.reshape(-1, frames)


# DFEW's class shares (happiness, sadness, neutral, anger, surprise, disgust, fear): disgust 1.2%, fear 8.1%
DFEW_SHARES = (0.205, 0.174, 0.242, 0.174, 0.116, 0.012, 0.077)


def write_burst_cache(
    path: str | Path,
    clip_model: str,
    clip_sha256: str,
    n_clips: int = 2000,
    classes: tuple[str, ...] = CLASS_NAMES["dfew"],
    shares: tuple[float, ...] | None = DFEW_SHARES,
    frames: int = 16,
    dim: int = 32,
    views: int = 4,
    burst: tuple[int, int] = (2, 5),
    shared: float = 4.5,
    identity: float = 1.5,
    noise: float = 1.2,
    signal: float = 1.0,
    distractors: float = 0.3,
    distractor_signal: float = 0.6,
    folds: int = 5,
    shard_clips: int = 4096,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A sparse-signal cache with CLIP-like statistics, written through the real writer (bench/learning.py).

    Every frame of clip c, view v is ``shared * u + identity_c + noise_cvt`` (norms: ``shared``, ``identity``,
    ``noise``; u one direction for all clips, so clips' mean pairwise cosine is about 0.9 as with CLIP faces).
    The class shows only in one burst of ``burst`` (2-5) consecutive frames of T, adding ``signal`` times a unit
    class direction (per-clip strength 0.7-1.3); a ``distractors`` share of clips also holds a shorter burst
    (1-2 frames) of another class at ``distractor_signal``, elsewhere in the clip. Train views redraw the noise
    and shift both bursts by up to one frame. Classes are drawn with ``shares`` (DFEW's by default; None:
    uniform). Clip k is in the test set of fold k % folds.

    Returns {"burst": (V, T) bool true-class frames, "distractor": (V, T) bool, "labels": (C,) int64}.
    """
    rng = np.random.default_rng(seed)
    n_cls = len(classes)
    unit = rng.normal(0, 1, (n_cls + 1, dim))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)  # (C+1, D): u, then one direction per class
    p = None if shares is None else np.asarray(shares[:n_cls], np.float64) / sum(shares[:n_cls])
    labels = rng.choice(n_cls, size=n_clips, p=p)
    per_clip = 1 + views
    ident = rng.normal(0, identity / math.sqrt(dim), (n_clips, 1, 1, dim))
    feats = shared * unit[0] + ident + rng.normal(0, noise / math.sqrt(dim), (n_clips, per_clip, frames, dim))
    true = np.zeros((n_clips, per_clip, frames), dtype=bool)
    decoy = np.zeros((n_clips, per_clip, frames), dtype=bool)
    for c in range(n_clips):
        length = int(rng.integers(burst[0], burst[1] + 1))
        start = int(rng.integers(0, frames - length + 1))
        strength = signal * rng.uniform(0.7, 1.3)
        other = _distractor(rng, start, length, frames, int(labels[c]), n_cls) if rng.random() < distractors else None
        for v in range(per_clip):
            shift = 0 if v == 0 else int(rng.integers(-1, 2))  # train views: segment offsets move frames a bit
            s0 = min(max(start + shift, 0), frames - length)
            true[c, v, s0 : s0 + length] = True
            feats[c, v, s0 : s0 + length] += strength * unit[1 + labels[c]]
            if other is not None:
                d0 = min(max(other[0] + shift, 0), frames - other[1])
                if not true[c, v, d0 : d0 + other[1]].any():
                    decoy[c, v, d0 : d0 + other[1]] = True
                    feats[c, v, d0 : d0 + other[1]] += distractor_signal * unit[1 + other[2]]
    settings = {"generated": "bursts", "seed": seed, "burst": list(burst), "signal": signal, "n_clips": n_clips}
    feats16 = feats.astype(np.float16)
    fingerprint = "bursts-" + hashlib.sha256(feats16.tobytes()).hexdigest()[:16]
    _write_generated(
        path,
        lambda rows: feats16[rows].reshape(-1, frames, dim),
        labels,
        classes,
        views,
        frames,
        clip_model,
        clip_sha256,
        folds,
        shard_clips,
        fingerprint,
        settings,
    )
    return {"burst": true.reshape(-1, frames), "distractor": decoy.reshape(-1, frames), "labels": labels}


def _distractor(
    rng: np.random.Generator, start: int, length: int, frames: int, label: int, n_cls: int
) -> tuple[int, int, int] | None:
    """(start, length, class) of a shorter burst (1-2 frames) of another class than ``label``, apart from the true
    burst at ``start`` of ``length`` frames; None when no place is free."""
    d_len = int(rng.integers(1, 3))
    free = [s for s in range(frames - d_len + 1) if s + d_len < start - 1 or s > start + length]
    if free:
        return (int(rng.choice(free)), d_len, int((label + rng.integers(1, n_cls)) % n_cls))
    return None


def _write_generated(
    path: str | Path,
    shard_features: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    classes: tuple[str, ...],
    views: int,
    frames: int,
    clip_model: str,
    clip_sha256: str,
    folds: int,
    shard_clips: int,
    fingerprint: str,
    settings: dict,
    dataset: str = "synthetic",
) -> None:
    """A views cache of generated clips at ``path``: ``shard_features(rows)`` gives the (len(rows) * (1 + views),
    T, D) float16 features of consecutive clip rows (per clip: its test view, then its train views); clip k is in
    the test set of fold k % folds. Shard by shard, so a large cache never sits in memory whole."""
    from tgdfer.data.datasets import TEST, TRAIN, Annotations, ClipRecord
    from tgdfer.data.sampling import TEST_VIEW, TRAIN_VIEW
    from tgdfer.features.store import shard_path
    from tgdfer.features.views import ShardData, write_entry, write_shard

    path = Path(path)
    n_clips, per_clip = len(labels), 1 + views
    clips = tuple(ClipRecord(id=f"{c:05d}", label=int(labels[c]), path=f"generated/{c:05d}") for c in range(n_clips))
    split_names = tuple(f"fold{k + 1}" for k in range(folds)) if folds > 1 else ("default",)
    membership = np.full((n_clips, len(split_names)), TRAIN, dtype=np.int8)  # train everywhere ...
    membership[np.arange(n_clips), np.arange(n_clips) % len(split_names)] = TEST  # ... but in the test set of one
    annotations = Annotations(dataset, tuple(classes), split_names, clips, membership, ())
    files = []
    for k, start in enumerate(range(0, n_clips, shard_clips)):
        rows = np.arange(start, min(start + shard_clips, n_clips))
        kinds = np.tile(np.array([TEST_VIEW] + [TRAIN_VIEW] * views, np.int8), len(rows))
        data = ShardData(
            index=k,
            features=shard_features(rows),
            view_row=np.repeat(rows, per_clip).astype(np.int32),
            view_kind=kinds,
            view_index=np.tile(np.array([0, *range(views)], np.int16), len(rows)),
            view_frames=np.tile(np.arange(frames, dtype=np.int32), (len(rows) * per_clip, 1)),
            clip_rows=rows.astype(np.int32),
            num_frames=np.full(len(rows), frames, np.int32),
            failed_rows=np.empty(0, np.int32),
            failed_reasons=(),
        )
        files.append(shard_path(path, k))
        write_shard(files[-1], data, "generated", settings)
    write_entry(
        path,
        annotations,
        files,
        {
            "clip_model": clip_model,
            "clip_sha256": clip_sha256,
            "train_views": views,
            "fingerprint": fingerprint,
            "sampling": "generated",
            "tgdfer_version": "generated",
        },
    )


def write_frame_feature_cache(
    path: str | Path,
    clip_model: str,
    clip_sha256: str,
    n_clips: int = 120,
    lengths: tuple[int, int] = (8, 60),
    classes: tuple[str, ...] = CLASS_NAMES["dfew"],
    dim: int = 32,
    passes: int = 1,
    signal: float = 1.0,
    noise: float = 1.0,
    folds: int = 5,
    shard_clips: int = 4096,
    seed: int = 0,
) -> list[np.ndarray]:
    """A per-frame cache of generated features, written through the real writer (stage 2 cannot tell).

    Clip c has n_c frames (uniform in ``lengths``); frame t holds ``signal * intensity_c[t] * prototype[class]``
    (``intensity_curve``: an apex stretch, neutral elsewhere) plus fresh per-frame noise, in every pass. Clip k is
    in the test set of fold k % folds. Returns the (n_c, passes, D) float32 features of every clip.
    """
    from tgdfer.data.datasets import TEST, TRAIN, Annotations, ClipRecord
    from tgdfer.features.frames import (
        AUGMENTED_PASS,
        PLAIN_PASS,
        FrameShardData,
        write_frame_entry,
        write_frame_shard,
    )
    from tgdfer.features.store import shard_path

    path = Path(path)
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(0, 1, (len(classes), dim))
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True) / math.sqrt(dim)  # per-coordinate scale ~1
    labels = rng.integers(0, len(classes), n_clips)
    counts = rng.integers(lengths[0], lengths[1] + 1, n_clips)
    clip_feats = []
    for c in range(n_clips):
        curve = intensity_curve(int(counts[c]), rng)[:, None, None]  # (n, 1, 1)
        base = rng.normal(0, noise, (int(counts[c]), passes, dim))
        clip_feats.append((base + signal * curve * prototypes[labels[c]]).astype(np.float32))
    clips = tuple(ClipRecord(id=f"{c:05d}", label=int(labels[c]), path=f"generated/{c:05d}") for c in range(n_clips))
    split_names = tuple(f"fold{k + 1}" for k in range(folds)) if folds > 1 else ("default",)
    membership = np.full((n_clips, len(split_names)), TRAIN, dtype=np.int8)
    membership[np.arange(n_clips), np.arange(n_clips) % len(split_names)] = TEST
    annotations = Annotations("synthetic", tuple(classes), split_names, clips, membership, ())
    kind = np.array([PLAIN_PASS] + [AUGMENTED_PASS] * (passes - 1), np.int8)
    files = []
    for k, start in enumerate(range(0, n_clips, shard_clips)):
        rows = np.arange(start, min(start + shard_clips, n_clips))
        data = FrameShardData(
            index=k,
            features=np.concatenate([clip_feats[r] for r in rows]).astype(np.float16),
            counts=counts[rows].astype(np.int32),
            source_frames=np.concatenate([np.arange(counts[r]) for r in rows]).astype(np.int32),
            timestamps_ms=np.concatenate([np.arange(counts[r]) * 40.0 for r in rows]),
            pass_kind=kind,
            clip_rows=rows.astype(np.int32),
            num_frames=counts[rows].astype(np.int32),
            failed_rows=np.empty(0, np.int32),
            failed_reasons=(),
        )
        files.append(shard_path(path, k))
        write_frame_shard(files[-1], data, "generated", {"generated": True, "seed": seed})
    attrs = {
        "clip_model": clip_model,
        "clip_sha256": clip_sha256,
        "train_views": passes - 1,
        "fingerprint": f"generated-frames-{seed}",
        "sampling": "generated",
        "tgdfer_version": "generated",
    }
    write_frame_entry(path, annotations, files, attrs)
    return clip_feats


def face_scene(
    face: np.ndarray, n: int, width: int, height: int, present: np.ndarray | None = None, seed: int = 0
) -> Iterator[np.ndarray]:
    """n frames (height, width, 3) RGB uint8 of a square ``face`` picture drifting slowly over a fixed textured
    background; frames where ``present`` (n,) bool is False show the background alone. Frames are made one at a
    time, so hour-long scenes need no memory. The face side is the frame height (a portrait such as skimage's
    astronaut, on which OpenCV's cascade works at that scale)."""
    rng = np.random.default_rng(seed)
    side = min(height, width)
    photo = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(noise, (0, 0), 5)  # texture, so the cascade meets no flat frame
    travel = width - side
    for i in range(n):
        frame = background.copy()
        if present is None or present[i]:
            x = round(travel * (0.5 + 0.5 * np.sin(i / 50.0)))  # back and forth, about 12 s a cycle at 25 fps
            frame[:, x : x + side] = photo[:height, :]
        yield frame


def write_video_pts(
    path: str | Path, frames: Iterable[np.ndarray], pts_ms: Iterable[int], codec: str = "mpeg4"
) -> Path:
    """A video whose frame i is shown at ``pts_ms[i]`` milliseconds (time base 1/1000): variable frame rate when
    the gaps differ. Written with PyAV, which sets each frame's presentation time as given."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame, pts in zip(frames, pts_ms, strict=True):
            if stream is None:
                stream = container.add_stream(codec, rate=1000)
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = "yuv420p"
                stream.time_base = Fraction(1, 1000)
                stream.codec_context.time_base = Fraction(1, 1000)
                if codec == "libx264":
                    stream.options = {"preset": "veryfast", "crf": "23"}
                else:
                    stream.bit_rate = 2_000_000
                    if codec.startswith("libvpx"):  # WebM for browsers; libvpx's default "good" takes ~0.2 s a frame
                        stream.options = {"deadline": "realtime", "cpu-used": "8"}
            out = av.VideoFrame.from_ndarray(frame, format="rgb24")
            out.pts = int(pts)
            out.time_base = Fraction(1, 1000)
            container.mux(stream.encode(out))
        if stream is not None:
            container.mux(stream.encode(None))
    return path


def _drifting_person(rng, i: int, persons: int, centres: np.ndarray, size: tuple[int, int], classes: int):
    """One made-up person over windows centred at ``centres`` (W,) s -> (W, C) probabilities (a softmax of AR(1)
    walks), (W,) bool away (15% of each minute, each person at another phase), (W, 4) x0, y0, x1, y1 pixels."""
    noise = rng.normal(0, 0.5, (len(centres), classes))  # (W, C)
    logits = np.zeros_like(noise)
    for w in range(len(centres)):  # AR(1): drifts, but around 0, so no class takes over an hour
        logits[w] = (0.97 * logits[w - 1] if w else 0.0) + noise[w]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    away = ((centres / 60.0 + i * 0.37) % 1.0) < 0.15
    width, height = size
    half = height / 6
    cx = width * (i + 0.5) / persons + width / (4 * persons) * np.sin(centres / 7.0 + i)  # sways in its column
    cy = height / 2 + height / 8 * np.cos(centres / 11.0 + i)
    boxes = np.round(np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)).astype(int)  # (W, 4)
    return probs, away, boxes


def people_timeline(
    out: str | Path,
    stem: str,
    seconds: float,
    persons: int = 2,
    window: float = 2.0,
    stride: float = 1.0,
    size: tuple[int, int] = (640, 360),
    classes: tuple[str, ...] = CLASS_NAMES["dfew"],
    seed: int = 0,
) -> tuple[Path, Path]:
    """A made-up people timeline, ``<stem>.timeline.csv`` and ``.json`` in the layout ``tgdfer timeline --people``
    writes, for the report's tests and benchmark: W = ceil((seconds - window) / stride) + 1 windows, persons as
    ``_drifting_person`` makes them, the video named ``<stem>.webm``. Returns (csv path, json path)."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = max(1, math.ceil((seconds - window) / stride - 1e-9) + 1)
    starts = np.arange(n) * stride
    ends = np.minimum(starts + window, seconds)
    ends[-1] = seconds
    centres = (starts + ends) / 2
    header = ["person", "start_s", "end_s", "center_s", "status", "face_frac", "x0", "y0", "x1", "y1", "top", "margin"]
    rows, people = [], []
    for i in range(persons):
        probs, away, boxes = _drifting_person(rng, i, persons, centres, size, len(classes))
        name = f"p{i + 1}"
        for w in range(n):
            times = [f"{starts[w]:.3f}", f"{ends[w]:.3f}", f"{centres[w]:.3f}"]
            if away[w]:
                rows.append([name, *times, "no_face", "0.000", *[""] * (6 + len(classes))])
                continue
            order = np.argsort(-probs[w], kind="stable")
            margin = f"{probs[w, order[0]] - probs[w, order[1]]:.6f}"
            rows.append([name, *times, "ok", "1.000", *map(str, boxes[w]), classes[order[0]], margin])
            rows[-1] += [f"{p:.6f}" for p in probs[w]]
        seen, tops = np.flatnonzero(~away), probs[~away].argmax(1)
        people.append(
            {
                "id": name,
                "name": name,
                "first_seen_s": float(starts[seen[0]]) if len(seen) else None,
                "last_seen_s": float(ends[seen[-1]]) if len(seen) else None,
                "screen_time_s": float(min(seconds, stride * len(seen))),
                "windows_ok": len(seen),
                "share": {c: float((tops == k).mean()) if len(seen) else 0.0 for k, c in enumerate(classes)},
            }
        )
    rows.sort(key=lambda r: (float(r[1]), r[0]))  # by window, then person
    csv_path, json_path = out / f"{stem}.timeline.csv", out / f"{stem}.timeline.json"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header + list(classes), *rows])
    meta = {
        "video": f"{stem}.webm",
        "run": "runs/synthetic",
        "classes": list(classes),
        "window": f"{window:g}s",
        "window_s": window,
        "stride": f"{stride:g}s",
        "stride_s": stride,
        "windows": n,
        "duration_s": seconds,
        "size": list(size),
        "status": "complete",
        "people": {"mode": "all", "map": None, "persons": people, "short_tracks_left_out": 0},
    }
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return csv_path, json_path
