"""The rung rule on synthetic curves: Pareto ranking keeps the cheap end of the front that ranking by
accuracy alone stops, and its decisions do not depend on the order results arrived in.

The rule keeps its rungs sorted incrementally; the plain rule it replaced (a full non-dominated sort
and crowding of the rung at every decision) is kept here as the reference, and the two must make the
same decisions on random rung histories."""
from __future__ import annotations

import math
import pickle
import random

import pytest

from search.asha import Asha, rung_epochs


# -- the reference: the rule as first written, sorting the whole rung at every decision -------------

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


class ReferenceAsha:
    """The rung rule, sorting the whole rung at every decision."""

    def __init__(self, grace_period: int, reduction_factor: int, max_epochs: int, rank: str = "accuracy"):
        self.reduction_factor, self.rank = reduction_factor, rank
        self.rungs: dict[int, list[tuple]] = {r: [] for r in rung_epochs(grace_period, reduction_factor, max_epochs)}

    def record_curve(self, curve: list[float], costs: tuple = ()) -> None:
        for epoch, results in self.rungs.items():
            if len(curve) >= epoch:
                results.append((float(curve[epoch - 1]), tuple(costs)))

    def should_continue(self, epoch: int, accuracy: float, costs: tuple = ()) -> bool:
        results = self.rungs.get(epoch)
        if results is None:
            return True
        me = (float(accuracy), tuple(costs))
        results.append(me)
        if len(results) < self.reduction_factor:
            return True
        keep = max(1, math.floor(len(results) / self.reduction_factor))
        if self.rank == "accuracy":
            ranked = sorted((a for a, _ in results), reverse=True)
            return me[0] >= ranked[keep - 1]
        keys = pareto_order_keys([_point(a, c) for a, c in results])
        threshold = sorted(keys)[keep - 1]
        return keys[len(results) - 1] <= threshold


# Accuracy grows with size, as it does in every family: (rung accuracy, (MACs, params)).
GROWING = [(0.30, (1e5, 1e3)), (0.40, (1e6, 1e4)), (0.50, (1e7, 1e5)), (0.55, (2e7, 2e5)), (0.60, (5e7, 5e5))]


def _rule(rank: str, results=GROWING) -> Asha:
    rule = Asha(grace_period=1, reduction_factor=3, max_epochs=9, rank=rank)
    for acc, costs in results:
        rule.record_curve([acc], costs)
    return rule


def test_pareto_keeps_the_cheapest_non_dominated_trial_that_accuracy_alone_stops():
    cheap = (0.32, (5e4, 5e2))   # less accurate than all but one, and cheaper than all: not dominated
    assert not _rule("accuracy").should_continue(1, *cheap)
    assert _rule("pareto").should_continue(1, *cheap)


def test_pareto_stops_a_dominated_trial():
    dominated = (0.35, (3e7, 3e5))  # costs more than three others that are all more accurate
    assert not _rule("pareto").should_continue(1, *dominated)
    assert not _rule("accuracy").should_continue(1, *dominated)


def test_pareto_keeps_the_top_fraction():
    rule = _rule("pareto")
    decisions = [rule.should_continue(1, 0.1 + 0.01 * i, (6e7 + i, 6e5 + i)) for i in range(12)]  # all dominated
    assert not any(decisions[2:])


def test_below_the_reduction_factor_everyone_continues():
    rule = Asha(grace_period=1, reduction_factor=3, max_epochs=9, rank="pareto")
    assert rule.should_continue(1, 0.1, (1e9, 1e9)) and rule.should_continue(1, 0.05, (1e9, 1e9))


def test_decisions_do_not_depend_on_arrival_order():
    rng = random.Random(5)
    results = [(round(rng.uniform(0.1, 0.7), 2), (float(rng.choice([1, 2, 5]) * 10 ** rng.randint(4, 7)), 1e3))
               for _ in range(30)]
    results += results[:4]  # identical results too
    probes = [(round(rng.uniform(0.1, 0.7), 2), (float(rng.choice([1, 2, 5]) * 10 ** rng.randint(4, 7)), 1e3))
              for _ in range(20)]
    expected = [_rule("pareto", results).should_continue(1, *p) for p in probes]
    for seed in range(5):
        shuffled = results[:]
        random.Random(seed).shuffle(shuffled)
        assert [_rule("pareto", shuffled).should_continue(1, *p) for p in probes] == expected
    assert any(expected) and not all(expected)


