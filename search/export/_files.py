"""Writing export files: atomically (a reader never sees half a file) and as strict JSON."""
from __future__ import annotations

import json
import math
from typing import Any

from trainers.atomic import write_atomic  # noqa: F401  (export's writer, re-exported)

__all__ = ["reason", "write_atomic", "clean", "json_text"]


def reason(e: BaseException) -> str:
    first = str(e).splitlines()[0][:300] if str(e) else ""
    return f"{type(e).__name__}: {first}"


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
