"""Progress of long work (extract, predict): a tqdm bar at a terminal, periodic plain lines everywhere else.

A bar redraws in place, which a log file (nohup, SLURM, ``> log.txt``) cannot show: there tqdm would write one
unreadable line, or nothing at all with ``disable=None``. When the stream is not a terminal, ``Progress`` prints
a line every ``interval`` seconds instead (``extract: 120/1000 clips (12%), 3.4 clips/s, ETA 4m18s, failed=2``),
and a last one at the end if it printed any. ``TGDFER_PROGRESS_SECONDS`` sets the interval (default 15 s).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

DEFAULT_INTERVAL = 15.0  # seconds between lines in a log: often enough to see it move, rare enough to read


def duration(seconds: float) -> str:
    """42s, 4m18s, 2h05m."""
    s = max(0, round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _interval() -> float:
    text = os.environ.get("TGDFER_PROGRESS_SECONDS", "")
    try:
        return float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


class Progress:
    """Count ``total`` items of work: ``update(n)``, ``set_postfix(**figures)``, ``close()`` (or use ``with``).

    ``stream`` defaults to stdout; ``tty`` (default: ``stream.isatty()``) picks the bar or the lines; ``disable``
    silences both. ``clock`` is for tests.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "clip",
        stream: TextIO | None = None,
        interval: float | None = None,
        tty: bool | None = None,
        disable: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.stream = stream or sys.stdout
        self.interval = _interval() if interval is None else interval
        self.clock, self.start = clock, clock()
        self.last, self.lines, self.postfix = self.start, 0, {}
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.bar = None
        self.quiet = disable
        if is_tty and not disable:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, file=self.stream, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def set_postfix(self, **figures) -> None:
        """Figures shown after the rate (``failed=2``)."""
        self.postfix = figures
        if self.bar is not None:
            self.bar.set_postfix(refresh=False, **figures)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if not self.quiet and now - self.last >= self.interval and self.done < self.total:
            self.last = now
            self._line(now)

    def line(self, now: float | None = None) -> str:
        """The progress line as printed: done/total, percent, rate, ETA (or elapsed once done), figures."""
        now = self.clock() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        if self.done >= self.total:
            tail = f"done in {duration(elapsed)}"
        else:
            tail = f"ETA {duration((self.total - self.done) / rate)}" if rate > 0 else "ETA unknown"
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.done}/{self.total} {self.unit}s{share}, {rate:.1f} {self.unit}s/s, {tail}{extra}"

    def _line(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self.lines += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines and not self.quiet:  # a log that showed progress also shows the end
            self._line(self.clock())
            self.lines = 0
