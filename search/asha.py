"""Asynchronous successive halving (ASHA, Li et al. 2020), ranking rung results by accuracy alone or
by Pareto rank on (accuracy, the exact costs).

Rungs sit at ``grace_period * reduction_factor**k`` epochs below the full budget. A trial that reaches
a rung continues only if it is within the top ``1/reduction_factor`` of all results recorded at that
rung so far.

- ``rank="accuracy"``: Ray Tune's ASHAScheduler rule, on validation accuracy.
- ``rank="pareto"`` (the default of multi-objective studies): results are ordered by non-dominated
  sorting on (rung accuracy, maximised; each cost, minimised), and within one front by crowding
  distance, largest first. Costs are compared on a log scale (MACs and params span decades) and every
  objective is normalised by its range at the rung, so that no unit dominates the distance. Under
  accuracy alone, the small networks are the ones below the top 1/eta whenever accuracy grows with
  size, and the cheap end of the front is stopped before it exists; a cheap, less accurate network is
  not dominated, and the Pareto rule keeps it.

The order depends only on the set of results at the rung, never on their arrival order, and the rung
tables are rebuilt from the curves and costs stored in the study: a resumed sweep makes the same
decisions without any pickled scheduler state.

The exact order, which the decisions follow:

- Identical results count once in the sorting and get identical keys; every copy counts when the top
  fraction is taken.
- A result's key is (front index, minus its crowding distance); a trial continues when fewer than
  ``keep = max(1, floor(n / reduction_factor))`` of the ``n`` results at the rung (itself included)
  have a strictly smaller key, so ties at the threshold all continue.
- Crowding is computed per front on its distinct points taken in lexicographic order: per objective,
  a stable sort by that objective, the first and last of it get infinity (even when the objective is
  constant over the front), the others add (next - previous) / (range of the objective over the
  front); a front of at most two points is all infinity. Terms are added objective by objective.

Speed: a decision does not sort the rung. Each rung keeps its distinct points in numpy arrays with
their front index, maintained incrementally: a new point ``p`` lands in front ``L`` (one past its
deepest dominator); only points that ``p`` dominates can move, each by exactly one front (a chain
holds ``p`` at most once), and those that move are the members of front ``L`` that ``p`` dominates,
then the members of front ``L + 1`` dominated by a point that moved, and so on. The decision then
counts the results in fronts before ``L`` and computes crowding in front ``L`` alone. With two
objectives the points that move are found with one binary search per front (see
:meth:`_ParetoRung._push_back_2d`). Results added by :meth:`Asha.record_curve` wait in a buffer and
enter in lexicographic order at the next decision, so a rung rebuilt from the study is sorted without
moving any point. ``bench/rung_rule_speed.py`` times a decision.
"""
from __future__ import annotations

import bisect
import math

import numpy as np

__all__ = ["Asha", "rung_epochs", "RANKS"]

RANKS = ("pareto", "accuracy")


def rung_epochs(grace_period: int, reduction_factor: int, max_epochs: int) -> list[int]:
    rungs, r = [], grace_period
    while r < max_epochs:
        rungs.append(r)
        r *= reduction_factor
    return rungs


def _point(accuracy: float, costs: tuple) -> tuple:
    """All objectives minimised: negated accuracy, log costs."""
    return (-float(accuracy), *(math.log(max(float(c), 1e-12)) for c in costs))


class _AccuracyRung:
    """Rung accuracies kept sorted: a decision is one binary search."""

    def __init__(self):
        self.sorted: list[float] = []

    def add(self, accuracy: float, costs: tuple) -> None:
        bisect.insort(self.sorted, float(accuracy))

    def decide(self, accuracy: float, costs: tuple) -> int:
        """Add a result and return how many results at the rung have a strictly higher accuracy."""
        ahead = len(self.sorted) - bisect.bisect_right(self.sorted, float(accuracy))
        bisect.insort(self.sorted, float(accuracy))
        return ahead


