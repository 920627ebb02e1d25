"""Persons from faces (``tgdfer.data.persons``, ``tgdfer.data.appearance``) on small drawn frames: each person a skin
square (the face) under a coloured band (hair) above a coloured block (clothing); a detector that finds the skin
squares stands in for BlazeFace, so the matcher, the cut rule and the linker are tested alone, in milliseconds."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest

from tgdfer.data.appearance import CutConfig, ShotCuts, region_distance, region_histograms
from tgdfer.data.faces import Face
from tgdfer.data.identity import LinkConfig, PersonAssignment, Track, embedding_scale, link, track_distance
from tgdfer.data.persons import PersonsConfig, PersonTracker
from tgdfer.errors import ConfigError

W, H = 240, 160
SKIN = (224, 172, 140)
SIDE = 0.1  # face box side as a share of the frame's width (24 px)
LOOKS = {  # person -> (hair, clothing) RGB
    "red": ((150, 20, 20), (200, 40, 40)),
    "blue": ((20, 20, 150), (40, 60, 210)),
    "green": ((20, 120, 20), (60, 190, 60)),
}


class SkinDetector:
    """Every skin square of a drawn frame, as ``FaceDetector.faces`` gives faces, and those near a box, as
    ``faces_near`` does; ``searches`` counts the calls of each."""

    backend = "blazeface"  # zoomed searches allowed

    def __init__(self):
        self.searches = {"whole": 0, "near": 0}

    def _all(self, frame: np.ndarray) -> list[Face]:
        mask = np.all(frame == np.array(SKIN, np.uint8), axis=-1).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        out = [
            Face((x / W, y / H, w / W, h / H), 0.9)
            for x, y, w, h, area in stats[1:n].tolist()
            if area >= 9  # a square cut to a sliver at the frame's edge is no face
        ]
        return sorted(out, key=lambda f: -f.box[2] * f.box[3])

    def faces(self, frame: np.ndarray) -> list[Face]:
        self.searches["whole"] += 1
        return self._all(frame)

    def faces_near(self, frame: np.ndarray, box) -> list[Face]:
        self.searches["near"] += 1
        cx = box[0] + box[2] / 2
        return [f for f in self._all(frame) if abs(f.box[0] + f.box[2] / 2 - cx) < box[2]]


def frame(people: dict[str, float] | list[tuple[str, float]], background=(90, 90, 90), y: float = 0.3) -> np.ndarray:
    """A (H, W, 3) frame with each named person's face centred at x (fraction of the width)."""
    out = np.empty((H, W, 3), np.uint8)
    out[:] = background
    side = round(SIDE * W)
    for name, x in people.items() if isinstance(people, dict) else people:
        hair, clothes = LOOKS[name]
        x0, y0 = round(x * W - side / 2), round(y * H)
        cv2.rectangle(out, (x0 - 6, y0 - 14), (x0 + side + 5, y0 - 1), hair, -1)
        cv2.rectangle(out, (x0 - side // 2, y0 + side + 6), (x0 + side + side // 2, y0 + 2 * side + 12), clothes, -1)
        cv2.rectangle(out, (x0, y0), (x0 + side - 1, y0 + side - 1), SKIN, -1)
    return out


def run(frames: list[np.ndarray], config: PersonsConfig | None = None):
    """Frames through a tracker -> (tracker, {index: detections}, assignment)."""
    tracker = PersonTracker(config or PersonsConfig(), detector=SkinDetector())
    found = {i: tracker.update(f, i / 8, i) for i, f in enumerate(frames)}
    return tracker, found, tracker.link()


def people_at(found, assignment, index: int) -> dict[str, float]:
    """{person: face centre x} at a frame."""
    return {assignment.person_of[d.track]: d.box[0] + d.box[2] / 2 for d in found[index]}


def test_two_persons_are_followed_and_named_by_first_appearance():
    frames = [frame({"red": 0.3}) for _ in range(3)]
    frames += [frame({"red": 0.3 + 0.01 * i, "blue": 0.7 - 0.01 * i}) for i in range(8)]
    tracker, found, persons = run(frames)
    assert len(tracker.tracks) == 2 and persons.persons == ["p1", "p2"]
    assert people_at(found, persons, 0).keys() == {"p1"}  # red came first
    assert people_at(found, persons, 10) == pytest.approx({"p1": 0.37, "p2": 0.63}, abs=0.01)
    assert persons.span("p1") == (0.0, 10 / 8) and persons.span("p2") == (4 / 8, 10 / 8)  # at a whole search


def test_a_person_who_leaves_and_comes_back_keeps_the_id():
    frames = [frame({"red": 0.3, "blue": 0.7}) for _ in range(6)]
    frames += [frame({"red": 0.3}) for _ in range(10)]  # blue away longer than max_missed: the track ends
    frames += [frame({"red": 0.3, "blue": 0.6}) for _ in range(6)]  # back at another place
    tracker, found, persons = run(frames)
    assert len(tracker.tracks) == 3  # blue's two tracks
    assert persons.persons == ["p1", "p2"]
    assert people_at(found, persons, 0)["p2"] == pytest.approx(0.7, abs=0.01)
    assert people_at(found, persons, 20)["p2"] == pytest.approx(0.6, abs=0.01)


# Red jumps right past blue, which jumps left: each one's new box overlaps the other's old box, and its own not at all.
CROSSING = [frame({"red": 0.30, "blue": 0.56}), frame({"red": 0.50, "blue": 0.36})]


def test_between_whole_searches_only_the_tracked_faces_are_searched():
    frames = [frame({"red": 0.3})] * 2 + [frame({"red": 0.3, "blue": 0.7})] * 5
    tracker, found, _ = run(frames, PersonsConfig(detect_every=4, link=LinkConfig(min_detections=1)))
    assert [len(found[i]) for i in range(7)] == [1, 1, 1, 1, 2, 2, 2]  # blue is found at the next whole search
    assert tracker.detector.searches == {"whole": 2, "near": 3 + 4}  # frames 0 and 4; red 1-3, red and blue 5-6


def test_crossing_faces_keep_their_tracks_by_colour():
    tracker, found, _ = run(CROSSING, PersonsConfig(link=LinkConfig(min_detections=1), gate=2.5))
    red = {d.track for i in range(2) for d in found[i] if round(d.box[0] + d.box[2] / 2, 2) in (0.30, 0.50)}
    assert len(tracker.tracks) == 2 and len(red) == 1  # red's detections are one track


def test_by_overlap_alone_the_crossing_faces_would_swap():
    blind = PersonsConfig(link=LinkConfig(min_detections=1), gate=2.5, appearance_weight=0.0, appearance_gate=1.0)
    _, found, _ = run(CROSSING, blind)
    red = {d.track for i in range(2) for d in found[i] if round(d.box[0] + d.box[2] / 2, 2) in (0.30, 0.50)}
    assert len(red) == 2  # what the colour term prevents


def test_a_cut_ends_every_track_and_persons_exchanging_places_keep_their_ids():
    shot_a = [frame({"red": 0.25, "blue": 0.75}) for _ in range(6)]
    shot_b = [frame({"blue": 0.25, "red": 0.75}, background=(40, 40, 40)) for _ in range(6)]  # places exchanged
    tracker, found, persons = run(shot_a + shot_b + shot_a)
    assert [i for i, _ in tracker.cuts] == [6, 12]
    assert len(tracker.tracks) == 6  # two per shot: nothing continued across a cut
    assert persons.persons == ["p1", "p2"]
    for i, red_x in ((0, 0.25), (6, 0.75), (12, 0.25)):  # red is p1 (first found, leftmost, at frame 0)
        assert people_at(found, persons, i)["p1"] == pytest.approx(red_x, abs=0.01)


def test_a_restored_state_continues_the_stream_exactly():
    """``state()`` after frame 8 (a cut, embeddings described), through an npz, into a new tracker: the rest of the
    stream gives the same detections, cuts and persons as one tracker run throughout (the people resume)."""
    shot_a = [frame({"red": 0.25, "blue": 0.75}) for _ in range(6)]
    shot_b = [frame({"blue": 0.25, "red": 0.75}, background=(40, 40, 40)) for _ in range(6)]
    frames = shot_a + shot_b + shot_a
    rng = np.random.default_rng(0)
    whole, resumed = PersonTracker(detector=SkinDetector()), PersonTracker(detector=SkinDetector())
    for i, f in enumerate(frames[:9]):
        for d in whole.update(f, i / 8, i):
            whole.describe(d.track, rng.normal(size=16))
    buffer = io.BytesIO()
    np.savez(buffer, **whole.state())
    buffer.seek(0)
    resumed.restore(dict(np.load(buffer, allow_pickle=False)))
    rest = [(whole.update(f, i / 8, i), resumed.update(f, i / 8, i)) for i, f in enumerate(frames[9:], start=9)]
    assert all(a == b for a, b in rest) and whole.cuts == resumed.cuts == [(6, 0.75), (12, 1.5)]
    assert whole.link().to_dict() == resumed.link().to_dict()
    assert all(np.array_equal(whole.tracks[t].embedding_sum, resumed.tracks[t].embedding_sum) for t in whole.tracks)


def test_short_tracks_are_left_out_and_counted():
    frames = [frame({"red": 0.3}) for _ in range(8)]
    frames[4] = frame({"red": 0.3, "green": 0.8})  # a glimpse of one frame
    _, found, persons = run(frames)
    green = next(d.track for d in found[4] if d.box[0] > 0.6)
    assert persons.short == (green,) and green not in persons.person_of
    assert persons.persons == ["p1"]


def test_tracks_seen_together_are_never_one_person():
    twins = [frame([("red", 0.25), ("red", 0.75)]) for _ in range(6)]  # same looks, in the same frames
    _, _, persons = run(twins)
    assert persons.persons == ["p1", "p2"]


def test_a_merge_keeps_the_merged_tracks_apart_from_those_seen_with_either():
    alone = [frame({"red": 0.5}) for _ in range(6)]
    twins = [frame([("red", 0.25), ("red", 0.75)], background=(40, 40, 40)) for _ in range(6)]  # look like it
    _, _, persons = run(alone + twins)
    assert persons.persons == ["p1", "p2"]  # the first track joins one twin; the twins stay two


def test_a_different_look_after_a_cut_is_a_new_person():
    frames = [frame({"red": 0.5}) for _ in range(6)] + [frame({"green": 0.5}, (40, 40, 40)) for _ in range(6)]
    _, _, persons = run(frames)
    assert persons.persons == ["p1", "p2"]


def _track(colour: np.ndarray, embedding=None, frames=(0,)) -> Track:
    t = Track(0, 0)
    for i in frames:
        t.add(i, i / 8, (0.1, 0.1, 0.2, 0.2), colour)
    if embedding is not None:
        t.embedding_sum = np.asarray(embedding, np.float64)
        t.embeddings = 1
    return t


def test_embeddings_blend_into_the_linking_distance_at_colour_scale():
    colour = region_histograms(frame({"red": 0.5}), (0.45, 0.3, SIDE, SIDE * W / H))
    a, b = _track(colour, [1.0, 0.0]), _track(colour, [0.0, 1.0])  # colours equal; embeddings' (1 - cos) / 2 = 0.5
    assert track_distance(a, b, 0.3, 1.5) == pytest.approx(0.3 * min(1.0, 1.5 * 0.5))
    assert track_distance(a, b, 0.3, 4.0) == pytest.approx(0.3)  # capped at 1
    assert track_distance(a, b, 0.3, None) == pytest.approx(0.0, abs=1e-9)  # no scale known: colour alone
    assert track_distance(a, _track(colour, [2.0, 0.0]), 0.3, 1.0) == pytest.approx(0.0, abs=1e-9)
    assert track_distance(a, _track(colour), 0.3, 1.0) == pytest.approx(0.0, abs=1e-9)  # one without: colour alone
    tracker = PersonTracker(PersonsConfig(), detector=SkinDetector())
    tracker.update(frame({"red": 0.5}), 0.0, 0)
    tracker.describe(0, np.array([3.0, 4.0]))
    assert tracker.tracks[0].embedding_sum == pytest.approx([0.6, 0.8])  # normalised before the mean


def test_the_embedding_scale_comes_from_tracks_seen_together():
    tracker, _, _ = run([frame({"red": 0.3, "blue": 0.7}) for _ in range(5)] + [frame({"green": 0.5})] * 5)
    red, blue, green = (tracker.tracks[t] for t in (0, 1, 2))
    for t, v in ((red, [1.0, 0.0]), (blue, [0.8, 0.6]), (green, [0.0, 1.0])):
        tracker.describe(t.id, np.array(v))
    together = np.array([[False, True, False], [True, False, False], [False, False, False]])
    scale = embedding_scale([red, blue, green], together)  # red and blue, seen together, are two persons
    assert scale == pytest.approx(region_distance(red.colour(), blue.colour()) / ((1 - 0.8) / 2))
    assert embedding_scale([red, green], np.zeros((2, 2), bool)) is None  # no pair known to be two persons
    red.embedding_sum = blue.embedding_sum = None
    assert embedding_scale([red, blue, green], together) is None  # the pair has no embeddings


def test_region_histograms_and_distance():
    image = frame({"red": 0.3, "blue": 0.7})
    side = (SIDE, SIDE * W / H)
    red = region_histograms(image, (0.22, 0.3, *side))
    blue = region_histograms(image, (0.62, 0.3, *side))
    assert red.shape == (3, 128) and np.allclose(red.sum(-1), 1)
    assert region_distance(red, red) == pytest.approx(0.0, abs=1e-6)
    assert region_distance(red, blue) > 0.5  # the face regions agree, hair and clothing do not
    outside = region_histograms(image, (1.5, 1.5, 0.1, 0.1))
    assert not outside.any() and region_distance(red, outside) == 1.0


def test_shot_cuts_see_a_new_scene_not_a_moving_face():
    cuts = ShotCuts(CutConfig())
    rng = np.random.default_rng(0)

    def noisy(image: np.ndarray) -> np.ndarray:  # sensor noise, as in any camera's frames
        return np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)

    still = [noisy(frame({"red": 0.3, "blue": 0.7})) for _ in range(3)]
    assert [cuts.is_cut(f) for f in [*still, noisy(frame({"red": 0.32, "blue": 0.68}))]] == [False] * 4
    assert cuts.is_cut(frame({"blue": 0.3, "red": 0.7}))  # the same persons, places exchanged: a cut


def test_assignment_boxes_rename_and_json():
    frames = [frame({"red": 0.3, "blue": 0.7}) for _ in range(6)] + [frame({"red": 0.3}) for _ in range(4)]
    _, _, persons = run(frames)
    assert sorted(persons.boxes("p2", 0.0, 0.5)) == [0, 1, 2, 3]  # times i / 8 < 0.5
    assert persons.boxes("p2", 1.0, 2.0) == {}
    assert persons.nearest("p2", 0.3, within=0.1) == (2, persons.seen("p2")[2][1])  # 0.25 s is nearest
    assert persons.nearest("p2", 2.0, within=0.5) is None  # blue left at 0.625 s
    assert persons.detections("p1") == 10 and persons.detections("p2") == 6 and persons.top(1) == ["p1"]
    with pytest.raises(KeyError, match="p9"):
        persons.boxes("p9", 0, 1)
    back = PersonAssignment.from_dict(json.loads(json.dumps(persons.to_dict())))
    assert back == persons
    merged = persons.renamed({"p2": "p1", "p1": "Anna"})
    assert merged.persons == ["Anna"] and len(merged.seen("Anna")) == 10  # where both were seen, the larger box
    swapped = persons.renamed({"p1": "p2", "p2": "p1"})  # a swap, not a loop
    assert {t: swapped.person_of[t] for t in persons.person_of} == {0: "p2", 1: "p1"}


def test_link_of_nothing_and_config_checks():
    assert link([]).persons == []
    with pytest.raises(ConfigError, match="link_threshold"):
        LinkConfig(link_threshold=1.5)
    with pytest.raises(ConfigError, match="gate"):
        PersonsConfig(gate=0)
