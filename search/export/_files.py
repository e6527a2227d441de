"""Writing export files: atomically (a reader never sees half a file) and as strict JSON."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["reason", "write_atomic", "clean", "json_text"]


def reason(e: BaseException) -> str:
    first = str(e).splitlines()[0][:300] if str(e) else ""
    return f"{type(e).__name__}: {first}"


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary sibling, then rename over ``path`` (atomic on POSIX)."""
    blob = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the results from other users
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities (e.g. an unmeasured latency objective) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def json_text(obj: Any) -> str:
    return json.dumps(clean(obj), indent=2, allow_nan=False) + "\n"
