"""Shared helpers for knob dataclasses and search spaces.

A family's search space is a flat ``dict[str, optuna distribution]`` with stable hierarchical
names (``rsnet.s1.0``); these names are database keys and must never drift. A study file may fix
or narrow any of them (:func:`apply_overrides`); a family's sampler then reads values through a
``draw(name)`` callable, which is backed by an Optuna trial during a sweep
(:func:`draw_from_trial`) and by a seeded RNG in tests and ``validate`` (:func:`draw_random`).
"""
from __future__ import annotations

import difflib

import math
import random
from typing import Any, Callable, Mapping, Sequence

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

__all__ = [
    "per_stage",
    "require",
    "divisible_up",
    "int_range",
    "float_range",
    "choice",
    "apply_overrides",
    "draw_from_trial",
    "draw_random",
    "space_size",
    "describe_distribution",
]


# --- knob dataclass helpers -------------------------------------------------------------------

def per_stage(value: Any, n: int, name: str) -> tuple:
    """Expand one value, or check a sequence of ``n`` values, into a tuple (timm's cspnet style)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} needs {n} values (one per stage), but got {len(value)}: {tuple(value)}")
        return tuple(value)
    return (value,) * n


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``; used instead of ``assert`` on input."""
    if not condition:
        raise ValueError(message)


def divisible_up(x: float, g: int) -> int:
    """Smallest multiple of ``g`` that is >= ``x`` (the RSNet paper's D_g)."""
    return int(math.ceil(x / g - 1e-9)) * g


# --- distributions ----------------------------------------------------------------------------

def int_range(low: int, high: int, step: int = 1, log: bool = False) -> IntDistribution:
    return IntDistribution(low, high, step=step, log=log)


def float_range(low: float, high: float, step: float | None = None, log: bool = False) -> FloatDistribution:
    return FloatDistribution(low, high, step=step, log=log)


def choice(options: Sequence[Any]) -> CategoricalDistribution:
    return CategoricalDistribution(tuple(options))


def describe_distribution(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        if len(dist.choices) == 1:
            return f"= {dist.choices[0]!r}"
        return "one of " + ", ".join(repr(c) for c in dist.choices)
    if dist.low == dist.high:
        return f"= {dist.low!r}"
    step = getattr(dist, "step", None)
    extra = f" step {step}" if step not in (None, 1) else ""
    extra += " (log)" if getattr(dist, "log", False) else ""
    return f"[{dist.low!r}, {dist.high!r}]{extra}"


def space_size(space: Mapping[str, BaseDistribution]) -> int | None:
    """Number of distinct points of a space, or None when a float range makes it infinite."""
    total = 1
    for dist in space.values():
        if isinstance(dist, CategoricalDistribution):
            total *= len(dist.choices)
        elif isinstance(dist, IntDistribution):
            if dist.log and dist.step != 1:
                return None
            total *= (dist.high - dist.low) // dist.step + 1
        elif isinstance(dist, FloatDistribution):
            if dist.low == dist.high:
                continue
            if dist.step is None:
                return None
            total *= int(round((dist.high - dist.low) / dist.step)) + 1
    return total


# --- overrides from a study file ---------------------------------------------------------------

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _narrow_numeric(name: str, dist, spec: Any):
    """Fixed value, ``[low, high]`` or ``{low, high}`` inside the default range of ``dist``."""
    is_int = isinstance(dist, IntDistribution)
    kind = "an integer" if is_int else "a number"
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"low", "high"}
        if unknown or not {"low", "high"} <= set(spec):
            raise ValueError(f"{name}: a range is written {{low: .., high: ..}} or [low, high], got {dict(spec)!r}")
        spec = [spec["low"], spec["high"]]
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2 or not all(_is_number(v) for v in spec):
            raise ValueError(f"{name}: expected [low, high] with two numbers, got {list(spec)!r}")
        low, high = spec
    elif _is_number(spec):
        low = high = spec
    else:
        raise ValueError(f"{name}: expected {kind}, a [low, high] range, or {{low, high}}; got {spec!r}")
    if is_int and not (float(low).is_integer() and float(high).is_integer()):
        raise ValueError(f"{name}: expected integers, got {spec!r}")
    if low > high:
        raise ValueError(f"{name}: low must be <= high, but got low={low!r}, high={high!r}")
    if low < dist.low or high > dist.high:
        raise ValueError(
            f"{name}: {spec!r} lies outside the family's range [{dist.low}, {dist.high}]"
        )
    if is_int:
        low, high = int(low), int(high)
        step = dist.step
        if (low - dist.low) % step or (high - dist.low) % step:
            raise ValueError(f"{name}: values must be {dist.low} + a multiple of {step}, got {spec!r}")
        return IntDistribution(low, high, step=step, log=dist.log and low != high)
    step = dist.step if low != high else None
    return FloatDistribution(float(low), float(high), step=step, log=dist.log and low != high)


