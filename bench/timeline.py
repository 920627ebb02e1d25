"""Timeline speed: x real time (video seconds per wall second) of `tgdfer timeline` on a generated long video,
with its peak memory, and where the time goes (decoding alone, the image encoder alone).

Video: --minutes (default 10) of 640x360 at 25 fps, H.264, a face (scikit-image's astronaut, on which OpenCV's
cascade works) drifting over a textured background, written once under --data. Model: the real ViT-B/32
architecture with random weights (speed does not depend on the weights), a run trained 1 epoch on a generated
cache. Settings: the defaults (2 s windows every 1 s, T = 16, face tracking on, detection every 4 sampled frames).

    python bench/timeline.py                       # 10 minutes, 2 CPU threads
    python bench/timeline.py --minutes 2 --threads 2
    python bench/timeline.py --device cuda
    python bench/timeline.py --persons 2           # two persons, --people all (issue 24: >= 1.5x real time)

Targets (issue 18): >= 1x real time on 2 CPU cores at the default settings, >= 100x on one GPU; an hour of 1080p
in well under 2 GB. Two persons (issue 24): >= 1.5x on 2 CPU cores; the run prints the face crops to encode per
second of video (16: 8 distinct sampled frames x 2 persons) and the encoder frames/s that 1.5x needs. Figures and
why fp32 on a 2-core CPU without AMX falls short: docs/pages/people.md.

With --compare fp32 (the default) the whole video runs a second time with the image encoder in fp32, so one run
prints the speed ratio of the default precision (bf16 on a CPU with AMX) to fp32 and how far the window
probabilities move: max and mean absolute difference, and the share of windows whose top class changes.

Peak memory is each timeline process's own VmHWM, read by the process itself at exit: the ru_maxrss that wait4
reports for a child also counts the parent's high-water mark (Python starts children with vfork, and Linux
carries the old address space's peak across exec), which made this bench print the bench's own 2.7 GB before.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from skimage import data

    from tgdfer.apps import timeline as tl
    from tgdfer.apps.predict import image_encoder
    from tgdfer.backbone import load_clip, save_random_clip
    from tgdfer.config import RunConfig, apply_overrides
    from tgdfer.data.video import VideoStream
    from tgdfer.data.views import encode_frames
    from tgdfer.devices import resolve_device
    from tgdfer.testing.synthetic import face_scene, write_feature_cache, write_video_pts
    from tgdfer.train.engine import fit_fold

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the generated video")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the issue's 2 cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="ViT-B/32", choices=["ViT-B/32", "tiny"])
    p.add_argument(
        "--persons",
        type=int,
        default=1,
        choices=[1, 2],
        help="2: two faces side by side (the astronaut and a mirrored, darker copy), run with --people all",
    )
    p.add_argument("--data", default=None, help="folder for the generated video and run (kept between runs)")
    p.add_argument(
        "--compare",
        default="fp32",
        choices=["fp32", "bf16", "fp16", "none"],
        help="also run the whole video with the image encoder in this precision; none: skip",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    work = Path(args.data or tempfile.mkdtemp(prefix="tgdfer-bench-timeline-"))
    work.mkdir(parents=True, exist_ok=True)

    if args.persons == 2:
        args.compare = "none"  # the precision comparison is the one-face case's

    def scene(count: int):
        face = np.ascontiguousarray(data.astronaut())
        if args.persons == 1:
            return face_scene(face, count, args.width, args.height)
        other = np.ascontiguousarray((face[:, ::-1] * 0.8).astype(np.uint8))  # mirrored and darker: another look
        side = min(args.width // 2, args.height)  # face_scene draws the photo as tall as its frame
        pad = np.zeros((args.height - side, args.width - 2 * side, 3), np.uint8)
        left, right = face_scene(face, count, side, side), face_scene(other, count, side, side, seed=1)
        return (  # (H, W, 3): one person in each half, black below and to the right
            np.pad(np.concatenate([a, b], axis=1), ((0, pad.shape[0]), (0, pad.shape[1]), (0, 0)))
            for a, b in zip(left, right, strict=True)
        )

    n = round(args.minutes * 60 * args.fps)
    tag = "face" if args.persons == 1 else "two-persons"
    video = work / f"{tag}-{args.width}x{args.height}-{args.fps}fps-{n}.mp4"
    if not video.exists():
        t0 = time.perf_counter()
        frames = scene(n)
        write_video_pts(video, frames, (round(i * 1000 / args.fps) for i in range(n)), codec="libx264")
        print(f"generated {video.name}: {n} frames in {time.perf_counter() - t0:.1f} s")

    clip_file = save_random_clip(work / f"random-{args.arch.replace('/', '-')}.pt", args.arch)
    run_dir = work / f"run-{args.arch.replace('/', '-')}"
    if not (run_dir / "checkpoint.pt").exists():
        clip = load_clip(str(clip_file), torch.device("cpu"))
        cache = work / f"cache-{args.arch.replace('/', '-')}.h5"
        write_feature_cache(cache, str(clip_file), clip.sha256, n_clips=40, dim=clip.dim, views=1)
        cfg = RunConfig(features=str(cache), out=str(run_dir), device="cpu")
        fit_fold(apply_overrides(cfg, ["train.epochs=1", "train.batch_size=8"]), log=lambda s: None)

    stream = VideoStream(video)
    duration = stream.duration
    plan = tl.plan_windows(stream.times, duration, tl.DEFAULT_WINDOW_S, 1.0, 16)
    sampled = np.unique(plan.frames[plan.frames >= 0])
    print(
        f"video: {duration:.0f} s, {len(stream.times)} frames {args.width}x{args.height} H.264; {len(plan.starts)} "
        f"windows of 2 s every 1 s, {len(sampled)} distinct sampled frames ({len(sampled) / duration:.2f}/s of "
        f"video; {plan.frames.size} window slots)"
    )

    t0 = time.perf_counter()
    for _ in stream.frames():
        pass
    decode_s = time.perf_counter() - t0
    print(f"decode only (every frame, no RGB conversion): {decode_s:.1f} s = {duration / decode_s:.1f}x real time")

    from tgdfer.train.runs import load_run

    run = load_run(str(run_dir), str(device))
    clip = image_encoder(run)
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 224, 224, 3), dtype=np.uint8))
    rates = {}
    for choice in ["auto"] + ([args.compare] if args.compare != "none" else []):
        how = tl.encoder_precision(run, choice)
        encode_frames(clip, pixels[:8], batch_size=8)  # warm-up
        t0 = time.perf_counter()
        encode_frames(clip, pixels, batch_size=64)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates[choice] = fps_encode = 64 / (time.perf_counter() - t0)
        encode_s = len(sampled) / fps_encode
        print(
            f"encode only, {how}: {fps_encode:.1f} frames/s ({args.threads} threads); the sampled frames need "
            f"{encode_s:.1f} s = {duration / encode_s:.2f}x real time"
        )
    if len(rates) == 2:
        print(f"encode only: auto / {args.compare} = {rates['auto'] / rates[args.compare]:.2f}x")
    del run, clip

    # End to end in a child process, as a user runs it, so its peak memory is the timeline's alone; first on the
    # video's first 10 s, so the peaks show whether memory grows with the video's length.
    short = work / f"{tag}-{args.width}x{args.height}-{args.fps}fps-{10 * args.fps}.mp4"
    if not short.exists():
        frames = scene(10 * args.fps)
        write_video_pts(short, frames, (round(i * 1000 / args.fps) for i in range(10 * args.fps)), codec="libx264")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    runs = [("10 s", short, "auto"), (f"{duration:.0f} s", video, "auto")]
    if args.compare != "none":
        runs.append((f"{duration:.0f} s {args.compare}", video, args.compare))
    peaks, results = {}, {}
    for name, path, precision in runs:
        out_dir = work / f"out-{precision}"
        command = [sys.executable, "-c", _CHILD, "timeline", str(path), "--run", str(run_dir), "--json"]
        command += ["--out", str(out_dir), "--device", str(device), "--face-crop", "--set", "log_every=60"]
        command += ["--set", f"precision={precision}"] + (["--people", "all"] if args.persons == 2 else [])
        t0 = time.perf_counter()
        child = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        stderr, _, peak = child.stderr.rstrip().rpartition("\n")
        print(stderr.strip())
        if child.returncode != 0 or not peak.startswith("VmHWM"):
            raise SystemExit(f"timeline failed ({child.returncode}): {peak}")
        peaks[name] = int(peak.split()[1]) / 1024  # kB
        results[name] = (json.loads(child.stdout)[0], wall)
    result, wall = results[f"{duration:.0f} s"]
    print(tl.format_summary(result))
    t = result["seconds"]
    fps = t["encoded_frames"] / t["encoder"]
    rest = wall - t["encoder"]
    print(
        f"end to end: {wall:.1f} s for {duration:.0f} s of video = {duration / wall:.2f}x real time (target >= "
        f"{1.5 if args.persons == 2 else 1:g}x on 2 CPU cores); inside: encoder {t['encoder']:.1f} s "
        f"({t['encoded_frames']} frames, {fps:.1f} frames/s), faces "
        f"{t['faces']:.1f} s, model {t['model']:.1f} s, everything else (start-up, decoding, crops, files) "
        f"{rest - t['faces'] - t['model']:.1f} s"
    )
    per_second = t["encoded_frames"] / duration  # face crops per second of video: persons x distinct sampled frames
    print(
        f"encoder work: {per_second:.1f} crops per second of video; at {fps:.1f} frames/s the encoder alone allows "
        f"{fps / per_second:.2f}x real time (1.5x needs >= {1.5 * per_second:.1f} frames/s, all else free)"
    )
    if args.compare != "none":
        other, other_wall = results[f"{duration:.0f} s {args.compare}"]
        o = other["seconds"]
        print(
            f"end to end, encoder in {args.compare}: {other_wall:.1f} s = {duration / other_wall:.2f}x real time "
            f"(encoder {o['encoder']:.1f} s, {o['encoded_frames'] / o['encoder']:.1f} frames/s); default / "
            f"{args.compare}: {other_wall / wall:.2f}x the speed"
        )
        print(_difference(result["csv"], other["csv"], args.compare))
    print(
        f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; peak RSS (VmHWM) of the timeline "
        "process: " + ", ".join(f"{v:.0f} MB on {k} of video" for k, v in peaks.items())
    )


# The child: the CLI as `python -m tgdfer` runs it, then its own peak resident memory on stderr's last line.
_CHILD = (
    "import sys\n"
    "from tgdfer.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "peak = [line for line in open('/proc/self/status') if line.startswith('VmHWM')]\n"
    "print(' '.join(peak[0].split()) if peak else 'no VmHWM', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _difference(default_csv: str, other_csv: str, other: str) -> str:
    """How far the default run's window probabilities lie from the other precision's, on the windows both give."""
    with open(default_csv, newline="") as f:
        a = list(csv.DictReader(f))
    with open(other_csv, newline="") as f:
        b = list(csv.DictReader(f))
    assert len(a) == len(b) and [r["status"] for r in a] == [r["status"] for r in b], "rows differ"
    from tgdfer.apps.timeline import FIXED_COLUMNS

    names = [c for c in a[0] if c not in FIXED_COLUMNS]
    ok = [i for i, r in enumerate(a) if r["status"] == "ok"]
    pa = np.array([[float(a[i][n]) for n in names] for i in ok])  # (W, C)
    pb = np.array([[float(b[i][n]) for n in names] for i in ok])
    diff = np.abs(pa - pb)
    changed = sum(a[i]["top"] != b[i]["top"] for i in ok)
    margin = np.array([float(b[i]["margin"]) for i in ok])
    return (
        f"window probabilities, default vs {other} encoder, {len(ok)} windows with a face, {len(names)} classes: max "
        f"|diff| {diff.max():.2e}, mean {diff.mean():.2e}; top class changed in {changed} ({changed / len(ok):.1%}); "
        f"{other} top-2 margins: median {np.median(margin):.2e}, min {margin.min():.2e}"
    )


if __name__ == "__main__":
    main()
