"""Progress lines of a running sweep: one per event, with the counts and the best so far."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["SweepSummary", "Progress"]


@dataclass
class SweepSummary:
    """What one ``run`` did (this driver's trials only)."""

    trained: int = 0
    stopped: int = 0
    failed: int = 0
    infeasible: int = 0
    duplicate: int = 0
    screened: int = 0
    wall_seconds: float = 0.0
    loop_seconds: float = 0.0       # the scheduling loop alone (no Ray start, no data loading)
    overhead_ms_per_trial: float = 0.0
    # perf_counter stamps of the first and last trained result: the steady-state span that
    # benchmarks compare with other tools' first-to-last-result span.
    first_result_at: float | None = None
    last_result_at: float | None = None
    nodes: set = field(default_factory=set)

    @property
    def proposals(self) -> int:
        return self.trained + self.stopped + self.failed + self.infeasible + self.duplicate + self.screened

    def stamp_result(self) -> None:
        now = time.perf_counter()
        if self.first_result_at is None:
            self.first_result_at = now
        self.last_result_at = now


class Progress:
    """Writes ``[elapsed] event | counts | best acc`` lines to ``log``."""

    def __init__(self, summary: SweepSummary, log: Callable[[str], None]):
        self.summary, self.log = summary, log
        self.started = time.perf_counter()
        self.best: tuple[float, int] | None = None  # (validation accuracy, trial number)
        self.running = 0

    def note_trained(self, val_acc: float | None, number: int) -> None:
        """Keep the most accurate fully trained architecture for the progress lines."""
        if val_acc is not None and (self.best is None or val_acc > self.best[0]):
            self.best = (val_acc, number)

    def line(self, text: str) -> None:
        s = self.summary
        elapsed = time.perf_counter() - self.started
        best = f" | best acc {self.best[0]:.4f} (trial {self.best[1]})" if self.best else ""
        self.log(f"[{elapsed:7.1f}s] {text} | running {self.running} trained {s.trained} "
                 f"stopped {s.stopped} failed {s.failed} infeasible {s.infeasible} dup {s.duplicate}"
                 + (f" screened {s.screened}" if s.screened else "") + best)
