"""One video's timeline: the windows planned on its time axis, one decoding pass that encodes each sampled frame
once, windows computed in batches as their frames are through, rows written as they complete."""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tgdfer.apps.report import write_report
from tgdfer.apps.timeline.follow import FollowedFace
from tgdfer.apps.timeline.outputs import (
    FIXED_COLUMNS,
    file_sha256,
    format_row,
    output_paths,
    read_rows,
    settings_hash,
    start_csv,
    summarize,
    versions,
    write_header,
    write_smoothed,
)
from tgdfer.apps.timeline.saved import SAVED_SUFFIX, SavedFeatures, save_features
from tgdfer.apps.timeline.windows import DEFAULT_WINDOW_S, EPS, fill_slots, plan_windows, smooth, span_seconds
from tgdfer.config import TimelineConfig
from tgdfer.data.faces import Box, FaceCropper
from tgdfer.data.preprocess import clip_view
from tgdfer.data.video import VideoStream
from tgdfer.data.views import encode_frames
from tgdfer.devices import dtype_name
from tgdfer.errors import ConfigError
from tgdfer.model.inference import predict_features
from tgdfer.progress import Progress
from tgdfer.train.runs import RunDir, TrainedRun

FULL_FRAME: Box = (0.0, 0.0, 1.0, 1.0)  # without face crops every frame is used whole


