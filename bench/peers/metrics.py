"""Metrics of the search benchmark: normalised objectives, exact hypervolume, regret, time to a target,
quartiles.

Normalised objectives: each objective is scaled to [0, 1] over the whole table's range (accuracy:
the mean over runs of the final epoch; MACs and params: log10), and every objective is minimised:
``(1 - acc, macs, params)`` in that scaled form, in the order the objectives are named. The
reference point is the worst corner (1, ..., 1). Regret is ``1 - HV / HV(true front)``, the true
front being that of the whole table under the same MACs limit and objectives. Quartiles are numpy's
linear-interpolation percentiles (25, 50, 75).
"""
from __future__ import annotations

import bisect
import math

import numpy as np

from .tables import arch_key, final_accuracy, log10

OBJECTIVES = ("accuracy", "macs", "params")


class Normaliser:
    """Scales (accuracy, MACs, params) to the minimised unit cube over the table's range."""

    def __init__(self, table, objectives=OBJECTIVES):
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown or not objectives or len(set(objectives)) != len(objectives):
            raise ValueError(f"objectives: a comma list out of {', '.join(OBJECTIVES)}, each once; got {objectives}")
        self.objectives = tuple(objectives)
        accs = [final_accuracy(e) for e in table.entries]
        macs = [log10(e.macs) for e in table.entries]
        params = [log10(e.params) for e in table.entries]
        self.ranges = {"accuracy": (min(accs), max(accs)), "macs": (min(macs), max(macs)),
                       "params": (min(params), max(params))}

    @staticmethod
    def _scale(v: float, lo: float, hi: float) -> float:
        return (v - lo) / (hi - lo) if hi > lo else 0.0

    def point(self, accuracy: float, macs: float, params: float) -> tuple:
        raw = {"accuracy": accuracy, "macs": log10(macs), "params": log10(params)}
        out = []
        for o in self.objectives:
            s = self._scale(raw[o], *self.ranges[o])
            out.append(1.0 - s if o == "accuracy" else s)
        return tuple(out)

    def entry_point(self, entry) -> tuple:
        return self.point(final_accuracy(entry), entry.macs, entry.params)

    @property
    def worst(self) -> tuple:
        return (1.0,) * len(self.objectives)


def non_dominated(points) -> list[int]:
    """Indices of the points no other point dominates (all minimised); identical points all kept."""
    if len(points) == 0:
        return []
    x = np.asarray(points, dtype=float)
    order = np.lexsort(x.T[::-1])
    xs = x[order]
    alive = np.ones(len(xs), dtype=bool)
    for i in range(len(xs)):
        if alive[i]:
            rest = xs[i + 1:]
            alive[i + 1:] &= ~(np.all(xs[i] <= rest, axis=1) & np.any(xs[i] < rest, axis=1))
    return sorted(order[alive].tolist())


def _hv2(points, ref) -> float:
    area, best = 0.0, ref[1]
    for x, y in sorted(points):
        if y < best:
            area += (ref[0] - x) * (best - y)
            best = y
    return area


def hypervolume(points, reference=None) -> float:
    """Exact hypervolume of minimised points in 1, 2 or 3 dimensions against ``reference`` (default:
    ones). Points not strictly better than the reference everywhere add nothing."""
    pts = [tuple(float(v) for v in p) for p in points]
    if not pts:
        return 0.0
    d = len(pts[0])
    ref = tuple(reference) if reference is not None else (1.0,) * d
    pts = sorted({p for p in pts if all(a < b for a, b in zip(p, ref))})
    if not pts:
        return 0.0
    if d == 1:
        return ref[0] - pts[0][0]
    if d == 2:
        return _hv2(pts, ref)
    if d != 3:
        raise ValueError(f"hypervolume of 1 to 3 objectives, got {d}")
    keep = non_dominated(pts)
    pts = sorted(pts[i] for i in keep)
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        if upper > p[0]:
            volume += (upper - p[0]) * _hv2([(q[1], q[2]) for q in pts[: i + 1]], (ref[1], ref[2]))
    return volume


