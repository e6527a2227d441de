"""`python -m search status`: the time figures (wall, training, driver overhead) on a study built by
hand with known timestamps, so each figure has an exact expected value."""
from __future__ import annotations

import datetime as dt

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search.status import print_status, status_dict

optuna.logging.set_verbosity(optuna.logging.WARNING)

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)
_DIST = {"family": CategoricalDistribution(["rsnet"])}


def _add(study: optuna.Study, start_s: float, end_s: float, status: str = "trained",
         state: TrialState = TrialState.COMPLETE, **record) -> None:
    """A trial that ran from ``start_s`` to ``end_s`` seconds after T0."""
    values = [0.5 + start_s / 1000, 1e6 - start_s, 1e4] if state == TrialState.COMPLETE else None
    study.add_trial(FrozenTrial(
        number=-1, trial_id=-1, state=state, value=None, values=values,
        datetime_start=T0 + dt.timedelta(seconds=start_s), datetime_complete=T0 + dt.timedelta(seconds=end_s),
        params={"family": "rsnet"}, distributions=_DIST, intermediate_values={}, system_attrs={},
        user_attrs={"status": status, "family": "rsnet", "record": {"family": "rsnet", **record}}))


@pytest.fixture
def study(tmp_path) -> optuna.Study:
    s = optuna.create_study(study_name="timed", storage=f"sqlite:///{tmp_path / 'study.db'}",
                            directions=["maximize", "minimize", "minimize"])
    s.set_user_attr("objectives", ["accuracy", "macs", "params"])
    # Trained: 10 s from ask to tell, of which the worker was busy 8 s and the trial queued 0.5 s.
    _add(s, 0, 10, train_seconds=7.0, worker_seconds=8.0, queued_seconds=0.5)
    # Trained: 20 s from ask to tell, worker busy 19.7 s, no queueing recorded (older records).
    _add(s, 5, 25, train_seconds=18.0, worker_seconds=19.7)
    # Infeasible: no worker ever saw it; it spans time but has no worker figures.
    _add(s, 30, 30.2, status="infeasible")
    # Failed after 4 s of training on a worker that was busy 5 s.
    _add(s, 31, 40, status="failed", state=TrialState.FAIL, train_seconds=4.0, worker_seconds=5.0)
    return s


def test_wall_time_is_the_union_of_the_trials_spans(study):
    # [0, 10] and [5, 25] overlap (25 s), then 0.2 s and 9 s: the gaps between them are idle.
    assert status_dict(study)["wall_seconds"] == pytest.approx(25.0 + 0.2 + 9.0)
    _add(study, 3600, 3610)  # a second run an hour later adds its own 10 s, not the hour between
    assert status_dict(study)["wall_seconds"] == pytest.approx(25.0 + 0.2 + 9.0 + 10.0)


def test_training_time_sums_every_trial_that_trained(study):
    assert status_dict(study)["train_seconds"] == pytest.approx(7.0 + 18.0 + 4.0)


def test_overhead_is_the_driver_share_of_each_trial_on_a_worker(study):
    # (10 - 8 - 0.5) and (20 - 19.7) and (9 - 5): one figure per trial that occupied a worker.
    expected_ms = 1000 * ((10 - 8 - 0.5) + (20 - 19.7) + (9 - 5)) / 3
    assert status_dict(study)["overhead_ms_per_trial"] == pytest.approx(expected_ms)


def test_no_worker_trials_means_no_overhead_figure(tmp_path):
    s = optuna.create_study(storage=f"sqlite:///{tmp_path / 'empty.db'}", directions=["maximize", "minimize", "minimize"])
    _add(s, 0, 1, status="infeasible")
    d = status_dict(s)
    assert d["overhead_ms_per_trial"] is None and d["train_seconds"] == 0.0 and d["wall_seconds"] == 1.0


def test_printed_status_shows_the_same_figures(study, capsys):
    print_status(study)
    out = capsys.readouterr().out
    assert "time: 34.2s wall (while trials ran), 29.0s training, driver overhead 1933 ms per trial on a worker" in out
    assert "trained 2" in out and "infeasible 1" in out and "failed 1" in out


def test_trials_left_running_by_a_stopped_driver_are_interrupted_not_running(tmp_path, capsys):
    """SQLite: a RUNNING trial while no driver holds the study's lock is shown as interrupted; a
    trial the recovery failed is interrupted too, never failed."""
    import fcntl
    import os

    from search.status import trial_rows

    url = f"sqlite:///{tmp_path / 'study.db'}"
    s = optuna.create_study(study_name="left", storage=url, directions=["maximize", "minimize", "minimize"])
    s.set_user_attr("objectives", ["accuracy", "macs", "params"])
    s.ask()  # RUNNING, as a killed driver leaves it
    _add(s, 0, 5, status="interrupted", state=TrialState.FAIL, failure_reason="interrupted: the driver stopped")
    assert status_dict(s, url)["statuses"] == {"interrupted": 2}
    assert [r["status"] for r in trial_rows(s, url)] == ["interrupted", "interrupted"]
    fd = os.open(tmp_path / "study.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live driver: its trial does run
    try:
        assert status_dict(s, url)["statuses"] == {"running": 1, "interrupted": 1}
    finally:
        os.close(fd)
    print_status(s, url)
    assert "2 interrupted (their driver stopped; `run` again re-queues them)" in capsys.readouterr().out


def test_front_hypervolume_over_active_wall_time(study):
    import math

    from search.pareto import hypervolume, hypervolume_over_time

    curve = hypervolume_over_time(study)
    assert len(curve["seconds"]) == 40 and curve["seconds"][-1] == pytest.approx(25.0)  # last trained trial's end
    assert curve["hypervolume"] == sorted(curve["hypervolume"])  # a front only grows
    final = [0.505, math.log10(1e6 - 5), math.log10(1e4)]  # the second trial dominates the first
    assert curve["hypervolume"][-1] == pytest.approx(
        hypervolume([final], ["maximize", "minimize", "minimize"], curve["reference"]))
    assert curve["hypervolume"][0] == 0.0  # nothing had finished 0.6 s in
    _add(study, 3600, 3610)  # a later run: the hour between runs is not on the clock
    assert hypervolume_over_time(study)["seconds"][-1] == pytest.approx(25.0 + 0.2 + 9.0 + 10.0)
    assert status_dict(study)["hypervolume_over_time"]["seconds"][-1] == pytest.approx(44.2)
