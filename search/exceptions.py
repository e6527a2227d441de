"""Every user-facing error of effnas: a message that names the file, key or value and the fix.

The CLI prints the message and exits with status 1 (the traceback and the cause chain only with
``--debug``). Each class is named for what went wrong, so a script can tell them apart.
"""
from __future__ import annotations

__all__ = ["EffnasError", "UsageError", "StudyFileError", "StorageError", "StudyLockedError",
           "BudgetUnreachableError", "SearchSpaceExhausted", "ResourcesError", "WorkerStartError",
           "DataError", "ExportError", "TableError"]


class EffnasError(Exception):
    """Base class: a problem the user can fix; printed without traceback unless --debug."""


class UsageError(EffnasError):
    """A command line that cannot work: missing argument, bad --set item, unknown preset."""


class StudyFileError(EffnasError):
    """The study file is malformed, has unknown keys, wrong types or impossible values."""

    def __init__(self, path: str, key: str, message: str):
        self.path, self.key = path, key
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)


class StorageError(EffnasError):
    """The study database cannot be opened, created, read or written, or holds another study."""


class StudyLockedError(EffnasError):
    """Another driver already runs this SQLite study."""


class BudgetUnreachableError(EffnasError):
    """No architecture of the search space meets the study's MACs/params limits."""


class SearchSpaceExhausted(EffnasError):
    """The sampler keeps proposing over-budget or already-trained architectures."""


class ResourcesError(EffnasError):
    """The Ray instance lacks the CPUs or GPUs that one trial asks for."""


class WorkerStartError(EffnasError):
    """Ray could not start the trial workers (for example effnas is missing on a node)."""


class DataError(EffnasError):
    """The dataset named in the study file is missing or unusable."""


class ExportError(EffnasError):
    """The export folder cannot be written, or a model description cannot be read."""


class TableError(EffnasError):
    """A recorded table (``search.tables``) is missing, unreadable or breaks its format."""
