"""SQLite specifics: WAL so readers never block the writing driver, cheap commits, and one driver
per study file (a lock file held for the driver's lifetime)."""
from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from search.exceptions import StorageError, StudyLockedError
from search.storage._urls import display_url, sqlite_path

__all__ = ["prepare_sqlite", "tune_sqlite", "study_names_in_file", "DriverLock"]


def prepare_sqlite(path: Path) -> None:
    """Create the folder and switch the file to WAL, so readers never block the writing driver."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=60) as con:
            con.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as e:
        raise StorageError(f"cannot create the study database {path}: {e}; "
                           f"set `storage:` or `run_dir:` in the study file to a writable place") from None


def _set_pragmas(dbapi_connection, _record) -> None:
    # WAL with synchronous=NORMAL: commits survive a killed process (not a power cut) and cost no
    # fsync each, which is most of the per-write time of a sweep's many small writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def tune_sqlite(storage) -> None:
    import sqlalchemy

    sqlalchemy.event.listen(storage.engine, "connect", _set_pragmas)
    storage.engine.dispose()  # connections opened before the listener reconnect with the pragmas


def study_names_in_file(path: Path, where: str) -> list[str]:
    """Names of the studies in an existing SQLite file, read-only: not even WAL side files may
    appear next to someone else's database."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60) as con:
            return [row[0] for row in con.execute("SELECT study_name FROM studies")]
    except sqlite3.Error as e:
        raise StorageError(f"{where}: storage: {path} is not a readable study database ({e})") from None


def driver_holds(storage_url: str) -> bool | None:
    """Whether a driver runs this SQLite study now (it holds the lock file); None for server
    databases, where several drivers may run and the heartbeats tell instead. Writes nothing."""
    db = sqlite_path(storage_url)
    if db is None:
        return None
    path = db.with_name(db.name + ".lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # no driver ever ran here
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return False


class DriverLock:
    """One driver per SQLite study: a second one would corrupt the run directory and the record.

    The lock is a file next to the database (``study.db.lock``), held with flock for the driver's
    lifetime; the kernel drops it when the process dies, even by SIGKILL. Server databases take
    several drivers, so there this lock does nothing.

    Args:
        storage_url: the study's database URL.
        where: the study file, for messages.
        study: the study name, for messages.
    """

    def __init__(self, storage_url: str, where: str, study: str):
        self.storage_url, self.where, self.study, self.fd = storage_url, where, study, None

    def __enter__(self) -> "DriverLock":
        db = sqlite_path(self.storage_url)
        if db is None:
            return self
        path = db.with_name(db.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"{self.where}: storage: cannot create {path.parent}: {e.strerror}; "
                               f"set `storage:` (or `run_dir:`) to a writable place") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise StudyLockedError(
                f"another driver is already running study {self.study!r} on {display_url(self.storage_url)}; "
                f"wait for it or stop it (SQLite studies take one driver; use a PostgreSQL `storage:` URL "
                f"to share a study between drivers)") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