class VideoRun:
    """One video (or its saved features) through the timeline: ``VideoRun(...).run() -> result dict``.

    Fixed at construction: the stream, the window plan, the output paths and the JSON header. Filled by the
    decoding pass: which sampled frames had the face (``found``), the features windows still need (``features``),
    the frames waiting for the encoder (``pending``) and, with ``save_features``, everything encoded (``saved``).
    """

    def __init__(
        self,
        path: str,
        run: TrainedRun,
        cfg: TimelineConfig,
        face_crop: bool,
        stem: str,
        log: Callable[[str], None],
        cropper: FaceCropper | None = None,
    ):
        self.path, self.trained, self.cfg, self.stem = path, run, cfg, stem
        self.log = lambda line: log(f"{stem}: {line}")
        self.names = run.class_names
        self.frames_per_window = int(run.identity["frames"])
        self.reuse = SavedFeatures(path) if str(path).endswith(SAVED_SUFFIX) else None
        self.stream = self.reuse or VideoStream(path)
        self.face_crop = self._saved_face_crop(face_crop)
        recorded = run.identity.get("clip_seconds")  # a cache that records its clips' mean length (none does yet)
        self.window_why = "the run's clip length" if recorded else "default: the run records no clip length"
        fps = self.stream.fps
        self.window_s = span_seconds(cfg.window, "window", fps) if cfg.window else float(recorded or DEFAULT_WINDOW_S)
        self.stride_s = span_seconds(cfg.stride, "stride", fps)
        plan = plan_windows(
            self.stream.times, self.stream.duration, self.window_s, self.stride_s, self.frames_per_window
        )
        self.plan = plan if self.reuse is None else self.reuse.substitute(plan)  # only frames the first run sampled
        self.n_windows = len(self.plan.starts)
        self.files = output_paths(Path(cfg.out), stem)
        self.header = self._header()
        self.follower: FollowedFace | None = None
        self.cropper = cropper
        if self.face_crop and self.reuse is None:
            self.cropper = cropper or FaceCropper()
            self.follower = FollowedFace(self.cropper.detector, cfg.face, cfg.detect_every, self.log)
        n_frames = len(self.stream.times)
        self.found = np.zeros(n_frames, dtype=bool)  # the followed face was on this sampled frame
        self.features: dict[int, torch.Tensor] = {}  # frame number -> (D,) fp16, while a window still needs it
        self.saved: list[tuple[int, np.ndarray, Box]] = []  # (frame number, (D,) fp16, box) for the npz
        self.pending: list[tuple[int, np.ndarray, Box]] = []  # (frame number, (S, S, 3) uint8, box) to encode
        self.done = 0  # windows in the CSV before this call (resume)
        self.through = -1  # sampled frames up to this one went through before (a restored people checkpoint)
        self.next = 0  # the first window not yet written
        self.seconds = {"total": 0.0, "encoder": 0.0, "model": 0.0, "faces": 0.0, "encoded_frames": 0}

    def _saved_face_crop(self, face_crop: bool) -> bool:
        """Saved features fix the face crop (and must come from the run's CLIP); a video takes the one asked."""
        reuse = self.reuse
        if reuse is None:
            return face_crop
        if reuse.clip_sha256 != self.trained.clip.sha256:
            raise ConfigError(
                f"{self.path}: expected features of the run's CLIP (SHA-256 {self.trained.clip.sha256[:12]}), found "
                f"{reuse.clip_sha256[:12]}: rerun the timeline on the video itself"
            )
        if self.cfg.save_features:
            raise ConfigError(f"--save-features: expected a video, found saved features {self.path} (they are saved)")
        if face_crop != reuse.face_crop:
            self.log(f"face crop {'on' if reuse.face_crop else 'off'}, as the saved features were made")
        return reuse.face_crop

    def _settings(self) -> dict:
        """What the rows depend on; ``resume`` refuses to append when any of it changed."""
        cfg, stream, face_crop = self.cfg, self.stream, self.face_crop
        return {
            "video_bytes": stream.path.stat().st_size,
            "video_frames": len(stream.times),
            "decoder": stream.decoder,
            "checkpoint_sha256": file_sha256(RunDir(Path(cfg.run)).checkpoint),
            "clip_sha256": self.trained.clip.sha256,
            "precision": dtype_name(self.trained.clip.dtype),  # the image encoder's (encoder_precision)
            "frames": self.frames_per_window,
            "window_s": self.window_s,
            "stride_s": self.stride_s,
            "face_crop": face_crop,
            "face": cfg.face if face_crop else None,
            "detect_every": cfg.detect_every if face_crop else None,
            "min_face": cfg.min_face if face_crop else None,
            "smooth": cfg.smooth,
            "smooth_windows": cfg.smooth_windows if cfg.smooth != "none" else None,
            "save_features": cfg.save_features,
        }

    def _header(self) -> dict:
        cfg, stream, reuse, t = self.cfg, self.stream, self.reuse, self.frames_per_window
        settings = self._settings()
        return {
            "video": str(self.path) if reuse is None else reuse.video,
            "features": None if reuse is None else str(self.path),
            "run": str(cfg.run),
            "run_epoch": self.trained.epoch,
            "classes": list(self.names),
            "frames_per_window": t,
            "window": cfg.window or f"{self.window_s:g}s ({self.window_why})",
            "window_s": self.window_s,
            "stride": cfg.stride,
            "stride_s": self.stride_s,
            "windows": self.n_windows,
            "fps": stream.fps,
            "variable_frame_rate": stream.variable_rate,
            "frame_count": len(stream.times),
            "duration_s": stream.duration,
            "size": [stream.width, stream.height],
            "timestamps": f"{stream.timestamps_source}, seconds from the first frame",
            "face_crop": self.face_crop,
            "sampling": f"{t} segment centres of the frames in each window (stage 1's test view)",
            "settings": settings,
            "settings_hash": settings_hash(settings),
            "versions": versions(stream.decoder),
            "status": "running",
        }

    def _plan_uses(self) -> None:
        """What each sampled frame is needed for: its last window (to free its features), whether windows still to
        be computed (or the saved features) use it, and the frame after which each window is ready."""
        plan, n_frames = self.plan, len(self.stream.times)
        self.sampled = np.zeros(n_frames, dtype=bool)
        self.last_use = np.full(n_frames, -1, dtype=np.int64)
        for w in range(self.n_windows):
            idx = plan.frames[w][plan.frames[w] >= 0]
            self.sampled[idx] = True
            self.last_use[idx] = w
        self.encode_needed = self.sampled & ((self.last_use >= self.done) | self.cfg.save_features)
        # A window is ready once its last sampled frame (or, without frames, the frame before it) went through.
        before = np.searchsorted(self.stream.times, plan.starts - EPS) - 1
        self.window_last = np.where(plan.counts > 0, plan.frames.max(1), before)

    def run(self) -> dict:
        """Decode, encode, write; returns the result dict ``timeline`` documents."""
        self.done = start_csv(self.files, self.header, self.names, self.cfg.resume, self.log)
        self.next = self.done
        self._plan_uses()
        self.progress = Progress(
            self.n_windows - self.done, self.stem, unit="window", stream=sys.stderr, interval=self.cfg.log_every
        )
        self.csv_file = open(self.files["csv"], "a", newline="")  # noqa: SIM115 (closed below, or on failure)
        self.writer = csv.writer(self.csv_file, lineterminator="\n")
        started = time.perf_counter()
        try:
            self._decode()
        except BaseException:
            self.csv_file.close()
            self.progress.close()
            write_header(self.files, self.header | {"status": "interrupted"})
            where = f"all in {self.files['csv']}; --resume continues"
            self.log(f"stopped after {self.next} of {self.n_windows} windows, {where}")
            raise
        self.csv_file.close()
        self.progress.close()
        return self._finish(started)

    def _decode(self) -> None:
        """The decoding pass: each sampled frame followed (faces), cropped, queued for the encoder; windows
        written as their frames are through."""
        n_frames = len(self.stream.times)
        for index, frame in self.stream.frames() if self.done < self.n_windows else ():
            if not self.sampled[index] or index <= self.through:
                continue
            if self.reuse is not None:  # nothing to decode or encode: the first run's faces and features
                self._reused(index)
                self._write_windows(index)
                continue
            if self.last_use[index] < self.done and not self.encode_needed[index] and self.follower is None:
                continue  # resumed: only windows already in the CSV use this frame
            self._take(index, frame.rgb())
            if len(self.pending) >= self.cfg.batch_frames:
                self._encode()
                self._write_windows(index)
        self._encode()
        self._write_windows(n_frames, final=True)

    def _reused(self, index: int) -> None:
        """Saved features in place of sampled frame ``index``: whether it had the face, and its features."""
        self.found[index] = self.reuse.face[index]
        if self.found[index] and self.encode_needed[index]:
            self.features[index] = self.reuse.feature(index)

    def _take(self, index: int, rgb: np.ndarray) -> None:
        """(H, W, 3) RGB uint8 of sampled frame ``index``: find the face, queue its crop for the encoder."""
        t0 = time.perf_counter()
        box = FULL_FRAME if self.follower is None else self.follower.box(rgb, float(self.stream.times[index]))
        self.seconds["faces"] += time.perf_counter() - t0
        self.found[index] = box is not None
        if box is not None and self.encode_needed[index]:
            crop = rgb if self.follower is None else self.cropper.crop(rgb, box)
            self.pending.append((index, clip_view(crop, self.trained.clip.image_size), box))  # stage 1's preprocessing

    def _encode(self) -> None:
        """The queued crops through the image encoder as one batch: (B, S, S, 3) uint8 -> (B, D) fp16, each
        feature handed to ``_keep`` with its key and box."""
        if not self.pending:
            return
        pixels = torch.from_numpy(np.stack([crop for _, crop, _ in self.pending]))  # (B, S, S, 3) uint8
        t0 = time.perf_counter()
        out = encode_frames(self.trained.clip, pixels, batch_size=len(self.pending)).cpu()  # (B, D) fp16
        self.seconds["encoder"] += time.perf_counter() - t0
        self.seconds["encoded_frames"] += len(self.pending)
        for (key, _, box), feature in zip(self.pending, out, strict=True):
            self._keep(key, feature, box)
        self.pending.clear()

    def _keep(self, i: int, feature: torch.Tensor, box: Box) -> None:
        """Sampled frame ``i``'s (D,) feature: held while a window still needs it, and saved when asked."""
        if self.last_use[i] >= self.done:
            self.features[i] = feature
        if self.cfg.save_features:
            self.saved.append((i, feature.numpy(), box))

    def _write_windows(self, upto: int, final: bool = False) -> None:
        """Compute and write the windows whose frames are all through (frame numbers <= upto), once there are
        ``batch_windows`` of them (or at the end): a model call costs about as much for 1 window as for 8."""
        ready, w = [], self.next
        while w < self.n_windows and self.window_last[w] <= upto:
            ready.append(w)
            w += 1
        if not ready or (len(ready) < self.cfg.batch_windows and not final):
            return
        self.next = w
        statuses, probs = self._probabilities(ready)
        for w in ready:
            status, frac = statuses[w]
            p = next(probs) if status == "ok" else None
            self.writer.writerow(format_row(self.plan.starts[w], self.plan.ends[w], status, frac, p, self.names))
        self.csv_file.flush()
        for i in [i for i in self.features if self.last_use[i] <= ready[-1]]:
            del self.features[i]
        self.progress.update(len(ready))
        realtime = self.progress.done * self.stride_s / max(time.perf_counter() - self.progress.start, 1e-9)
        self.progress.set_postfix(real_time=f"{realtime:.2f}x")

    def _probabilities(self, ready: list[int]) -> tuple[dict[int, tuple[str, float]], object]:
        """{window: (status, face_frac)} and an iterator over the (C,) probabilities of the ok ones, in order:
        one model call for all of them."""
        statuses, stacks = {}, []
        min_face = self.cfg.min_face if self.face_crop else 0.0
        for w in ready:
            idx = self.plan.frames[w]
            if self.plan.counts[w] == 0:
                statuses[w] = ("no_frames", 0.0)
                continue
            face = self.found[idx]  # (T,) per slot
            frac = float(face.mean())
            if frac < min_face or not face.any():
                statuses[w] = ("no_face", frac)
                continue
            statuses[w] = ("ok", frac)
            stacks.append(torch.stack(fill_slots([self.features.get(int(i)) if self.found[i] else None for i in idx])))
        if not stacks:
            return statuses, iter([])
        batch = torch.stack(stacks).to(next(self.trained.model.parameters()).device)  # (B, T, D)
        t0 = time.perf_counter()
        out = predict_features(self.trained.model, batch, amp=self.trained.config.train.amp, batch_size=len(stacks))
        self.seconds["model"] += time.perf_counter() - t0
        return statuses, iter(out["probs"].cpu().numpy())  # (B, C)

    def _finish(self, started: float) -> dict:
        """Rows read back (all windows), smoothed columns, saved features, summary, plot, header complete."""
        rows = read_rows(self.files["csv"], self.names)
        if len(rows) != self.n_windows:  # a frame the decoder never gave cannot hold a window back
            raise RuntimeError(f"{self.files['csv']}: expected {self.n_windows} rows, found {len(rows)}")
        raw = [r[len(FIXED_COLUMNS) :] for r in rows]
        probs = np.array([[float(v) if v else np.nan for v in r] for r in raw], dtype=np.float64)  # (W, C)
        ok = np.array([r[3] == "ok" for r in rows], dtype=bool)
        smoothed = None
        cfg = self.cfg
        if cfg.smooth != "none":
            smoothed = smooth(np.nan_to_num(probs), ok, cfg.smooth, cfg.smooth_windows)
            write_smoothed(self.files["csv"], rows, self.names, smoothed, f"{cfg.smooth}{cfg.smooth_windows}")
        if cfg.save_features:
            no_face = np.flatnonzero(self.sampled & ~self.found)
            video, sha, dim = str(self.path), self.trained.clip.sha256, self.trained.clip.dim
            save_features(
                self.files["npz"], self.saved, self.stream, self.plan, no_face, video, sha, self.face_crop, dim
            )
        summary = summarize(rows, self.names)
        png = self._plot(probs, ok, smoothed) if cfg.plot else None
        self.seconds["total"] = time.perf_counter() - started  # from the decoding pass to the plot
        result = self._result(summary, png)
        write_header(self.files, self.header | {"status": "complete", "summary": summary, "seconds": self.seconds})
        return result | {"report": self._report()}

    def _report(self) -> str | None:
        """``<stem>.report.html`` beside the CSV (``cfg.report``), from the CSV and JSON just written."""
        if not self.cfg.report:
            return None
        video = self.header["video"]
        page = write_report(self.files["csv"], self.files["json"], video, embed_video=self.cfg.embed_video)
        return str(page)

    def _result(self, summary: dict, png: str | None) -> dict:
        return {
            "path": str(self.path),
            "ok": True,
            "error": None,
            "csv": str(self.files["csv"]),
            "json": str(self.files["json"]),
            "png": png,
            "npz": str(self.files["npz"]) if self.cfg.save_features else None,
            "windows": self.n_windows,
            "window_s": self.window_s,
            "stride_s": self.stride_s,
            "duration_s": self.stream.duration,
            "fps": self.stream.fps,
            "face_crop": self.face_crop,
            "summary": summary,
            "seconds": self.seconds,  # this call's: total (the decoding pass), encoder, model, faces; encoded_frames
        }

    def _plot(self, probs: np.ndarray, ok: np.ndarray, smoothed: np.ndarray | None) -> str:
        from tgdfer.plots import timeline_png

        title = (
            f"{Path(self.header['video']).name}: run {Path(self.cfg.run).name}, {self.window_s:g} s windows every "
            f"{self.stride_s:g} s"
        )
        png = timeline_png(
            self.plan.starts, self.plan.ends, probs, ok, self.names, self.files["png"], smoothed=smoothed, title=title
        )
        return str(png)
