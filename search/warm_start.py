"""Warm start: another study's trained trials in this study's history, without training them again.

``warm_start: {storage: URL, study: NAME}`` in a study file. Before the sweep asks for anything, every
trial of the source study that trained at the same fidelity, on the same data shape, of a family
this study searches, with parameters inside this study's knob ranges and within its constraints, is
added as a finished trial (status ``imported``): the sampler learns from it, the dedup never trains
its architecture again, it does not use this study's budget, and it may sit on the front (it is a
real result at this fidelity). Each run imports only what an earlier run has not; the log line says
how many came in and why the rest did not: a trial that cannot be imported, for whatever reason (a
value outside this study's narrower choices, a record it cannot read), is a counted skip, never an
error that stops the run.

The source is someone else's study: an SQLite source is opened read-only (no WAL switch, no side
files, no write of any kind), a server database through Optuna as usual.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search.exceptions import StorageError, StudyFileError
from search.feasibility import cost_constraints, is_feasible
from search.record import TrialStatus, read_record, trial_status

__all__ = ["ImportReport", "check_source", "import_trials", "IMPORTED_FROM"]

IMPORTED_FROM = "imported_from"  # user attribute: {"storage", "study", "number"} of the source trial


@dataclass
class ImportReport:
    source: str
    imported: int = 0
    already: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def message(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return (f"warm start from study {self.source!r}: imported {self.imported} trained trial(s)"
                + (f", {self.already} imported by an earlier run" if self.already else "")
                + (f"; skipped {sum(self.skipped.values())}: {why}" if self.skipped else ""))


def _read_only_sqlite(url: str, path: Path, name: str) -> optuna.Study:
    """The study ``name`` of the SQLite file ``path``, opened read-only: every connection is
    ``mode=ro``, so nothing (no journal-mode switch, no table, no -wal/-shm side file of a file not
    in WAL mode already) is written to another study's file."""
    import sqlite3
    import warnings

    if not path.is_file():
        raise StorageError(f"no study database at {path}")
    uri = f"{path.resolve().as_uri()}?mode=ro"

    def connect():
        return sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs={"creator": connect}, skip_table_creation=True)
        names = [s.study_name for s in storage.get_all_studies()]
    except Exception as e:  # SQLAlchemy and Optuna raise many kinds; the cause is what matters
        cause = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise StorageError(f"{path} is not a readable study database ({cause})") from None
    if name not in names:
        raise StorageError(f"{url!r} holds no study {name!r}; studies there: {names}")
    return optuna.load_study(study_name=name, storage=storage)


def _source(cfg) -> optuna.Study:
    from search.storage import load_existing_study, sqlite_path

    w = cfg.warm_start
    if w.study == cfg.study and w.storage == cfg.storage_url:
        raise StudyFileError(cfg.path, "warm_start.study", "names this study itself; name another study")
    path = sqlite_path(w.storage)
    try:
        if path is not None:
            return _read_only_sqlite(w.storage, path, w.study)
        return load_existing_study(w.storage, w.study)
    except StorageError as e:
        raise StudyFileError(cfg.path, "warm_start", f"cannot import from study {w.study!r} ({e}); point "
                                                     f"warm_start.storage and warm_start.study at a study that has run") from None


def check_source(cfg) -> None:
    """The source study exists and opens (before anything is written)."""
    _source(cfg)


