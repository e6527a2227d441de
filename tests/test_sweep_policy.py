"""The sweep policy on its own: fake trials, no Ray, no torch, no database."""
from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from search.record import TrialStatus
from search.sweep._policy import SweepPolicy, Verdict

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trial(number: int, status: str, key: str | None = None, state: TrialState = TrialState.COMPLETE,
           pending_key: str | None = None, **attrs):
    values = [0.5, 100.0] if state == TrialState.COMPLETE else None
    user_attrs = {"status": status, **attrs}
    if key is not None:
        user_attrs["record"] = {"family": "rsnet", "arch_key": key}
    if pending_key is not None:
        user_attrs["record_pending"] = {"family": "rsnet", "arch_key": pending_key}
    t = create_trial(state=state, values=values, params={"family": "rsnet"},
                     distributions={"family": CategoricalDistribution(["rsnet"])}, user_attrs=user_attrs)
    t.number = number
    return t


def _running(number: int, pending_key: str | None = None):
    t = create_trial(state=TrialState.RUNNING, params={}, distributions={},
                     user_attrs={"record_pending": {"arch_key": pending_key}} if pending_key else {})
    t.number = number
    return t


def test_over_budget_is_infeasible_and_a_stall():
    policy = SweepPolicy(target=3, max_stalls=2)
    assert policy.decide(0, "a", {"max_macs": 0.2, "max_params": -0.5}).verdict == Verdict.INFEASIBLE
    assert policy.stalls == 1 and not policy.exhausted
    assert policy.decide(1, "b", {"max_macs": -0.1}).verdict == Verdict.TRAIN
    assert policy.stalls == 0, "a trained proposal ends the run of stalls"
    assert policy.decide(2, "c", {"max_params": 1e-9}).verdict == Verdict.INFEASIBLE
    assert policy.decide(3, "d", {"max_params": 3.0}).verdict == Verdict.INFEASIBLE
    assert policy.exhausted


def test_no_constraints_and_limits_met_exactly_are_feasible():
    policy = SweepPolicy(target=3)
    assert policy.decide(0, "a", {}).verdict == Verdict.TRAIN
    assert policy.decide(1, "b", {"max_macs": 0.0}).verdict == Verdict.TRAIN


def test_trained_architectures_are_duplicates_with_the_original_values():
    policy = SweepPolicy(target=5)
    policy.learn([_trial(0, "trained", key="a"), _trial(1, "stopped", key="b", state=TrialState.PRUNED),
                  _trial(2, "infeasible", key="c"), _trial(3, "failed", key="d", state=TrialState.FAIL)])
    dup = policy.decide(4, "a", {})
    assert (dup.verdict, dup.duplicate_of, dup.duplicate_values) == (Verdict.DUPLICATE, 0, [0.5, 100.0])
    stopped = policy.decide(5, "b", {})
    assert (stopped.verdict, stopped.duplicate_of, stopped.duplicate_values) == (Verdict.DUPLICATE, 1, None)
    # Infeasible and failed proposals did not train: their architectures may be proposed again.
    assert policy.decide(6, "c", {}).verdict == Verdict.TRAIN
    assert policy.decide(7, "d", {}).verdict == Verdict.TRAIN
    assert policy.stalls == 0


def test_an_architecture_under_way_is_a_duplicate_until_it_finishes():
    policy = SweepPolicy(target=5)
    assert policy.decide(0, "a", {}).verdict == Verdict.TRAIN
    dup = policy.decide(1, "a", {})
    assert (dup.verdict, dup.duplicate_of) == (Verdict.DUPLICATE, 0)
    policy.finished("a", 0, TrialStatus.FAILED, will_retry=True)
    assert policy.decide(2, "a", {}).verdict == Verdict.TRAIN, "a retry of a failed trial trains"
    policy.finished("a", 2, TrialStatus.TRAINED, values=[0.7, 9.0])
    assert policy.decide(3, "a", {}).duplicate_values == [0.7, 9.0]


def test_what_other_drivers_train_now_is_a_duplicate():
    policy = SweepPolicy(target=5, shared=True)
    assert policy.decide(0, "mine", {}).verdict == Verdict.TRAIN
    policy.learn([_running(0, "mine"), _running(1, "theirs"), _running(2)])
    assert policy.others_running == {"theirs"}
    dup = policy.decide(3, "theirs", {})
    assert (dup.verdict, dup.duplicate_of) == (Verdict.DUPLICATE, None)


