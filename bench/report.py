"""Report size and load time: ``<stem>.report.html`` of a made-up people timeline of --hours (default 1) with
--persons (default 2) at --stride (default 1 s, the timeline's default; 2 s windows), opened in headless Chromium.

Prints the CSV's and the page's size, the time write_report takes, and per load (--loads, default 5; the fastest
and the median too) the page's own figures: ``ready`` (performance.now() when its script has built the page and
drawn every chart: from navigation start, so parsing the embedded data and the HTML is in it) and ``first draw``
(all charts and the time axis drawn once, the page's first layout included; a later redraw, on a resize or a
change of view, costs a few ms), plus the wall time of the whole chromium process (its start-up included). These
are wall times: on a loaded machine the fastest load is the better figure. Chromium is Debian's (``apt-get
install chromium``), run as ``chromium --headless --dump-dom`` on the file: no server, no network. Without a video
(the page shows a note): the video streams from disk and is not part of the page's load.

    python bench/report.py
    python bench/report.py --hours 3 --persons 6 --stride 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def _load(chromium: str, page: Path) -> dict:
    began = time.perf_counter()
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    wall = time.perf_counter() - began
    body = re.search(r"<body[^>]*>", dom).group(0)
    figures = dict(re.findall(r'data-([\w-]+)="([^"]*)"', body))
    if figures.get("ready") != "yes":
        raise RuntimeError(f"{page}: the page did not finish building: {body}")
    return {"ready_ms": float(figures["ready-ms"]), "draw_ms": float(figures["draw-ms"]), "wall_s": wall}


def main() -> None:
    from tgdfer.apps.report import write_report
    from tgdfer.testing.synthetic import people_timeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--persons", type=int, default=2)
    p.add_argument("--stride", type=float, default=1.0, help="seconds between windows (the timeline's default 1 s)")
    p.add_argument("--loads", type=int, default=5)
    p.add_argument("--out", default=None, help="folder for the CSV, JSON and page (default: a temporary one)")
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        csv_path, json_path = people_timeline(out, "bench", args.hours * 3600, args.persons, stride=args.stride)
        header = json.loads(json_path.read_text())
        del header["video"]  # charts only: a page without a video loads nothing else
        json_path.write_text(json.dumps(header))
        began = time.perf_counter()
        page = write_report(csv_path, json_path)
        write_s = time.perf_counter() - began
        print(
            f"{args.hours:g} h, {args.persons} persons, {header['windows']} windows every {args.stride:g} s: "
            f"CSV {csv_path.stat().st_size / 1e3:.0f} KB, report {page.stat().st_size / 1e3:.0f} KB "
            f"(write_report {write_s:.2f} s)"
        )
        if chromium is None:
            print("no chromium: apt-get install -y chromium (load times skipped)")
            return
        loads = [_load(chromium, page) for _ in range(args.loads)]
        for i, r in enumerate(loads):
            print(
                f"load {i + 1}: ready {r['ready_ms']:.0f} ms, first draw {r['draw_ms']:.1f} ms, "
                f"chromium {r['wall_s']:.2f} s"
            )
        for name, pick in (("fastest", min), ("median", statistics.median)):
            best = {k: pick(r[k] for r in loads) for k in loads[0]}
            print(
                f"{name} of {len(loads)}: ready {best['ready_ms']:.0f} ms after navigation start, first draw of all "
                f"charts {best['draw_ms']:.1f} ms, chromium process {best['wall_s']:.2f} s (load average "
                f"{os.getloadavg()[0]:.1f})"
            )


if __name__ == "__main__":
    main()