def _in_space(distribution, value) -> bool:
    """Whether ``value`` is one of this study's values of the knob; a value the distribution cannot
    even represent (a categorical choice this study left out: Optuna raises ``'4' not in (1, 2)``)
    is simply outside."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError, KeyError, IndexError, OverflowError):
        return False


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _skip_reason(t: FrozenTrial, rec, cfg, spaces: dict, fidelity: dict, data_meta: dict) -> str | None:
    if t.state != TrialState.COMPLETE or trial_status(t) != TrialStatus.TRAINED:
        return "not trained to full fidelity there"
    if rec.fidelity != fidelity:
        return "trained at another fidelity"
    shape = {k: getattr(rec, k) for k in ("num_classes", "image_size", "in_channels")}
    if shape != {k: data_meta[k] for k in shape}:
        return "trained on another data shape"
    if rec.family not in spaces:
        return "of a family this study does not search"
    space = spaces[rec.family]
    for name, value in t.params.items():
        if name != "family" and (name not in space or not _in_space(space[name], value)):
            return "outside this study's knob ranges"
    if not _finite(rec.val_acc, rec.macs, rec.params):
        return "missing accuracy or costs"
    if "latency" in cfg.objectives and not _finite(rec.latency_ms):
        return "without a measured latency"
    if not is_feasible(cost_constraints(cfg, {"macs": rec.macs, "params": rec.params})):
        return "over this study's constraints"
    return None


def _imported_trial(t: FrozenTrial, rec, cfg, spaces: dict) -> FrozenTrial:
    families = CategoricalDistribution(tuple(sorted(spaces)))
    distributions = {name: families if name == "family" else spaces[rec.family][name] for name in t.params}
    values = {"accuracy": rec.val_acc, "macs": rec.macs, "params": rec.params, "latency": rec.latency_ms}
    constraints = cost_constraints(cfg, {"macs": rec.macs, "params": rec.params})
    origin = {"storage": cfg.warm_start.storage, "study": cfg.warm_start.study, "number": t.number}
    record = rec.with_outcome(**{IMPORTED_FROM: origin})
    return optuna.trial.create_trial(
        params=dict(t.params), distributions=distributions,
        values=[float(values[o]) for o in cfg.objectives],
        user_attrs={"status": TrialStatus.IMPORTED.value, "family": rec.family,
                    "constraints": list(constraints.values()) or [0.0], "record": record.to_dict(),
                    IMPORTED_FROM: origin})


def _importable(t: FrozenTrial, cfg, spaces: dict, fidelity: dict, data_meta: dict,
                known: set) -> tuple[str | None, FrozenTrial | None]:
    """(why ``t`` is not imported, None) or (None, the trial to add): whatever is wrong with one
    source trial makes it a counted skip, never an error that stops the run."""
    try:
        rec = read_record(t)
    except Exception:  # a record written by some other tool or version
        return "with a record this study cannot read", None
    try:
        reason = _skip_reason(t, rec, cfg, spaces, fidelity, data_meta)
    except Exception:  # a malformed field (a string for a count, ...)
        return "with a record this study cannot read", None
    if reason is None and rec.arch_key in known:
        reason = "an architecture this study has already"
    if reason is not None:
        return reason, None
    try:
        return None, _imported_trial(t, rec, cfg, spaces)
    except Exception:  # Optuna refuses the values or parameters as a finished trial of this study
        return "not valid as a finished trial of this study", None


def import_trials(cfg, study: optuna.Study, spaces: dict, fidelity: dict, data_meta: dict) -> ImportReport:
    """Add the source study's usable trained trials to ``study`` (see the module docstring)."""
    source = _source(cfg)
    report = ImportReport(cfg.warm_start.study)
    mine = study.get_trials(deepcopy=False)
    done = {(o.get("study"), o.get("number")) for o in (t.user_attrs.get(IMPORTED_FROM) for t in mine) if o}
    known = {read_record(t).arch_key for t in mine
             if trial_status(t) in (TrialStatus.TRAINED, TrialStatus.STOPPED, TrialStatus.IMPORTED)}
    new = []
    for t in source.get_trials(deepcopy=False):
        if (cfg.warm_start.study, t.number) in done:
            report.already += 1
            continue
        reason, trial = _importable(t, cfg, spaces, fidelity, data_meta, known)
        if reason is not None:
            report.skipped[reason] += 1
            continue
        known.add(trial.user_attrs["record"].get("arch_key"))
        new.append(trial)
    if new:
        study.add_trials(new)
    report.imported = len(new)
    return report
