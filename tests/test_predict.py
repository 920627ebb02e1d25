"""Inference on new clips (``tgdfer.apps.predict``) and face cropping (``tgdfer.data.faces``).

The run is trained for a few epochs on features from the session's tiny *random* CLIP, so its predictions are
meaningless: these tests check the mechanics (sampling, preprocessing, face crops, batching, failures, figures),
never accuracy. The face tests use a real photograph (scikit-image's astronaut), on which OpenCV's cascade works.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tgdfer.apps.predict import PredictError, explain, format_predictions, predict, preprocessing
from tgdfer.config import ExtractConfig, PredictConfig, RunConfig, apply_overrides
from tgdfer.data.sampling import SAMPLING_RULE, TEST_VIEW, centre_indices
from tgdfer.errors import ConfigError, RunError
from tgdfer.extract import extract
from tgdfer.features.cache import load_cache
from tgdfer.model.inference import predict_features as predict_views
from tgdfer.plots import influence_png_size
from tgdfer.testing.synthetic import make_clip, make_csv_dataset, write_frame_folder, write_video
from tgdfer.train.engine import fit_fold
from tgdfer.train.runs import load_run

CLASSES = ("happiness", "sadness", "surprise")  # drawn in the training clips
NAMES = CLASSES  # a CSV's classes are its own labels, sorted: no DFEW classes the data never had
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
    fit_fold(apply_overrides(cfg, ["train.epochs=1", "train.batch_size=8"]), log=lambda s: None)
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
    cfg = PredictConfig(run=str(run), device="cpu", workers=0, face_crop=True)
    results = predict([str(video), str(folder)], cfg, log=lambda s: None)
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
    results = predict(paths, PredictConfig(run=str(run_dir), device="cpu", face_crop=False, workers=0))
    views = [int(np.flatnonzero((cache.view_clip == r) & (cache.view_kind == TEST_VIEW))[0]) for r in rows]
    run = load_run(run_dir, device="cpu")
    expected = predict_views(run.model, torch.from_numpy(cache.features[views]), amp=False)
    for k, result in enumerate(results):
        assert result["frame_indices"] == cache.view_frames[views[k]].tolist()
        got = np.array(list(result["probabilities"].values()))
        np.testing.assert_allclose(got, expected["probs"][k].numpy(), atol=2e-3)
        assert result["face_found"] == [True] * T and result["warning"] is None


@pytest.mark.integration
def test_batches_and_workers_give_the_same_results(trained, clips, tmp_path):
    """Several clips per encoder/model call, decoded by worker processes == one clip at a time in-process.

    Earlier tests ran OpenCV's thread pool in this process; forking workers after that used to hang them."""
    run, _ = trained
    rng = np.random.default_rng(11)
    paths = [str(p) for p in clips]
    for k in range(2):
        paths.append(str(write_frame_folder(tmp_path / f"c{k}", make_clip(CLASSES[k], 9 + k, 64, rng)[0])))
    one = predict(paths, PredictConfig(run=str(run), device="cpu", face_crop=False, batch_clips=1, workers=0))
    many = predict(paths, PredictConfig(run=str(run), device="cpu", face_crop=False, batch_clips=3, workers=2))
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
    cfg = PredictConfig(run=str(run), device="cpu", face_crop=True)
    result = explain(str(folder), cfg, png=str(png))  # predict's dict + figure
    missing = T - sum(result["face_found"])
    assert result["ok"] and missing <= 1, result["face_found"]
    expected = None if missing == 0 else f"no face found in 1 of {T} sampled frames"
    assert (result["warning"] or None) == expected or result["warning"].startswith(expected), result["warning"]
    assert Path(result["png"]) == png and Image.open(png).size == influence_png_size(T)
    # The figure shows the face crops the model saw (checked by eye: face, hair and chin, no rocket or suit).


