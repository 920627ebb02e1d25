"""The one face a one-face timeline follows, through its sampled frames, with ``tgdfer.data.faces.FaceTracker``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tgdfer.data.faces import Box, FaceDetector, FaceTracker, TrackConfig

# The tracker sees every k-th sampled frame (``TimelineConfig.detect_every``), 0.1-0.5 s apart at the defaults, so
# the face may move far between two looks: boxes are not averaged (smooth=1), a whole-frame search runs every 4th
# look (a drifted track is caught within about 2 s), and a face unseen for 2 looks in a row is let go and chosen
# again by size (up to then it is searched near where it was, so a bystander does not take over).
TRACK = TrackConfig(detect_every=4, max_missed=2, smooth=1.0)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def where(box: Box) -> str:
    """A box in words: its centre and width as fractions of the frame."""
    return f"({box[0] + box[2] / 2:.2f}, {box[1] + box[3] / 2:.2f}) of the frame, {box[2]:.2f} wide"


class FollowedFace:
    """One person's face box through a video's sampled frames: ``box(frame, when)`` in time order -> (x, y, w, h)
    fractions, or None.

    A ``FaceTracker`` looks at every ``every``-th sampled frame and the box is held between (a look costs
    milliseconds, sampled frames come about 8 a second). ``choose`` is the face it takes, by size, whenever it
    chooses (0 the largest). What happens (the face chosen, lost, found again) goes to ``log`` with its time.
    """

    def __init__(self, detector: FaceDetector, choose: int, every: int, log: Callable[[str], None]):
        self.tracker = FaceTracker(detector, TRACK, follow=choose)
        self.every, self.log = every, log
        self.current: Box | None = None  # the box held until the next look
        self._since = every  # look at the first frame

    def box(self, frame: np.ndarray, when: float) -> Box | None:
        """(H, W, 3) RGB uint8, the next sampled frame, at ``when`` seconds -> the followed face's box or None."""
        self._since += 1
        if self._since < self.every:
            return self.current
        self._since = 0
        person = self.tracker.person
        face = self.tracker.update(frame)
        box = None if face is None else face.box
        if box is not None and self.tracker.person != person:  # the tracker chose a face (again)
            _, rank, count, _ = self.tracker.choices[-1]
            which = "largest" if rank == 0 else f"{_ordinal(rank + 1)} largest"
            again = "face found again: " if person >= 0 else ""
            self.log(f"{when:.2f} s: {again}following the {which} of {count} faces found, at {where(box)}")
        elif box is None and self.current is not None:
            self.log(f"{when:.2f} s: face lost")
        elif box is not None and self.current is None:
            self.log(f"{when:.2f} s: face found again at {where(box)}")
        self.current = box
        return box
