"""The Pareto front of a study, computed from the database alone.

Only like is compared with like: members are trials that trained to full fidelity (status
``trained``, state COMPLETE, feasible), here or, imported by ``warm_start``, in another study at
the same fidelity (status ``imported``). Infeasible proposals, duplicates (they mirror an original)
and trials ASHA stopped early are not on the front.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.record import TrialRecord, TrialStatus, read_record, trial_status

__all__ = ["FrontMember", "front_candidates", "non_dominated", "pareto_front", "objectives_of", "hypervolume",
           "dominates", "front_hypervolumes", "hypervolume_over_time", "simulated_seconds"]


@dataclass(frozen=True)
class FrontMember:
    number: int
    family: str
    values: dict        # objective name -> value
    record: TrialRecord  # the trial's record (knobs, params, macs, accuracies, fidelity, ...)
    params: dict        # the Optuna parameters (to re-enqueue or inspect)


def objectives_of(study: optuna.Study) -> list[str]:
    return list(study.user_attrs.get("objectives", ["accuracy", "macs", "params"][: len(study.directions)]))


def _may_join_front(status) -> bool:
    return isinstance(status, TrialStatus) and status.may_join_front


def front_candidates(study: optuna.Study, trials: list | None = None) -> list[FrozenTrial]:
    """Trials that may be on the front; ``trials``: the study's trials, already read (else read here)."""
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values
            and _may_join_front(trial_status(t))]


def dominates(a: list[float], b: list[float], signs: list[int]) -> bool:
    """``a`` dominates ``b``: no worse everywhere, better somewhere (signs: +1 maximise, -1 minimise)."""
    no_worse = all(s * x >= s * y for x, y, s in zip(a, b, signs))
    return no_worse and any(s * x > s * y for x, y, s in zip(a, b, signs))


def non_dominated(points: list[list[float]], directions: list[str]) -> list[int]:
    """Indices of the non-dominated points, in input order; identical points are all kept.

    Points are sorted best-first on every objective in turn (a point can be dominated only by one
    before it in that order). With three objectives one sweep in that order keeps the best second
    and third objectives seen so far as a staircase, which says at once whether an earlier point
    dominates the next one (O(n log n)); otherwise each point still standing is on the front and
    removes, in one array operation, every later point it dominates (O(front size x n))."""
    import numpy as np

    if not points:
        return []
    signs = np.array([1.0 if d in ("maximize", "MAXIMIZE") else -1.0 for d in directions])
    x = -np.asarray(points, dtype=float) * signs  # everything minimised
    order = np.lexsort(x.T[::-1])  # by the first objective, then the next, ...
    x = x[order]
    if x.shape[1] == 3 and not np.isnan(x).any():
        return _non_dominated_3d(x, order)
    alive = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        if not alive[i]:
            continue
        rest = x[i + 1:]
        dominated = np.all(x[i] <= rest, axis=1) & np.any(x[i] < rest, axis=1)
        alive[i + 1:] &= ~dominated
    return sorted(order[alive].tolist())


def _non_dominated_3d(x, order) -> list[int]:
    """``non_dominated`` of minimised 3-objective points ``x`` already in lexicographic order
    (``order``: their input indices). Among distinct points every dominator comes earlier in that
    order, so a point is dominated exactly when an earlier one is no worse in objectives 2 and 3:
    the staircase of those seen so far (``ys`` ascending, ``zs`` descending) answers with one
    bisection. Copies of a point share its verdict (identical points are all kept)."""
    import bisect

    ys: list[float] = []
    zs: list[float] = []
    keep, previous, kept = [], None, False
    for i, (a, y, z) in enumerate(x.tolist()):
        if (a, y, z) == previous:  # a copy of the point before: the same verdict
            if kept:
                keep.append(i)
            continue
        previous = (a, y, z)
        at = bisect.bisect_right(ys, y)
        kept = not (at and zs[at - 1] <= z)
        if kept:
            keep.append(i)
            end = at
            while end < len(ys) and zs[end] >= z:  # no longer on the staircase
                end += 1
            ys[at:end] = [y]
            zs[at:end] = [z]
    return sorted(order[keep].tolist())


