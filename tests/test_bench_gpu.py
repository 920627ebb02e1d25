"""bench/gpu.py --smoke: the GPU checklist's code paths (every command, the table) on the CPU with tiny sizes, so
the script cannot rot between the rare GPU slots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_gpu_checklist_smoke_runs_every_check(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]  # the table, less its header
    checks = [row.split(" | ")[0].lstrip("| ") for row in rows]
    assert [c.split(",")[0].split(" (")[0] for c in checks] == [
        "stage 1",
        "one fold",
        "timeline",
        "Table 3 row e",
        "Table 3 row e",
        "peak GPU memory",
        "the whole checklist",
    ], checks
    assert "frames/s" in rows[0] and "x real time" in rows[2]
    batched = rows[4]
    assert " s = " in batched or "n/a: no batched runs" in batched, batched
