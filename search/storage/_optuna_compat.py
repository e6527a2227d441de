"""Every use of Optuna's private API in effnas, in one place, each next to its public fallback.

What Optuna's public API cannot do, and where effnas reaches inside:

- ``storage_of``: a study's storage (``Study._storage``), for heartbeats and for failing a trial a
  dead driver left. No public equivalent exists.
- ``trial_id``: a trial's storage id (``_trial_id``), for heartbeats. No public equivalent.
- ``rdb_engine``: the SQLAlchemy engine behind a study (``_CachedStorage._backend``), for the
  PostgreSQL budget lock. Fallback: the engine registered when ``search.storage`` opened the
  storage (same object).
- ``params_in_one_write``: a trial's parameters in one transaction (``_CachedStorage`` internals,
  ``RDBStorage._set_trial_param_without_commit``, ``storages._rdb.models``, swapping
  ``Trial.storage``). Fallback: Optuna's per-parameter writes (same rows, slower).
- ``fail_trial``: user attributes and FAIL on a trial this driver holds no ``Trial`` for (storage
  setters by id). Fallback: an ``optuna.Trial`` for it (built from its id, see ``trial_id``) and
  ``Study.tell`` by number.
- ``heartbeat_ages``: how long ago each trial last beat, read from Optuna's ``trial_heartbeats``
  table with SQL (no API reads a heartbeat), through ``rdb_engine``: effnas reaps stale trials
  itself, under the budget lock, and also those that never beat (Optuna's stale check skips them).
- ``stale_trial_callback_kwargs``: the RDBStorage argument renamed in Optuna 4.9 (public either way,
  found by signature).
- ``set_user_attrs``: a trial's record attributes in one transaction (``RDBStorage`` internals).
  Fallback: ``Trial.set_user_attr`` for each.
- ``single_writer_cache``: a cache that reads an unfinished trial again only after this process
  wrote to it, for the driver of an SQLite study (``_CachedStorage`` internals,
  ``RDBStorage._get_trials``). Fallback: Optuna's own cache (same trials, slower with many in flight).

A future Optuna that renames a private piece only loses speed where a fallback exists; the two
without one would fail loudly in ``tests/test_optuna_compat.py``. That file runs every function
with and without ``FORCE_PUBLIC`` and compares the results.
"""
from __future__ import annotations

import contextlib
import inspect
import weakref
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

try:  # private: the cached RDB storage a single-writer cache builds on (see SingleWriterCache)
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
except ImportError:  # pragma: no cover - an Optuna without it keeps its own cache
    _CachedStorage, _StudyInfo = None, None

__all__ = ["storage_of", "trial_id", "rdb_engine", "register_engine", "params_in_one_write", "set_constraints",
           "stale_trial_callback_kwargs", "heartbeat_interval", "record_heartbeat", "heartbeat_ages",
           "fail_trial", "fail_if_running",
           "NATIVE_CONSTRAINTS", "single_writer_cache", "set_user_attrs"]

FORCE_PUBLIC = False

# Optuna >= 5 stores constraints with Trial.set_constraint (public); older ones read them through a
# sampler's ``constraints_func`` from our own ``constraints`` user attribute.
NATIVE_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


def storage_of(study: optuna.Study):
    """The study's storage object (private ``Study._storage``; there is no public accessor)."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage id of a trial (private ``_trial_id``; no public equivalent)."""
    return trial._trial_id


_ENGINES: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()


