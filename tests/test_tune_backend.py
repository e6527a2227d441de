"""What is specific to the Ray Tune backend (search.sweep.backends.tune; its contract is
tests/test_contract_tune.py): Tune's loggers leave TensorBoard files per trial, the rung rule stops
trials as Tune's scheduler (and a stopped trial trains no further epoch), and failures come back to
the policy, which retries them (Tune itself never does)."""
from __future__ import annotations

import glob
import struct
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search import testing
from search.record import trial_status
from search.storage import load_existing_study
from search.sweep import Sweep
from studies import TINY_CONDENSENET, digits_study

pytestmark = pytest.mark.slow

def _cfg(tmp_path, **changes):
    return digits_study(tmp_path, "tune", families={"condensenet": {"knobs": TINY_CONDENSENET}}, **changes)


def _sweep(cfg, trial_fn, data) -> Sweep:
    """A sweep whose trial function is defined in this module (pickled by value to the workers)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    return Sweep(cfg, trial_fn=trial_fn, data=data, log=lambda _: None)


def _trials(cfg):
    return load_existing_study(cfg.storage_url, cfg.study).get_trials()


def _scalars(event_file: str) -> dict[str, dict[int, float]]:
    """TensorBoard scalars of one event file, tag -> {step: value} (TFRecord framing, read here)."""
    from tensorboardX.proto import event_pb2

    raw, at, out = Path(event_file).read_bytes(), 0, {}
    while at < len(raw):
        (n,) = struct.unpack("<Q", raw[at:at + 8])
        event = event_pb2.Event()
        event.ParseFromString(raw[at + 12:at + 12 + n])
        at += 12 + n + 4
        for v in event.summary.value:
            out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_the_budget_is_trained_exactly_with_tensorboard_files_per_trial(tmp_path, ray_local, digits):
    # The study file names the backend: the driver builds it as `run` does.
    cfg = _cfg(tmp_path)
    summary = Sweep(cfg, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run()
    assert summary.trained == 4
    trained = [t for t in _trials(cfg) if trial_status(t) == "trained"]
    assert len(trained) == 4 == len(_trials(cfg))
    node = ray_local.get_runtime_context().get_node_id()
    assert summary.nodes == {node}
    for t in trained:
        rec = t.user_attrs["record"]
        assert rec["node"] == node and rec["pid"] and rec["curve"] == [rec["val_acc"]]
        # Tune's own loggers: one folder per trial, named for its number, with the epoch's metrics.
        (folder,) = glob.glob(str(cfg.run_path / "tune" / "*" / f"trial_{t.number}"))
        (events,) = glob.glob(f"{folder}/events.out.tfevents.*")
        scalars = _scalars(events)
        assert scalars["ray/tune/val_acc"][1] == pytest.approx(rec["val_acc"], rel=1e-6)
        assert scalars["ray/tune/epoch"][1] == 1
        assert Path(folder, "progress.csv").exists() and Path(folder, "result.json").exists()


def _epoch_log(spec: dict) -> Path:
    return Path(spec["checkpoint_dir"]) / "epochs_started.log"


def _logged_curve_trial(spec: dict, data, report) -> dict:
    """curve_trial noting each epoch it starts, to see that none starts after the rung stopped it."""
    log = _epoch_log(spec)
    log.parent.mkdir(parents=True, exist_ok=True)

    def noted(metrics: dict) -> bool:
        with log.open("a") as f:
            f.write(f"{metrics['epoch']}\n")
        return report(metrics)

    return testing.curve_trial(spec, data, noted)


def test_the_rung_rule_stops_trials_as_tunes_scheduler(tmp_path, ray_local, digits):
    cfg = _cfg(tmp_path, budget={"n_trials": 8},
               fidelity={"epochs": 4, "asha": {"grace_period": 1, "reduction_factor": 2}},
               resources={"cpus_per_trial": 1, "max_concurrent": 1})
    summary = _sweep(cfg, _logged_curve_trial, digits).run()
    trials = _trials(cfg)
    stopped = [t for t in trials if trial_status(t) == "stopped"]
    trained = [t for t in trials if trial_status(t) == "trained"]
    assert stopped and trained and len(stopped) + len(trained) == 8 == summary.trained + summary.stopped
    for t in stopped:
        rec = t.user_attrs["record"]
        assert t.state == TrialState.PRUNED
        assert rec["epochs"] == rec["fidelity_reached"] == len(rec["curve"]) < 4
        assert rec["val_acc"] == rec["curve"][-1] and rec["node"] and rec["worker_seconds"] > 0
        # The trial waited in tune.report for the scheduler's decision: no epoch began after it.
        epochs_started = _epoch_log({"checkpoint_dir": _checkpoint_dir(cfg, rec)}).read_text().split()
        assert epochs_started == [str(e) for e in range(1, rec["epochs"] + 1)]
    for t in trained:
        rec = t.user_attrs["record"]
        assert rec["epochs"] == 4 and len(rec["curve"]) == 4


def _checkpoint_dir(cfg, rec: dict) -> str:
    return str((cfg.run_path / "checkpoints" / rec["arch_key"]).resolve())


def _raises_then_dies(spec: dict, data, report) -> dict:
    """The first attempt raises in the trial function; its retry's process dies."""
    if spec["number"] == 0:
        return testing.failing_trial(spec, data, report)
    return testing.dying_trial(spec, data, report)


def test_failures_are_retried_by_the_policy_not_by_tune(tmp_path, ray_local, digits):
    cfg = _cfg(tmp_path, budget={"n_trials": 1}, retry={"max_retries": 1},
               resources={"cpus_per_trial": 1, "max_concurrent": 1})
    _sweep(cfg, _raises_then_dies, digits).run()
    trials = _trials(cfg)
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)
    # An exception in the trial function is a result; a dead process is Tune's error, both retried here.
    assert [t.user_attrs["record"]["failure_kind"] for t in trials] == ["exception", "worker_died"]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params
    assert trials[1].user_attrs["final"] is True
    assert "simulated failure" in trials[0].user_attrs["record"]["failure_reason"]
    assert trials[1].user_attrs["record"]["failure_reason"].startswith("worker died: ")
    # Each effnas attempt is one Tune trial, and Tune ran the dying one once (max_failures=0).
    experiment = next((cfg.run_path / "tune").glob("t_*"))
    assert sorted(p.name for p in experiment.glob("trial_*")) == ["trial_0", "trial_1"]
    errors = (experiment / "trial_1" / "error.txt").read_text()
    assert "Failure # 1 " in errors and "Failure # 2 " not in errors