def test_budget_counts_trained_stopped_and_final_failures_only():
    policy = SweepPolicy(target=4, used=1)
    for n, key in enumerate("abcd"):
        policy.decide(n, key, {})
    assert policy.budget_left(under_way=4) == -1
    policy.finished("a", 0, TrialStatus.TRAINED)
    policy.finished("b", 1, TrialStatus.STOPPED)
    policy.finished("c", 2, TrialStatus.FAILED, will_retry=True)
    policy.finished("d", 3, TrialStatus.INFEASIBLE)  # the worker measured it over the latency limit
    assert policy.used == 3 and policy.budget_left(under_way=0) == 1
    policy.decide(4, "c", {})
    policy.finished("c", 4, TrialStatus.FAILED, will_retry=False)
    assert policy.used == 4 and policy.budget_left(under_way=0) == 0


def test_retries_follow_the_limit_and_the_nonfinite_rule():
    policy = SweepPolicy(target=1, max_retries=2)
    assert policy.will_retry(0, "exception") and policy.will_retry(1, "worker_died")
    assert not policy.will_retry(2, "exception")
    assert not policy.will_retry(0, "nonfinite")
    assert SweepPolicy(target=1, max_retries=1, retry_nonfinite=True).will_retry(0, "nonfinite")


def test_shared_budget_counts_every_running_trial():
    policy = SweepPolicy(target=4, shared=True)
    trials = [_trial(0, "trained", key="a"), _trial(1, "failed", state=TrialState.FAIL, final=True),
              _trial(2, "failed", state=TrialState.FAIL, final=False), _trial(3, "duplicate", key="a"),
              _running(4), _running(5, "x")]
    assert policy.budget_left_shared(trials) == 4 - 2 - 2


def test_a_trial_asked_after_the_budget_was_taken_is_surplus():
    policy = SweepPolicy(target=2, shared=True)
    trials = [_trial(0, "trained", key="a"), _running(1), _trial(2, "infeasible"), _running(3)]
    assert not policy.is_surplus(1, trials)   # only trial 0 is ahead of it
    assert policy.is_surplus(3, trials)        # 0 (trained) and 1 (running) took both slots
    assert policy.stalls == 1
    # An infeasible trial ahead takes no slot: with a budget of 3, trial 3 may still train.
    assert not SweepPolicy(target=3, shared=True).is_surplus(3, trials)


def test_rung_tables_rebuilt_after_a_resume_hold_one_whole_curve_per_lineage(tmp_path):
    """A trial that failed after two epochs and its retry, resumed from the epoch-2 checkpoint and
    trained to the end, fill the rungs once with the whole curve, as the live rule saw them; a
    plain trial counts as itself; an imported trial's curve counts too."""
    import optuna

    from search.config import parse_study
    from search.record import TrialRecord, TrialStatus, write_record
    from search.sweep._start import rung_rule

    cfg = parse_study({"study": "s", "families": {"igcv2": {}}, "fidelity": {"epochs": 4, "asha": {
        "grace_period": 1, "reduction_factor": 2}}}, "t")
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])

    def add(status, curve, macs, **attrs):
        t = study.ask()
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        write_record(t, status, TrialRecord(family="igcv2", curve=curve, macs=macs, params=10))
        study.tell(t, state=optuna.trial.TrialState.FAIL if status == TrialStatus.FAILED else optuna.trial.TrialState.PRUNED)
        return t.number

    first = add(TrialStatus.FAILED, [0.2, 0.3], 100)
    add(TrialStatus.TRAINED, [0.2, 0.3, 0.4, 0.5], 100, retry_of=first, attempt=1)
    add(TrialStatus.STOPPED, [0.1], 200)
    add(TrialStatus.FAILED, [0.15, 0.25], 300)  # failed for good: its two epochs met the rule
    rule = rung_rule(cfg, study)
    assert sorted(rule.rungs[1]) == [(0.1, (200, 10)), (0.15, (300, 10)), (0.2, (100, 10))]
    assert sorted(rule.rungs[2]) == [(0.25, (300, 10)), (0.3, (100, 10))]
    assert set(rule.rungs) == {1, 2}  # the last epoch is no rung
