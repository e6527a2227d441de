"""The Pareto front of a study, computed from the database alone.

Only like is compared with like: members are trials that trained to full fidelity (status
``trained``, state COMPLETE, feasible). Infeasible proposals, duplicates (they mirror an original)
and trials ASHA stopped early are not on the front.
"""
from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.record import TrialRecord, TrialStatus, read_record, trial_status

__all__ = ["FrontMember", "front_candidates", "non_dominated", "pareto_front", "objectives_of"]


@dataclass(frozen=True)
class FrontMember:
    number: int
    family: str
    values: dict        # objective name -> value
    record: TrialRecord  # the trial's record (knobs, params, macs, accuracies, fidelity, ...)
    params: dict        # the Optuna parameters (to re-enqueue or inspect)


def objectives_of(study: optuna.Study) -> list[str]:
    return list(study.user_attrs.get("objectives", ["accuracy", "macs", "params"][: len(study.directions)]))


def front_candidates(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if trial_status(t) == TrialStatus.TRAINED]


def _dominates(a: list[float], b: list[float], signs: list[int]) -> bool:
    """``a`` dominates ``b``: no worse everywhere, better somewhere (signs: +1 maximise, -1 minimise)."""
    no_worse = all(s * x >= s * y for x, y, s in zip(a, b, signs))
    return no_worse and any(s * x > s * y for x, y, s in zip(a, b, signs))


def non_dominated(points: list[list[float]], directions: list[str]) -> list[int]:
    """Indices of the non-dominated points; identical points are all kept."""
    signs = [1 if d in ("maximize", "MAXIMIZE") else -1 for d in directions]
    return [i for i, p in enumerate(points)
            if not any(_dominates(q, p, signs) for j, q in enumerate(points) if j != i)]


def pareto_front(study: optuna.Study) -> list[FrontMember]:
    """Front members sorted by the first cost objective (then by accuracy)."""
    names = objectives_of(study)
    directions = [d.name.lower() for d in study.directions]
    trials = front_candidates(study)
    keep = non_dominated([list(t.values) for t in trials], directions)
    members = []
    for i in keep:
        record = read_record(trials[i])
        members.append(FrontMember(number=trials[i].number, family=record.family,
                                   values=dict(zip(names, trials[i].values)), record=record,
                                   params=dict(trials[i].params)))
    order = names[1] if len(names) > 1 else names[0]
    return sorted(members, key=lambda m: (m.values[order], -m.values.get("accuracy", 0)))
