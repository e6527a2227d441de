"""What a worker is sent: the study's training settings for one family (the one mapping from the
study file's ``train:`` section to ``trainers.train.TrainConfig``), the exact costs the rung rule
ranks on, and where the trial's files go."""
from __future__ import annotations

import dataclasses

from search.config import StudyConfig
from search.lineage import NONFINITE_RETRIES_ATTR
from search.seeds import SEED_ATTR
from search.sweep.backends import TrialSpec

__all__ = ["train_settings", "rung_costs", "artifact_folder", "trial_spec"]

# TrainSection keys that are not TrainConfig fields: how the settings are chosen, not a setting.
_NOT_TRAINER_KEYS = ("recipe",)


def train_settings(cfg: StudyConfig, family: str) -> dict:
    """``TrainConfig`` fields for a trial of ``family``: every key of the study's ``train:`` section
    as written (its defaults are the only ones: none of TrainConfig's own apply), the fidelity's
    epochs, the device and threads of ``resources:``, and with ``recipe: paper`` the family's recipe."""
    t, res = cfg.train, cfg.resources
    settings = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name not in _NOT_TRAINER_KEYS}
    settings.update(epochs=cfg.fidelity.epochs, device="cuda" if res.gpus_per_trial > 0 else "cpu",
                    threads=max(1, int(res.cpus_per_trial)))
    if t.recipe == "paper":
        from trainers.recipes import paper_recipe

        settings.update(paper_recipe(family))
    return settings


def rung_costs(cfg: StudyConfig, macs: int | None, params: int | None) -> tuple:
    """The exact costs the rung rule ranks on: the study's cost objectives that are known before
    training (MACs, params); MACs when the study has neither."""
    table = {"macs": macs, "params": params}
    names = [o for o in cfg.objectives if o in table] or ["macs"]
    return tuple(table[n] or 0 for n in names)


def artifact_folder(cfg: StudyConfig, key: str) -> str:
    """Where the trial's checkpoints and deploy weights go (``search.artifacts``): the configured
    location, else the run directory on this machine (workers elsewhere reach it through Ray)."""
    if cfg.artifacts:
        from search.artifacts import to_uri

        return f"{to_uri(cfg.artifacts).rstrip('/')}/{cfg.study}/{key}"
    return str((cfg.run_path / "checkpoints" / key).resolve())


def trial_spec(cfg: StudyConfig, proposal, cost: dict) -> TrialSpec:
    """The spec of ``proposal`` (a ``search.proposal.Proposal``) priced at ``cost``."""
    use_gpu = cfg.resources.gpus_per_trial > 0
    train = train_settings(cfg, proposal.family)
    diverged = proposal.trial.user_attrs.get(NONFINITE_RETRIES_ATTR, 0)
    if diverged:  # a diverged configuration's retry starts afresh from another random state
        train["retry_seed_offset"] = diverged
    return TrialSpec(number=proposal.number, family=proposal.family, knobs=proposal.knobs_dict, train=train,
                     rung_costs=rung_costs(cfg, cost["macs"], cost["params"]),
                     checkpoint_dir=artifact_folder(cfg, proposal.key),
                     max_latency_ms=cfg.constraints.max_latency_ms,
                     measure_latency="latency" in cfg.objectives, use_gpu=use_gpu,
                     latency=cfg.latency_setup() if cfg.measures_latency else None,
                     # A seed is a reference: stopped at a rung, it would say nothing about the search.
                     early_stopping=SEED_ATTR not in proposal.trial.user_attrs)
