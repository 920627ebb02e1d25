"""The resume checkpoint of a people timeline: one npz of plain arrays (never pickle), written atomically, read back
only when it was made with the same settings (its ``settings_hash``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tgdfer.atomic import write_bytes


def save_checkpoint(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` (one of them ``settings_hash``) as ``path``, atomically: a kill leaves the old checkpoint whole."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, settings_hash: str) -> dict[str, np.ndarray] | None:
    """The arrays of the checkpoint at ``path`` if it was made with ``settings_hash``, else None (none, other
    settings, or unreadable: the run then starts over)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError):
        return None
    return arrays if str(arrays.get("settings_hash", "")) == settings_hash else None