def register_engine(url: str, storage) -> None:
    """Remember the engine of an RDB storage this process opened (the public path to it)."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        _ENGINES[url] = engine


def rdb_engine(study: optuna.Study, url: str | None = None):
    """The SQLAlchemy engine behind the study, or None (in-memory storage, or no way to find it).

    Private: ``_CachedStorage._backend``. Fallback: the engine registered under ``url`` when the
    storage was opened; without either, None, and callers do without (the PostgreSQL budget lock
    then leaves the race to the surplus check)."""
    if not FORCE_PUBLIC:
        storage = storage_of(study)
        engine = getattr(getattr(storage, "_backend", storage), "engine", None)
        if engine is not None:
            return engine
    return _ENGINES.get(url) if url is not None else None


# --- parameters in one transaction ----------------------------------------------------------------

class _ParamBuffer:
    """Stands in for a trial's storage while its knobs are drawn: parameter writes are kept, all
    else goes through. A family's knobs are 10-20 parameters; one transaction instead of one each
    is most of the driver's database time per trial."""

    def __init__(self, storage):
        self._storage, self.params = storage, []

    def set_trial_param(self, trial_id: int, name: str, internal: float, distribution) -> None:
        self.params.append((trial_id, name, internal, distribution))

    def __getattr__(self, name: str):
        return getattr(self._storage, name)


def _can_batch(storage, params: list[tuple]) -> bool:
    backend = getattr(storage, "_backend", None)
    return (not FORCE_PUBLIC and bool(params) and isinstance(backend, optuna.storages.RDBStorage)
            and hasattr(backend, "_set_trial_param_without_commit") and hasattr(storage, "_studies")
            and hasattr(storage, "_trial_id_to_study_id_and_number") and len({p[0] for p in params}) == 1)


def _write_params(storage, params: list[tuple]) -> None:
    """Store one trial's drawn parameters in one transaction where the storage is Optuna's cached
    RDB storage; one by one (Optuna's public path) anywhere else.

    The batched path keeps Optuna's checks: the trial must still be updatable, and a parameter's
    distribution must be compatible with the one the study already knows under that name (a name
    the driver has not cached yet goes through Optuna's own per-parameter routine, which looks it
    up). The rest become one multi-row insert: a SELECT plus an INSERT per parameter otherwise.
    Private: ``_CachedStorage`` internals, ``RDBStorage._set_trial_param_without_commit``,
    ``storages._rdb.models`` and ``_create_scoped_session``."""
    if not _can_batch(storage, params):
        for p in params:
            storage.set_trial_param(*p)
        return
    import sqlalchemy
    from optuna.distributions import check_distribution_compatibility, distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    backend = storage._backend
    trial_id_ = params[0][0]
    with storage._lock:
        known = storage._studies[storage._trial_id_to_study_id_and_number[trial_id_][0]].param_distribution
        rows = []
        with _create_scoped_session(backend.scoped_session, True) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id_, session)
            backend.check_trial_is_updatable(trial_id_, trial.state)
            for _, name, internal, distribution in params:
                if name not in known:
                    backend._set_trial_param_without_commit(session, trial_id_, name, internal, distribution)
                    continue
                check_distribution_compatibility(known[name], distribution)
                rows.append({"trial_id": trial_id_, "param_name": name, "param_value": internal,
                             "distribution_json": distribution_to_json(distribution)})
            if rows:
                session.execute(sqlalchemy.insert(models.TrialParamModel), rows)
        for _, name, _, distribution in params:
            known.setdefault(name, distribution)
    if hasattr(storage, "wrote"):  # a single-writer cache re-reads the trial it did not see written
        storage.wrote(trial_id_)


@contextlib.contextmanager
def params_in_one_write(trial: optuna.Trial) -> Iterator[None]:
    """Within the block, the parameters ``trial`` suggests reach the database together at its end.

    The trial sees its own draws at once (Optuna keeps them on the trial object); a driver killed
    inside the block leaves a trial without parameters, which resuming fails without re-queueing.
    Private: swapping ``Trial.storage`` for the block. Fallback: Optuna's per-parameter writes."""
    if FORCE_PUBLIC or not hasattr(trial, "storage"):
        yield
        return
    storage, buffer = trial.storage, _ParamBuffer(trial.storage)
    trial.storage = buffer
    try:
        yield
    finally:
        trial.storage = storage
        _write_params(storage, buffer.params)


# --- one writer's cache ----------------------------------------------------------------------------

