"""Several drivers on one server database: heartbeats that tell a dead driver's trials from live
ones, re-queueing the trials of a driver that stopped beating, and the budget lock."""
from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import Callable, Iterator

import optuna
from optuna.trial import FrozenTrial

from search.lineage import requeue
from search.storage import _optuna_compat as compat

__all__ = ["Heartbeat", "budget_lock", "requeue_stale_trial"]


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


def requeue_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose driver stopped beating: queued again with its whole lineage (``search.lineage``)."""
    requeue(study, trial, trial.user_attrs.get("attempt", 0), reason="its driver stopped (no heartbeat)")
