"""CLIP preprocessing equals OpenAI's transform; augmentation is one draw per view."""

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

from tgdfer.config import AugmentConfig
from tgdfer.data.preprocess import CLIP_MEAN, CLIP_STD, augment_view, clip_view, draw_augment, normalize


def test_matches_openai_clip_transform_on_a_non_square_frame():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (180, 320, 3), dtype=np.uint8)
    reference = Compose(
        [
            Resize(224, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(224),
            ToTensor(),
            Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )(Image.fromarray(frame))
    ours = normalize(torch.from_numpy(clip_view(frame, 224))[None], torch.float32)[0]
    assert ours.shape == (3, 224, 224)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_224_frames_pass_unchanged():
    frame = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert np.array_equal(clip_view(frame, 224), frame)


def test_augmentation_is_deterministic_per_draw_and_varies_between_draws():
    frame = np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    cfg = AugmentConfig()
    d1, d2 = draw_augment(np.random.default_rng(5), cfg), draw_augment(np.random.default_rng(5), cfg)
    assert d1 == d2
    assert np.array_equal(augment_view(frame, d1, 224), augment_view(frame, d2, 224))
    other = draw_augment(np.random.default_rng(6), cfg)
    assert not np.array_equal(augment_view(frame, d1, 224), augment_view(frame, other, 224))
    assert augment_view(frame, d1, 224).shape == (224, 224, 3)


def test_draws_respect_the_config():
    cfg = AugmentConfig(crop_scale=(0.5, 0.6), max_rotation=3.0, flip=0.0, brightness=0.0)
    for seed in range(20):
        d = draw_augment(np.random.default_rng(seed), cfg)
        assert 0.5 - 1e-9 <= d.crop[2] * d.crop[3] <= 0.6 + 1e-9
        assert abs(d.angle) <= 3.0 and not d.flip and d.brightness == 1.0
