"""Crash-safe file commits: write under a temporary name, fsync, rename, fsync the folder.

A reader then sees either the old file or the whole new one, never a truncated one, even after SIGKILL or a power
cut. Used for cache shards and entry files, checkpoints, and run metrics.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def committed(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit make it ``path`` atomically.

    The caller must have closed the file before the block ends. On an exception the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with committed(path) as tmp:
        tmp.write_text(text)


def remove_stale_temporaries(folder: str | Path, prefix: str = "") -> int:
    """Delete temporary files left by killed writers; returns how many."""
    removed = 0
    for p in Path(folder).glob(f"{prefix}*{TMP_MARK}*"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed
