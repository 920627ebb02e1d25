"""Inference on new clips (``tgdfer.predict``) and face cropping (``tgdfer.faces``).

The run is trained for a few epochs on features from the session's tiny *random* CLIP, so its predictions are
meaningless: these tests check the mechanics (sampling, preprocessing, face crops, batching, failures, figures),
never accuracy. The face tests use a real photograph (scikit-image's astronaut), on which OpenCV's cascade works.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tgdfer.config import ExtractConfig, RunConfig, apply_overrides
from tgdfer.engine import TrainingError, fit, load_run, predict_views
from tgdfer.extract import extract
from tgdfer.faces import FaceCropper, FaceDetectorError
from tgdfer.features import TEST_VIEW, load_cache
from tgdfer.plots import influence_png_size
from tgdfer.predict import PredictError, explain, format_predictions, predict
from tgdfer.sampling import centre_indices
from tgdfer.synthetic import make_clip, make_csv_dataset, write_frame_folder, write_video

CLASSES = ("happiness", "sadness", "surprise")  # drawn in the training clips
NAMES = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")  # a basic-emotion CSV: all 7
T = 8  # frames per view of the test run: small, so the whole file stays fast
ASTRONAUT_FACE = (175, 45, 275, 185)  # (x0, y0, x1, y1) of the face, hair to chin, in skimage's 512 x 512 image


def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())  # (512, 512, 3) RGB uint8


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_path):
    """A run trained for 1 epoch on an extracted CSV dataset of generated 64 x 64 clips: (run dir, cache)."""
    root = tmp_path_factory.mktemp("predict")
    csv_path = make_csv_dataset(root / "data", per_class=3, classes=CLASSES, frames=(10, 16), size=64, seed=3)
    cache = root / "cache.h5"
    extract(
        ExtractConfig(
            dataset="csv",
            root=str(csv_path.parent),
            out=str(cache),
            clip=str(tiny_clip_path),
            frames=T,
            views=1,
            workers=0,
            batch_size=64,
        )
    )
    run = root / "run"
    cfg = RunConfig(features=str(cache), out=str(run), device="cpu")
    fit(apply_overrides(cfg, ["train.epochs=1", "train.batch_size=8"]), log=lambda s: None)
    return run, cache


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Inputs the run never saw: a generated face as .mp4 and as a frame folder, 64 x 64, 20 and 13 frames."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(7)
    video = write_video(root / "face.mp4", make_clip("surprise", 20, 64, rng)[0])
    folder = write_frame_folder(root / "face_frames", make_clip("sadness", 13, 64, rng)[0])
    return video, folder


def _check_ok(result: dict, n: int) -> None:
    assert result["ok"] and result["error"] is None, result["error"]
    assert result["predicted"] in NAMES and list(result["probabilities"]) == list(NAMES)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["num_frames"] == n and result["frame_indices"] == centre_indices(n, T).tolist()
    assert len(result["influence"]) == len(result["influence_norm"]) == len(result["face_found"]) == T
    norm = np.array(result["influence_norm"])
    assert norm.min() == 0.0 and norm.max() == pytest.approx(1.0)  # Eq. 12
    assert int(np.argmax(result["influence"])) == int(np.argmax(norm))


def test_predict_a_video_and_a_frame_folder(trained, clips):
    """Mechanics only (random tiny CLIP): T influences, probabilities summing to 1, JSON-ready, input order."""
    run, _ = trained
    video, folder = clips
    results = predict([str(video), str(folder)], str(run), device="cpu", workers=0)
    assert [r["path"] for r in results] == [str(video), str(folder)]
    _check_ok(results[0], 20)
    _check_ok(results[1], 13)
    for r in results:  # 64 px frames: the detector sees them upscaled, and finds the drawn faces
        assert sum(r["face_found"]) >= T - 1 and r["frames_without_face"] == T - sum(r["face_found"])
        assert (r["warning"] is None) == all(r["face_found"])
    json.dumps(results)  # plain Python types only, for --json


def test_predict_sees_what_stage_1_cached(trained):
    """Without face crops, predicting a clip of the cache gives the model's output on its cached test view:
    one code path from disk to features (sampling, preprocessing, encoder) for both."""
    run_dir, cache_path = trained
    cache = load_cache(cache_path)
    rows = [0, 4, 8]
    paths = [cache.clip_paths[r] for r in rows]
    results = predict(paths, str(run_dir), device="cpu", face_crop=False, workers=0)
    views = [int(np.flatnonzero((cache.view_clip == r) & (cache.view_kind == TEST_VIEW))[0]) for r in rows]
    run = load_run(run_dir, device="cpu")
    expected = predict_views(run.model, torch.from_numpy(cache.features[views]), amp=False)
    for k, result in enumerate(results):
        assert result["frame_indices"] == cache.view_frames[views[k]].tolist()
        got = np.array(list(result["probabilities"].values()))
        np.testing.assert_allclose(got, expected["probs"][k].numpy(), atol=2e-3)
        assert result["face_found"] == [True] * T and result["warning"] is None


def test_batches_and_workers_give_the_same_results(trained, clips, tmp_path):
    """Several clips per encoder/model call, decoded by worker processes == one clip at a time in-process.

    Earlier tests ran OpenCV's thread pool in this process; forking workers after that used to hang them."""
    run, _ = trained
    rng = np.random.default_rng(11)
    paths = [str(p) for p in clips]
    for k in range(2):
        paths.append(str(write_frame_folder(tmp_path / f"c{k}", make_clip(CLASSES[k], 9 + k, 64, rng)[0])))
    one = predict(paths, str(run), device="cpu", face_crop=False, batch_clips=1, workers=0)
    many = predict(paths, str(run), device="cpu", face_crop=False, batch_clips=3, workers=2)
    assert [r["path"] for r in many] == paths
    for a, b in zip(one, many, strict=True):
        assert a["predicted"] == b["predicted"] and a["face_found"] == b["face_found"]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-3)
        np.testing.assert_allclose(a["influence"], b["influence"], atol=1e-3)


