"""`python -m search validate`: what a study file would search, before anything runs."""
from __future__ import annotations

import random

from search.config import StudyConfig
from search.feasibility import cost_constraints, is_feasible
from search.proposal import family_spaces

__all__ = ["describe_study"]

_NATIVE = {"cifar10": (10, 32, 3), "cifar100": (100, 32, 3), "digits": (10, 8, 1), "mnist": (10, 28, 1),
           "fashion_mnist": (10, 28, 1), "npz": (10, 32, 3)}


def _extremes(cfg: StudyConfig, name: str, space: dict, samples: int) -> list[str]:
    """Cheapest and largest of ``samples`` random configurations that meet the budget."""
    from space.cost import measure
    from space.knobs import draw_random
    from space.registry import get_family

    classes, native, channels = _NATIVE[cfg.data.dataset]
    size = cfg.data.image_size or native
    rng, family, feasible = random.Random(0), get_family(name), []
    for _ in range(samples):
        knobs = family.sample(draw_random(space, rng))
        cost = measure(name, knobs, num_classes=classes, image_size=size, in_channels=channels)
        if is_feasible(cost_constraints(cfg, cost.as_dict())):
            feasible.append((cost.macs, cost.params, knobs))
    if not feasible:
        return [f"    none of {samples} random samples meets the budget: widen `constraints:` or the ranges"]
    feasible.sort(key=lambda x: x[0])
    lines = [f"    {len(feasible)}/{samples} random samples meet the budget"]
    for label, (macs, params, knobs) in (("cheapest", feasible[0]), ("largest", feasible[-1])):
        lines.append(f"    {label}: {macs:,} MACs, {params:,} params: {knobs}")
    return lines


def _seed_lines(cfg: StudyConfig) -> list[str]:
    """Each seed's costs at the study's data shape; a seed over the limits fails here as in `run`."""
    from search.feasibility import price
    from search.seeds import check_seed_costs

    if not cfg.seeds:
        return []
    classes, native, channels = _NATIVE[cfg.data.dataset]
    meta = {"num_classes": classes, "image_size": cfg.data.image_size or native, "in_channels": channels}
    check_seed_costs(cfg, meta)
    lines = [f"seeds ({len(cfg.seeds)}, trained first):"]
    for seed in cfg.seeds:
        cost, _ = price(cfg, seed.family, seed.knobs, meta)
        lines.append(f"    {seed.name:24s} {seed.family:12s} {cost['macs']:,} MACs, {cost['params']:,} params")
    return lines


def describe_study(cfg: StudyConfig, samples: int = 300) -> str:
    from space.knobs import describe_distribution, space_size

    lines = [f"study {cfg.study} ({cfg.path}) -> {cfg.storage_url}",
             f"data: {cfg.data.dataset}, train {cfg.data.train_size or 'all'}, val {cfg.data.val_size}, "
             f"image {cfg.data.image_size or 'native'}; {cfg.fidelity.epochs} epochs"
             + (f", ASHA grace {cfg.fidelity.asha.grace_period} rf {cfg.fidelity.asha.reduction_factor}"
                if cfg.fidelity.asha else ""),
             f"objectives: {', '.join(f'{o} ({d[:3]})' for o, d in zip(cfg.objectives, cfg.directions))}",
             f"budget: {cfg.budget.n_trials} trials; constraints: max_macs {cfg.constraints.max_macs}, "
             f"max_params {cfg.constraints.max_params}, max_latency_ms {cfg.constraints.max_latency_ms}",
             f"sampler: {cfg.sampler.name} (seed {cfg.sampler.seed})",
             f"proxies: {', '.join(cfg.proxies.names) or 'off'}"
             + (f"; prescreen: train the best {cfg.prescreen.keep:g} of every {cfg.prescreen.pool} proposals "
                f"by {cfg.prescreen.proxy} for their cost" if cfg.prescreen else "")]
    lines += _seed_lines(cfg)
    for name, space in family_spaces(cfg).items():
        size = space_size(space)
        lines.append(f"family {name}: {len(space)} knobs, "
                     + (f"{size:,} configurations" if size is not None else "continuous space"))
        for key, dist in space.items():
            lines.append(f"    {key:32s} {describe_distribution(dist)}")
        lines += _extremes(cfg, name, space, samples)
    return "\n".join(lines)
