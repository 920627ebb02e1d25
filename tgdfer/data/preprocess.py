"""CLIP's image preprocessing and the per-view train augmentation, on uint8 frames.

CLIP's own transform is: bicubic resize of the shorter side to S, centre crop S x S, scale to [0, 1], normalise
with CLIP's mean/std. The geometric part runs here on uint8 (in decode workers, with PIL's bicubic as CLIP uses);
the float part (``normalize``) runs on the encoder's device, so 4x fewer bytes cross to the GPU.

A train view draws one augmentation (paper §4.2: random crop, rotation, horizontal flip, colour jitter) and
applies it to all of its frames, so motion between frames is not confused with augmentation jitter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from tgdfer.config import AugmentConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's published normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def describe(size: int) -> dict:
    """What the cache records about preprocessing."""
    return {
        "resize": f"shorter side to {size}, bicubic (PIL), as OpenAI CLIP",
        "crop": f"centre {size}x{size}",
        "scale": "1/255",
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "colour": "RGB",
    }


def _resize_shorter(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if min(h, w) == size:
        return frame
    # torchvision's Resize(int) rule: the shorter side becomes `size`, the longer keeps the aspect (truncated).
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    return np.asarray(Image.fromarray(frame).resize((new_w, new_h), Image.BICUBIC))


def _centre_crop(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return frame[top : top + size, left : left + size]


def clip_view(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (S, S, 3) uint8: CLIP's resize and centre crop."""
    return np.ascontiguousarray(_centre_crop(_resize_shorter(frame, size), size))


@dataclass(frozen=True)
class AugmentDraw:
    """One augmentation, as fractions of the frame so it applies to any frame size."""

    crop: tuple[float, float, float, float]  # (top, left, height, width), fractions of the frame
    angle: float  # degrees, counter-clockwise
    flip: bool
    brightness: float  # multiplicative factors; 1 leaves the frame as it is
    contrast: float
    saturation: float


def draw_augment(rng: np.random.Generator, cfg: AugmentConfig) -> AugmentDraw:
    """Random resized crop box (torchvision's rule, fractions of the frame), rotation, flip, jitter factors."""
    lo, hi = cfg.crop_scale
    log_ratio = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    crop = (0.0, 0.0, 1.0, 1.0)
    for _ in range(10):
        area = rng.uniform(lo, hi)
        ratio = math.exp(rng.uniform(*log_ratio))  # width / height, on a unit square frame
        h, w = math.sqrt(area / ratio), math.sqrt(area * ratio)
        if h <= 1.0 and w <= 1.0:
            crop = (float(rng.uniform(0, 1 - h)), float(rng.uniform(0, 1 - w)), h, w)
            break

    def factor(strength: float) -> float:
        return float(rng.uniform(1 - strength, 1 + strength)) if strength > 0 else 1.0

    return AugmentDraw(
        crop=crop,
        angle=float(rng.uniform(-cfg.max_rotation, cfg.max_rotation)),
        flip=bool(rng.random() < cfg.flip),
        brightness=factor(cfg.brightness),
        contrast=factor(cfg.contrast),
        saturation=factor(cfg.saturation),
    )


def _view_matrix(h: int, w: int, draw: AugmentDraw, size: int) -> np.ndarray:
    """2x3 affine map from an output pixel (u, v) of the S x S view to source coordinates (x, y).

    It composes, in order: rotation about the frame centre, the crop box, the resize to S x S, the flip, so one
    warp does all of them.
    """
    top, left, ch, cw = draw.crop
    sx, sy = cw * w / size, ch * h / size  # source pixels per output pixel
    flip = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) if draw.flip else np.eye(3)
    # output pixel centres -> rotated-frame coordinates inside the crop box
    crop = np.array([[sx, 0.0, left * w + 0.5 * sx - 0.5], [0.0, sy, top * h + 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    # rotated-frame coordinates -> source coordinates: the inverse of a rotation by `angle` about the centre
    unrotate = np.vstack([cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), -draw.angle, 1.0), [0, 0, 1]])
    return (unrotate @ crop @ flip)[:2]


def augment_view(frame: np.ndarray, draw: AugmentDraw, size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (S, S, 3) uint8: rotate, crop, resize, flip in one bilinear warp, then colour jitter.

    Bilinear as torchvision's RandomResizedCrop (bicubic warps cost 7x more, and decoding is the bottleneck).

    Frames much larger than the view are first shrunk with area averaging, so the warp does not alias.
    """
    h, w = frame.shape[:2]
    if min(h, w) > 2 * size:
        scale = 2 * size / min(h, w)
        frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        h, w = frame.shape[:2]
    out = cv2.warpAffine(
        frame,
        _view_matrix(h, w, draw, size),
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    if draw.brightness != 1.0 or draw.contrast != 1.0:
        # brightness b then contrast c about the frame mean m: x -> b*c*x + b*m*(1-c), one saturating uint8 pass
        mean = float(np.mean(cv2.mean(out)[:3]))
        alpha = draw.brightness * draw.contrast
        out = cv2.convertScaleAbs(out, alpha=alpha, beta=draw.brightness * mean * (1.0 - draw.contrast))
    if draw.saturation != 1.0:
        grey = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out = cv2.addWeighted(out, draw.saturation, grey, 1.0 - draw.saturation, 0.0)
    return out


def augment_description(cfg: AugmentConfig) -> dict:
    return {**asdict(cfg), "order": "one bilinear warp (rotate, crop, resize, flip), brightness, contrast, saturation"}


def normalize(frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, S, S, 3) uint8 on any device -> (N, 3, S, S) CLIP-normalised ``dtype``, on the same device."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)  # NHWC -> NCHW
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)
