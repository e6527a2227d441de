"""Exceptions of the orchestrator: every user-facing failure is one of these, with a message that
names the file, key or value and the fix. The CLI prints the message and exits with status 1."""
from __future__ import annotations

__all__ = ["EffnasError", "StudyFileError", "StorageError", "StudyLockedError", "SearchSpaceExhausted",
           "WorkerStartError", "DataError"]


class EffnasError(Exception):
    """Base class: a problem the user can fix; printed without traceback unless --debug."""


class StudyFileError(EffnasError):
    """The study file is malformed, has unknown keys, wrong types or impossible values."""

    def __init__(self, path: str, key: str, message: str):
        self.path, self.key = path, key
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)


class StorageError(EffnasError):
    """The study database cannot be opened, created or written."""


class StudyLockedError(EffnasError):
    """Another driver already runs this SQLite study."""


class SearchSpaceExhausted(EffnasError):
    """The sampler keeps proposing over-budget or already-trained architectures."""


class WorkerStartError(EffnasError):
    """Ray could not start the trial workers (for example effnas is missing on a node)."""


class DataError(EffnasError):
    """The dataset named in the study file is missing or unusable."""
