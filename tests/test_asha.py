"""The rung rule on synthetic curves: Pareto ranking keeps the cheap end of the front that ranking by
accuracy alone stops, and its decisions do not depend on the order results arrived in."""
from __future__ import annotations

import random

import pytest

from search.asha import Asha, pareto_order_keys, _point

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
