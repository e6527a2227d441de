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
"""
from __future__ import annotations

import math

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


def _dominates(a: tuple, b: tuple) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _fronts(points: list[tuple]) -> list[int]:
    """Non-dominated sorting: the front index (0 = non-dominated) of each point."""
    rank = [-1] * len(points)
    remaining, level = set(range(len(points))), 0
    while remaining:
        front = {i for i in remaining if not any(_dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            rank[i] = level
        remaining -= front
        level += 1
    return rank


def _crowding(points: list[tuple], members: list[int]) -> dict[int, float]:
    """Crowding distance of each front member on range-normalised objectives (boundaries: inf)."""
    distance = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: math.inf for i in members}
    for k in range(len(points[members[0]])):
        order = sorted(members, key=lambda i: points[i][k])
        low, high = points[order[0]][k], points[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for prev, mid, nxt in zip(order, order[1:], order[2:]):
            distance[mid] += (points[nxt][k] - points[prev][k]) / (high - low)
    return distance


def pareto_order_keys(points: list[tuple]) -> list[tuple]:
    """Sort keys (smaller is better) of rung results: front index, then crowding (larger first).
    Identical results get identical keys, so the order never depends on arrival."""
    unique = sorted(set(points))
    fronts = _fronts(unique)
    key_of: dict[tuple, tuple] = {}
    for level in set(fronts):
        members = [i for i, f in enumerate(fronts) if f == level]
        crowd = _crowding(unique, members)
        for i in members:
            key_of[unique[i]] = (level, -crowd[i])
    return [key_of[p] for p in points]


class Asha:
    """The rung rule.

    Args:
        grace_period, reduction_factor, max_epochs: the rungs (see :func:`rung_epochs`).
        rank: ``"pareto"`` or ``"accuracy"``.
    """

    def __init__(self, grace_period: int, reduction_factor: int, max_epochs: int, rank: str = "accuracy"):
        if rank not in RANKS:
            raise ValueError(f"rank must be one of {RANKS}, got {rank!r}")
        self.reduction_factor, self.rank = reduction_factor, rank
        self.rungs: dict[int, list[tuple]] = {r: [] for r in rung_epochs(grace_period, reduction_factor, max_epochs)}

    def record_curve(self, curve: list[float], costs: tuple = ()) -> None:
        """Add a finished trial's per-epoch accuracies (and its costs) to the rung tables."""
        for epoch, results in self.rungs.items():
            if len(curve) >= epoch:
                results.append((float(curve[epoch - 1]), tuple(costs)))

    def should_continue(self, epoch: int, accuracy: float, costs: tuple = ()) -> bool:
        """Record ``accuracy`` (with the trial's ``costs``) at ``epoch`` if it is a rung, and decide
        whether the trial goes on."""
        results = self.rungs.get(epoch)
        if results is None:
            return True
        me = (float(accuracy), tuple(costs))
        results.append(me)
        if len(results) < self.reduction_factor:
            return True  # too few results at this rung to rank against
        keep = max(1, math.floor(len(results) / self.reduction_factor))
        if self.rank == "accuracy":
            ranked = sorted((a for a, _ in results), reverse=True)
            return me[0] >= ranked[keep - 1]
        keys = pareto_order_keys([_point(a, c) for a, c in results])
        threshold = sorted(keys)[keep - 1]
        return keys[len(results) - 1] <= threshold
