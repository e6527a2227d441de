"""A study database written by the previous record format (``fixtures/study_v1.sql``, made by
``fixtures/make_study_v1.py`` on the commit before the policy/backend split) still opens, reports
status, exports and resumes with today's code, and the typed record reads and writes its keys
unchanged."""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from search.config import parse_study
from search.export import export_study
from search.pareto import pareto_front
from search.record import TrialRecord, read_record, trial_status
from search.status import status_dict
from search.storage import load_existing_study

FIXTURE = Path(__file__).parent / "fixtures" / "study_v1.sql"
STATUSES = {"trained": 4, "stopped": 2, "infeasible": 5, "duplicate": 5, "failed": 1}
KNOBS = {"num_stages": 3, "layers.0": [1, 2], "layers.1": 1, "layers.2": 1, "growth.0": [8, 16], "growth.1": 8,
         "growth.2": 8, "bottleneck": [1, 2], "stem_channels": 8, "se_start": -1, "hs_start": -1,
         "head_channels": 0, "dropout": 0.0, "stem_stride": 1, "last_se_reduction": 0}


@pytest.fixture
def v1_run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    with sqlite3.connect(run / "study.db") as con:
        con.executescript(FIXTURE.read_text())
    return run


def _study(run: Path):
    return load_existing_study(f"sqlite:///{run / 'study.db'}", "v1")


def test_status_reads_every_outcome(v1_run):
    s = status_dict(_study(v1_run))
    assert s["statuses"] == STATUSES and s["n_trials"] == 17
    assert s["pareto"] and all(m["family"] == "condensenet" for m in s["pareto"])
    assert s["overhead_ms_per_trial"] is not None and s["wall_seconds"] > 0


def test_typed_record_keeps_every_stored_key(v1_run):
    for t in _study(v1_run).get_trials():
        raw = t.user_attrs["record"]
        assert TrialRecord.from_dict(raw).to_dict() == json.loads(json.dumps(raw)), t.number
        rec = read_record(t)
        assert rec.family == "condensenet" and rec.arch_key and rec.macs > 0 and rec.params > 0
        if trial_status(t) == "trained":
            assert rec.val_acc is not None and rec.curve and rec.worker_seconds is not None
        if trial_status(t) == "failed":
            assert rec.final is True and "simulated failure" in rec.failure_reason
        if trial_status(t) == "duplicate":
            assert rec.duplicate_of is not None


def test_export_writes_the_front(v1_run, tmp_path):
    study = _study(v1_run)
    doc = export_study(study, tmp_path / "out", log=lambda _: None)
    assert [m["trial"] for m in doc["members"]] == [m.number for m in pareto_front(study)]
    assert doc["n_trained"] == STATUSES["trained"]
    for name in ("pareto.csv", "pareto.json", "pareto.html", "pareto.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


@pytest.mark.slow
def test_resume_extends_without_retraining(v1_run, tmp_path):
    import ray

    from search import testing
    from search.sweep import Sweep

    cfg = parse_study({"study": "v1", "run_dir": str(v1_run),
                       "data": {"dataset": "digits", "val_size": 200, "train_size": 400, "image_size": 8},
                       "families": {"condensenet": {"knobs": KNOBS}}, "budget": {"n_trials": 5, "max_stalls": 50},
                       "fidelity": {"epochs": 4, "asha": {"grace_period": 1, "reduction_factor": 2}},
                       "constraints": {"max_params": 5000}, "sampler": {"name": "random", "seed": 3},
                       "retry": {"max_retries": 0}, "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
                       "ray": {"num_cpus": 1}}, str(tmp_path / "v1.yaml"))
    lines: list[str] = []
    try:
        assert Sweep(cfg, trial_fn=testing.curve_trial, log=lines.append).run().trained == 0  # budget met
        assert "7 of 5 trials done" in lines[0]
        Sweep(cfg, n_more=1, trial_fn=testing.curve_trial, log=lines.append).run()
    finally:
        ray.shutdown()
    trials = _study(v1_run).get_trials()
    statuses = Counter(trial_status(t) for t in trials[17:])
    assert statuses["trained"] + statuses["stopped"] == 1, statuses
    keys = Counter(read_record(t).arch_key for t in trials if trial_status(t) in ("trained", "stopped"))
    assert max(keys.values()) == 1, "an architecture of the old study was trained again"


def test_trials_lists_every_trial_and_status_uses_the_export_keys(v1_run, tmp_path, capsys):
    from search.cli import main

    url = f"sqlite:///{v1_run / 'study.db'}"
    assert main(["trials", "--storage", url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["trial"] for r in rows] == list(range(17))
    assert Counter(r["status"] for r in rows) == Counter(STATUSES)
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed[0]["failure_reason"]
    trained = [r for r in rows if r["status"] == "trained"]
    assert all(r["accuracy"] is not None and r["macs"] and r["params"] for r in trained)
    assert main(["trials", "--storage", url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 18 and table[0].split()[:3] == ["trial", "family", "status"]

    doc = export_study(_study(v1_run), tmp_path / "out", log=lambda _: None)
    assert status_dict(_study(v1_run))["pareto"] == doc["members"]  # one set of keys: trial, test_accuracy, ...
