"""A trial's lineage: queueing a trial again with everything that makes it the same proposal.

A re-queued trial (a retry after a failure, a trial its driver left running, a trial whose driver
stopped beating on a shared database) must come back as the same proposal: the same parameters, and
the user attributes that say what it is: the seed it trains (its name and knobs: a seed is trained
with its own knobs and never stopped at a rung), pre-screening's verdict (a trial already chosen is
not screened again), which trial it retries and its attempt number. :func:`requeue` is the one way
to do it, for the driver and for the stale-trial path of shared databases alike.
"""
from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from search.seeds import SEED_ATTR, SEED_KNOBS_ATTR

__all__ = ["LINEAGE_ATTRS", "PRESCREEN_KEPT_ATTR", "NONFINITE_RETRIES_ATTR", "requeue", "requeue_params"]

PRESCREEN_KEPT_ATTR = "prescreen_kept"   # user attribute: pre-screening chose this trial to train
NONFINITE_RETRIES_ATTR = "nonfinite_retries"  # user attribute: diverged attempts before this one
LINEAGE_ATTRS = (SEED_ATTR, SEED_KNOBS_ATTR, PRESCREEN_KEPT_ATTR, NONFINITE_RETRIES_ATTR)  # carried to every copy


def requeue_params(trial: FrozenTrial) -> dict | None:
    """The parameters to queue again: those drawn, else those it was queued with (a seed or a retry
    killed right after ``ask`` has drawn nothing yet); None when there is nothing to repeat."""
    if trial.params:
        return dict(trial.params)
    fixed = getattr(trial, "system_attrs", {}).get("fixed_params")  # a FrozenTrial's (a live trial has drawn)
    return dict(fixed) if fixed else None


def requeue(study: optuna.Study, trial: FrozenTrial, attempt: int, reason: str | None = None,
            diverged: bool = False) -> bool:
    """Queue ``trial`` again as attempt ``attempt`` of the same proposal; False when it drew nothing
    and carries no lineage (a plain sampler trial killed before its first draw: nothing is lost).
    ``diverged``: it failed with a non-finite loss; the copy trains from another random state
    (``trainers.train.TrainConfig.retry_seed_offset``), where a crash's retry resumes the same one."""
    params = requeue_params(trial)
    if params is None:
        return False
    attrs = {"retry_of": trial.number, "attempt": attempt}
    if reason is not None:
        attrs["retry_reason"] = reason
    for key in LINEAGE_ATTRS:
        if key in trial.user_attrs:
            attrs[key] = trial.user_attrs[key]
    if diverged:
        attrs[NONFINITE_RETRIES_ATTR] = trial.user_attrs.get(NONFINITE_RETRIES_ATTR, 0) + 1
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
    return True
