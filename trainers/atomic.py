"""Atomic file writes, without torch: a reader or a crash never sees half a file.

The data goes to a temporary sibling, is flushed to disk, and is renamed over the target
(``os.replace`` is atomic on POSIX). Training checkpoints, trial artifacts kept for other nodes and
export files all go through :func:`write_atomic`.

A process killed mid-write (SIGKILL, the OOM killer) leaves its temporary file behind. Its name
carries the writer's tag (:func:`writer_tag`: process id, pid namespace, host), so a later run can
tell a dead writer's leftover from a live writer's file: :func:`remove_stale_temp_files` removes
those whose writer is gone (same host and pid namespace, no such process) and, whoever wrote them,
those older than ``STALE_AGE_S`` (no write takes that long); a live writer's file is never touched.
"""
from __future__ import annotations

import functools
import os
import re
import socket
import tempfile
import time
from pathlib import Path

__all__ = ["write_atomic", "writer_tag", "writer_gone", "is_stale", "remove_stale_temp_files", "STALE_AGE_S",
           "TEMP_NAME"]

STALE_AGE_S = 3600.0  # a temporary file this old is a leftover, whoever wrote it
# ".<name>.<pid>-<pid namespace>-<host>.<random>.tmp" (or ".partial"): the tag just before the end.
TEMP_NAME = re.compile(r"^\..+\.(\d+)-(\d+)-([A-Za-z0-9_]+)\.[A-Za-z0-9_]+\.(?:tmp|partial)$")
_TEMP_SUFFIXES = (".tmp", ".partial")


@functools.lru_cache(maxsize=1)
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:63] or "host"


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def writer_tag() -> str:
    """``<pid>-<pid namespace>-<host>`` of this process, for the names of its temporary files."""
    return f"{os.getpid()}-{_pid_namespace()}-{_host()}"


def writer_gone(name: str, pattern: re.Pattern = TEMP_NAME) -> bool | None:
    """Whether the writer named in a temporary file's (or, with its ``pattern``, folder's) ``name``
    is dead: True or False on its own host and pid namespace, None where this process cannot tell
    (another host, another namespace, or a name without a tag)."""
    m = pattern.match(name)
    if m is None or m.group(3) != _host() or int(m.group(2)) != _pid_namespace():
        return None
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def is_stale(name: str, mtime: float, max_age_s: float = STALE_AGE_S) -> bool:
    """A temporary file (hidden, ``.tmp`` or ``.partial``) whose writer is dead or that is older
    than ``max_age_s``."""
    if not (name.startswith(".") and name.endswith(_TEMP_SUFFIXES)):
        return False
    return bool(writer_gone(name)) or time.time() - mtime > max_age_s


def remove_stale_temp_files(folder: str | Path, max_age_s: float = STALE_AGE_S) -> int:
    """Remove the stale temporary files (:func:`is_stale`) under ``folder``; how many."""
    removed = 0
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                if is_stale(name, os.lstat(path).st_mtime, max_age_s):
                    os.unlink(path)
                    removed += 1
            except OSError:  # gone meanwhile, or not ours to remove
                pass
    return removed


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically, creating its folder; readable by others (0644)."""
    path = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the file from other users
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
