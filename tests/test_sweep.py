"""The sweep driver on a real local Ray instance and a real SQLite study.

Most tests use stand-in trial functions (search.testing) so they check the orchestration itself:
budget pre-filter, dedup, resume, retries, ASHA. One test trains for real, end to end.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.config import parse_study
from search.exceptions import SearchSpaceExhausted, StudyLockedError
from search.pareto import non_dominated, pareto_front
from search.proposal import draw as propose, family_spaces
from search.sweep import Sweep
from search.record import trial_status
from search.storage import load_existing_study, open_study
from search import testing

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("actors", "tune")  # the contract tests below run over every execution backend

TINY_CONDENSENET = {"num_stages": 3, "layers.0": [1, 2], "layers.1": [1, 2], "layers.2": [1, 2],
                    "growth.0": [8, 16], "growth.1": [8, 16], "growth.2": [8, 16], "bottleneck": [1, 2],
                    "stem_channels": [8, 16], "se_start": -1, "hs_start": -1, "head_channels": 0,
                    "dropout": 0.0, "stem_stride": 1, "last_se_reduction": 0}
TINY_SLIMCONV = {"layers.0": 1, "layers.1": 1, "layers.2": 1, "layers.3": 1, "base_width": [8, 16],
                 "groups": 1, "width_mult": [1, 2], "stem": "cifar"}


def _cfg(tmp_path, backend: str = "actors", **changes) -> "StudyConfig":  # noqa: F821
    raw = {
        "execution": {"backend": backend},
        "study": "t", "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "digits", "val_size": 200, "train_size": 600, "image_size": 16},
        "families": {"condensenet": {"knobs": TINY_CONDENSENET}, "slimconv": {"knobs": TINY_SLIMCONV}},
        "budget": {"n_trials": 4}, "fidelity": {"epochs": 1},
        "sampler": {"name": "random", "seed": 0},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2},
    }
    for path, value in changes.items():
        node = raw
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return parse_study(copy.deepcopy(raw), str(tmp_path / "t.yaml"))


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def digits():
    from trainers.data import DataConfig, load_data

    return load_data(DataConfig(dataset="digits", val_size=200, train_size=600, image_size=16))


def _statuses(cfg) -> list[str]:
    return [trial_status(t) for t in load_existing_study(cfg.storage_url, cfg.study).get_trials()]


def test_end_to_end_real_training(tmp_path, ray_local, digits):
    # Latency as an objective, measured by the worker in ONNX Runtime at the study's batch and threads.
    cfg = _cfg(tmp_path, budget={"n_trials": 3}, objectives=["accuracy", "macs", "params", "latency"],
               latency={"runtime": "onnxruntime", "batch": 2, "repeats": 5, "warmup": 1})
    summary = Sweep(cfg, data=digits, log=lambda _: None).run()
    assert summary.trained == 3
    study = load_existing_study(cfg.storage_url, "t")
    trained = [t for t in study.get_trials() if trial_status(t) == "trained"]
    assert len(trained) == 3
    for t in trained:
        rec = t.user_attrs["record"]
        assert rec["family"] in ("condensenet", "slimconv") and rec["epochs"] == 1
        assert 0.0 <= rec["val_acc"] <= 1.0 and rec["test_acc"] is not None
        assert t.values[1] == rec["macs"] and t.values[2] == rec["params"]
        assert rec["train_seconds"] > 0 and rec["checkpoint"]
        assert t.values[3] == rec["latency_ms"] > 0
        setup = rec["latency_setup"]
        assert (setup["runtime"], setup["batch"], setup["threads"], setup["device"]) == ("onnxruntime", 2, 1, "cpu")
        assert setup["version"] == __import__("onnxruntime").__version__ and setup["repeats"] == 5
    assert pareto_front(study)


def test_over_budget_architectures_are_never_trained(tmp_path, ray_local, digits, backend):
    cfg = _cfg(tmp_path, backend, constraints={"max_params": 12000}, budget={"n_trials": 3, "max_stalls": 200},
               sampler={"name": "tpe", "seed": 1})
    Sweep(cfg, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run()
    trials = load_existing_study(cfg.storage_url, "t").get_trials()
    infeasible = [t for t in trials if trial_status(t) == "infeasible"]
    trained = [t for t in trials if trial_status(t) == "trained"]
    assert infeasible and len(trained) == 3
    for t in infeasible:
        rec = t.user_attrs["record"]
        assert rec["params"] > 12000
        assert t.user_attrs["constraints"][0] == pytest.approx(rec["params"] / 12000 - 1.0)
        assert "worker_seconds" not in rec  # no worker ever saw it
    assert all(t.user_attrs["record"]["params"] <= 12000 for t in trained)


def test_duplicates_are_not_trained_again_and_stall_ends_the_sweep(tmp_path, ray_local, digits, backend):
    fixed = {k: (v[0] if isinstance(v, list) else v) for k, v in TINY_SLIMCONV.items()}
    fixed.update({"k": "4/3", "reduction": 4, "min_hidden": 1, "flip": True})
    cfg = _cfg(tmp_path, backend, families={"slimconv": {"knobs": fixed}}, budget={"n_trials": 2, "max_stalls": 3})
    with pytest.raises(SearchSpaceExhausted, match="already trained"):
        Sweep(cfg, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run()
    study = load_existing_study(cfg.storage_url, "t")
    statuses = [trial_status(t) for t in study.get_trials()]
    assert statuses.count("trained") == 1 and statuses.count("duplicate") == 3
    dup = next(t for t in study.get_trials() if trial_status(t) == "duplicate")
    assert dup.user_attrs["record"]["duplicate_of"] == 0


def test_resume_requeues_interrupted_trials_and_extends(tmp_path, ray_local, digits, backend):
    cfg = _cfg(tmp_path, backend, budget={"n_trials": 3})
    study = open_study(cfg)
    orphan = study.ask()
    propose(orphan, family_spaces(cfg))  # a dead driver left this one RUNNING
    Sweep(cfg, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run()
    study = load_existing_study(cfg.storage_url, "t")
    first = study.trials[0]
    assert first.state == TrialState.FAIL and "interrupted" in first.user_attrs["failure_reason"]
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 0)
    assert retry.params == first.params and trial_status(retry) == "trained"
    assert _statuses(cfg).count("trained") == 3
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    # Run again: the budget is met, nothing new; --n-trials 2: exactly two more.
    assert Sweep(cfg, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run().trained == 0
    extended = Sweep(cfg, n_more=2, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run()
    assert _statuses(cfg).count("trained") == 5
    assert extended.duplicate == 0  # the resumed sampler does not replay the first run's draws


@pytest.mark.parametrize("fn,kind,n_failed", [
    (testing.failing_trial, "exception", 2),     # retried once, then final
    (testing.nonfinite_trial, "nonfinite", 1),   # a diverged configuration is not retried
    (testing.dying_trial, "worker_died", 2),     # the worker process died; a new worker takes over
])
def test_failures_are_recorded_and_retried(tmp_path, ray_local, digits, backend, fn, kind, n_failed):
    cfg = _cfg(tmp_path, backend, budget={"n_trials": 1}, retry={"max_retries": 1})
    Sweep(cfg, trial_fn=fn, data=digits, log=lambda _: None).run()
    trials = load_existing_study(cfg.storage_url, "t").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == n_failed == len(trials)
    assert all(t.user_attrs["record"]["failure_kind"] == kind for t in failed)
    assert failed[-1].user_attrs["final"] is True
    assert all(t.params == failed[0].params for t in failed)
    assert failed[0].user_attrs["record"]["failure_reason"]


def test_final_failures_count_against_the_budget_on_resume(tmp_path, ray_local, digits, backend):
    cfg = _cfg(tmp_path, backend, budget={"n_trials": 2}, retry={"max_retries": 0})
    Sweep(cfg, trial_fn=testing.failing_trial, data=digits, log=lambda _: None).run()
    assert _statuses(cfg) == ["failed", "failed"]
    # The budget is spent: a resumed driver trains nothing; --n-trials 1 trains exactly one more.
    assert Sweep(cfg, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run().trained == 0
    assert Sweep(cfg, n_more=1, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run().trained == 1
    assert _statuses(cfg) == ["failed", "failed", "trained"]


def _asha_cfg(tmp_path, n_trials: int, backend: str = "actors"):
    return _cfg(tmp_path, backend, budget={"n_trials": n_trials},
                fidelity={"epochs": 4, "asha": {"grace_period": 1, "reduction_factor": 2}},
                resources={"cpus_per_trial": 1, "max_concurrent": 1})


def test_asha_stops_weak_trials_and_front_ignores_them(tmp_path, ray_local, digits, backend):
    cfg = _asha_cfg(tmp_path, 10, backend)
    Sweep(cfg, trial_fn=testing.curve_trial, data=digits, log=lambda _: None).run()
    study = load_existing_study(cfg.storage_url, "t")
    stopped = [t for t in study.get_trials() if trial_status(t) == "stopped"]
    assert stopped and all(t.state == TrialState.PRUNED for t in stopped)
    assert all(t.user_attrs["record"]["fidelity_reached"] < 4 for t in stopped)
    front = {m.number for m in pareto_front(study)}
    assert front and not front & {t.number for t in stopped}
    complete = [t for t in study.get_trials() if trial_status(t) == "trained"]
    brute = {complete[i].number for i in non_dominated([list(t.values) for t in complete],
                                                        ["maximize", "minimize", "minimize"])}
    assert front == brute


def test_pareto_rungs_are_rebuilt_from_the_database_with_costs(tmp_path, ray_local, digits, backend):
    cfg = _asha_cfg(tmp_path, 6, backend)
    Sweep(cfg, trial_fn=testing.curve_trial, data=digits, log=lambda _: None).run()
    study = load_existing_study(cfg.storage_url, "t")
    rule = Sweep(cfg, data=digits)._rung_rule(study)
    assert rule.rank == "pareto"  # the default of a study with cost objectives
    ran = [t for t in study.get_trials() if trial_status(t) in ("trained", "stopped")]
    expected = sorted((t.user_attrs["record"]["curve"][0], (t.user_attrs["record"]["macs"], t.user_attrs["record"]["params"]))
                      for t in ran)
    assert sorted(rule.rungs[1]) == expected and len(expected) == 6
    assert all(len(t.user_attrs["record"]["curve"]) == 4 for t in ran if trial_status(t) == "trained")


def test_second_driver_on_sqlite_study_is_refused(tmp_path):
    import fcntl
    import os

    cfg = _cfg(tmp_path)
    lock = cfg.run_path / "study.db.lock"
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(StudyLockedError, match="another driver"):
            Sweep(cfg, trial_fn=testing.cheap_trial, log=lambda _: None).run()
    finally:
        os.close(fd)
    assert not (cfg.run_path / "study.db").exists()


def test_objectives_must_match_existing_study(tmp_path):
    from search.exceptions import StorageError

    open_study(_cfg(tmp_path))
    with pytest.raises(StorageError, match="differ from those the study"):
        open_study(_cfg(tmp_path, objectives=["accuracy", "macs"]))


def test_optuna_record_has_only_json_user_attrs(tmp_path, ray_local, digits):
    cfg = _cfg(tmp_path, budget={"n_trials": 2})
    Sweep(cfg, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run()
    storage = optuna.storages.RDBStorage(cfg.storage_url)
    assert [s.study_name for s in storage.get_all_studies()] == ["t"]
    # Straight from the table: every stored value is JSON text that reads back as plain data.
    import sqlalchemy

    with storage.engine.connect() as con:
        rows = con.execute(sqlalchemy.text("SELECT key, value_json FROM trial_user_attributes")).all()
    assert {key for key, _ in rows} >= {"status", "family", "record"}
    for key, text in rows:
        value = json.loads(text)
        assert json.loads(json.dumps(value)) == value, key
    trials = storage.get_all_trials(storage.get_all_studies()[0]._study_id)
    assert len(trials) == 2
    for t in trials:
        assert t.user_attrs["status"] == "trained" and isinstance(t.user_attrs["record"], dict)
        assert json.loads(json.dumps(t.user_attrs)) == t.user_attrs


def test_no_address_starts_a_private_instance_despite_a_stale_cluster(tmp_path):
    """A left-behind cluster address (file and RAY_ADDRESS) must not make `run` try to join it."""
    import subprocess
    import sys
    import tempfile

    import yaml

    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # nothing listens there
    study = {"study": "t", "run_dir": str(tmp_path / "run"), "data": {"dataset": "digits", "val_size": 200},
             "families": {"slimconv": {"knobs": TINY_SLIMCONV}}, "budget": {"n_trials": 1},
             "fidelity": {"epochs": 1}, "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
             "ray": {"num_cpus": 1}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": "127.0.0.1:1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "search", "run", str(tmp_path / "t.yaml")], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _statuses(parse_study(study, str(tmp_path / "t.yaml"))) == ["trained"]


def test_progress_lines_show_counts_and_best_so_far(tmp_path, ray_local, digits):
    cfg = _cfg(tmp_path, budget={"n_trials": 4})
    lines: list[str] = []
    Sweep(cfg, trial_fn=testing.cheap_trial, data=digits, log=lines.append).run()
    trained = [t for t in load_existing_study(cfg.storage_url, "t").get_trials() if trial_status(t) == "trained"]
    best = max(trained, key=lambda t: t.user_attrs["record"]["val_acc"])
    last = [ln for ln in lines if " trained " in ln][-1]
    assert "trained 4 " in last and "running 0 " in last
    assert last.endswith(f"best acc {best.user_attrs['record']['val_acc']:.4f} (trial {best.number})")
    # A resumed driver knows the best of the trials before it.
    more: list[str] = []
    Sweep(cfg, n_more=1, trial_fn=testing.cheap_trial, data=digits, log=more.append).run()
    assert any("best acc" in ln for ln in more if " trained " in ln)


def test_the_actors_backend_cancels_a_running_trial(ray_local, digits):
    from search.sweep.backends import Finished, TrialSpec
    from search.sweep.backends.actors import ActorsBackend

    backend = ActorsBackend(1, 0, 1, price_fn=lambda family, knobs: ({}, {}, {}),
                            trial_fn=testing.sleeping_trial)
    assert backend.start(digits, None) == 1
    backend.submit(7, TrialSpec(number=7, family="rsnet", knobs={}, train={"epochs": 1}, checkpoint_dir="/tmp"))
    assert backend.free_slots() == 0
    backend.cancel(7)
    (event,) = backend.next_events(timeout=60)
    assert isinstance(event, Finished) and event.token == 7
    assert event.result["status"] == "failed" and event.result["failure_kind"] == "worker_died"
    assert backend.free_slots() == 1  # a new actor took the slot
    backend.close()