class SingleWriterCache(_CachedStorage or object):
    """Optuna's cached RDB storage for a study that only this process writes (SQLite under the
    driver's lock): an unfinished trial is read again only after this process wrote to it.

    Optuna's own cache cannot know who else writes, so every ``get_all_trials`` (every ``ask``, two
    or three per sampler call) reads every unfinished trial again: with 64 trials in flight that was
    most of the driver's time at thousands of trials (``bench/simulated_scale.py``). Every write goes
    through the setters below, or through ``_write_params``, and marks its trial.
    Private: ``_CachedStorage`` and its ``_studies``, ``_lock``, ``_add_trials_to_cache``,
    ``RDBStorage._get_trials``. Fallback: Optuna's cache (``open_study`` uses this only when the
    private names are there)."""

    def __init__(self, backend):
        super().__init__(backend)
        self._dirty: set[int] = set()
        self._seen: dict[int, int] = {}  # study id -> highest trial id read

    def wrote(self, trial_id: int) -> None:
        with self._lock:
            self._dirty.add(trial_id)

    def create_new_trial(self, study_id, template_trial=None):
        trial_id = super().create_new_trial(study_id, template_trial)
        self.wrote(trial_id)
        return trial_id

    def set_trial_param(self, trial_id, *args, **kwargs):
        super().set_trial_param(trial_id, *args, **kwargs)
        self.wrote(trial_id)

    def set_trial_state_values(self, trial_id, state, values=None):
        try:
            return super().set_trial_state_values(trial_id, state, values)
        finally:
            self.wrote(trial_id)

    def set_trial_intermediate_value(self, trial_id, step, intermediate_value):
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        self.wrote(trial_id)

    def set_trial_user_attr(self, trial_id, key, value):
        super().set_trial_user_attr(trial_id, key, value)
        self.wrote(trial_id)

    def set_trial_system_attr(self, trial_id, key, value):
        super().set_trial_system_attr(trial_id, key, value)
        self.wrote(trial_id)

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        with self._lock:
            if study_id in self._seen and not self._dirty:
                # Read once, nothing written since: the database holds nothing new. A sampler calls
                # this once per suggested parameter (TPE: 15-20 per architecture), so the skipped
                # queries were most of a proposal's cost.
                return
            if study_id not in self._studies:
                self._studies[study_id] = _StudyInfo()
            study, seen = self._studies[study_id], self._seen.get(study_id, -1)
            again = {t for t in self._dirty if t <= seen}
            trials = self._backend._get_trials(study_id, states=None, included_trial_ids=again,
                                               trial_id_greater_than=seen)
            self._dirty -= again | {t._trial_id for t in trials}
            self._seen.setdefault(study_id, seen)
            if not trials:
                return
            self._add_trials_to_cache(study_id, trials)
            for trial in trials:
                self._seen[study_id] = max(self._seen.get(study_id, -1), trial._trial_id)
                if trial.state.is_finished():
                    study.unfinished_trial_ids.discard(trial._trial_id)
                    study.last_finished_trial_id = max(study.last_finished_trial_id, trial._trial_id)
                else:
                    study.unfinished_trial_ids.add(trial._trial_id)


