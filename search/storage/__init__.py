"""The study database: opening and creating studies, the sampler, SQLite's lock and WAL, and what
several drivers on one server database need (heartbeats, re-queueing, the budget lock).

Everything a sweep knows lives in the study database (see ``search.record`` for the trial
record); resuming, deduplication, rungs, ``status`` and ``export`` are all rebuilt from it. Every
use of Optuna's private API is in ``_optuna_compat``.
"""
from __future__ import annotations

import dataclasses
import os
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from search.config import StudyConfig
from search.exceptions import StorageError, StudyFileError
from search.storage import _optuna_compat as compat
from search.storage._optuna_compat import NATIVE_CONSTRAINTS, params_in_one_write, set_constraints
from search.storage._optuna_compat import stale_trial_callback_kwargs as _stale_kwargs
from search.storage._shared import GRACE_BEATS, Heartbeat, budget_lock, reap_stale_trials, requeue_stale_trial
from search.storage._sqlite import DriverLock, driver_holds, prepare_sqlite, study_names_in_file, tune_sqlite
from search.storage._reader import StoredTrial, read_params, read_trials
from search.storage._urls import display_url, sqlite_path

__all__ = ["open_storage", "open_study", "load_existing_study", "make_sampler", "check_existing_database",
           "sqlite_path", "display_url", "DriverLock", "Heartbeat", "budget_lock", "params_in_one_write",
           "set_constraints", "driver_holds", "read_trials", "read_params", "StoredTrial", "HEARTBEAT_S",
           "reap_stale_trials"]

HEARTBEAT_S = 5  # seconds between heartbeats on a shared database; a trial is stale after GRACE_BEATS missed


def _constraints_of(trial) -> list[float]:
    return list(trial.user_attrs.get("constraints", [0.0]))


