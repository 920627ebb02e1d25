"""Face detection, tracking and crops (``tgdfer.data.faces``) on a real portrait (scikit-image's astronaut), moved,
rotated and scaled on a real scene; no timing here (bench/faces.py measures speed)."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

import tgdfer.data.faces as faces_module
from tgdfer.data.faces import (
    DetectorConfig,
    FaceCropper,
    FaceDetector,
    FaceDetectorError,
    FaceTracker,
    TrackConfig,
)

ASTRONAUT_FACE = (175, 45, 275, 185)  # (x0, y0, x1, y1) of the face, hair to chin, in skimage's 512 x 512 image
FACE_CENTRE = ((175 + 275) / 2, (45 + 185) / 2)
FACE_HEIGHT = 185 - 45


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())  # (512, 512, 3) RGB uint8


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    from skimage import data

    return cv2.resize(data.coffee(), (480, 320), interpolation=cv2.INTER_AREA)  # (320, 480, 3): no face


@pytest.fixture(scope="module")
def blaze() -> FaceDetector:
    detector = FaceDetector("blazeface")
    assert detector.backend == "blazeface"
    return detector


def _place(portrait, background, centre, height, angle=0.0, flip=False):
    """The portrait on the background, its face centred at ``centre`` (pixels), ``height`` px tall, rotated
    ``angle`` degrees in-plane -> (frame, true face centre, true face height)."""
    src = portrait[:, ::-1] if flip else portrait
    fx = src.shape[1] - FACE_CENTRE[0] if flip else FACE_CENTRE[0]
    m = cv2.getRotationMatrix2D((fx, FACE_CENTRE[1]), angle, height / FACE_HEIGHT)
    m[:, 2] += np.array(centre) - np.array([fx, FACE_CENTRE[1]])
    frame = background.copy()
    cv2.warpAffine(src, m, background.shape[1::-1], dst=frame, borderMode=cv2.BORDER_TRANSPARENT)
    return frame, np.array(centre, float), float(height)


def _centre(box, shape) -> np.ndarray:
    """(x, y) pixel centre of a relative (x, y, w, h) box in a frame of ``shape``."""
    h, w = shape[:2]
    return np.array([(box[0] + box[2] / 2) * w, (box[1] + box[3] / 2) * h])


def _on_face(box, shape, centre, height) -> bool:
    """The box is the face's: centre within 0.3 face heights, side 0.4-1.5 of the height."""
    if box is None:
        return False
    h, w = shape[:2]
    side = max(box[2] * w, box[3] * h)
    return bool(np.linalg.norm(_centre(box, shape) - centre) < 0.3 * height and 0.4 * height < side < 1.5 * height)


# Detection