def true_front(table, normaliser: Normaliser, max_macs: float | None = None) -> tuple[list[int], float]:
    """Indices of the table's entries on its front (within the MACs limit) and the front's hypervolume."""
    rows = [i for i, e in enumerate(table.entries) if max_macs is None or e.macs <= max_macs]
    points = [normaliser.entry_point(table.entries[i]) for i in rows]
    keep = non_dominated(points)
    return [rows[k] for k in keep], hypervolume([points[k] for k in keep])


def regret(hv: float, hv_true: float) -> float:
    return 1.0 - hv / hv_true if hv_true > 0 else float("nan")


def hv_curve(evaluations: list[dict], table, normaliser: Normaliser, budget_s: float,
             max_macs: float | None = None) -> list[tuple[float, float]]:
    """The hypervolume over simulated time: one (end time, hypervolume) step per completion that
    changes the front. Counts only architectures trained to the table's full epochs, finished within
    the budget and within the MACs limit, each at its table accuracy (mean over runs)."""
    lookup = {arch_key(e.family, e.knobs): e for e in table.entries}
    done = []
    for ev in evaluations:
        if ev.get("status") != "trained" or ev.get("end") is None or ev["end"] > budget_s * (1 + 1e-12):
            continue
        if int(ev.get("epochs") or 0) != int(table.epochs):
            continue
        entry = lookup.get(arch_key(ev["family"], ev["knobs"]))
        if entry is None or (max_macs is not None and entry.macs > max_macs):
            continue
        done.append((float(ev["end"]), normaliser.entry_point(entry)))
    done.sort(key=lambda d: d[0])
    curve, front = [], []
    for t, p in done:
        if any(all(a <= b for a, b in zip(q, p)) for q in front):
            continue  # dominated by (or equal to) a member: the front is unchanged
        front = [q for q in front if not all(a <= b for a, b in zip(p, q))] + [p]
        curve.append((t, hypervolume(front)))
    return curve


def hv_at(curve: list[tuple[float, float]], t: float) -> float:
    """The hypervolume of a step curve at time ``t`` (0 before its first step)."""
    i = bisect.bisect_right([when for when, _ in curve], t * (1 + 1e-12))
    return curve[i - 1][1] if i else 0.0


def time_to_target(curve: list[tuple[float, float]], target: float | None) -> float | None:
    """The first simulated time the hypervolume reaches ``target``; None when it never does."""
    if target is None:
        return None
    for when, v in curve:
        if v >= target - 1e-12:
            return when
    return None


def median_time_to_target(curves: list[list[tuple[float, float]]], target: float | None) -> float | None:
    """The first simulated time at which the median over the runs of the hypervolume reaches
    ``target``; None when it never does. With an odd number of runs this is the median of the runs'
    own first times (a run that never reaches the target counting as never); with an even number the
    median hypervolume is the mean of the middle two, so the median run of random search reaches
    random's own median final hypervolume, as it should."""
    if target is None or not curves:
        return None
    times = sorted({t for c in curves for t, _ in c})
    for t in times:
        if float(np.median([hv_at(c, t) for c in curves])) >= target - 1e-12:
            return t
    return None


def quartiles(values) -> dict:
    """Median, first and third quartile (numpy's linear interpolation); None counts as never (+inf),
    and a statistic that lands on never is None."""
    if not values:
        return {"median": None, "q1": None, "q3": None}
    x = np.array([math.inf if v is None else float(v) for v in values])
    out = {}
    for name, q in (("median", 50), ("q1", 25), ("q3", 75)):
        if np.isinf(x).any():
            # linear interpolation with +inf: finite only where both neighbours are finite
            xs = np.sort(x)
            pos = (len(xs) - 1) * q / 100.0
            lo, hi = int(math.floor(pos)), int(math.ceil(pos))
            if np.isinf(xs[hi]) if pos > lo else np.isinf(xs[lo]):
                out[name] = None
                continue
            out[name] = float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)) if hi != lo else float(xs[lo])
        else:
            out[name] = float(np.percentile(x, q))
    return out
