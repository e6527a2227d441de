"""The sweep driver on a real local Ray instance and a real SQLite study: one sweep that trains for
real, end to end, and what is not a backend's contract (tests/backend_contract.py holds that: budget,
dedup, resume, retries, rungs, seeds and kills on every backend): the study lock, the stored
attributes, joining no stale cluster, the progress lines."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import optuna
import pytest

from search.config import parse_study
from search.exceptions import StudyLockedError
from search.pareto import pareto_front
from search.sweep import Sweep
from search.record import trial_status
from search.storage import load_existing_study, open_study
from search import testing
from studies import TINY_SLIMCONV, digits_study as _cfg, statuses as _statuses

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="module")
def cheap_sweeps(tmp_path_factory, ray_local, digits):
    """A sweep of 4 stand-in trials, then a resumed one of 1 more, which the record and progress tests
    read: (cfg, the first's lines, its trained trials, the resumed one's lines)."""
    cfg = _cfg(tmp_path_factory.mktemp("cheap"), budget={"n_trials": 4})
    lines: list[str] = []
    Sweep(cfg, trial_fn=testing.cheap_trial, data=digits, log=lines.append).run()
    trained = [t for t in load_existing_study(cfg.storage_url, "t").get_trials() if trial_status(t) == "trained"]
    more: list[str] = []
    Sweep(cfg, n_more=1, trial_fn=testing.cheap_trial, data=digits, log=more.append).run()
    return cfg, lines, trained, more


def test_optuna_record_has_only_json_user_attrs(cheap_sweeps):
    cfg = cheap_sweeps[0]
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
    assert len(trials) == 5
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


def test_progress_lines_show_counts_and_best_so_far(cheap_sweeps):
    _, lines, trained, more = cheap_sweeps
    best = max(trained, key=lambda t: t.user_attrs["record"]["val_acc"])
    last = [ln for ln in lines if " trained " in ln][-1]
    assert "trained 4 " in last and "running 0 " in last
    assert last.endswith(f"best acc {best.user_attrs['record']['val_acc']:.4f} (trial {best.number})")
    # A resumed driver knows the best of the trials before it.
    assert any("best acc" in ln for ln in more if " trained " in ln)