def test_a_real_face_is_found_and_cropped(trained, tmp_path):
    """8 frames of the astronaut photo, the camera panning: a face in every frame; explain draws the crops."""
    run, _ = trained
    image = cv2.resize(_astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    frames = [image[2 * k : 2 * k + 224, 4 * k : 4 * k + 224] for k in range(8)]
    folder = write_frame_folder(tmp_path / "astronaut", frames)
    png = tmp_path / "astronaut.png"
    result = explain(str(folder), str(run), str(png), device="cpu")  # predict's dict, and the figure
    assert result["ok"] and sum(result["face_found"]) >= T - 1, result["face_found"]
    assert result["warning"] is None or "1 of" in result["warning"]
    assert Path(result["png"]) == png and Image.open(png).size == influence_png_size(T)
    # The figure shows the face crops the model saw (checked by eye: face, hair and chin, no rocket or suit).


def test_a_video_without_a_face_is_reported_not_fatal(trained, tmp_path):
    """A slowly changing gradient: no face anywhere, so the full frames are used and every frame is flagged."""
    run, _ = trained
    ramp = np.linspace(0, 255, 96, dtype=np.float32)
    frames = [np.dstack([np.tile(ramp, (72, 1))] * 3).clip(0, 255).astype(np.uint8) // (1 + k % 2) for k in range(12)]
    video = write_video(tmp_path / "wall.mp4", frames)
    result = predict([str(video)], str(run), device="cpu")[0]
    assert result["ok"] and result["face_found"] == [False] * T and result["frames_without_face"] == T
    assert "no face" in result["warning"]
    assert "0/8 (full frames)" in format_predictions([result])


def test_a_corrupt_file_beside_a_good_one(trained, clips, tmp_path):
    """Each bad input gets ok=False with a reason naming it; the good ones still run, in input order."""
    run, _ = trained
    video, folder = clips
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    picture = tmp_path / "still.png"
    cv2.imwrite(str(picture), np.zeros((32, 32, 3), np.uint8))
    missing = tmp_path / "nowhere.mp4"
    paths = [str(corrupt), str(video), str(missing), str(picture), str(folder)]
    results = predict(paths, str(run), device="cpu", workers=2, batch_clips=4)
    assert [r["path"] for r in results] == paths
    assert [r["ok"] for r in results] == [False, True, False, False, True]
    for r in (results[0], results[2], results[3]):
        assert r["path"] in r["error"] and r["predicted"] is None
    assert "corrupt" in results[0]["error"] and "not found" in results[2]["error"]
    assert "image file" in results[3]["error"]
    table = format_predictions(results)
    assert str(corrupt) in table and "2 of 5 clips predicted, 3 failed" in table
    with pytest.raises(PredictError, match=r"corrupt\.mp4"):
        explain(str(corrupt), str(run), str(tmp_path / "x.png"), device="cpu")


def test_explain_draws_figure_4(trained, clips, tmp_path):
    """A deterministic figure size (one frame cell per sampled frame), not blank; any class can be explained."""
    run, _ = trained
    video, _ = clips
    png = tmp_path / "fig4.png"
    out = explain(str(video), str(run), str(png), device="cpu", face_crop=False)
    assert out["explained"] == out["predicted"] and len(out["influence"]) == T
    image = Image.open(png)
    assert image.size == influence_png_size(T) == (1132, 232)
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500

    other = next(c for c in NAMES if c != out["predicted"])
    again = explain(str(video), str(run), str(tmp_path / "other.png"), device="cpu", face_crop=False, target=other)
    assert again["explained"] == other and again["predicted"] == out["predicted"]
    assert Image.open(tmp_path / "other.png").size == (1132, 232)
    with pytest.raises(ValueError, match="expected one of the run's classes"):
        explain(str(video), str(run), str(tmp_path / "y.png"), device="cpu", target="joy")


def test_a_missing_run_directory_is_a_clear_error(clips, tmp_path):
    with pytest.raises(TrainingError, match=r"checkpoint\.pt"):
        predict([str(clips[0])], str(tmp_path / "no-run"), device="cpu")


# FaceCropper on its own


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
        FaceCropper(detector="haar").crop_clip({0: np.zeros((40, 40, 3), np.uint8)})  # BlazeFace needs no cascade