class _ParetoRung:
    """The distinct points of one rung (objectives minimised) with their multiplicity and front index.

    ``values[k, i]``: objective ``k`` of distinct point ``i`` (one row per objective, so that one
    objective of all points is contiguous); ``front[i]``, ``count[i]``; ``index``: point -> i.
    """

    def __init__(self):
        self.dims: int | None = None
        self.size = 0
        self.values = np.empty((0, 0))
        self.front = np.empty(0, dtype=np.int64)
        self.count = np.empty(0, dtype=np.int64)
        self.index: dict[tuple, int] = {}
        self.pending: list[tuple] = []

    def __setstate__(self, state: dict) -> None:
        # Arrays unpickled from Ray's object store are read-only views of it: own writable copies.
        self.__dict__.update(state)
        for name in ("values", "front", "count"):
            setattr(self, name, np.array(getattr(self, name), copy=True))

    # -- the points ---------------------------------------------------------------------------------

    def add(self, accuracy: float, costs: tuple) -> None:
        """A result that needs no decision: sorted in at the next :meth:`decide`."""
        self.pending.append(self._checked(_point(accuracy, costs)))

    def _checked(self, point: tuple) -> tuple:
        if self.dims is None:
            self.dims = len(point)
            self.values = np.empty((self.dims, 64))
            self.front = np.empty(64, dtype=np.int64)
            self.count = np.empty(64, dtype=np.int64)
        elif len(point) != self.dims:
            raise ValueError(f"a rung ranks results with {self.dims - 1} costs each, got {len(point) - 1}")
        return point

    def _flush(self) -> None:
        if self.pending:
            pending, self.pending = sorted(self.pending), []
            for point in pending:  # in lexicographic order no point dominates one inserted before it
                self._insert(point)

    def _insert(self, point: tuple) -> int:
        """Add one result; returns the index of its distinct point."""
        i = self.index.get(point)
        if i is not None:
            self.count[i] += 1
            return i
        n = self.size
        if self.dims == 1:
            # One objective: the fronts are the distinct values in order, a point's front is the
            # number of distinct values below it, and the ones above it all move back by one.
            v = self.values[0, :n]
            below = v < point[0]
            self.front[:n][~below] += 1
            front = int(np.count_nonzero(below))
        else:
            values = self.values[:, :n]
            dominators = values[0] <= point[0]
            dominated = values[0] >= point[0]
            for k in range(1, self.dims):
                dominators &= values[k] <= point[k]
                dominated &= values[k] >= point[k]
            # A distinct point equal nowhere, so <= everywhere is domination.
            fronts = self.front[:n]
            front = int(fronts[dominators].max()) + 1 if dominators.any() else 0
            moved = np.flatnonzero(dominated)
            if moved.size:
                self._push_back(moved, front)
        if n == self.values.shape[1]:
            self._grow()
        self.values[:, n] = point
        self.front[n], self.count[n] = front, 1
        self.index[point] = n
        self.size = n + 1
        return n

    def _push_back(self, dominated: np.ndarray, front: int) -> None:
        """Move back by one front the points that a new point in ``front`` pushes: those of
        ``dominated`` (all that it dominates) on a chain from it that keeps one point per front."""
        if self.dims == 2:
            return self._push_back_2d(dominated, front)
        levels = self.front[dominated]
        order = np.argsort(levels, kind="stable")
        dominated, levels = dominated[order], levels[order]
        if levels[0] != front:  # every point it dominates lies behind its front, or in it
            return
        coords = self.values[:, dominated]  # one column per dominated point, by front
        bounds = [0, *(np.flatnonzero(np.diff(levels)) + 1).tolist(), len(levels)]  # one run per front
        firsts = levels[bounds[:-1]].tolist()
        runs, moved = [np.arange(bounds[1])], coords[:, :bounds[1]]
        for g in range(1, len(firsts)):
            if firsts[g] != front + g:
                break
            start = bounds[g]
            hit = np.flatnonzero(_dominated_by_any(moved, coords[:, start:bounds[g + 1]]))
            if not hit.size:
                break
            hit += start
            runs.append(hit)
            moved = coords[:, hit]
        self.front[dominated[np.concatenate(runs)]] += 1

    def _push_back_2d(self, dominated: np.ndarray, front: int) -> None:
        """:meth:`_push_back` with two objectives, one binary search per front.

        A front is a staircase: sorted by the first objective, its points fall strictly on the
        second. The points that move out of front ``k`` are a contiguous run of it, and those that
        follow them out of front ``k + 1`` are exactly its points at or beyond the run's corner (its
        least first and least second objective): a point of front ``k + 1`` there is dominated by a
        front-``k`` point, which lies in the run or else before it (then the run's first point
        dominates it too) or after it (then the run's last point does)."""
        x, y, levels = self.values[0, dominated], self.values[1, dominated], self.front[dominated]
        order = np.lexsort((x, levels))
        dominated = dominated[order]
        levels = levels[order].tolist()
        if levels[0] != front:  # every point it dominates lies behind its front, or in it
            return
        xs, neg_ys = x[order].tolist(), (-y[order]).tolist()  # within a front: both ascending
        a, b = 0, bisect.bisect_right(levels, front)
        runs, end, level = [(a, b)], b, front
        while end < len(levels) and levels[end] == level + 1:
            start, end, level = end, bisect.bisect_right(levels, level + 1, end), level + 1
            a, b = bisect.bisect_left(xs, xs[a], start, end), bisect.bisect_right(neg_ys, neg_ys[b - 1], start, end)
            if a >= b:
                break
            runs.append((a, b))
        self.front[np.concatenate([dominated[a:b] for a, b in runs])] += 1

    def _grow(self) -> None:
        cap = 2 * self.values.shape[1]
        values = np.empty((self.dims, cap))
        values[:, :self.size] = self.values[:, :self.size]
        front = np.empty(cap, dtype=np.int64)
        front[:self.size] = self.front[:self.size]
        count = np.empty(cap, dtype=np.int64)
        count[:self.size] = self.count[:self.size]
        self.values, self.front, self.count = values, front, count

    # -- the order ----------------------------------------------------------------------------------

    def decide(self, accuracy: float, costs: tuple) -> int:
        """Add a result and return how many results at the rung are strictly ahead of it in the
        Pareto order (copies counted)."""
        self._flush()
        me = self._insert(self._checked(_point(accuracy, costs)))
        n = self.size
        fronts, counts = self.front[:n], self.count[:n]
        level = fronts[me]
        in_front = fronts == level
        ahead = int(counts[fronts < level].sum())
        members = np.flatnonzero(in_front)
        if len(members) <= 2:
            return ahead  # all infinitely crowded: nobody in the front is ahead
        crowd = self._crowding(members)
        mine = crowd[np.searchsorted(members, me)]
        return ahead + int(counts[members][crowd > mine].sum())

    def _crowding(self, members: np.ndarray) -> np.ndarray:
        """Crowding distance of each of ``members`` (indices, at least three, one front)."""
        v = self.values[:, members]
        lex = np.lexsort(v[::-1])  # the members in lexicographic order: the order ties keep
        distance = np.zeros(len(members))
        for k in range(self.dims):
            order = lex if k == 0 else lex[np.argsort(v[k, lex], kind="stable")]
            sorted_col = v[k, order]
            low, high = sorted_col[0], sorted_col[-1]
            distance[order[0]] = distance[order[-1]] = math.inf
            if high == low:
                continue
            distance[order[1:-1]] += (sorted_col[2:] - sorted_col[:-2]) / (high - low)
        return distance


