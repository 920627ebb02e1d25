"""Every error tgdfer raises for a problem the user can fix, under one base class. Imports nothing heavy.

The CLI catches ``TgdferError`` alone: its message is printed as one line (what was expected, what was found,
what to do) and the command exits with status 2. Anything else is a bug in tgdfer and keeps its traceback.

Classes name the stage that refused, so a caller can catch one kind (``except CacheError``). ``ConfigError``
and ``AnnotationError`` are also ``ValueError``s, as they are bad values handed to a function.
"""

from __future__ import annotations

from pathlib import Path


class TgdferError(Exception):
    """Base class: a problem with the user's input, data, files or settings, described in one line."""


class ConfigError(TgdferError, ValueError):
    """A setting or argument out of range or not among its choices (``--set model.mil=atention``)."""


class AnnotationError(TgdferError, ValueError):
    """Bad annotations; the message names the file and line: '<file>:<line>: expected ..., found ...'."""

    def __init__(self, file: str | Path | None, line: int | None, message: str):
        self.file = None if file is None else str(file)
        self.line = line
        self.message = message
        where = "" if file is None else f"{file}: " if line is None else f"{file}:{line}: "
        super().__init__(where + message)

    def __reduce__(self):  # exceptions pickle through args; ours takes three (worker processes re-raise it)
        return (type(self), (self.file, self.line, self.message))


class ClipLoadError(TgdferError):
    """The CLIP weights named by --clip could not be found, downloaded or read."""


class FaceDetectorError(TgdferError):
    """The face detector cannot be built (its model file is missing or unreadable)."""


class ExtractError(TgdferError):
    """Stage 1 cannot go on; the message says why and what to do."""


class CacheError(TgdferError):
    """A feature cache that cannot be used as asked; the message says what was expected and what was found."""


class TrainingError(TgdferError):
    """Stage 2 cannot go on (a non-finite loss, a run directory that does not fit); says where and why."""


class RunError(TgdferError):
    """A run directory or checkpoint that cannot be read as a tgdfer run (missing, foreign or damaged)."""


class PredictError(TgdferError):
    """An input that predict or explain cannot use (unreadable, or not a clip); names it and says why."""


class BusyError(TgdferError):
    """An output (cache shard or entry, run directory) that another live process is writing; names its pid."""


class FeatureImportError(TgdferError):
    """Features made elsewhere that ``tgdfer import-features`` cannot take; names the file, expected vs found."""


class ClipError(Exception):
    """One clip whose frames cannot be read. Not a user error: stage 1 records it as a failure and goes on."""
