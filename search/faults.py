"""Fault injection for crash-safety tests: the driver kills itself at a named point.

``EFFNAS_KILL_AT=point:n`` makes the n-th pass through ``point`` send SIGKILL to this process, so
tests and ``bench/fault_injection.py`` can stop a real driver at an exact moment (on a server
database between asking for a trial and its first heartbeat, while sampling,
while trials train, once it heard of a trained epoch, between writing a result and telling it,
between queueing a failed trial's retry and telling the failure, while exporting) and check that the next ``run`` loses nothing. Unset, it costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

__all__ = ["checkpoint", "POINTS"]

POINTS = ("unbeaten", "asked", "proposed", "screened", "submitted", "epoch", "recorded", "told", "retry_queued",
          "exporting")
_counts: dict[str, int] = {}


def checkpoint(point: str) -> None:
    spec = os.environ.get("EFFNAS_KILL_AT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