def _dominated_by_any(by: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Which of ``points`` (one column each) some column of ``by`` dominates, given that no two are
    equal."""
    step = max(1, 1_000_000 // max(1, points.shape[1]))  # at most a million pairs at a time
    out = None
    for s in range(0, by.shape[1], step):
        hit = by[0, s:s + step, None] <= points[0]
        for k in range(1, len(points)):
            hit &= by[k, s:s + step, None] <= points[k]
        out = hit.any(axis=0) if out is None else out | hit.any(axis=0)
    return out


class Asha:
    """The rung rule.

    Args:
        grace_period, reduction_factor, max_epochs: the rungs (see :func:`rung_epochs`).
        rank: ``"pareto"`` or ``"accuracy"``.

    ``rungs`` maps each rung's epoch to its results, ``(accuracy, costs)`` in arrival order (a record:
    results enter through :meth:`record_curve` and :meth:`should_continue` only, which also keep each
    rung's order). Under ``"pareto"`` the results of one rung must all have the same number of costs.
    """

    def __init__(self, grace_period: int, reduction_factor: int, max_epochs: int, rank: str = "accuracy"):
        if rank not in RANKS:
            raise ValueError(f"rank must be one of {RANKS}, got {rank!r}")
        self.reduction_factor, self.rank = reduction_factor, rank
        self.rungs: dict[int, list[tuple]] = {r: [] for r in rung_epochs(grace_period, reduction_factor, max_epochs)}
        kind = _ParetoRung if rank == "pareto" else _AccuracyRung
        self._order = {r: kind() for r in self.rungs}

    def record_curve(self, curve: list[float], costs: tuple = ()) -> None:
        """Add a finished trial's per-epoch accuracies (and its costs) to the rung tables."""
        for epoch, results in self.rungs.items():
            if len(curve) >= epoch:
                self._order[epoch].add(curve[epoch - 1], costs)
                results.append((float(curve[epoch - 1]), tuple(costs)))

    def should_continue(self, epoch: int, accuracy: float, costs: tuple = ()) -> bool:
        """Record ``accuracy`` (with the trial's ``costs``) at ``epoch`` if it is a rung, and decide
        whether the trial goes on."""
        results = self.rungs.get(epoch)
        if results is None:
            return True
        me = (float(accuracy), tuple(costs))
        ahead = self._order[epoch].decide(*me)
        results.append(me)
        if len(results) < self.reduction_factor:
            return True  # too few results at this rung to rank against
        keep = max(1, math.floor(len(results) / self.reduction_factor))
        return ahead < keep
