"""The Optuna study: storage, sampler, and the trial record that is the sweep's single source of truth.

Everything a sweep knows lives in the study database: each trial's parameters (family and knobs under
stable hierarchical names), its objective values, and user attributes (the record below). Resuming,
deduplication, ASHA rungs, ``status`` and ``export`` are all rebuilt from it.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import random
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import StudyConfig
from search.errors import StorageError

__all__ = [
    "arch_key", "open_storage", "open_study", "load_existing_study", "make_sampler", "sqlite_path",
    "trial_status", "record", "set_constraints", "check_existing_database", "display_url", "params_in_one_write",
    "budget_lock",
]

# The trial record (user attributes; database keys, never rename):
#   status       trained | stopped (ASHA) | infeasible | duplicate | failed
#   family       the family name
#   constraints  values <= 0 mean feasible (Optuna's convention); read by constrained samplers
#   final        on failed trials: no retry follows
#   record       everything else in one write: knobs, arch_key (dedup key of family + knobs +
#                fidelity), fidelity, params/macs of both forms, data shape, accuracies, epochs,
#                seconds, latency, checkpoint folder, node, failure_reason, curve
_CONSTRAINTS_ATTR = "constraints"


def arch_key(family: str, knobs: dict, fidelity: dict) -> str:
    blob = json.dumps({"family": family, "knobs": knobs, "fidelity": fidelity}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def display_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def sqlite_path(url: str) -> Path | None:
    """File of an ``sqlite:///`` URL, or None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):].split("?")[0]
    return Path(rest) if rest and rest != ":memory:" else None


NATIVE_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


def set_constraints(trial: optuna.Trial, values: dict[str, float]) -> None:
    """Store constraint values (<= 0 feasible) where the study's sampler will read them."""
    if NATIVE_CONSTRAINTS:
        for key, value in values.items():
            trial.set_constraint(key, value)


def _constraints_of(trial: FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get(_CONSTRAINTS_ATTR, [0.0]))


def make_sampler(cfg: StudyConfig) -> optuna.samplers.BaseSampler:
    """The study's sampler; constrained samplers learn from the stored constraint values.

    Drivers sharing a server database would propose the very same sequence with one seed, so each
    one offsets it by its process id there; a single SQLite driver keeps the seed as written."""
    s = cfg.sampler
    if s.seed is not None and sqlite_path(cfg.storage_url) is None:
        import dataclasses
        import os

        s = dataclasses.replace(s, seed=s.seed + os.getpid())
    opts = dict(s.options)
    # Optuna >= 5 reads constraints stored with Trial.set_constraint; older ones need a function.
    constrained = {} if NATIVE_CONSTRAINTS else {"constraints_func": _constraints_of}
    builders = {
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=s.seed, **constrained, **opts),
        "nsga3": lambda: optuna.samplers.NSGAIIISampler(seed=s.seed, **constrained, **opts),
        "tpe": lambda: optuna.samplers.TPESampler(seed=s.seed, **constrained, **opts),
        "gp": lambda: optuna.samplers.GPSampler(seed=s.seed, **constrained, **opts),
        "random": lambda: optuna.samplers.RandomSampler(seed=s.seed, **opts),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=s.seed, **opts),
        "bruteforce": lambda: optuna.samplers.BruteForceSampler(seed=s.seed, **opts),
    }
    try:
        return builders[s.name]()
    except TypeError as e:
        raise StorageError(f"{cfg.path}: sampler.options: {e}") from None