def single_writer_cache(storage):
    """``storage`` (an ``RDBStorage``) behind a :class:`SingleWriterCache`, or as it is when this
    Optuna lacks what the cache relies on (Optuna then wraps it in its own cache)."""
    needed = _CachedStorage is not None and all(
        hasattr(_CachedStorage, n) for n in ("_read_trials_from_remote_storage", "_add_trials_to_cache"))
    reads = inspect.signature(storage._get_trials).parameters if hasattr(storage, "_get_trials") else {}
    if FORCE_PUBLIC or not needed or not {"included_trial_ids", "trial_id_greater_than"} <= set(reads):
        return storage  # Optuna < 4.1 reads trials by exclusion: its own cache then
    return SingleWriterCache(storage)


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Several user attributes of a live trial in one transaction (a trial's record is five).
    Private: ``RDBStorage._set_trial_attr_without_commit``, ``_create_scoped_session``,
    ``storages._rdb.models``, ``Trial._cached_frozen_trial``. Fallback: ``Trial.set_user_attr`` for each (same rows, slower)."""
    storage = getattr(trial, "storage", None)
    backend = getattr(storage, "_backend", None)
    if FORCE_PUBLIC or not isinstance(backend, optuna.storages.RDBStorage) or \
            not hasattr(backend, "_set_trial_attr_without_commit"):
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    trial_id_ = trial_id(trial)
    with _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in attrs.items():
            backend._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id_, key, value)
    cached = getattr(trial, "_cached_frozen_trial", None)  # what the live trial answers from, as set_user_attr keeps it
    if cached is not None:
        cached.user_attrs.update(attrs)
    if hasattr(storage, "wrote"):
        storage.wrote(trial_id_)


# --- constraints, heartbeats, stale trials --------------------------------------------------------

def set_constraints(trial: optuna.Trial, values: dict[str, float]) -> None:
    """Store constraint values (<= 0 feasible) where the study's sampler will read them (public
    ``Trial.set_constraint`` on Optuna >= 5; older samplers read the ``constraints`` user attribute
    that the record always carries)."""
    if NATIVE_CONSTRAINTS:
        for key, value in values.items():
            trial.set_constraint(key, value)


# Optuna 4.9 renamed the stale-trial callback argument of RDBStorage.
_STALE_CALLBACK_ARG = ("heartbeat_stale_trial_callback"
                       if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                       else "failed_trial_callback")


def stale_trial_callback_kwargs(callback: Callable[[optuna.Study, FrozenTrial], None]) -> dict[str, Any]:
    """RDBStorage keyword for the callback run on each trial failed for a stopped heartbeat."""
    return {_STALE_CALLBACK_ARG: callback}


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats, or None when the storage keeps none."""
    getter = getattr(storage_of(study), "get_heartbeat_interval", None)
    return getter() if getter is not None else None


def record_heartbeat(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> None:
    storage = storage_of(study)
    if hasattr(storage, "record_heartbeat"):
        storage.record_heartbeat(trial_id(trial))


def heartbeat_ages(study: optuna.Study, ids: list[int], url: str | None = None) -> dict[int, float] | None:
    """Seconds since the last heartbeat of each of the storage ids ``ids`` that ever beat, by the
    database's clock (Optuna's ``trial_heartbeats`` table, read with SQL as Optuna's own stale check
    reads it, through :func:`rdb_engine`). None without an engine: nothing can be told stale."""
    engine = rdb_engine(study, url)
    if engine is None:
        return None
    if not ids:
        return {}
    import sqlalchemy

    query = sqlalchemy.text("SELECT trial_id, heartbeat FROM trial_heartbeats WHERE trial_id IN :ids").bindparams(
        sqlalchemy.bindparam("ids", expanding=True))
    with engine.connect() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one().replace(tzinfo=None)
        return {tid: (now - beat).total_seconds() for tid, beat in conn.execute(query, {"ids": list(ids)})}


def fail_if_running(study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any]) -> bool:
    """:func:`fail_trial` on a trial another driver left RUNNING; False when it was finished
    meanwhile (by its driver, late, or by another reaper)."""
    try:
        fail_trial(study, trial, attrs)
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        return False


def fail_trial(study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any]) -> None:
    """Write ``attrs`` as user attributes of a RUNNING trial this driver holds no ``Trial`` for,
    then mark it failed. Private: the storage's setters by trial id. Fallback: an ``optuna.Trial``
    for it (its id still comes from ``trial_id``) and ``Study.tell`` by trial number."""
    if FORCE_PUBLIC:
        live = optuna.Trial(study, trial_id(trial))
        for key, value in attrs.items():
            live.set_user_attr(key, value)
        study.tell(trial.number, state=TrialState.FAIL)
        return
    storage = storage_of(study)
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial._trial_id, key, value)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
