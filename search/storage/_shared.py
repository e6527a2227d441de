"""Several drivers on one server database: heartbeats that tell a dead driver's trials from live
ones, re-queueing the trials of a driver that stopped beating (or died before its first beat), and
the budget lock."""
from __future__ import annotations

import contextlib
import hashlib
import threading
from datetime import datetime, timedelta
from typing import Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.lineage import requeue
from search.record import TrialStatus
from search.storage import _optuna_compat as compat

__all__ = ["Heartbeat", "budget_lock", "requeue_stale_trial", "reap_stale_trials", "GRACE_BEATS"]

GRACE_BEATS = 6  # heartbeats a trial may miss before it is stale
_STOPPED = "its driver stopped (no heartbeat)"
_INTERRUPTED = {"status": TrialStatus.INTERRUPTED.value, "failure_reason": f"interrupted: {_STOPPED}"}


class Heartbeat:
    """Records a heartbeat for each trial ``running()`` returns, every interval the storage sets
    (none on SQLite, where one driver holds the study's lock and needs none).

    Args:
        study: the study on the shared database.
        running: the trials this driver holds at the moment (asked, priced or training).
    """

    def __init__(self, study: optuna.Study, running: Callable[[], list]):
        self.study, self.running = study, running
        self.interval = compat.heartbeat_interval(study)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True) if self.interval else None

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            for trial in self.running():
                try:
                    compat.record_heartbeat(self.study, trial)
                except Exception:  # a missed beat is retried at the next interval
                    pass

    def __enter__(self) -> "Heartbeat":
        if self.thread:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=5)


@contextlib.contextmanager
def budget_lock(study: optuna.Study, url: str | None = None) -> Iterator[None]:
    """Serialises "count the budget, then ask" between drivers sharing a PostgreSQL study.

    Without it two drivers can both see the last slot free and both ask: the later trial must then
    be released as surplus. A session-level advisory lock, keyed by the study name, held from the
    count until the new trial exists (RUNNING, so the other driver counts it). Other databases
    have no such lock here; there the policy's surplus check resolves the race after the fact."""
    engine = compat.rdb_engine(study, url)
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    import sqlalchemy

    key = int.from_bytes(hashlib.sha1(f"effnas:{study.study_name}".encode()).digest()[:8], "big") >> 1
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            conn.commit()


def requeue_stale_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    """A trial whose driver stopped beating: queued again with its whole lineage (``search.lineage``);
    False when it drew nothing and carries no lineage (nothing to repeat)."""
    return requeue(study, trial, trial.user_attrs.get("attempt", 0), reason=_STOPPED)


def _stale(study: optuna.Study, running: list[FrozenTrial]) -> list[FrozenTrial]:
    """Of the RUNNING trials ``running``, those whose driver stopped: no heartbeat for the grace
    period, or none ever and started longer ago than that (the driver died between asking for the
    trial and its first beat; a live driver beats within milliseconds of asking)."""
    interval = compat.heartbeat_interval(study)
    ages = compat.heartbeat_ages(study, [compat.trial_id(t) for t in running]) if interval else None
    if ages is None:
        return []
    grace = GRACE_BEATS * interval
    unbeaten_before = datetime.now() - timedelta(seconds=grace)

    def stopped(t: FrozenTrial) -> bool:
        age = ages.get(compat.trial_id(t))
        if age is not None:
            return age > grace
        return t.datetime_start is not None and t.datetime_start < unbeaten_before

    return [t for t in running if stopped(t)]


def reap_stale_trials(study: optuna.Study, url: str | None = None) -> int:
    """Queue again, then fail, every trial whose driver stopped (see ``_stale``); returns how many
    were queued. Under the budget lock, so no driver counts the budget between a stale trial's
    end and its copy's queueing (it would ask a new trial in the slot the copy then finds taken);
    the copy first, so a reaper killed in between leaves the trial RUNNING with its copy queued,
    which the next reaper only fails (one copy per trial, as on SQLite's recovery)."""
    with budget_lock(study, url):
        trials = study.get_trials(deepcopy=False)
        stale = _stale(study, [t for t in trials if t.state == TrialState.RUNNING])
        copied = {t.user_attrs.get("retry_of") for t in trials}
        queued = 0
        for t in stale:
            if t.number not in copied:
                queued += bool(requeue_stale_trial(study, t))
            compat.fail_if_running(study, t, _INTERRUPTED)
    return queued