def test_a_video_without_a_face_is_reported_not_fatal(trained, tmp_path):
    """A slowly changing gradient: no face anywhere, so the full frames are used and every frame is flagged."""
    run, _ = trained
    ramp = np.linspace(0, 255, 96, dtype=np.float32)
    frames = [np.dstack([np.tile(ramp, (72, 1))] * 3).clip(0, 255).astype(np.uint8) // (1 + k % 2) for k in range(12)]
    video = write_video(tmp_path / "wall.mp4", frames)
    result = predict([str(video)], PredictConfig(run=str(run), device="cpu", face_crop=True), log=lambda s: None)[0]
    assert result["ok"] and result["face_found"] == [False] * T and result["frames_without_face"] == T
    assert result["warning"] == "no face found in any sampled frame: the full frames were used"
    table = format_predictions([result])
    assert "0/8 (full frames)" in table  # the warning shows in the table, not only with --json
    assert f"warning: {video}: no face found in any sampled frame: the full frames were used" in table.splitlines()

    strict = PredictConfig(run=str(run), device="cpu", face_crop=True, require_face=True)
    [failed] = predict([str(video)], strict, log=lambda s: None)
    assert not failed["ok"] and failed["predicted"] is None and failed["face_found"] == [False] * T
    assert failed["error"] == f"no face found in any of the 8 sampled frames (--require-face): {video}"
    with pytest.raises(ConfigError, match="--require-face: expected face detection on, found face crop off"):
        predict([str(video)], PredictConfig(run=str(run), device="cpu", require_face=True))


def test_predict_preprocesses_as_the_runs_cache_and_reports_an_override(trained, clips):
    """The fixture's cache was extracted without face crops: predict follows it unless told, and then says so."""
    run, _ = trained
    video, _ = clips
    logged = []
    [plain] = predict([str(video)], PredictConfig(run=str(run), device="cpu", workers=0), log=logged.append)
    assert plain["face_crop"] is False and plain["note"] is None and logged == []
    [crop] = predict([str(video)], PredictConfig(run=str(run), device="cpu", face_crop=True), log=logged.append)
    note = (
        "face crop on (--face-crop), but the run's cache was extracted without face crops: the model sees other "
        "pixels than it was trained on"
    )
    assert crop["face_crop"] is True and crop["note"] == note and logged == [f"predict: {note}"]
    made_with_crops = SimpleNamespace(identity={"face_crop": True, "sampling": SAMPLING_RULE})
    assert preprocessing(made_with_crops, None) == (True, None)
    assert preprocessing(made_with_crops, False)[1].startswith("face crop off (--no-face-crop), but the run's cache")
    assert preprocessing(SimpleNamespace(identity={}), None) == (False, None)  # no record: no crops were made


def test_frames_in_memory_predict_as_their_frame_folder(trained, clips):
    run, _ = trained
    _, folder = clips
    frames = [np.asarray(Image.open(folder / f"{k}.jpg").convert("RGB")) for k in range(1, 14)]
    cfg = PredictConfig(run=str(run), device="cpu", workers=0)
    [from_disk] = predict([str(folder)], cfg)
    [in_memory] = predict(["mine"], cfg, frames=[np.stack(frames)])
    assert in_memory["path"] == "mine" and in_memory["frame_indices"] == from_disk["frame_indices"]
    np.testing.assert_allclose(
        list(in_memory["probabilities"].values()), list(from_disk["probabilities"].values()), atol=1e-5
    )
    [bad] = predict(["grey"], cfg, frames=[np.zeros((5, 8, 8), np.uint8)])
    assert not bad["ok"] and bad["error"].startswith("expected frames as (H, W, 3) uint8 RGB arrays, found (8, 8)")


def test_a_variable_frame_rate_video_predicts_as_its_frames(trained, tmp_path):
    """A VFR video (gaps of 20 to 200 ms, written with PyAV): every frame counted, sampled by its place in
    presentation order, so it predicts as its decoded frames given in memory."""
    import av

    from tgdfer.testing.synthetic import write_video_pts

    run, _ = trained
    rng = np.random.default_rng(8)
    video = write_video_pts(
        tmp_path / "vfr.mkv", make_clip("happiness", 25, 64, rng)[0], np.cumsum(np.r_[0, rng.integers(20, 201, 24)])
    )
    with av.open(str(video)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    cfg = PredictConfig(run=str(run), device="cpu", workers=0)
    [from_video] = predict([str(video)], cfg)
    [in_memory] = predict(["frames"], cfg, frames=[decoded])
    _check_ok(from_video, 25)
    assert from_video["probabilities"] == in_memory["probabilities"]


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
    results = predict(paths, PredictConfig(run=str(run), device="cpu", workers=2, batch_clips=4))
    assert [r["path"] for r in results] == paths
    assert [r["ok"] for r in results] == [False, True, False, False, True]
    for r in (results[0], results[2], results[3]):
        assert r["path"] in r["error"] and r["predicted"] is None
    assert "corrupt" in results[0]["error"] and "not found" in results[2]["error"]
    assert "image file" in results[3]["error"]
    table = format_predictions(results)
    assert str(corrupt) in table and "2 of 5 clips predicted, 3 failed" in table
    with pytest.raises(PredictError, match=r"corrupt\.mp4"):
        explain(str(corrupt), PredictConfig(run=str(run), device="cpu"), png=str(tmp_path / "x.png"))


def test_explain_draws_figure_4(trained, clips, tmp_path):
    """A deterministic figure size (one frame cell per sampled frame), not blank; any class can be explained."""
    run, _ = trained
    video, _ = clips
    png = tmp_path / "fig4.png"
    out = explain(str(video), PredictConfig(run=str(run), device="cpu", face_crop=False), png=str(png))
    assert out["explained"] == out["predicted"] and len(out["influence"]) == T
    image = Image.open(png)
    assert image.size == influence_png_size(T) == (1524, 310)  # one row of 8 cells of 160 px
    pixels = np.asarray(image.convert("RGB")).astype(np.float32)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500

    other = next(c for c in NAMES if c != out["predicted"])
    again = explain(
        str(video),
        PredictConfig(run=str(run), device="cpu", face_crop=False),
        png=str(tmp_path / "other.png"),
        target=other,
    )
    assert again["explained"] == other and again["predicted"] == out["predicted"]
    assert Image.open(tmp_path / "other.png").size == (1524, 310)
    with pytest.raises(ValueError, match="expected one of the run's classes"):
        explain(str(video), PredictConfig(run=str(run), device="cpu"), png=str(tmp_path / "y.png"), target="joy")


def test_a_missing_run_directory_is_a_clear_error(clips, tmp_path):
    with pytest.raises(RunError, match=r"expected a run directory .* with checkpoint\.pt, found none"):
        predict([str(clips[0])], PredictConfig(run=str(tmp_path / "no-run"), device="cpu"))


# FaceCropper on its own