def _prepare_sqlite(path: Path) -> None:
    """Create the folder and switch the file to WAL, so readers never block the writing driver."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=60) as con:
            con.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as e:
        raise StorageError(f"cannot create the study database {path}: {e}; "
                           f"set `storage:` or `run_dir:` in the study file to a writable place") from None


def open_storage(url: str, create: bool) -> optuna.storages.RDBStorage:
    """RDB storage with a generous busy timeout; errors become one clear StorageError."""
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.exists():
            raise StorageError(f"no study database at {path}; run `python -m search run` on the study first")
        _prepare_sqlite(path)
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if path is not None else {"pool_pre_ping": True}
    # Several drivers may share a server database: heartbeats tell a dead driver's trials apart.
    shared = {} if path is not None else {"heartbeat_interval": HEARTBEAT_S, "grace_period": 6 * HEARTBEAT_S,
                                          _STALE_CALLBACK_ARG: requeue_stale_trial}
    try:
        storage = _create_rdb_storage(url, engine_kwargs, shared)
    except Exception as e:  # SQLAlchemy raises many kinds; the user needs only the URL and the cause
        cause = str(e).splitlines()[0][:300]
        if "DB access module" in cause:
            cause = "its database driver is not installed (PostgreSQL: pip install 'effnas[postgres]')"
        raise StorageError(f"cannot open the study database {display_url(url)!r}: {cause.replace(url, display_url(url))}") from None
    if path is not None:
        _tune_sqlite(storage)
    return storage


# Two drivers starting together on an empty server database both create Optuna's tables; the
# loser sees a unique-key or "already exists" error. The tables are there then: open again.
_SCHEMA_RACE_MARKERS = ("already exists", "duplicate key", "UniqueViolation", "Duplicate entry")
_SCHEMA_RACE_TRIES = 6


def _create_rdb_storage(url: str, engine_kwargs: dict[str, Any], shared: dict[str, Any]):
    for attempt in range(_SCHEMA_RACE_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **shared)
        except Exception as e:
            lost_race = any(marker in str(e) for marker in _SCHEMA_RACE_MARKERS)
            if not lost_race or attempt == _SCHEMA_RACE_TRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
    raise AssertionError("unreachable")


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


def _write_params(storage, params: list[tuple]) -> None:
    """Store one trial's drawn parameters in one transaction where the storage is Optuna's cached
    RDB storage; one by one (Optuna's public path) anywhere else.

    The batched path keeps Optuna's checks: the trial must still be updatable, and a parameter's
    distribution must be compatible with the one the study already knows under that name (a name
    the driver has not cached yet goes through Optuna's own per-parameter routine, which looks it
    up). The rest become one multi-row insert: a SELECT plus an INSERT per parameter otherwise."""
    backend = getattr(storage, "_backend", None)
    batched = (params and isinstance(backend, optuna.storages.RDBStorage) and hasattr(backend, "_set_trial_param_without_commit")
               and hasattr(storage, "_studies") and hasattr(storage, "_trial_id_to_study_id_and_number")
               and len({p[0] for p in params}) == 1)
    if not batched:
        for p in params:
            storage.set_trial_param(*p)
        return
    import sqlalchemy
    from optuna.distributions import check_distribution_compatibility, distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    trial_id = params[0][0]
    with storage._lock:
        known = storage._studies[storage._trial_id_to_study_id_and_number[trial_id][0]].param_distribution
        rows = []
        with _create_scoped_session(backend.scoped_session, True) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            backend.check_trial_is_updatable(trial_id, trial.state)
            for _, name, internal, distribution in params:
                if name not in known:
                    backend._set_trial_param_without_commit(session, trial_id, name, internal, distribution)
                    continue
                check_distribution_compatibility(known[name], distribution)
                rows.append({"trial_id": trial_id, "param_name": name, "param_value": internal,
                             "distribution_json": distribution_to_json(distribution)})
            if rows:
                session.execute(sqlalchemy.insert(models.TrialParamModel), rows)
        for _, name, _, distribution in params:
            known.setdefault(name, distribution)


@contextlib.contextmanager
def params_in_one_write(trial: optuna.Trial):
    """Within the block, the parameters ``trial`` suggests reach the database together at its end.

    The trial sees its own draws at once (Optuna keeps them on the trial object); a driver killed
    inside the block leaves a trial without parameters, which resuming fails without re-queueing."""
    storage, buffer = trial.storage, _ParamBuffer(trial.storage)
    trial.storage = buffer
    try:
        yield
    finally:
        trial.storage = storage
        _write_params(storage, buffer.params)


@contextlib.contextmanager
def budget_lock(study: optuna.Study) -> Iterator[None]:
    """Serialises "count the budget, then ask" between drivers sharing a PostgreSQL study.

    Without it two drivers can both see the last slot free and both ask: the later trial must then
    be released as surplus. A session-level advisory lock, keyed by the study name, held from the
    count until the new trial exists (RUNNING, so the other driver counts it). Other databases
    have no such lock here; there ``Sweep._is_surplus`` resolves the race after the fact."""
    backend = getattr(study._storage, "_backend", study._storage)
    engine = getattr(backend, "engine", None)
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


HEARTBEAT_S = 5
# Optuna 4.9 renamed the stale-trial callback argument.
_STALE_CALLBACK_ARG = ("heartbeat_stale_trial_callback"
                       if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                       else "failed_trial_callback")


def requeue_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose driver stopped beating: queue its parameters again (same rule as on SQLite)."""
    if not trial.params:
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number,
                                                  "attempt": trial.user_attrs.get("attempt", 0),
                                                  "retry_reason": "its driver stopped (no heartbeat)"},
                        skip_if_exists=False)


