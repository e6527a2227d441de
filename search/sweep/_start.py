"""Starting (or resuming) a sweep from what the study holds: trials a dead driver left running
re-queued, seeds queued, the policy's tallies and the rung tables rebuilt."""
from __future__ import annotations

from typing import Callable

import optuna
from optuna.trial import TrialState

from search.asha import Asha
from search.config import StudyConfig
from search.lineage import PRESCREEN_KEPT_ATTR, requeue
from search.record import TrialStatus, read_record, trial_status
from search.seeds import SEED_ATTR, SEED_KNOBS_ATTR
from search.storage import budget_lock, reap_stale_trials
from search.storage import _optuna_compat as compat
from search.sweep._policy import SweepPolicy, budget_used
from search.sweep._spec import rung_costs

__all__ = ["recover", "enqueue_seeds", "rung_rule", "make_policy"]


def recover(study: optuna.Study, shared_db: bool) -> int:
    """Mark trials a dead driver left RUNNING as interrupted and queue them again, lineage and all.

    On SQLite this driver holds the study's lock, so every RUNNING trial is orphaned. On a shared
    database only trials whose heartbeat stopped are, or that never beat and started longer ago than
    the grace period (their driver died between ``ask`` and the first heartbeat); they are re-queued
    under the budget lock (``search.storage.reap_stale_trials``). A trial whose retry is already
    queued (its driver died between queueing the retry and telling the failure) is not queued twice."""
    if shared_db:
        return reap_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    stale = [t for t in trials if t.state == TrialState.RUNNING]
    for t in stale:
        compat.fail_trial(study, t, {"status": TrialStatus.INTERRUPTED.value,
                                     "failure_reason": "interrupted: the driver stopped while this trial ran"})
        if t.number not in retried:
            requeue(study, t, t.user_attrs.get("attempt", 0))
    return len(stale)


def enqueue_seeds(cfg: StudyConfig, study: optuna.Study, log: Callable[[str], None]) -> None:
    """Queue every seed no live lineage carries yet (a seed trained, running or queued is its own
    lineage: retries carry it on; one whose lineage ended in a final failure is not tried again).
    Queued trials are asked before the sampler is, so the seeds are trained first. A seed is the
    user's own design: pre-screening never screens it out (it is queued as already chosen)."""
    if not cfg.seeds:
        return
    with budget_lock(study, cfg.storage_url):  # two drivers starting together queue each seed once
        known = {t.user_attrs.get(SEED_ATTR) for t in study.get_trials(deepcopy=False)}
        new = [s for s in cfg.seeds if s.name not in known]
        for seed in new:
            study.enqueue_trial({"family": seed.family}, skip_if_exists=False,
                                user_attrs={SEED_ATTR: seed.name, SEED_KNOBS_ATTR: seed.knobs_dict,
                                            PRESCREEN_KEPT_ATTR: True})
    if new:
        log(f"{len(new)} seed(s) queued to train first: {', '.join(s.name for s in new)}")


def rung_rule(cfg: StudyConfig, study: optuna.Study) -> Asha | None:
    """The study's rung rule, its rungs filled as a sweep that never stopped would have filled them:
    one curve per lineage (a trial and its retries), the longest any attempt recorded, failed
    attempts included (their epochs met the rule too). Seeds never meet the rule (``_spec``)."""
    a = cfg.fidelity.asha
    if a is None:
        return None
    rank = a.rank or ("pareto" if len(cfg.objectives) > 1 else "accuracy")
    rule = Asha(a.grace_period, a.reduction_factor, cfg.fidelity.epochs, rank=rank)
    for rec in lineage_curves(study.get_trials(deepcopy=False)):
        rule.record_curve(rec.curve, rung_costs(cfg, rec.macs, rec.params))
    return rule


def lineage_curves(trials: list) -> list:
    """Per lineage (a trial and the retries queued from it), the record with the longest curve."""
    root: dict[int, int] = {}
    best: dict[int, object] = {}
    for t in sorted(trials, key=lambda t: t.number):
        parent = t.user_attrs.get("retry_of")
        root[t.number] = root.get(parent, parent) if parent is not None else t.number
        status = trial_status(t)
        if not isinstance(status, TrialStatus) or SEED_ATTR in t.user_attrs:
            continue
        if not (status.has_curve or status in (TrialStatus.FAILED, TrialStatus.INTERRUPTED)):
            continue
        rec = read_record(t)
        mine = best.get(root[t.number])
        if rec.curve and (mine is None or len(rec.curve) > len(mine.curve)):
            best[root[t.number]] = rec
    return list(best.values())


def make_policy(cfg: StudyConfig, trials: list, n_more: int | None, shared_db: bool) -> SweepPolicy:
    """The policy of this driver, with the budget already used and the architectures already known."""
    used = budget_used(trials)
    target = used + n_more if n_more is not None else cfg.budget.n_trials
    policy = SweepPolicy(target=target, used=used, max_stalls=cfg.budget.max_stalls,
                         max_retries=cfg.retry.max_retries, retry_nonfinite=cfg.retry.retry_nonfinite,
                         shared=shared_db, max_trials=cfg.budget.max_trials,
                         asked=sum(1 for t in trials if t.state != TrialState.WAITING))
    policy.learn(trials)
    return policy
