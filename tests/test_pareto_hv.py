"""Hypervolume of a front against a reference point, checked against a Monte-Carlo-free brute force
on a grid and against hand-computed boxes."""
from __future__ import annotations

import itertools
import random

import pytest

from search.pareto import hypervolume

MAX_MIN_MIN = ["maximize", "minimize", "minimize"]


def test_one_point_is_its_box():
    assert hypervolume([[0.8, 2.0, 3.0]], MAX_MIN_MIN, [0.0, 10.0, 10.0]) == pytest.approx(0.8 * 8 * 7)


def test_two_objectives_staircase():
    pts = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
    # minimise both against (4, 4): 3x1 + 2x1 + 1x1 stacked as a staircase = 6
    assert hypervolume(pts, ["minimize", "minimize"], [4.0, 4.0]) == pytest.approx(6.0)


def test_points_outside_the_reference_and_dominated_ones_add_nothing():
    base = hypervolume([[0.8, 2.0, 3.0]], MAX_MIN_MIN, [0.0, 10.0, 10.0])
    more = hypervolume([[0.8, 2.0, 3.0], [0.5, 4.0, 5.0], [0.9, 11.0, 1.0], [-0.1, 1.0, 1.0]],
                       MAX_MIN_MIN, [0.0, 10.0, 10.0])
    assert more == pytest.approx(base)


def _grid_volume(points, ref, n=40) -> float:
    """Count grid cells (centres) dominated by some point: all objectives minimised, box [0, ref]."""
    cells = 0
    steps = [r / n for r in ref]
    for idx in itertools.product(range(n), repeat=3):
        c = [(i + 0.5) * s for i, s in zip(idx, steps)]
        if any(all(p[k] <= c[k] for k in range(3)) for p in points):
            cells += 1
    return cells * steps[0] * steps[1] * steps[2]


def test_three_objectives_match_a_grid_count():
    rng = random.Random(3)
    # Points on a 20-step lattice, so the grid count at n=40 is exact.
    pts = [[rng.randrange(1, 20) / 20 for _ in range(3)] for _ in range(12)]
    exact = hypervolume(pts, ["minimize"] * 3, [1.0, 1.0, 1.0])
    assert exact == pytest.approx(_grid_volume(pts, [1.0, 1.0, 1.0]), rel=1e-9)


def _brute_force(points, directions):
    signs = [1 if d == "maximize" else -1 for d in directions]

    def dom(a, b):
        return all(s * x >= s * y for x, y, s in zip(a, b, signs)) and any(s * x > s * y for x, y, s in zip(a, b, signs))

    return [i for i, p in enumerate(points) if not any(dom(q, p) for j, q in enumerate(points) if j != i)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("directions", [["maximize", "minimize"], ["maximize", "minimize", "minimize"],
                                        ["minimize", "minimize", "maximize"]])
def test_vectorised_front_equals_brute_force_with_ties(seed, directions):
    from search.pareto import non_dominated

    rng = random.Random(seed)
    # Coarse values: many ties in one objective and exact duplicates (identical points are all kept).
    points = [[rng.randrange(8) / 8 for _ in directions] for _ in range(300)]
    points += points[:20]
    assert non_dominated(points, directions) == _brute_force(points, directions)
    assert non_dominated([], directions) == []
    assert non_dominated([points[0]], directions) == [0]
