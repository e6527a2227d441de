"""Warm start: another study's trained trials in this study's history, without training them again.

``warm_start: {storage: URL, study: NAME}`` in a study file. Before the sweep asks for anything, every
trial of the source study that trained at the same fidelity, on the same data shape, of a family
this study searches, with parameters inside this study's knob ranges and within its constraints, is
added as a finished trial (status ``imported``): the sampler learns from it, the dedup never trains
its architecture again, it does not use this study's budget, and it may sit on the front (it is a
real result at this fidelity). Each run imports only what an earlier run has not; the log line says
how many came in and why the rest did not.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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


def _source(cfg) -> optuna.Study:
    from search.storage import load_existing_study

    w = cfg.warm_start
    if w.study == cfg.study and w.storage == cfg.storage_url:
        raise StudyFileError(cfg.path, "warm_start.study", "names this study itself; name another study")
    try:
        return load_existing_study(w.storage, w.study)
    except StorageError as e:
        raise StudyFileError(cfg.path, "warm_start", f"cannot import from study {w.study!r} ({e}); point "
                                                     f"warm_start.storage and warm_start.study at a study that has run") from None


def check_source(cfg) -> None:
    """The source study exists and opens (before anything is written)."""
    _source(cfg)


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
        if name != "family" and (name not in space or not space[name]._contains(space[name].to_internal_repr(value))):
            return "outside this study's knob ranges"
    if rec.val_acc is None or rec.macs is None or rec.params is None:
        return "missing accuracy or costs"
    if "latency" in cfg.objectives and rec.latency_ms is None:
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
        rec = read_record(t)
        reason = _skip_reason(t, rec, cfg, spaces, fidelity, data_meta)
        if reason is None and rec.arch_key in known:
            reason = "an architecture this study has already"
        if reason is not None:
            report.skipped[reason] += 1
            continue
        known.add(rec.arch_key)
        new.append(_imported_trial(t, rec, cfg, spaces))
    if new:
        study.add_trials(new)
    report.imported = len(new)
    return report
