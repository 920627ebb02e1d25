"""Exclusive ownership of an output (a cache shard or entry, a run directory) by one process at a time.

A lock is ``fcntl.flock`` on a lock file holding the owner's pid. The kernel drops the lock when its process
dies, however it dies, so a lock file left by a killed process is stale by construction and is simply taken
over; a live owner makes the second process stop with one line naming the owner's pid. The lock file is removed
on release; the inode check below keeps that removal race-free (a process that locked a file just unlinked
retries on the new one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from tgdfer.errors import BusyError

LOCK_SUFFIX = ".lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


def acquire(path: str | Path, what: str) -> int:
    """Lock ``path`` (created if needed) for this process -> the open descriptor to pass to ``release``.

    ``what`` names the output for the refusal: "<what> is in use by process <pid> (lock <path>) ...".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BusyError(
                f"{what}: expected no other tgdfer process writing it, found process {_holder(path)} holding "
                f"{path}; wait for it to finish or stop it, or choose another output"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous owner removed the file between our open and lock: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release(path: str | Path, fd: int) -> None:
    """Remove the lock file, then drop the lock (in that order, see the module docstring)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Hold the lock ``path`` for the block; see ``acquire``."""
    fd = acquire(path, what)
    try:
        yield
    finally:
        release(path, fd)


def lock_path(output: str | Path) -> Path:
    """The lock file of an output file: ``<output>.lock`` beside it."""
    output = Path(output)
    return output.with_name(output.name + LOCK_SUFFIX)
