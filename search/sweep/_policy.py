"""The sweep policy: what to do with each proposal and outcome, with no Ray, torch or database in it.

Given what the study holds and a priced proposal, it decides: infeasible (over budget: recorded,
never trained), duplicate (an architecture already trained or being trained: recorded, never
trained again) or train. It keeps the budget (``n_trials`` counts architectures that occupied a
worker to an outcome: trained, stopped at a rung, or failed with no retry left), decides retries,
counts stalls (infeasible and duplicate proposals in a row end the sweep at ``max_stalls``), and,
with several drivers on one database, releases trials asked after the budget was taken (surplus).

The driver feeds it events and does what it says; ``tests/test_sweep_policy.py`` drives it with
fake trials only.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable

from optuna.trial import FrozenTrial, TrialState

from search.record import TrialStatus, pending_arch_key, read_record, trial_status

__all__ = ["Verdict", "Decision", "SweepPolicy", "budget_used", "uses_budget"]


class Verdict(enum.Enum):
    TRAIN = "train"
    INFEASIBLE = "infeasible"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    duplicate_of: int | None = None   # the trial that trained (or trains) the same architecture
    duplicate_values: list | None = None  # its objective values, which the duplicate repeats


def counts_for_budget(status: TrialStatus, final: bool) -> bool:
    """The budget rule: a trial counts once it occupied a worker to an outcome: trained, stopped
    at a rung, or failed with no retry left (``final``)."""
    if not isinstance(status, TrialStatus):  # a status a later version wrote
        return False
    return status.reached_result or (status == TrialStatus.FAILED and final)


def uses_budget(trial: FrozenTrial) -> bool:
    return counts_for_budget(trial_status(trial), bool(trial.user_attrs.get("final", False)))


def budget_used(trials: Iterable[FrozenTrial]) -> int:
    """Trials that occupied a worker to an outcome (a failed trial counts once no retry follows)."""
    return sum(1 for t in trials if uses_budget(t))


@dataclass
class SweepPolicy:
    """Decisions of one driver; ``target`` is the number of budget-using trials to reach.

    Args:
        target: ``budget.n_trials`` (or what is used already plus ``--n-trials``).
        used: budget-using trials in the study when this driver started.
        max_stalls: infeasible/duplicate proposals in a row that end the sweep.
        max_retries: retries of a failed trial.
        retry_nonfinite: whether a diverged trial (non-finite loss) is retried.
        shared: several drivers may write the study (a server database).
        max_trials: a cap on the study's trials of every status (``budget.max_trials``).
        asked: the study's trials when this driver started (counted on at every ask).
    """

    target: int
    used: int = 0
    max_stalls: int = 50
    max_retries: int = 1
    retry_nonfinite: bool = False
    shared: bool = False
    max_trials: int | None = None
    asked: int = 0
    stalls: int = 0
    # arch_key -> (trial, objective values) of architectures trained, stopped or screened: never again
    trained: dict[str, tuple[int, list | None]] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)      # arch_key -> this driver's live trial
    others_running: set[str] = field(default_factory=set)      # arch_keys other drivers train now

    # -- what the study holds ---------------------------------------------------------------------
    def learn(self, trials: Iterable[FrozenTrial]) -> None:
        """Architectures trained so far, and (shared database) those other drivers train now."""
        self.others_running = set()
        for t in trials:
            status = trial_status(t)
            if isinstance(status, TrialStatus) and status.settles_architecture:
                key = read_record(t).arch_key
                if key:
                    self.trained.setdefault(key, (t.number, list(t.values) if t.values else None))
            elif t.state == TrialState.RUNNING:
                pending = pending_arch_key(t)
                if pending and pending not in self.started:
                    self.others_running.add(pending)

    # -- one proposal -----------------------------------------------------------------------------
    def decide(self, number: int, key: str, constraints: dict[str, float]) -> Decision:
        """Infeasible, duplicate or train, for trial ``number`` of architecture ``key``."""
        if constraints and max(constraints.values()) > 0:
            self.stalls += 1
            return Decision(Verdict.INFEASIBLE)
        if key in self.trained:
            self.stalls += 1
            number_, values = self.trained[key]
            return Decision(Verdict.DUPLICATE, duplicate_of=number_, duplicate_values=values)
        if key in self.started or key in self.others_running:
            self.stalls += 1
            return Decision(Verdict.DUPLICATE, duplicate_of=self.started.get(key))
        self.stalls = 0
        self.started[key] = number
        return Decision(Verdict.TRAIN)

    @property
    def exhausted(self) -> bool:
        return self.stalls >= self.max_stalls

    # -- one outcome ------------------------------------------------------------------------------
    def finished(self, key: str, number: int, status: TrialStatus, values: list | None = None,
                 will_retry: bool = False) -> None:
        """A trial this driver started came back with ``status`` (and objective ``values``)."""
        self.started.pop(key, None)
        if status == TrialStatus.SCREENED:  # proposed again later, it is not screened (or trained) again
            self.trained.setdefault(key, (number, None))
        elif status.reached_result:
            self.trained[key] = (number, values)
        if self.counts(status, will_retry):
            self.used += 1

    def counts(self, status: TrialStatus, will_retry: bool = False) -> bool:
        """Whether an outcome this driver applies uses the budget."""
        return counts_for_budget(status, final=not will_retry)

    def will_retry(self, attempt: int, failure_kind: str | None) -> bool:
        """A failed trial is queued again unless it diverged (when such are not retried) or has had
        its retries."""
        retriable = failure_kind != "nonfinite" or self.retry_nonfinite
        return retriable and attempt < self.max_retries

    # -- the budget -------------------------------------------------------------------------------
    def budget_left(self, under_way: int) -> int:
        """Architectures still to ask for by a single driver: its own tally is exact."""
        return min(self.target - self.used - under_way, self.asks_left())

    def asks_left(self) -> int:
        return self.max_trials - self.asked if self.max_trials is not None else 1 << 62

    def budget_left_shared(self, trials: list[FrozenTrial]) -> int:
        """With other drivers, recounted from the study: every RUNNING trial counts, whether it is
        being priced or trained (the rule ``is_surplus`` applies, so a driver never asks for a
        trial it would then have to release)."""
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        asks_left = self.max_trials - len(trials) if self.max_trials is not None else 1 << 62
        return min(self.target - budget_used(trials) - running, asks_left)

    def is_surplus(self, number: int, trials: list[FrozenTrial]) -> bool:
        """Trial numbers are handed out in order: trial ``number`` may train only if fewer than
        ``target`` lower-numbered trials have used the budget or may still use it (RUNNING)."""
        ahead = sum(1 for t in trials if t.number < number and (uses_budget(t) or t.state == TrialState.RUNNING))
        if ahead < self.target:
            return False
        self.stalls += 1
        return True
