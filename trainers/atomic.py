"""Atomic file writes, without torch: a reader or a crash never sees half a file.

The data goes to a temporary sibling, is flushed to disk, and is renamed over the target
(``os.replace`` is atomic on POSIX). Training checkpoints, trial artifacts kept for other nodes and
export files all go through :func:`write_atomic`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically, creating its folder; readable by others (0644)."""
    path = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