def _narrow_choices(name: str, dist: CategoricalDistribution, spec: Any) -> CategoricalDistribution:
    chosen = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not chosen:
        raise ValueError(f"{name}: needs at least one choice out of {list(dist.choices)}")
    # Compare types too: True == 1 in Python, but a bool knob must not accept 1.
    bad = [c for c in chosen if not any(c == d and type(c) is type(d) for d in dist.choices)]
    if bad:
        raise ValueError(f"{name}: {bad!r} not among the valid choices {list(dist.choices)}")
    return CategoricalDistribution(tuple(chosen))


def apply_overrides(space: Mapping[str, BaseDistribution], overrides: Mapping[str, Any]) -> dict:
    """Return ``space`` with some parameters fixed or narrowed.

    Overrides map a parameter name to a fixed value, a ``[low, high]`` range (int/float), or a list
    of allowed choices (categorical). Every value must lie inside the family's default range, so a
    study can narrow a space but never step outside what the family knows to be valid.

    Raises:
        ValueError: naming the parameter, the value and what is expected.
    """
    out = dict(space)
    for name, spec in overrides.items():
        if name not in space:
            close = difflib.get_close_matches(name, list(space), n=1)
            hint = f" (did you mean {close[0].split('.', 1)[-1]!r}?)" if close else ""
            raise ValueError(f"unknown knob {name!r}{hint}; valid knobs: {sorted(space)}")
        dist = space[name]
        if isinstance(dist, CategoricalDistribution):
            out[name] = _narrow_choices(name, dist, spec)
        else:
            out[name] = _narrow_numeric(name, dist, spec)
    return out


# --- drawing ------------------------------------------------------------------------------------

def draw_from_trial(trial, space: Mapping[str, BaseDistribution]) -> Callable[[str], Any]:
    """``draw(name)`` that asks an Optuna trial (records the parameter in the study)."""

    def draw(name: str) -> Any:
        dist = space[name]
        if isinstance(dist, CategoricalDistribution):
            return trial.suggest_categorical(name, dist.choices)
        if isinstance(dist, IntDistribution):
            return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)

    return draw


def draw_random(space: Mapping[str, BaseDistribution], rng: random.Random,
                record: dict | None = None) -> Callable[[str], Any]:
    """``draw(name)`` backed by a seeded RNG; optionally records what it drew into ``record``."""

    def draw(name: str) -> Any:
        dist = space[name]
        if isinstance(dist, CategoricalDistribution):
            value = rng.choice(dist.choices)
        elif isinstance(dist, IntDistribution):
            if dist.log:
                value = int(round(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))))
                value = min(dist.high, max(dist.low, value))
            else:
                value = rng.randrange(dist.low, dist.high + 1, dist.step)
        else:
            if dist.log:
                value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
            elif dist.step:
                n = int(round((dist.high - dist.low) / dist.step))
                value = dist.low + rng.randint(0, n) * dist.step
            else:
                value = rng.uniform(dist.low, dist.high)
        if record is not None:
            record[name] = value
        return value

    return draw
