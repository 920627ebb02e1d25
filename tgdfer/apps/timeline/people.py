"""The people timeline (``people``): every face of the video, tracked and linked into persons
(``tgdfer.data.persons``), one CSV row per (window, person).

During the decoding pass every sampled frame goes through ``PersonTracker``; each detection's crop is encoded
(its CLIP feature also feeds the tracker's appearance), and as windows complete each (window, track) gets its
status, face share, centre box and probabilities, exactly as the one-face timeline computes a window. Features
are then freed, so memory holds one small record per (window, track). Person ids need the whole video (tracks
are linked at the end), so the CSV is written once, at the end: a (window, person) row is the row of the
person's track with the largest face share in that window. ``people_map`` merges and renames persons; from saved
features it is applied without decoding (the npz holds the tracks).

Resume: at most every ``CHECKPOINT_S`` seconds, once a frame's crops are encoded, the run so far goes atomically
into ``<stem>.people-resume.npz`` (plain arrays, no pickle, with the settings hash): the tracker's whole state
(``PersonTracker.state``), the detections per sampled frame, the (window, track) rows computed, the features
windows still need, the frames through. ``--resume`` with the same settings restores it and goes on after that
frame: earlier frames are decoded (the decoder must reach the frame) but not converted, detected or encoded, and
the rows equal an uninterrupted run's. Without a checkpoint of these settings it starts over; a complete run with
the same settings is kept. The checkpoint is removed when the run completes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tgdfer.apps.timeline.outputs import format_row, settings_hash, summarize, write_header, write_rows
from tgdfer.apps.timeline.resume import load_checkpoint, save_checkpoint
from tgdfer.apps.timeline.run import VideoRun
from tgdfer.apps.timeline.saved import save_features
from tgdfer.apps.timeline.windows import fill_slots, smooth
from tgdfer.data.faces import Box
from tgdfer.data.identity import PersonAssignment
from tgdfer.data.persons import PersonTracker
from tgdfer.data.preprocess import clip_view
from tgdfer.errors import ConfigError
from tgdfer.model.inference import predict_features
from tgdfer.progress import Progress

PEOPLE_FIXED = (
    "person",
    "start_s",
    "end_s",
    "center_s",
    "status",
    "face_frac",
    "x0",
    "y0",
    "x1",
    "y1",
    "top",
    "margin",
)


def people_columns(names: tuple[str, ...]) -> list[str]:
    """The raw columns of a people timeline CSV (SCHEMA.md)."""
    return [*PEOPLE_FIXED, *names]


def read_people_map(path: str | None) -> dict[str, str]:
    """``{"p3": "p1", "p1": "Anna"}`` from a JSON file, or {}."""
    if path is None:
        return {}
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--people-map: expected a JSON file of person names, found {path}: {exc}") from exc
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ConfigError(f'--people-map: expected {{"p3": "p1", "p1": "Anna"}} (names to names), found {mapping!r}')
    return mapping


class PeopleRun(VideoRun):
    """``VideoRun`` for every person: the tracker in place of the followed face, rows per (window, person)."""

    CHECKPOINT_S = 60.0  # seconds between resume checkpoints; one is ~1 MB for 10 min of two persons (its arrays:
    # 8 bytes x 13 per detection), plus the saved features with --save-features

    def __init__(self, path: str, run, cfg, face_crop: bool, stem: str, log, cropper=None):
        super().__init__(path, run, cfg, face_crop, stem, log, cropper)
        self.follower = None
        self.mapping = read_people_map(self.cfg.people_map)
        self.tracker = None if self.reuse is not None else PersonTracker(detector=self.cropper.detector)
        self.detections: dict[int, dict[int, tuple[float, float, float, float]]] = {}  # frame -> {track: box}
        self.track_rows: dict[tuple[int, int], tuple] = {}  # (window, track) -> (status, frac, probs, box)
        self.header["settings"] |= {"people": self.cfg.people, "people_map": self.mapping or None}
        self.header["settings_hash"] = settings_hash(self.header["settings"])
        self.header["people"] = {"mode": self.cfg.people, "map": self.mapping or None}
        self.checkpoint = self.files["csv"].with_name(f"{stem}.people-resume.npz")
        self.checkpointed = time.perf_counter()

    def run(self) -> dict:
        files = self.files
        if self.cfg.resume and files["json"].is_file() and files["csv"].is_file():
            old = json.loads(files["json"].read_text())
            if old.get("status") == "complete" and old.get("settings") == self.header["settings"]:
                self.log(f"resuming after {self.n_windows} of {self.n_windows} windows")
                return old["result"]
        if not (self.cfg.resume and self._restore()):
            self.checkpoint.unlink(missing_ok=True)
        write_header(files, self.header)
        self._plan_uses()
        self.progress = Progress(
            self.n_windows - self.next, self.stem, unit="window", stream=sys.stderr, interval=self.cfg.log_every
        )
        started = time.perf_counter()
        try:
            self._decode()
        except BaseException:
            self.progress.close()
            write_header(files, self.header | {"status": "interrupted"})
            raise
        self.progress.close()
        return self._finish_people(started)

    # ------------------------------------------------------------------------------------ the decoding pass

    def _take(self, index: int, rgb: np.ndarray) -> None:
        """Every face of sampled frame ``index`` (H, W, 3): tracked, its crop queued for the encoder."""
        t0 = time.perf_counter()
        found = self.tracker.update(rgb, float(self.stream.times[index]), index)
        self.seconds["faces"] += time.perf_counter() - t0
        self.detections[index] = {d.track: d.box for d in found}
        self.found[index] = bool(found)
        if self.encode_needed[index]:
            for d in found:
                crop = clip_view(self.cropper.crop(rgb, d.box), self.trained.clip.image_size)
                self.pending.append(((index, d.track), crop, d.box))

    def _keep(self, key: tuple[int, int], feature: torch.Tensor, box: Box) -> None:
        """A crop's (D,) feature keyed by (frame, track); it also describes its track's appearance."""
        self.features[key] = feature
        self.tracker.describe(key[1], feature.float().numpy())
        if self.cfg.save_features:
            self.saved.append((key, feature.numpy(), box))

    def _reused(self, index: int) -> None:
        """Saved features in place of sampled frame ``index``: its detections and their features."""
        self.detections[index] = self.reuse.detections.get(index, {})
        self.found[index] = bool(self.detections[index])
        for track in self.detections[index]:
            self.features[(index, track)] = self.reuse.track_feature(index, track)

    def _write_windows(self, upto: int, final: bool = False) -> None:
        """As ``VideoRun``: the windows whose frames are through, each (window, track) computed, features freed;
        then, when due, a checkpoint (called after each encoder batch, so every ``batch_frames`` crops at most)."""
        ready, w = [], self.next
        while w < self.n_windows and self.window_last[w] <= upto:
            ready.append(w)
            w += 1
        if ready and (len(ready) >= self.cfg.batch_windows or final):
            self.next = w
            self._track_probabilities(ready)
            for key in [k for k in self.features if self.last_use[k[0]] <= ready[-1]]:
                del self.features[key]
            self.progress.update(len(ready))
        due = time.perf_counter() - self.checkpointed >= self.CHECKPOINT_S
        if due and self.tracker is not None and not final and not self.pending:  # frame ``upto`` wholly through
            save_checkpoint(self.checkpoint, self._state(upto))
            self.checkpointed = time.perf_counter()

    def _track_probabilities(self, ready: list[int]) -> None:
        """(window, track) rows of the ready windows: status, face share, centre box, (C,) probabilities."""
        keys, stacks = [], []
        for w in ready:
            idx = self.plan.frames[w]
            if self.plan.counts[w] == 0:
                continue  # no frames: every person's row says so at the end
            tracks = sorted({t for i in idx for t in self.detections.get(int(i), {})})
            centre = (self.plan.starts[w] + self.plan.ends[w]) / 2
            for t in tracks:
                have = np.array([t in self.detections.get(int(i), {}) for i in idx])  # (T,)
                frac = float(have.mean())
                near = min((int(i) for i in idx[have]), key=lambda i: abs(self.stream.times[i] - centre))
                box = self.detections[near][t]
                if frac < self.cfg.min_face:
                    self.track_rows[(w, t)] = ("no_face", frac, None, box)
                    continue
                slots = [self.features.get((int(i), t)) if h else None for i, h in zip(idx, have, strict=True)]
                keys.append((w, t, frac, box))
                stacks.append(torch.stack(fill_slots(slots)))  # (T, D)
        if not stacks:
            return
        batch = torch.stack(stacks).to(next(self.trained.model.parameters()).device)  # (B, T, D)
        t0 = time.perf_counter()
        out = predict_features(self.trained.model, batch, amp=self.trained.config.train.amp, batch_size=len(stacks))
        self.seconds["model"] += time.perf_counter() - t0
        for (w, t, frac, box), p in zip(keys, out["probs"].cpu().numpy(), strict=True):
            self.track_rows[(w, t)] = ("ok", frac, p, box)

    # ---------------------------------------------------------------------------------------------- resume

    def _state(self, through: int) -> dict[str, np.ndarray]:
        """The run after sampled frame ``through`` as plain arrays (``CHECKPOINT_S``): C classes, D features."""
        rows = sorted(self.track_rows.items())
        dim, n_classes = self.trained.clip.dim, len(self.names)
        det = [(i, t, *box) for i, found in sorted(self.detections.items()) for t, box in found.items()]
        saved = self.saved if self.cfg.save_features else []
        return {
            "settings_hash": np.str_(self.header["settings_hash"]),
            "through": np.array(through),
            "next": np.array(self.next),
            "found": self.found,  # (frames,)
            "detections": np.array(det, np.float64).reshape(-1, 6),  # (k, 6): frame, track, box
            "row_keys": np.array([k for k, _ in rows], np.int64).reshape(-1, 2),  # (r, 2): window, track
            "row_ok": np.array([r[0] == "ok" for _, r in rows], bool),
            "row_frac": np.array([r[1] for _, r in rows], np.float64),
            "row_probs": np.array(
                [np.full(n_classes, np.nan) if r[2] is None else r[2] for _, r in rows], np.float32
            ).reshape(-1, n_classes),
            "row_box": np.array([r[3] for _, r in rows], np.float64).reshape(-1, 4),
            "feature_keys": np.array(list(self.features), np.int64).reshape(-1, 2),  # (f, 2): frame, track
            "feature_values": np.stack([v.numpy() for v in self.features.values()] or [np.zeros(dim, np.float16)]),
            "saved_keys": np.array([k for k, _, _ in saved], np.int64).reshape(-1, 2),
            "saved_values": np.stack([v for _, v, _ in saved] or [np.zeros(dim, np.float16)]),
            "saved_boxes": np.array([b for _, _, b in saved], np.float64).reshape(-1, 4),
        } | {f"tracker_{k}": v for k, v in self.tracker.state().items()}

    def _restore(self) -> bool:
        """The checkpoint of these settings, if any, restored (``_state``); False when there is none."""
        a = load_checkpoint(self.checkpoint, self.header["settings_hash"])
        if a is None or self.tracker is None:
            self.log("no checkpoint of these settings: the people timeline starts over")
            return False
        self.tracker.restore({k[len("tracker_") :]: v for k, v in a.items() if k.startswith("tracker_")})
        self.through, self.next, self.found = int(a["through"]), int(a["next"]), a["found"].copy()
        for i, t, *box in a["detections"].tolist():
            self.detections.setdefault(int(i), {})[int(t)] = tuple(box)
        for (w, t), ok, frac, probs, box in zip(
            a["row_keys"].tolist(), a["row_ok"], a["row_frac"].tolist(), a["row_probs"], a["row_box"].tolist(),
            strict=True,
        ):  # fmt: skip
            self.track_rows[(w, t)] = ("ok" if ok else "no_face", frac, probs if ok else None, tuple(box))
        for (i, t), v in zip(a["feature_keys"].tolist(), a["feature_values"], strict=False):
            self.features[(i, t)] = torch.from_numpy(v.copy())
        keys, values, boxes = a["saved_keys"].tolist(), a["saved_values"], a["saved_boxes"].tolist()
        self.saved = [((i, t), v, tuple(b)) for (i, t), v, b in zip(keys, values, boxes, strict=False)]
        self.log(f"resuming after {self.next} of {self.n_windows} windows (sampled frames through {self.through})")
        return True

    # ---------------------------------------------------------------------------------------------- the end

    def _assignment(self) -> PersonAssignment:
        """Tracks linked into persons (or the saved ones), renamed by ``people_map``."""
        linked = self.tracker.link() if self.tracker is not None else self.reuse.assignment
        self.linked = linked
        return linked.renamed(self.mapping) if self.mapping else linked

    def _person_rows(self, assignment: PersonAssignment) -> dict[str, list[list[str]]]:
        """{person: one CSV row per window}: the person's track with the largest face share in each window."""
        persons = assignment.persons
        if self.cfg.people != "all":  # the N persons with the most screen time, kept in first-appearance order
            seen = {p: sum(1 for (w, t) in self.track_rows if assignment.person_of.get(t) == p) for p in persons}
            keep = set(sorted(persons, key=lambda p: -seen[p])[: int(self.cfg.people)])
            persons = [p for p in persons if p in keep]
        best: dict[tuple[int, str], tuple] = {}
        for (w, t), row in self.track_rows.items():
            p = assignment.person_of.get(t)
            if p is not None and ((w, p) not in best or row[1] > best[(w, p)][1]):
                best[(w, p)] = row
        width, height = self.stream.width, self.stream.height
        out = {}
        for p in persons:
            rows = []
            for w in range(self.n_windows):
                start, end = self.plan.starts[w], self.plan.ends[w]
                status, frac, probs, box = best.get((w, p), ("no_face", 0.0, None, None))
                if self.plan.counts[w] == 0:
                    status = "no_frames"
                cells = format_row(start, end, status, frac, probs, self.names)
                xyxy = ["", "", "", ""] if box is None else [
                    f"{box[0] * width:.0f}", f"{box[1] * height:.0f}",
                    f"{(box[0] + box[2]) * width:.0f}", f"{(box[1] + box[3]) * height:.0f}",
                ]  # fmt: skip
                rows.append([p, *cells[:5], *xyxy, *cells[5:]])
            out[p] = rows
        return out

    def _person_summary(self, p: str, rows: list[list[str]], assignment: PersonAssignment) -> dict:
        ok = [r for r in rows if r[4] == "ok"]
        found = sum(1 for r in rows if float(r[5]) > 0)
        first, last = assignment.span(p)
        return {
            "id": p,
            "name": p,
            "first_seen_s": round(first, 3),
            "last_seen_s": round(last, 3),
            "screen_time_s": round(min(found * self.stride_s, self.stream.duration), 3),
            "windows_ok": len(ok),
            "share": {n: sum(r[10] == n for r in ok) / len(ok) if ok else 0.0 for n in self.names},
        }

    def _finish_people(self, started: float) -> dict:
        """Persons linked, rows per (window, person) written, JSON header, saved features, report."""
        assignment = self._assignment()
        by_person = self._person_rows(assignment)
        rows = [by_person[p][w] for w in range(self.n_windows) for p in by_person]  # by window, then person
        header = people_columns(self.names)
        cfg = self.cfg
        if cfg.smooth != "none":
            tag = f"{cfg.smooth}{cfg.smooth_windows}"
            header += [f"{n}_{tag}" for n in self.names]
            extra = {}
            for p, mine in by_person.items():
                probs = np.array([[float(v) if v else 0.0 for v in r[len(PEOPLE_FIXED) :]] for r in mine])
                ok = np.array([r[4] == "ok" for r in mine])
                extra[p] = smooth(probs.reshape(len(mine), len(self.names)), ok, cfg.smooth, cfg.smooth_windows)
            rows = [
                by_person[p][w] + ["" if np.isnan(v) else f"{v:.6f}" for v in extra[p][w]]
                for w in range(self.n_windows)
                for p in by_person
            ]
        write_rows(self.files["csv"], header, rows)
        persons = [self._person_summary(p, by_person[p], assignment) for p in by_person]
        summary = summarize([r[1:6] + r[10:] for r in rows], self.names)  # over all (window, person) rows
        summary |= {"windows": self.n_windows, "rows": len(rows), "persons": [p["id"] for p in persons]}
        self.header["people"] |= {"persons": persons, "short_tracks_left_out": len(assignment.short)}
        if cfg.save_features:
            self._save()
        self.seconds["total"] = time.perf_counter() - started
        result = self._result(summary, None)
        done = {"status": "complete", "summary": summary, "seconds": self.seconds, "result": result}
        write_header(self.files, self.header | done)
        self.checkpoint.unlink(missing_ok=True)
        return result | {"report": self._report()}

    def _save(self) -> None:
        """``<stem>.features.npz`` with the tracks: (frame, track) per row and the linked persons as JSON."""
        rows = [((frame, track), feature, box) for (frame, track), feature, box in self.saved]
        flat = [(frame, feature, box) for (frame, _), feature, box in rows]
        tracks = np.array([track for (_, track), _, _ in rows], dtype=np.int64)
        order = np.argsort([frame for frame, _, _ in flat], kind="stable")
        extra = {"tracks": tracks[order], "people": np.str_(json.dumps(self.linked.to_dict()))}
        no_face = np.flatnonzero(self.sampled & ~self.found)
        clip = self.trained.clip
        save_features(
            self.files["npz"], flat, self.stream, self.plan, no_face, str(self.path), clip.sha256, True, clip.dim, extra
        )
