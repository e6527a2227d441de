"""What the parts of a running sweep share: the study and its settings, the policy, the backend, the
progress view, and the proposals at each stage (being priced, waiting in the pre-screening pool,
waiting for a slot, training)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from search.config import StudyConfig
from search.sweep._policy import SweepPolicy
from search.sweep._progress import Progress, SweepSummary

__all__ = ["SweepState"]


@dataclass
class SweepState:
    """One driver's sweep in progress.

    Attributes:
        cfg: the validated study file; study: the open Optuna study; shared_db: several drivers may
            write it (a server database).
        fidelity, spaces, data_meta: the fidelity key, the families' search spaces, the data shape.
        costs: arch_key -> (cost, constraints, proxies) of every architecture priced so far.
        pending: trial number -> proposal being priced.
        pool: pre-screening: feasible, new proposals with their records, not chosen yet.
        scored: every proposal's screening candidate so far (``search.prescreen.Candidate``).
        ready: priced proposals to train, with their records, waiting for a slot.
        inflight: trial number -> (proposal, record) training on the backend.
        overhead_s: the driver's own time on proposals and outcomes (not queueing).
    """

    cfg: StudyConfig
    study: Any
    policy: SweepPolicy
    backend: Any
    summary: SweepSummary
    progress: Progress
    tracker: Any
    fidelity: dict
    spaces: dict
    data_meta: dict
    shared_db: bool = False
    plateau: Any = None   # search.sweep._plateau.Plateau when budget.stop_when_flat is set
    costs: dict = field(default_factory=dict)
    pending: dict = field(default_factory=dict)
    pool: list = field(default_factory=list)
    scored: list = field(default_factory=list)
    ready: list = field(default_factory=list)
    inflight: dict = field(default_factory=dict)
    overhead_s: float = 0.0

    def held_trials(self) -> list:
        """The trials whose heartbeat this driver keeps: every one it asked for and has not told
        yet (being priced, waiting in the pre-screening pool or for a slot, training); one left
        without beats would be re-queued by another driver while this one still holds it."""
        return ([p.trial for p in list(self.pending.values())] + [p.trial for p, _ in list(self.pool)]
                + [p.trial for p, _ in list(self.ready)] + [p.trial for p, _ in list(self.inflight.values())])

    def under_way(self) -> int:
        """Trials that will use the budget unless they fail. With pre-screening, proposals being
        priced or waiting in the pool mostly do not (most are screened): the pool's choice is
        capped by the budget left instead."""
        if self.cfg.prescreen is not None:
            return len(self.inflight) + len(self.ready)
        return len(self.inflight) + len(self.ready) + len(self.pending)

    def budget_left(self) -> int:
        if not self.shared_db:
            return self.policy.budget_left(self.under_way())
        return self.policy.budget_left_shared(self.study.get_trials(deepcopy=False))

    @contextlib.contextmanager
    def timed(self):
        """Adds the enclosed driver work to ``overhead_s``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.overhead_s += time.perf_counter() - t0