def make_sampler(cfg: StudyConfig, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler; constrained samplers learn from the stored constraint values.

    Drivers sharing a server database would propose the very same sequence with one seed, so each
    one offsets it by its process id there; a single SQLite driver keeps the seed as written, offset
    by ``resumed_at`` (the trials the study already holds): a resumed or extended study would
    otherwise replay the first run's draws, which are all duplicates by then. The sequence still
    depends only on the seed and the study's history.

    Raises:
        StudyFileError: ``sampler.options`` holds an option the sampler does not take.
    """
    s = cfg.sampler
    if s.seed is not None and sqlite_path(cfg.storage_url) is None:
        s = dataclasses.replace(s, seed=s.seed + os.getpid())
    elif s.seed is not None and resumed_at:
        s = dataclasses.replace(s, seed=s.seed + resumed_at)
    from search.config import SAMPLER_DEFAULT_OPTIONS

    opts = {**SAMPLER_DEFAULT_OPTIONS.get(s.name, {}), **s.options}
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
        with warnings.catch_warnings():  # multivariate and constant_liar are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return builders[s.name]()
    except TypeError as e:
        raise StudyFileError(cfg.path, "sampler.options", str(e)) from e


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


def open_storage(url: str, create: bool) -> optuna.storages.RDBStorage:
    """RDB storage with a generous busy timeout; errors become one clear StorageError."""
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.exists():
            raise StorageError(f"no study database at {path}; run `python -m search run` on the study first")
        prepare_sqlite(path)
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if path is not None else {"pool_pre_ping": True}
    # Several drivers may share a server database: heartbeats tell a dead driver's trials apart.
    shared = {} if path is not None else {"heartbeat_interval": HEARTBEAT_S,
                                          "grace_period": GRACE_BEATS * HEARTBEAT_S,
                                          **_stale_kwargs(requeue_stale_trial)}
    try:
        storage = _create_rdb_storage(url, engine_kwargs, shared)
    except Exception as e:  # SQLAlchemy raises many kinds; the user needs only the URL and the cause
        raise StorageError(_cannot_open(url, e)) from e
    if path is not None:
        tune_sqlite(storage)
    compat.register_engine(url, storage)
    return storage


def _other_study_error(cfg: StudyConfig, names: list[str]) -> StorageError:
    return StorageError(
        f"{cfg.path}: storage {cfg.storage_url!r} holds the study/studies {names}, not {cfg.study!r}; "
        f"point `storage:` at this study's own file (or remove it to use runs/{cfg.study}/study.db)")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cannot_open(url: str, e: Exception) -> str:
    cause = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    if "DB access module" in cause or isinstance(e, ModuleNotFoundError):
        cause = "its database driver is not installed (PostgreSQL: pip install 'effnas[postgres]')"
    return f"cannot open the study database {display_url(url)!r}: {cause.replace(url, display_url(url))}"


def _check_server_reachable(cfg: StudyConfig) -> None:
    """A server database answers (one connection, nothing written)."""
    if cfg.storage_url.startswith("sqlite"):
        return
    import sqlalchemy

    url = cfg.storage_url
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # SQLAlchemy raises many kinds; the user needs only the URL and the cause
        raise StorageError(f"{cfg.path}: storage: {_cannot_open(url, e)}") from e


def check_existing_database(cfg: StudyConfig) -> None:
    """An SQLite study file must be creatable (a file or nothing, in a writable place) and, if it
    exists, hold this study (or none): refused before anything, even a lock file, is written."""
    path = sqlite_path(cfg.storage_url)
    if path is None:
        _check_server_reachable(cfg)
        return
    fix = "set `storage:` or `run_dir:` in the study file to a writable place"
    if path.is_dir():
        raise StorageError(f"{cfg.path}: storage {display_url(cfg.storage_url)!r} is a folder, not a database file; {fix}")
    base = _nearest_existing(path.parent)
    try:  # a probe folder, removed at once (os.access says yes to root even where nothing can be created)
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".effnas-probe-"))
    except OSError as e:
        raise StorageError(f"{cfg.path}: cannot create the study database {path}: {base} is not a writable "
                           f"folder ({e.strerror}); {fix}") from None
    if not path.exists():
        return
    names = study_names_in_file(path, cfg.path)
    if names and cfg.study not in names:
        raise _other_study_error(cfg, names)


def open_study(cfg: StudyConfig, create: bool = True,
               sampler: optuna.samplers.BaseSampler | None = None, single_writer: bool = False) -> optuna.Study:
    """Create or load the study named in ``cfg`` and check its objectives match the file's.

    Args:
        cfg: the study file.
        create: create the database if it does not exist.
        sampler: the study's sampler when the caller has built it already (else built here).
        single_writer: this process alone writes the study (the driver of an SQLite study, holding
            its lock): its cache then reads a trial again only after writing to it.
    """
    try:
        storage = open_storage(cfg.storage_url, create=create)
    except StorageError as e:
        raise StorageError(f"{cfg.path}: storage: {e}") from e
    names = [s.study_name for s in storage.get_all_studies()]
    if single_writer and sqlite_path(cfg.storage_url) is not None:
        storage = compat.single_writer_cache(storage)
    if names and cfg.study not in names and sqlite_path(cfg.storage_url) is not None:
        raise _other_study_error(cfg, names)
    try:
        study = optuna.create_study(study_name=cfg.study, storage=storage, directions=cfg.directions,
                                    sampler=sampler or make_sampler(cfg), load_if_exists=True)
    except Exception as e:
        raise StorageError(f"cannot open study {cfg.study!r} in {display_url(cfg.storage_url)!r}: {e}") from e
    stored = study.user_attrs.get("objectives")
    if stored is None:
        study.set_user_attr("objectives", list(cfg.objectives))
    elif list(stored) != list(cfg.objectives):
        raise StorageError(f"{cfg.path}: objectives {list(cfg.objectives)} differ from those the study "
                           f"{cfg.study!r} was created with ({stored}); start a new study name instead")
    if cfg.measures_latency:
        _check_latency_setup(study, cfg)
    return study


_LATENCY_IDENTITY = ("runtime", "threads", "batch", "device")  # what makes two latencies comparable


def _check_latency_setup(study: optuna.Study, cfg) -> None:
    """Latencies of one study are measured one way: a resumed study keeps its runtime, threads, batch."""
    resolved = cfg.latency_setup()
    setup = {k: resolved[k] for k in _LATENCY_IDENTITY}
    stored = study.user_attrs.get("latency_setup")
    if stored is None:
        study.set_user_attr("latency_setup", setup)
    elif {k: stored.get(k) for k in _LATENCY_IDENTITY} != setup:
        raise StorageError(f"{cfg.path}: latency {setup} differs from how the study {cfg.study!r} measured its "
                           f"latencies ({stored}); they would not compare: set latency: back, or start a new study name")


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