def pareto_front(study: optuna.Study, trials: list | None = None, url: str | None = None) -> list[FrontMember]:
    """Front members sorted by the first cost objective (then by accuracy); ``trials``: the study's
    trials already read (see ``search.storage.read_trials``), ``url`` its storage (to read the
    members' parameters)."""
    from search.storage import read_params

    names = objectives_of(study)
    directions = [d.name.lower() for d in study.directions]
    trials = front_candidates(study, trials)
    keep = non_dominated([list(t.values) for t in trials], directions)
    read_params(study, [trials[i] for i in keep], url)
    members = []
    for i in keep:
        record = read_record(trials[i])
        members.append(FrontMember(number=trials[i].number, family=record.family,
                                   values=dict(zip(names, trials[i].values)), record=record,
                                   params=dict(trials[i].params)))
    order = names[1] if len(names) > 1 else names[0]
    return sorted(members, key=lambda m: (m.values[order], -m.values.get("accuracy", 0)))


def _hv2(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by 2-D points (both minimised) inside the box below ``ref``."""
    area, best_y = 0.0, ref[1]
    for x, y in sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1]):
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def hypervolume(points: list[list[float]], directions: list[str], reference: list[float]) -> float:
    """Hypervolume of ``points`` against ``reference`` (2 or 3 objectives; directions as Optuna's).

    Points not strictly better than the reference in every objective add nothing. For three
    objectives the volume is summed over slices along the first one, each slice's area kept up to
    date as the points enter it (exact, O(n log n) plus the points each one removes)."""
    signs = [1.0 if d in ("maximize", "MAXIMIZE") else -1.0 for d in directions]
    # Minimise everything: a maximised objective is negated.
    pts = [tuple(-s * v for s, v in zip(signs, p)) for p in points]
    ref = tuple(-s * v for s, v in zip(signs, reference))
    pts = [p for p in pts if all(a < b for a, b in zip(p, ref))]
    if len(ref) == 2:
        return _hv2([(p[0], p[1]) for p in pts], (ref[0], ref[1]))
    if len(ref) != 3:
        raise ValueError(f"hypervolume of 2 or 3 objectives, got {len(ref)}")
    pts.sort()
    volume, area = 0.0, 0.0
    ys: list[float] = []  # the slice's 2-D front (both minimised): y ascending, z strictly descending
    zs: list[float] = []
    for i, p in enumerate(pts):
        area += _enter(ys, zs, p[1], p[2], ref[1], ref[2])
        upper = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        if upper > p[0]:
            volume += (upper - p[0]) * area
    return volume


def _enter(ys: list[float], zs: list[float], y: float, z: float, ref_y: float, ref_z: float) -> float:
    """Add (y, z) to a 2-D front kept as sorted ``ys``/``zs``; returns the area it adds below the
    reference (0 when a point already there dominates it), dropping the points it dominates."""
    import bisect

    at = bisect.bisect_right(ys, y)
    level = zs[at - 1] if at else ref_z  # the front's height just left of y
    if level <= z:
        return 0.0
    end = at
    while end < len(ys) and zs[end] >= z:  # dominated by (y, z) from here on
        end += 1
    added, x = 0.0, y
    for j in range(at, end):
        added += (ys[j] - x) * (level - z)
        x, level = ys[j], zs[j]
    added += ((ys[end] if end < len(ys) else ref_y) - x) * (level - z)
    ys[at:end] = [y]
    zs[at:end] = [z]
    return added



def _log_space(values: list[float], directions: list[str]) -> list[float]:
    """Costs on a log10 scale (MACs and params span decades); accuracy as it is."""
    return [v if d == "maximize" else math.log10(max(v, 1e-12)) for v, d in zip(values, directions)]


def front_hypervolumes(study: optuna.Study, front: list[FrontMember], seeds: list[dict]) -> dict | None:
    """Hypervolume of the front and of the seeds alone, at one reference point, so that the two
    compare: accuracy as it is against 0, each cost as log10 against 0.1 decade above the largest
    value of any front member or seed. None when the study has no front or no trained seed."""
    directions = [d.name.lower() for d in study.directions]
    if len(directions) not in (2, 3):
        return None
    seed_points = [list(s["values"].values()) for s in seeds if s.get("values")]
    if not front or not seed_points:
        return None
    front_points = [list(m.values.values()) for m in front]
    logged = [_log_space(p, directions) for p in front_points + seed_points]
    reference = [0.0 if d == "maximize" else max(p[i] for p in logged) + 0.1 for i, d in enumerate(directions)]
    hv_front = hypervolume([_log_space(p, directions) for p in front_points], directions, reference)
    hv_seeds = hypervolume([_log_space(p, directions) for p in seed_points], directions, reference)
    return {"front": hv_front, "seeds": hv_seeds, "ratio": hv_front / hv_seeds if hv_seeds > 0 else None,
            "reference": reference, "space": "accuracy; log10 of each cost"}


def _active_clock(trials: list):
    """``f(timestamp) -> seconds of active wall time before it``: the union of the trials' ask-to-tell
    spans, as `status` counts wall time (the gaps between runs, when nothing ran, are left out)."""
    import bisect

    merged: list[list[float]] = []
    for start, stop in sorted((t.datetime_start.timestamp(), t.datetime_complete.timestamp())
                              for t in trials if t.datetime_start and t.datetime_complete):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    before = [0.0]  # active seconds before each merged span
    for start, stop in merged:
        before.append(before[-1] + stop - start)
    starts = [m[0] for m in merged]

    def active(ts: float) -> float:
        i = bisect.bisect_right(starts, ts) - 1
        return 0.0 if i < 0 else before[i] + min(ts, merged[i][1]) - merged[i][0]

    return active


def hypervolume_over_time(study: optuna.Study, trials: list | None = None, steps: int = 40) -> dict | None:
    """The front's hypervolume as the study went on, at ``steps`` even moments of active wall time,
    over the trials trained by each moment: accuracy as it is against 0, each cost as log10 against
    0.1 decade above the largest of all trained trials (one reference for the whole curve). None
    without trained trials or with other than 2-3 objectives."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    directions = [d.name.lower() for d in study.directions]
    done = [t for t in front_candidates(study, trials) if t.datetime_complete]
    if len(directions) not in (2, 3) or not done:
        return None
    simulated = all(isinstance(_sim_end(t), (int, float)) for t in done)
    if simulated:  # the simulated backend's clock: when each trial ended there
        points = sorted((float(_sim_end(t)), _log_space(list(t.values), directions)) for t in done)
    else:
        active = _active_clock(trials)
        points = sorted((active(t.datetime_complete.timestamp()), _log_space(list(t.values), directions)) for t in done)
    reference = [0.0 if d == "maximize" else max(p[i] for _, p in points) + 0.1 for i, d in enumerate(directions)]
    horizon = points[-1][0]
    seconds, volumes, front, i = [], [], [], 0
    for k in range(1, steps + 1):
        at = horizon * k / steps
        while i < len(points) and points[i][0] <= at + 1e-9:
            front.append(points[i][1])
            i += 1
        front = [front[j] for j in non_dominated(front, directions)]  # later fronts only need this one
        seconds.append(round(at, 1))
        volumes.append(hypervolume(front, directions, reference) if front else 0.0)
    clock = "simulated seconds (execution: simulated)" if simulated else "active wall time (gaps between runs left out)"
    return {"seconds": seconds, "hypervolume": volumes, "reference": reference,
            "space": "accuracy; log10 of each cost", "clock": clock}


def _sim_end(trial):
    """Where a simulated trial ended on the simulated clock (None for a trained one)."""
    facts = getattr(trial, "facts", None)
    record = facts if facts is not None else (trial.user_attrs.get("record") or {})
    return record.get("sim_end")


def simulated_seconds(trials: list) -> float | None:
    """A simulated study's clock: where its last simulated trial ended (None: not simulated)."""
    ends = [e for e in (_sim_end(t) for t in trials) if isinstance(e, (int, float))]
    return max(ends) if ends else None
