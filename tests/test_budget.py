"""The budget rule on its own (no Ray): which recorded trials use up ``budget.n_trials``.

A trial uses the budget once it occupied a worker to an outcome: trained, stopped at a rung, or
failed with no retry left (``final``). Proposals that never reached a worker (infeasible,
duplicate, surplus) and failures that are retried do not.
"""
from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from search.sweep import budget_used

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trial(status: str, state: TrialState = TrialState.COMPLETE, **attrs) -> optuna.trial.FrozenTrial:
    values = [0.5, 1.0] if state == TrialState.COMPLETE else None
    return create_trial(state=state, values=values, params={"family": "rsnet"},
                        distributions={"family": CategoricalDistribution(["rsnet"])},
                        user_attrs={"status": status, **attrs})


def test_trained_and_stopped_trials_use_the_budget():
    trials = [_trial("trained"), _trial("trained"), _trial("stopped", TrialState.PRUNED)]
    assert budget_used(trials) == 3


def test_free_proposals_do_not_use_the_budget():
    trials = [_trial("infeasible"), _trial("duplicate"), _trial("surplus", TrialState.PRUNED),
              _trial("duplicate", TrialState.PRUNED)]
    assert budget_used(trials) == 0


def test_a_final_failure_uses_the_budget_and_a_retried_one_does_not():
    retried = _trial("failed", TrialState.FAIL, final=False)
    final = _trial("failed", TrialState.FAIL, final=True)
    unmarked = _trial("failed", TrialState.FAIL)  # failed by a stale-trial check: re-queued, not final
    assert budget_used([retried]) == 0
    assert budget_used([final]) == 1
    assert budget_used([unmarked]) == 0
    assert budget_used([_trial("trained"), retried, final, _trial("infeasible"), final]) == 3


def test_running_and_waiting_trials_are_not_yet_used():
    running = create_trial(state=TrialState.RUNNING, params={}, distributions={}, user_attrs={})
    waiting = create_trial(state=TrialState.WAITING, params={}, distributions={}, user_attrs={})
    assert budget_used([running, waiting, _trial("trained")]) == 1
