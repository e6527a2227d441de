"""`python -m search validate`: what a study file would search, before anything runs."""
from __future__ import annotations

import random

from search.config import StudyConfig
from search.feasibility import cost_constraints, is_feasible
from search.proposal import family_spaces

__all__ = ["describe_study"]

def _extremes(cfg: StudyConfig, name: str, space: dict, samples: int, meta: dict,
              drawn: set | None = None) -> list[str]:
    """The MACs and params that ``samples`` random configurations span, and the cheapest and largest
    of those that meet the budget; the knobs any sample drew are added to ``drawn``."""
    from space.cost import measure
    from space.knobs import draw_random
    from space.registry import get_family

    rng, family, feasible, all_macs, all_params = random.Random(0), get_family(name), [], [], []
    for _ in range(samples):
        record: dict = {}
        knobs = family.sample(draw_random(space, rng, record))
        if drawn is not None:
            drawn.update(record)
        cost = measure(name, knobs, num_classes=meta["num_classes"], image_size=meta["image_size"],
                       in_channels=meta["in_channels"])
        all_macs.append(cost.macs)
        all_params.append(cost.params)
        if is_feasible(cost_constraints(cfg, cost.as_dict())):
            feasible.append((cost.macs, cost.params, knobs))
    lines = [f"    {samples} random samples span {min(all_macs):,}-{max(all_macs):,} MACs and "
             f"{min(all_params):,}-{max(all_params):,} params at {meta['image_size']}x{meta['image_size']}"]
    limit = cfg.constraints.max_macs
    if limit is None and max(all_macs) > 1e10:
        lines.append(f"    warning: with no constraints.max_macs, the largest samples cost over 1e10 MACs per image "
                     f"(hours per epoch on a CPU); set constraints.max_macs or narrow the ranges")
    elif limit is not None and max(all_macs) > 100 * limit:
        share = 1 - len(feasible) / samples
        lines.append(f"    warning: the largest samples cost {max(all_macs) / limit:,.0f}x constraints.max_macs; "
                     f"{share:.0%} of proposals would be refused before training; narrow the ranges")
    if not feasible:
        return lines + [f"    none of {samples} random samples meets the budget: widen `constraints:` or the ranges"]
    feasible.sort(key=lambda x: x[0])
    lines.append(f"    {len(feasible)}/{samples} random samples meet the budget")
    for label, (macs, params, knobs) in (("cheapest", feasible[0]), ("largest", feasible[-1])):
        lines.append(f"    {label}: {macs:,} MACs, {params:,} params: {knobs}")
    return lines


def _constraints_text(cfg: StudyConfig) -> str:
    c = cfg.constraints
    limits = [f"{name} {value:,.0f}" if name != "max_latency_ms" else f"{name} {value:g}"
              for name, value in (("max_macs", c.max_macs), ("max_params", c.max_params),
                                  ("max_latency_ms", c.max_latency_ms)) if value is not None]
    text = ", ".join(limits) or "none (every proposal is trained, however large)"
    if cfg.measures_latency:
        lat = cfg.latency_setup()
        text += (f"; latency measured on the worker in {lat['runtime']} ({lat['device']}, {lat['threads']} "
                 f"thread{'s' if lat['threads'] > 1 else ''}, batch {lat['batch']}, median of {lat['repeats']})")
    return text


def _seed_lines(cfg: StudyConfig, meta: dict) -> list[str]:
    """Each seed's costs at the study's data shape (`preflight` has refused seeds over the limits)."""
    from search.feasibility import price

    if not cfg.seeds:
        return []
    lines = [f"seeds ({len(cfg.seeds)}, trained first):"]
    for seed in cfg.seeds:
        cost, _ = price(cfg, seed.family, seed.knobs, meta)
        lines.append(f"    {seed.name:24s} {seed.family:12s} {cost['macs']:,} MACs, {cost['params']:,} params")
    return lines


def describe_study(cfg: StudyConfig, samples: int = 300) -> str:
    """What the study would search, after every check `run` makes before writing anything.

    Raises:
        EffnasError: the first problem `run` would report, with the same message.
    """
    from search.sweep import Sweep
    from space.knobs import describe_distribution, space_size

    sweep = Sweep(cfg, log=lambda _: None)
    sweep.preflight()
    meta = sweep.data_meta

    lines = [f"study {cfg.study} ({cfg.path}) -> {cfg.storage_url}",
             f"data: {cfg.data.dataset}, train {cfg.data.train_size or 'all'}, val {cfg.data.val_size}, "
             f"image {cfg.data.image_size or 'native'}; {cfg.fidelity.epochs} epochs"
             + (f", ASHA grace {cfg.fidelity.asha.grace_period} rf {cfg.fidelity.asha.reduction_factor}"
                if cfg.fidelity.asha else ""),
             f"objectives: {', '.join(f'{o} ({d[:3]})' for o, d in zip(cfg.objectives, cfg.directions))}",
             f"budget: {cfg.budget.n_trials} trials; constraints: {_constraints_text(cfg)}",
             f"sampler: {cfg.sampler.name} (seed {cfg.sampler.seed})",
             f"proxies: {', '.join(cfg.proxies.names) or 'off'}"
             + (f"; prescreen: train the best {cfg.prescreen.keep:g} of every {cfg.prescreen.pool} proposals "
                f"by {cfg.prescreen.proxy} for their cost" if cfg.prescreen else "")]
    lines += _seed_lines(cfg, meta)
    for name, space in family_spaces(cfg).items():
        drawn: set = set()
        costs = _extremes(cfg, name, space, samples, meta, drawn)
        # Knobs no sample draws cannot apply (layers.3 of a 3-stage network): neither listed nor counted.
        used = {k: d for k, d in space.items() if k in drawn}
        size = space_size(used)
        unused = len(space) - len(used)
        lines.append(f"family {name}: {len(used)} knobs, "
                     + (f"{size:,} configurations" if size is not None else "continuous space")
                     + (f" ({unused} knobs that these settings never use left out)" if unused else ""))
        for key, dist in used.items():
            lines.append(f"    {key:32s} {describe_distribution(dist)}")
        lines += costs
    return "\n".join(lines)
