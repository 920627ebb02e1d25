"""Face crops for raw videos (tgdfer.data.faces): where the crop lands, which face wins, frames without a face."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tgdfer.data.faces import FaceCropper, FaceDetectorError

ASTRONAUT_FACE = (175, 45, 275, 185)  # (x0, y0, x1, y1) of the face, hair to chin, in skimage's 512 x 512 image


def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())  # (512, 512, 3) RGB uint8


def test_the_astronaut_crop_is_around_her_face():
    image = _astronaut()
    cropper = FaceCropper()
    box = cropper.detect(image)
    assert box is not None
    x, y, w, h = (v * 512 for v in box)
    cx, cy = x + w / 2, y + h / 2 + cropper.shift * max(w, h)  # the crop's centre
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    assert fx0 < cx < fx1 and fy0 < cy < fy1
    crops, found = cropper.crop_clip({0: image})
    side = crops[0].shape[0]
    assert found == {0: True} and crops[0].shape == (side, side, 3)
    assert 0.8 * (fx1 - fx0) < side < 1.6 * (fy1 - fy0)  # the whole face and a margin, not the whole photo


def test_the_largest_face_wins():
    face = _astronaut()[30:210, 140:320]  # (180, 180, 3): the face with some hair and neck
    canvas = np.full((480, 640, 3), 90, np.uint8)
    canvas[20:200, 20:200] = cv2.resize(face, (180, 180))
    canvas[150:450, 300:600] = cv2.resize(face, (300, 300))
    x, y, w, h = FaceCropper().detect(canvas)
    assert 300 / 640 <= x + w / 2 <= 600 / 640 and 150 / 480 <= y + h / 2 <= 450 / 480
    assert w * 640 > 150


def test_frames_without_a_face_borrow_the_nearest_box():
    image = _astronaut()
    blank = np.full_like(image, 128)
    shifted = np.ascontiguousarray(np.roll(image, 60, axis=1))
    cropper = FaceCropper()
    frames = {0: image, 3: blank, 8: blank, 10: shifted}
    crops, found = cropper.crop_clip(frames)
    assert found == {0: True, 3: False, 8: False, 10: True}
    assert np.array_equal(crops[3], cropper.crop(blank, cropper.detect(image)))  # 3 is nearer to 0
    assert np.array_equal(crops[8], cropper.crop(blank, cropper.detect(shifted)))  # 8 is nearer to 10
    assert len({c.shape for c in crops.values()}) <= 2


def test_no_face_anywhere_keeps_the_full_frames():
    frames = {i: np.full((60, 80, 3), 10 * i, np.uint8) for i in range(4)}
    crops, found = FaceCropper().crop_clip(frames)
    assert found == dict.fromkeys(range(4), False)
    assert all(crops[i] is frames[i] for i in frames)


def test_a_crop_leaving_the_frame_is_padded_with_edge_pixels():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[:, :50] = 200
    crop = FaceCropper(margin=1.4, shift=0.0).crop(frame, (0.0, 0.0, 0.5, 0.5))  # box in the top-left corner
    assert crop.shape == (70, 70, 3)
    assert (crop[:, :40] == 200).all()  # the left pad copies the bright edge column


def test_a_missing_cascade_says_which_opencv_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    with pytest.raises(FaceDetectorError, match=r"opencv-python-headless<5"):
        FaceCropper().crop_clip({0: np.zeros((40, 40, 3), np.uint8)})
