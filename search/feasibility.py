"""Can this architecture be trained? The one place that decides, before and after measuring.

Costs (params, MACs of both forms) come from the exact cost model before any training; latency is
measured on the worker. Each limit becomes a constraint value relative to the limit (<= 0 is
feasible, Optuna's convention), so that samplers see comparable magnitudes. The driver, `validate`
and the worker's latency check all ask here.
"""
from __future__ import annotations

import random
from typing import Any

from search.config import StudyConfig
from search.exceptions import BudgetUnreachableError, StudyFileError

__all__ = ["price", "cost_constraints", "is_feasible", "latency_constraint", "latency_within",
           "check_budget_reachable", "check_seed_costs"]


def cost_constraints(cfg: StudyConfig, cost: dict[str, Any]) -> dict[str, float]:
    """Constraint values of the study's MACs/params limits for ``cost`` (empty when unlimited)."""
    c = cfg.constraints
    constraints = {}
    if c.max_macs is not None:
        constraints["max_macs"] = cost["macs"] / c.max_macs - 1.0
    if c.max_params is not None:
        constraints["max_params"] = cost["params"] / c.max_params - 1.0
    return constraints


def price(cfg: StudyConfig, family: str, knobs, data_meta: dict) -> tuple[dict, dict[str, float]]:
    """Costs of an architecture (``space.cost.Cost.as_dict``) and its constraint values."""
    from space.cost import measure

    cost = measure(family, knobs, num_classes=data_meta["num_classes"], image_size=data_meta["image_size"],
                   in_channels=data_meta["in_channels"]).as_dict()
    return cost, cost_constraints(cfg, cost)


def is_feasible(constraints: dict[str, float]) -> bool:
    return not constraints or max(constraints.values()) <= 0


def latency_constraint(latency_ms: float, limit_ms: float) -> float:
    return latency_ms / limit_ms - 1.0


def latency_within(latency_ms: float, limit_ms: float | None) -> bool:
    return limit_ms is None or latency_constraint(latency_ms, limit_ms) <= 0


def check_budget_reachable(cfg: StudyConfig, spaces: dict[str, dict], data_meta: dict) -> None:
    """Refuse, before anything is written, a budget that no architecture of the space meets.

    Probes each family's lowest corner (smallest value of every knob) and a few random samples.

    Raises:
        BudgetUnreachableError: no probe meets ``max_macs`` / ``max_params``.
    """
    from space.knobs import draw_random
    from space.registry import get_family

    c = cfg.constraints
    if c.max_macs is None and c.max_params is None:
        return
    rng = random.Random(0)
    for name, space in spaces.items():
        family = get_family(name)
        lowest = {k: (d.choices[0] if hasattr(d, "choices") else d.low) for k, d in space.items()}
        probes = [family.sample(lowest.__getitem__)] + [family.sample(draw_random(space, rng)) for _ in range(20)]
        for knobs in probes:
            if is_feasible(price(cfg, name, knobs, data_meta)[1]):
                return
    raise BudgetUnreachableError(
        f"{cfg.path}: constraints: no probed architecture meets max_macs={c.max_macs} / "
        f"max_params={c.max_params} (the smallest corner of every family is over budget); raise the "
        f"limits or narrow the families' knobs towards smaller networks (`python -m search validate`)")


def check_seed_costs(cfg, data_meta: dict) -> None:
    """Refuse a seed over the study's MACs/params limits at its data shape (before anything is written)."""
    for i, seed in enumerate(cfg.seeds):
        cost, constraints = price(cfg, seed.family, seed.knobs, data_meta)
        if not is_feasible(constraints):
            over = ", ".join(f"{k[4:]} {cost[k[4:]]:,} > {getattr(cfg.constraints, k):,.0f}"
                             for k, v in constraints.items() if v > 0)
            raise StudyFileError(cfg.path, f"seeds[{i}]", f"seed {seed.name!r} breaks the study's constraints at "
                                                          f"{data_meta['image_size']}x{data_meta['image_size']} "
                                                          f"({over}); raise the limit or drop the seed")