def _set_pragmas(dbapi_connection, _record) -> None:
    # WAL with synchronous=NORMAL: commits survive a killed process (not a power cut) and cost no
    # fsync each, which is most of the per-write time of a sweep's many small writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _tune_sqlite(storage) -> None:
    import sqlalchemy

    sqlalchemy.event.listen(storage.engine, "connect", _set_pragmas)
    storage.engine.dispose()  # connections opened before the listener reconnect with the pragmas


def _check_study_names(storage, cfg: StudyConfig) -> None:
    names = [s.study_name for s in storage.get_all_studies()]
    if names and cfg.study not in names and sqlite_path(cfg.storage_url) is not None:
        raise StorageError(
            f"{cfg.path}: storage {cfg.storage_url!r} holds the study/studies {names}, not {cfg.study!r}; "
            f"point `storage:` at this study's own file (or remove it to use runs/{cfg.study}/study.db)")


def check_existing_database(cfg: StudyConfig) -> None:
    """An existing SQLite file must hold this study (or none): refuse another study's database
    before anything, even a lock file, is written next to it."""
    path = sqlite_path(cfg.storage_url)
    if path is None or not path.exists():
        return
    try:  # read-only: not even WAL side files may appear next to someone else's database
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60) as con:
            names = [row[0] for row in con.execute("SELECT study_name FROM studies")]
    except sqlite3.Error as e:
        raise StorageError(f"{cfg.path}: storage: {path} is not a readable study database ({e})") from None
    if names and cfg.study not in names:
        raise StorageError(
            f"{cfg.path}: storage {cfg.storage_url!r} holds the study/studies {names}, not {cfg.study!r}; "
            f"point `storage:` at this study's own file (or remove it to use runs/{cfg.study}/study.db)")


def open_study(cfg: StudyConfig, create: bool = True) -> optuna.Study:
    """Create or load the study named in ``cfg`` and check its objectives match the file's."""
    try:
        storage = open_storage(cfg.storage_url, create=create)
    except StorageError as e:
        raise StorageError(f"{cfg.path}: storage: {e}") from None
    _check_study_names(storage, cfg)
    try:
        study = optuna.create_study(study_name=cfg.study, storage=storage, directions=cfg.directions,
                                    sampler=make_sampler(cfg), load_if_exists=True)
    except Exception as e:
        raise StorageError(f"cannot open study {cfg.study!r} in {display_url(cfg.storage_url)!r}: {e}") from None
    stored = study.user_attrs.get("objectives")
    if stored is None:
        study.set_user_attr("objectives", list(cfg.objectives))
    elif list(stored) != list(cfg.objectives):
        raise StorageError(f"{cfg.path}: objectives {list(cfg.objectives)} differ from those the study "
                           f"{cfg.study!r} was created with ({stored}); start a new study name instead")
    return study


def load_existing_study(url: str, name: str | None) -> optuna.Study:
    """Open a study for reading (status/export); ``name`` may be omitted when the file holds one."""
    storage = open_storage(url, create=False)
    names = [s.study_name for s in storage.get_all_studies()]
    if name is None:
        if len(names) != 1:
            raise StorageError(f"{url!r} holds {len(names)} studies {names}; name one")
        name = names[0]
    if name not in names:
        raise StorageError(f"{url!r} holds no study {name!r}; studies there: {names}")
    return optuna.load_study(study_name=name, storage=storage)


def trial_status(trial: FrozenTrial) -> str:
    """The record's status, with Optuna's own state for trials the record does not cover."""
    if trial.state == TrialState.RUNNING:
        return "running"
    if trial.state == TrialState.WAITING:
        return "waiting"
    if trial.state == TrialState.FAIL:
        return "failed"
    return trial.user_attrs.get("status", trial.state.name.lower())


def record(trial: FrozenTrial, key: str, default: Any = None) -> Any:
    return trial.user_attrs.get(key, default)