def test_identical_results_get_identical_keys():
    points = [_point(0.5, (1e6, 1e4)), _point(0.5, (1e6, 1e4)), _point(0.6, (1e7, 1e5)), _point(0.4, (1e5, 1e3))]
    keys = pareto_order_keys(points)
    assert keys[0] == keys[1]
    assert all(k[0] == 0 for k in keys)  # one front: accuracy strictly grows with cost


def test_rungs_not_reached_and_unknown_ranks():
    rule = _rule("pareto")
    assert rule.should_continue(2, 0.0, (1e9, 1e9))  # epoch 2 is no rung (rungs 1 and 3)
    assert sorted(rule.rungs) == [1, 3]
    with pytest.raises(ValueError, match="rank must be one of"):
        Asha(1, 3, 9, rank="hypervolume")


# -- the rule against the reference -----------------------------------------------------------------

def _drawer(rng: random.Random, n_costs: int, kind: str):
    """Random rung results of one kind of history: few distinct values (ties and copies), a cost
    that never varies, accuracy falling with cost (long chains of fronts), or smooth values."""
    if kind == "coarse":
        return lambda: (rng.choice([0.1, 0.2, 0.3, 0.4]), tuple(float(rng.choice([1, 2, 4])) for _ in range(n_costs)))
    if kind == "constant":
        return lambda: (round(rng.uniform(0, 1), 2), tuple([1e6] + [float(rng.choice([1, 10, 100]))
                                                                   for _ in range(n_costs - 1)]))
    if kind == "chain":
        def draw():
            c = rng.uniform(0, 1)
            return (round(1 - c + rng.gauss(0, 0.05), 2), tuple(10 ** (3 + 4 * c + rng.gauss(0, 0.1 * k))
                                                                  for k in range(n_costs)))
        return draw
    if kind == "grid":
        return lambda: (rng.randint(0, 5) / 10, tuple(float(10 ** rng.randint(0, 5)) for _ in range(n_costs)))
    return lambda: (round(rng.uniform(0.1, 0.7), 3), tuple(10 ** rng.uniform(4, 8) for _ in range(n_costs)))


KINDS = ("coarse", "constant", "chain", "grid", "smooth")


def _pair(rank: str, reduction_factor: int, max_epochs: int = 9):
    return (Asha(1, reduction_factor, max_epochs, rank=rank), ReferenceAsha(1, reduction_factor, max_epochs, rank=rank))


def _same_fronts(rule: Asha, reference: ReferenceAsha) -> None:
    """The fronts kept incrementally are those of a full sort of the rung."""
    for epoch, results in reference.rungs.items():
        order = rule._order[epoch]
        order._flush()
        unique = sorted(set(_point(a, c) for a, c in results))
        assert order.size == len(unique)
        kept = {p: int(order.front[i]) for p, i in order.index.items()}
        assert [kept[p] for p in unique] == _fronts(unique)
        assert sorted(order.count[:order.size].tolist()) == sorted(
            sum(1 for a, c in results if _point(a, c) == p) for p in unique)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_costs", [0, 1, 2, 3])
def test_a_long_run_of_decisions_matches_the_reference(kind, n_costs):
    """Every result is decided and then recorded at its rung, one after another, on every rung."""
    rng = random.Random(f"{kind}-{n_costs}")
    draw = _drawer(rng, n_costs, kind)
    for rank in ("pareto", "accuracy"):
        for reduction_factor in (2, 3):
            rule, reference = _pair(rank, reduction_factor)
            decisions = []
            for _ in range(110):
                acc, costs = draw()
                for epoch in (1, 2, 3, 4):  # rungs 1 and 3 (or 1, 2 and 4), and epochs that are none
                    got = rule.should_continue(epoch, acc, costs)
                    assert got == reference.should_continue(epoch, acc, costs)
                    decisions.append(got)
                    if not got:
                        break
                    acc = min(1.0, acc + rng.choice([0.0, 0.05]))
            assert any(decisions) and not all(decisions)
            assert rule.rungs == reference.rungs
            if rank == "pareto":
                _same_fronts(rule, reference)


