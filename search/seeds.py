"""Seeds: known designs trained first, so that a study starts from them and shows whether it beat them.

A study file's ``seeds:`` lists the papers' presets by name (``condensenet-86``) or explicit designs
(``{family: igcv2, knobs: {...}, name: my-igc}``). Each is checked when the study file is read (the
preset exists, its family is searched, its knobs are valid and inside the study's knob ranges) and
again once the data shape is known (its costs meet the study's MACs/params limits:
``search.feasibility.check_seed_costs``). The sweep
enqueues every seed that no trial carries yet, before it asks the sampler for anything, so seeds are
trained first, at the study's fidelity and data shape, and never twice (a resumed or retried seed is
the same trial lineage). Seeds are not stopped at rungs: a reference stopped early says nothing.

A seed trial's only Optuna parameter is ``family``: the papers' designs are not points of the
reparameterised knob draws, so the sampler learns the family choice from them, not their knobs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search.exceptions import StudyFileError

__all__ = ["Seed", "parse_seeds", "SEED_ATTR", "SEED_KNOBS_ATTR"]

SEED_ATTR = "seed"              # user attribute: the seed's name
SEED_KNOBS_ATTR = "seed_knobs"  # user attribute: its knobs (JSON form), read instead of drawing


@dataclass(frozen=True)
class Seed:
    name: str
    family: str
    knobs: Any          # the family's knob dataclass
    knobs_dict: dict    # its JSON form


def _from_preset(path: str, key: str, name: str) -> Seed:
    from space.registry import get_preset, knobs_json, list_presets

    if name not in list_presets():
        raise StudyFileError(path, key, f"unknown preset {name!r}; valid presets: {', '.join(list_presets())}, "
                                        f"or write {{family: .., knobs: {{..}}}}")
    preset = get_preset(name)
    return Seed(name, preset.family, preset.knobs, knobs_json(preset.knobs))


def _from_design(path: str, key: str, raw: dict, index: int) -> Seed:
    from space.registry import get_family, knobs_json, list_families

    unknown = sorted(set(raw) - {"family", "knobs", "name"})
    if unknown:
        raise StudyFileError(path, f"{key}.{unknown[0]}", "unknown key; a seed design has family, knobs and "
                                                          "optionally name")
    family = raw.get("family")
    if family not in list_families():
        raise StudyFileError(path, f"{key}.family", f"unknown family {family!r}; valid families: {list_families()}")
    knobs = raw.get("knobs") or {}
    if not isinstance(knobs, dict):
        raise StudyFileError(path, f"{key}.knobs", f"expected a mapping of knob names to values, got {knobs!r}")
    try:
        fam = get_family(family)
        # The family's defaults with the given knobs, whole (`growth: [8, 16, 32]`) or one stage
        # (`growth.1: 16`); not knobs_from_dict, which reads absent knobs as a stored record meant them.
        built = fam.knobs_with(fam.default_knobs(), knobs)
    except (TypeError, ValueError) as e:
        raise StudyFileError(path, f"{key}.knobs", str(e)) from None
    name = raw.get("name") or f"{family}-seed{index}"
    if not isinstance(name, str):
        raise StudyFileError(path, f"{key}.name", f"expected a string, got {name!r}")
    return Seed(name, family, built, knobs_json(built))


def _field_value(knobs: dict, param: str):
    """The seed's value of a space parameter named like a knob (``growth`` or ``growth.1``);
    ``(False, None)`` for parameters the space reparameterises (no knob of that name)."""
    if param in knobs and not isinstance(knobs[param], list):
        return True, knobs[param]
    base, _, index = param.rpartition(".")
    if base in knobs and isinstance(knobs[base], list) and index.isdigit() and int(index) < len(knobs[base]):
        return True, knobs[base][int(index)]
    return False, None


def _contains(dist, value) -> bool:
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return any(value == c and type(value) is type(c) for c in dist.choices)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high


def _check_ranges(path: str, key: str, seed: Seed, overrides: dict) -> None:
    """Every knob range the study file sets, that names a knob of the seed, holds the seed's value."""
    from space.knobs import apply_overrides
    from space.registry import get_family

    space = apply_overrides(get_family(seed.family).search_space(),
                            {f"{seed.family}.{k}": v for k, v in overrides.items()})
    for param in overrides:
        found, value = _field_value(seed.knobs_dict, param)
        if found and not _contains(space[f"{seed.family}.{param}"], value):
            raise StudyFileError(path, key, f"seed {seed.name!r} has {param} = {value!r}, outside the study's "
                                            f"range families.{seed.family}.knobs.{param} = {overrides[param]!r}; "
                                            f"widen the range or drop the seed")


def parse_seeds(raw: tuple, families: dict, path: str) -> tuple[Seed, ...]:
    """The study file's ``seeds:`` as :class:`Seed` s, checked against the searched families and
    their knob ranges (costs are checked by :func:`check_seed_costs` once the data shape is known)."""
    seeds, names = [], {}
    for i, item in enumerate(raw):
        key = f"seeds[{i}]"
        if isinstance(item, str):
            seed = _from_preset(path, key, item)
        elif isinstance(item, dict):
            seed = _from_design(path, key, item, i)
        else:
            raise StudyFileError(path, key, f"expected a preset name or {{family: .., knobs: {{..}}}}, got {item!r}")
        if seed.family not in families:
            raise StudyFileError(path, key, f"seed {seed.name!r} is a {seed.family} network, but the study does not "
                                            f"search {seed.family!r} (families: {', '.join(families)}); add the family "
                                            f"or drop the seed")
        if seed.name in names:
            raise StudyFileError(path, key, f"seed name {seed.name!r} is used twice (also seeds[{names[seed.name]}])")
        _check_ranges(path, key, seed, families[seed.family].knobs)
        names[seed.name] = i
        seeds.append(seed)
    return tuple(seeds)
