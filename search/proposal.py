"""Proposing architectures: each family's search space with the study file's overrides (built once
per run), and one draw of a family and its knobs through an Optuna trial.

Knobs are parsed once into the family's knob dataclass (valid by construction); their JSON form is
made once here, for the dedup key, the record and the processes it is sent to.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from search.config import StudyConfig
from search.record import arch_key

__all__ = ["Proposal", "family_spaces", "propose", "seed_proposal"]


@dataclass
class Proposal:
    """An asked trial with its architecture; priced and decided on by the sweep."""

    trial: Any                   # the live optuna.Trial
    family: str
    knobs: Any                   # the family's knob dataclass
    knobs_dict: dict             # its JSON form (database, other processes)
    key: str                     # arch_key at the study's fidelity
    asked_at: float = field(default_factory=time.perf_counter)
    queued_at: float | None = None  # when it started waiting for a free worker

    @property
    def number(self) -> int:
        return self.trial.number


def family_spaces(cfg: StudyConfig) -> dict[str, dict]:
    """Each family's search space with the study file's overrides applied (prefixed names)."""
    from space.knobs import apply_overrides
    from space.registry import get_family

    return {name: apply_overrides(get_family(name).search_space(),
                                  {f"{name}.{k}": v for k, v in sec.knobs.items()})
            for name, sec in cfg.families.items()}


def draw(trial, spaces: dict[str, dict]) -> tuple[str, Any]:
    """Draw a family and its knobs through ``trial`` (an Optuna trial)."""
    from space.knobs import draw_from_trial
    from space.registry import get_family

    family = trial.suggest_categorical("family", sorted(spaces))
    return family, get_family(family).sample(draw_from_trial(trial, spaces[family]))


def propose(trial, spaces: dict[str, dict], fidelity: dict) -> Proposal:
    """One architecture drawn through ``trial``, with its JSON knobs and dedup key."""
    from space.registry import knobs_json

    family, knobs = draw(trial, spaces)
    knobs_dict = knobs_json(knobs)
    return Proposal(trial, family, knobs, knobs_dict, arch_key(family, knobs_dict, fidelity))


def seed_proposal(trial, spaces: dict[str, dict], fidelity: dict) -> Proposal:
    """The seed a queued ``trial`` carries (``search.seeds``): its family is the trial's one
    parameter, its knobs come from the trial's user attributes instead of a draw."""
    from search.seeds import SEED_KNOBS_ATTR
    from space.registry import get_family

    family = trial.suggest_categorical("family", sorted(spaces))
    knobs_dict = trial.user_attrs[SEED_KNOBS_ATTR]
    knobs = get_family(family).knobs_from_dict(knobs_dict)
    return Proposal(trial, family, knobs, knobs_dict, arch_key(family, knobs_dict, fidelity))
