"""``timeline(paths, cfg)``: the run loaded once, then each video's ``VideoRun``; a video that fails is reported
and the others still run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from tgdfer.apps.timeline.encoder import face_crop_choice, timeline_run
from tgdfer.apps.timeline.people import PeopleRun
from tgdfer.apps.timeline.run import VideoRun
from tgdfer.apps.timeline.saved import SAVED_SUFFIX
from tgdfer.apps.timeline.windows import parse_span
from tgdfer.config import TimelineConfig
from tgdfer.data.faces import FaceCropper
from tgdfer.errors import ConfigError


def output_stems(paths: list[str]) -> list[str]:
    """Output names: the file stem, with its parent folder's name added when two videos share a stem."""
    stems = [Path(p).name[: -len(SAVED_SUFFIX)] if p.endswith(SAVED_SUFFIX) else Path(p).stem for p in paths]
    return [
        f"{Path(p).parent.name}-{s}" if stems.count(s) > 1 and Path(p).parent.name else s
        for p, s in zip(paths, stems, strict=True)
    ]


def timeline(paths: list[str], cfg: TimelineConfig, log: Callable[[str], None] | None = None) -> list[dict]:
    """Write the timeline of each video (see ``tgdfer.apps.timeline``) into ``cfg.out``.

    Returns one dict per video, in order: path, ok, error (the reason when ok is False), csv, json, png, npz,
    windows, window_s, stride_s, duration_s, fps, face_crop, summary ({windows, share {class: share of time with
    that top class}, no_face share}), seconds. A video that cannot be read is reported and the others still run.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    for text, name in ((cfg.window, "window"), (cfg.stride, "stride")):
        if text is not None:
            parse_span(text, name)  # a bad length fails before the run loads, not once per video
    run = timeline_run(cfg, log)
    if cfg.people is None:
        face_crop = face_crop_choice(run, cfg.face_crop, log)
    else:  # one line: --people crops every face, whatever was asked or the run's cache
        face_crop, recorded = True, run.identity.get("face_crop")
        ignored = " (--no-face-crop ignored)" if cfg.face_crop is False else ""
        cache = ", although the run's cache was made without face crops" if recorded in (False, 0) else ""
        log(f"face crop on: --people crops every face{ignored}{cache}")
    cropper = None
    if face_crop:
        cropper = FaceCropper()
        cropper.detector.backend  # noqa: B018  (loads it: a detector that cannot load fails once, before any video)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    results = []
    paths = [str(p) for p in paths]
    for path, stem in zip(paths, output_stems(paths), strict=True):
        try:
            kind = VideoRun if cfg.people is None else PeopleRun
            results.append(kind(path, run, cfg, face_crop, stem, log, cropper).run())
        except ConfigError as exc:  # this video cannot be used as asked (--resume with new settings, ...)
            results.append({"path": path, "ok": False, "error": str(exc)})
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # a file that is no video, a decoder failing on it: report it, go on
            results.append({"path": path, "ok": False, "error": f"unreadable video ({type(exc).__name__}: {exc})"})
        if not results[-1]["ok"]:
            log(f"{path}: skipped: {results[-1]['error']}")
    return results