def test_blazeface_finds_the_tilted_astronaut_where_haar_fails(astronaut, blaze):
    haar = FaceDetector("haar")
    angles = (-30, -20, -10, 0, 10, 20, 30)
    found, haar_found = [], []
    for angle in angles:
        m = cv2.getRotationMatrix2D(FACE_CENTRE, angle, 1.0)
        frame = cv2.warpAffine(astronaut, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
        centre = np.array(FACE_CENTRE)
        found.append(_on_face(blaze.detect(frame), frame.shape, centre, FACE_HEIGHT))
        haar_found.append(_on_face(haar.detect(frame), frame.shape, centre, FACE_HEIGHT))
    assert all(found), dict(zip(angles, found, strict=True))
    assert not haar_found[0] and not haar_found[-1]  # the cascade is for upright faces: +-30 degrees escape it
    assert haar_found[3]  # and it does find the upright one


def test_a_small_turned_face_in_a_wide_frame(astronaut, scene, blaze):
    """Face 20% of the frame height, mirrored, tilted: the full-range model finds what a close-up model would not."""
    frame, centre, height = _place(astronaut, scene, (360, 110), 64, angle=-25, flip=True)
    assert blaze._models["short"](frame, 0.5) == []  # the close-up model alone, on the whole frame, misses it
    faces = blaze.faces(frame)
    assert len(faces) == 1 and _on_face(faces[0].box, frame.shape, centre, height)
    assert faces[0].score >= blaze.config.confirm_score and len(faces[0].keypoints) == 6
    eyes = np.array(faces[0].keypoints[:2]) * [frame.shape[1], frame.shape[0]]
    assert np.linalg.norm(eyes.mean(0) - centre) < 0.5 * height  # keypoints are on the face, in frame fractions


def test_faces_are_listed_largest_first(astronaut, blaze):
    canvas = np.full((480, 640, 3), 90, np.uint8)
    frame, small, _ = _place(astronaut, canvas, (120, 120), 110)
    frame, large, _ = _place(astronaut, frame, (440, 300), 200)
    boxes = [f.box for f in blaze.faces(frame)]
    assert len(boxes) == 2
    assert _on_face(boxes[0], frame.shape, large, 200) and _on_face(boxes[1], frame.shape, small, 110)
    assert blaze.detect(frame) == boxes[0]


def _cartoon() -> np.ndarray:
    """A drawn scene with no face: sky, sun, house, tree."""
    img = np.full((240, 320, 3), (135, 200, 240), np.uint8)
    cv2.rectangle(img, (0, 180), (320, 240), (60, 160, 60), -1)
    cv2.circle(img, (270, 50), 28, (250, 220, 40), -1)
    cv2.rectangle(img, (60, 110), (160, 190), (200, 80, 60), -1)
    cv2.fillPoly(img, [np.array([[50, 110], [110, 60], [170, 110]], np.int32)], (120, 40, 30))
    cv2.rectangle(img, (95, 150), (120, 190), (90, 50, 20), -1)
    cv2.rectangle(img, (230, 120), (245, 190), (110, 70, 30), -1)
    cv2.circle(img, (238, 110), 30, (40, 130, 40), -1)
    return img


@pytest.mark.parametrize("name", ["blank", "cartoon", "coffee", "rocket", "chelsea"])
def test_frames_without_a_face_are_reported_not_found(name, blaze):
    from skimage import data

    frame = {
        "blank": lambda: np.full((240, 320, 3), 128, np.uint8),
        "cartoon": _cartoon,
    }.get(name, lambda: np.ascontiguousarray(getattr(data, name)()))()
    assert blaze.faces(frame) == []
    crops, found = FaceCropper(detector="blazeface").crop_clip({0: frame, 5: frame})
    assert found == {0: False, 5: False} and crops[0] is frame  # no face anywhere: the frames as they were


# Tracking


def _walk(astronaut, scene, n=24):
    """A face that walks right and down while it turns from -20 to 20 degrees -> (frames, centres, heights)."""
    out = [
        _place(astronaut, scene, (90 + 13 * t, 120 + 3 * t), 100 + 2 * t, angle=-20 + 40 * t / (n - 1))
        for t in range(n)
    ]
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


def test_the_tracker_follows_a_moving_face(astronaut, scene, blaze):
    frames, centres, heights = _walk(astronaut, scene)
    tracker = FaceTracker(blaze, TrackConfig(detect_every=6))
    got = [tracker.update(f) for f in frames]
    assert all(g is not None for g in got)
    assert all(_on_face(g.box, f.shape, c, h) for g, f, c, h in zip(got, frames, centres, heights, strict=True))
    assert [g.frame for g in got] == list(range(len(frames)))
    sources = [g.source for g in got]
    assert sources[0] == "detected" and sources[6] == "detected"  # whole-frame searches at frames 0, 6, 12, ...
    assert sources.count("tracked") == len(frames) - 4  # zoomed searches in between
    assert {g.person for g in got} == {0} and len(tracker.choices) == 1
    assert tracker.following.startswith("the largest face") and "frame 0: face 0 of 1" in tracker.following


def test_smoothing_damps_jitter_but_not_a_jump(astronaut, scene, blaze):
    """Raw boxes that jitter by a few pixels come out steadier; a move of a whole face is followed at once."""
    jitter = np.random.default_rng(0).normal(0, 2.5, (12, 2))
    frames = [_place(astronaut, scene, (240 + dx, 160 + dy), 120)[0] for dx, dy in jitter]
    raw = FaceTracker(blaze, TrackConfig(smooth=1.0))
    smooth = FaceTracker(blaze, TrackConfig(smooth=0.4))
    raw_c = np.array([_centre(raw.update(f).box, f.shape) for f in frames])
    smooth_c = np.array([_centre(smooth.update(f).box, f.shape) for f in frames])
    assert np.diff(smooth_c, axis=0).std() < 0.8 * np.diff(raw_c, axis=0).std()
    moved, centre, height = _place(astronaut, scene, (300, 160), 120)  # half a face side: past `jump`, within `match`
    box = smooth.update(moved).box
    assert np.linalg.norm(_centre(box, moved.shape) - centre) < 0.1 * height  # no lag behind it


def test_a_face_that_leaves_and_returns(astronaut, scene, blaze):
    """Frames without the face give None and time goes on; a short absence keeps the person, a long one makes
    the tracker choose again (person 1)."""
    face, centre, height = _place(astronaut, scene, (240, 160), 120)
    tracker = FaceTracker(blaze, TrackConfig(max_missed=3))
    stream = [face] * 3 + [scene] * 2 + [face] * 2 + [scene] * 5 + [face]
    got = [tracker.update(f) for f in stream]
    assert [g is not None for g in got] == [True] * 3 + [False] * 2 + [True] * 2 + [False] * 5 + [True]
    assert [g.person for g in got if g is not None] == [0] * 5 + [1]
    assert got[-1].frame == len(stream) - 1 and [c[0] for c in tracker.choices] == [0, len(stream) - 1]
    assert _on_face(got[-1].box, face.shape, centre, height)


def test_follow_a_chosen_face(astronaut, blaze):
    canvas = np.full((360, 640, 3), 90, np.uint8)
    frame, left, _ = _place(astronaut, canvas, (150, 170), 90)
    frame, right, _ = _place(astronaut, frame, (470, 190), 150)
    for follow, expected, height in [("largest", right, 150), (1, left, 90), ((0.1, 0.5), left, 90)]:
        tracker = FaceTracker(blaze, follow=follow)
        got = [tracker.update(frame) for _ in range(4)]
        assert all(_on_face(g.box, frame.shape, expected, height) for g in got), follow
        assert tracker.choices[0][1:3] == ((0 if follow == "largest" else 1), 2)
    tracker = FaceTracker(blaze, follow=2)  # a third face: not there, so none is followed
    assert tracker.update(frame) is None and "none chosen yet" in tracker.following
    with pytest.raises(ValueError, match=r"expected 'largest', a size rank k >= 0 or a point .* found 'smallest'"):
        FaceTracker(blaze, follow="smallest")


# Crops


def test_the_crop_holds_the_tilted_face(astronaut, scene):
    cropper = FaceCropper(detector="blazeface")
    frame, centre, height = _place(astronaut, scene, (250, 170), 130, angle=25)
    crops, found = cropper.crop_clip({3: frame})
    side = crops[3].shape[0]
    assert found == {3: True} and crops[3].shape == (side, side, 3)
    assert 0.85 * height < side < 1.6 * height  # the face and a margin, not the scene
    box = cropper.detect(frame)
    h, w = frame.shape[:2]
    x, y, bw, bh = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    crop_centre = np.array([x + bw / 2, y + bh / 2 + cropper.shift * max(bw, bh)])
    assert np.linalg.norm(crop_centre - centre) < 0.15 * height


def test_crop_clip_tracks_the_sampled_frames_and_fills_the_gaps(astronaut, scene):
    frames, _, _ = _walk(astronaut, scene, n=16)
    clip = {i * 5: f for i, f in enumerate(frames)}  # sampled frame indices 0, 5, ..., 75
    clip[20] = clip[45] = scene  # two sampled frames without the face
    cropper = FaceCropper()
    crops, found = cropper.crop_clip(clip)
    assert [i for i in sorted(found) if not found[i]] == [20, 45]
    boxes = cropper.boxes(clip)
    assert np.array_equal(crops[20], cropper.crop(scene, boxes[15]))  # the nearest detected frame's box (15 and 25
    assert np.array_equal(crops[45], cropper.crop(scene, boxes[40]))  # are as near: the earlier one)


def test_frames_of_other_sizes_share_fractional_boxes(astronaut, scene, blaze):
    frame, centre, height = _place(astronaut, scene, (240, 160), 110)
    big = cv2.resize(frame, (960, 640))
    a, b = blaze.detect(frame), blaze.detect(big)
    assert np.allclose(a, b, atol=0.02)
    assert _on_face(b, big.shape, centre * 2, height * 2)


# Fallback and errors


def test_without_blazeface_auto_falls_back_to_haar(monkeypatch, astronaut):
    monkeypatch.setitem(faces_module.BLAZEFACE_MODELS, "short", ("no_such_model.tflite", 128, (8, 16), (2, 6)))
    with pytest.raises(FaceDetectorError, match=r"expected in the tgdfer package .* found none"):
        FaceDetector("blazeface").faces(astronaut)
    detector = FaceDetector()  # "auto"
    with pytest.warns(RuntimeWarning, match="falling back to OpenCV's Haar cascade"):
        assert detector.backend == "haar"
    cropper = FaceCropper(detector=DetectorConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        crops, found = cropper.crop_clip({0: astronaut})
        assert (cropper.margin, cropper.shift) == faces_module.FRAMING["haar"]
    assert found == {0: True} and 0.8 * FACE_HEIGHT < crops[0].shape[0] < 1.6 * FACE_HEIGHT


def test_an_opencv_without_a_tflite_reader_is_named(monkeypatch, astronaut):
    monkeypatch.delattr(cv2.dnn, "readNetFromTFLite")
    with pytest.raises(FaceDetectorError, match=r"OpenCV >= 4.8 .* found OpenCV .* without cv2.dnn.readNetFromTFLite"):
        FaceDetector("blazeface").detect(astronaut)
    with pytest.warns(RuntimeWarning, match="falling back"):
        assert FaceDetector().detect(astronaut) is not None  # Haar finds the upright astronaut


def test_with_neither_detector_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.delattr(cv2.dnn, "readNetFromTFLite")
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(FaceDetectorError, match=r"opencv-python-headless<5"):
            FaceCropper().crop_clip({0: np.zeros((40, 40, 3), np.uint8)})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DetectorConfig(backend="mtcnn"), r"backend: expected one of auto, blazeface, haar, found 'mtcnn'"),
        (lambda: DetectorConfig(confirm_score=1.5), r"expected min_score, .* in \(0, 1\), found .*1\.5"),
        (lambda: DetectorConfig(roi_scale=1.0), r"expected roi_scale >= 1.2 .* found 1.0"),
        (lambda: TrackConfig(detect_every=0), r"expected detect_every >= 1 and max_missed >= 0, found 0, 5"),
        (lambda: TrackConfig(smooth=0), r"expected 0 < smooth <= 1, .* found 0,"),
        (lambda: FaceCropper(margin=0.5), r"margin: expected >= 1 .* found 0.5"),
    ],
)
def test_bad_settings_say_expected_and_found(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# Where the crop lands, which face wins, frames without a face (the cropper's contract, any detector)

ASTRONAUT_FACE = (175, 45, 275, 185)  # (x0, y0, x1, y1) of the face, hair to chin, in skimage's 512 x 512 image


def _astronaut_image() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())  # (512, 512, 3) RGB uint8


def test_the_astronaut_crop_is_around_her_face():
    image = _astronaut_image()
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
    face = _astronaut_image()[30:210, 140:320]  # (180, 180, 3): the face with some hair and neck
    canvas = np.full((480, 640, 3), 90, np.uint8)
    canvas[20:200, 20:200] = cv2.resize(face, (180, 180))
    canvas[150:450, 300:600] = cv2.resize(face, (300, 300))
    x, y, w, h = FaceCropper().detect(canvas)
    assert 300 / 640 <= x + w / 2 <= 600 / 640 and 150 / 480 <= y + h / 2 <= 450 / 480
    assert w * 640 > 150


def test_frames_without_a_face_borrow_the_nearest_box():
    image = _astronaut_image()
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
        FaceCropper(detector="haar").crop_clip({0: np.zeros((40, 40, 3), np.uint8)})  # BlazeFace needs no cascade
