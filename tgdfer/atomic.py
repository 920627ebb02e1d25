"""Crash-safe file commits: write under a temporary name, fsync, rename, fsync the folder.

A reader then sees either the old file or the whole new one, never a truncated one, even after SIGKILL or a power
cut. Used for cache shards and entry files, checkpoints, and run metrics.
"""

from __future__ import annotations

import contextlib
import errno
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
        try:
            _fsync_path(tmp)  # a full disk may only show here (delayed allocation)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        os.replace(tmp, path)
        _fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Commit ``data`` as ``path``. Every tgdfer output is written here, with plain ``os.write`` calls.

    Files that h5py or torch build go through memory first, so a full disk surfaces as one ``OSError`` (ENOSPC,
    naming ``path``) from this function and never inside h5py or torch's writers (h5py crashed the process).
    """
    with committed(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        finally:
            os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is the OS saying the disk (or a quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path, prefix: str = "") -> int:
    """Delete the temporary files (``<name>.tmp-<pid>``) of writers that are dead; returns how many.

    Only ``folder``'s files starting with ``prefix``; a live process's temporary file (a concurrent writer's) is
    left alone.
    """
    removed = 0
    for p in Path(folder).glob(f"{prefix}*{TMP_MARK}*"):
        pid = p.name.rsplit(TMP_MARK, 1)[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            p.unlink(missing_ok=True)
            removed += 1
    return removed