@pytest.mark.parametrize("n_costs", [0, 1, 2, 3])
def test_decisions_on_rebuilt_rungs_match_the_reference(n_costs):
    """Rungs rebuilt from stored curves, then probed one result at a time (each probe on its own copy
    of the rule, shipped as a pickle), and then decided one after another."""
    rng = random.Random(n_costs)
    for history in range(24):
        kind = KINDS[history % len(KINDS)]
        draw = _drawer(rng, n_costs, kind)
        rank = "accuracy" if history % 6 == 5 else "pareto"
        rule, reference = _pair(rank, rng.choice([2, 3, 4]))
        for _ in range(rng.randint(0, 60)):
            acc, costs = draw()
            curve = [acc + 0.02 * e for e in range(rng.randint(1, 9))]
            rule.record_curve(curve, costs)
            reference.record_curve(curve, costs)
        shipped = pickle.dumps(rule)
        stored = [r for results in reference.rungs.values() for r in results]
        for _ in range(15):
            acc, costs = rng.choice(stored) if stored and rng.random() < 0.3 else draw()  # copies too
            epoch = rng.choice(sorted(reference.rungs))
            probe, probe_reference = pickle.loads(shipped), pickle.loads(pickle.dumps(reference))
            assert probe.should_continue(epoch, acc, costs) == probe_reference.should_continue(epoch, acc, costs)
        for _ in range(40):
            acc, costs = draw()
            epoch = rng.choice(sorted(reference.rungs))
            assert rule.should_continue(epoch, acc, costs) == reference.should_continue(epoch, acc, costs)
        if rank == "pareto":
            _same_fronts(rule, reference)


def test_many_results_with_copies_and_a_pickled_copy_match_the_reference():
    """Three objectives, a rung of several hundred results, many of them copies."""
    rng = random.Random(7)
    rule, reference = _pair("pareto", 3)
    pool = [(round(rng.uniform(0.1, 0.5), 2), (float(rng.choice([1, 2, 5]) * 10 ** rng.randint(4, 6)),
                                                float(rng.choice([1, 3]) * 10 ** rng.randint(3, 5))))
            for _ in range(100)]
    for acc, costs in pool:
        rule.record_curve([acc], costs)
        reference.record_curve([acc], costs)
    rule = pickle.loads(pickle.dumps(rule))
    for i in range(120):
        acc, costs = rng.choice(pool) if i % 3 == 0 else (round(rng.uniform(0.1, 0.5), 2), rng.choice(pool)[1])
        assert rule.should_continue(1, acc, costs) == reference.should_continue(1, acc, costs)
    _same_fronts(rule, reference)


def test_a_pareto_rung_takes_one_number_of_costs():
    rule = Asha(1, 2, 4, rank="pareto")
    rule.should_continue(1, 0.5, (1e6, 1e4))
    with pytest.raises(ValueError, match="2 costs each, got 1"):
        rule.should_continue(1, 0.5, (1e6,))
    assert len(rule.rungs[1]) == 1
    assert Asha(1, 2, 4, rank="accuracy").should_continue(1, 0.5, (1e6,))  # accuracy alone: costs unused


def test_a_rule_unpickled_with_read_only_arrays_keeps_deciding():
    """Ray hands an actor its rule with numpy arrays that are read-only views of the object store;
    the rule owns writable copies once unpickled (a resumed sweep's rebuilt rungs failed here)."""
    import pickle

    from search.asha import Asha

    rule = Asha(1, 2, 4, rank="pareto")
    for i in range(5):
        rule.record_curve([0.1 * i, 0.2 * i], (1000 * (i + 1), 10 * (i + 1)))
    rule.should_continue(1, 0.3, (2500, 25))  # the rung's arrays exist now
    buffers: list = []
    data = pickle.dumps(rule, protocol=5, buffer_callback=buffers.append)  # as Ray ships it
    again = pickle.loads(data, buffers=[memoryview(b.raw()).toreadonly() for b in buffers])
    assert again.should_continue(1, 0.9, (500, 5)) is True
    assert again.should_continue(1, 0.0, (90000, 900)) is False
