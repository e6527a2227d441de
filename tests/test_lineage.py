"""Re-queueing keeps a trial's whole lineage, whoever re-queues it: the driver's retries and
recovery, and the stale-trial path of shared databases (which used to drop the seed and the
pre-screening verdict, so a seed whose driver died came back as a random member of its family)."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search.lineage import LINEAGE_ATTRS, NONFINITE_RETRIES_ATTR, requeue
from search.seeds import SEED_ATTR, SEED_KNOBS_ATTR
from search.storage._shared import requeue_stale_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)

SEED = {SEED_ATTR: "igcv2-c64-d8", SEED_KNOBS_ATTR: {"width": 64}, "prescreen_kept": True}


def _study_with_a_seed_asked() -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial({"family": "igcv2"}, user_attrs=SEED)
    study.ask()  # killed here: nothing drawn yet
    return study, study.get_trials(deepcopy=False)[0]


def _queued(study) -> optuna.trial.FrozenTrial:
    (waiting,) = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return waiting


def test_a_seed_killed_right_after_ask_is_queued_again_as_itself():
    study, asked = _study_with_a_seed_asked()
    assert asked.params == {}
    assert requeue(study, asked, attempt=0)
    copy = _queued(study)
    assert copy.system_attrs["fixed_params"] == {"family": "igcv2"}
    assert {k: copy.user_attrs[k] for k in SEED} == SEED and copy.user_attrs["retry_of"] == 0


def test_the_stale_trial_path_keeps_the_lineage_too():
    study, asked = _study_with_a_seed_asked()
    requeue_stale_trial(study, asked)
    copy = _queued(study)
    assert {k: copy.user_attrs[k] for k in SEED} == SEED
    assert copy.user_attrs["retry_reason"] == "its driver stopped (no heartbeat)"


def test_a_diverged_attempt_counts_into_its_copy_and_a_plain_trial_that_drew_nothing_is_not_requeued():
    study, asked = _study_with_a_seed_asked()
    requeue(study, asked, attempt=1, diverged=True)
    assert _queued(study).user_attrs[NONFINITE_RETRIES_ATTR] == 1
    assert set(LINEAGE_ATTRS) >= set(SEED)
    plain = optuna.create_study()
    plain.ask()
    assert not requeue(plain, plain.get_trials(deepcopy=False)[0], attempt=0)
    assert not plain.get_trials(deepcopy=False, states=(TrialState.WAITING,))
