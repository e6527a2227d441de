"""Readers while a sweep writes: `status`, `export` and a tight loop of Optuna reads (what
optuna-dashboard does) run in other processes against the same SQLite file. Neither the sweep nor
any reader may fail with "database is locked"."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from search.record import trial_status
from search.storage import load_existing_study
from warm import CLI, SEARCH_MAIN

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import sys
from search.config import load_study
from search.sweep import Sweep
from search.testing import cheap_trial
Sweep(load_study(sys.argv[1]), trial_fn=cheap_trial).run()
"""

HAMMER = """
import sys, time, optuna
optuna.logging.set_verbosity(optuna.logging.ERROR)
url, deadline, n = sys.argv[1], time.time() + float(sys.argv[2]), 0
while time.time() < deadline:
    try:
        study = optuna.load_study(study_name="readers", storage=url)
    except KeyError:  # the driver has not created the study yet
        time.sleep(0.05)
        continue
    study.get_trials(deepcopy=False)
    study.best_trials
    n += 1
print(n)
"""


def _study_created(db: Path, name: str) -> bool:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.OperationalError:  # the schema is still being written
        return False


def test_readers_never_see_a_locked_database(tmp_path, warm_python):
    study = {
        "study": "readers", "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "digits", "val_size": 200},
        "families": {"igcv2": {}, "slimconv": {}},
        "budget": {"n_trials": 60}, "fidelity": {"epochs": 1}, "sampler": {"name": "random", "seed": 1},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2},
    }
    path = tmp_path / "readers.yaml"
    path.write_text(yaml.safe_dump(study))
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "hammer.py").write_text(HAMMER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    url = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    # Each in a process of its own, forked warm (tests/warm.py): the readers start at once.
    run = lambda code, *a: warm_python.start(code, list(a), env, tmp_path)  # noqa: E731
    driver = run(DRIVER, tmp_path / "driver.py", path)
    # Readers start once the driver has created the study: before that, status and export rightly
    # answer "holds no study", and an Optuna storage opened on a schema still being written races
    # the driver for the alembic version row (Optuna's own set-up, not a read).
    db = tmp_path / "run" / "study.db"
    while not _study_created(db, "readers") and driver.poll() is None:
        time.sleep(0.1)
    hammer = run(HAMMER, tmp_path / "hammer.py", url, "25")
    readers = []
    while driver.poll() is None and len(readers) < 6:
        readers.append(run(CLI, SEARCH_MAIN, "status", path, "--json"))
        readers.append(run(CLI, SEARCH_MAIN, "export", path, "--out", tmp_path / f"export{len(readers)}"))
        for r in readers[-2:]:
            r.wait(timeout=300)
    outputs = []
    for r in [driver, hammer, *readers]:
        done = r.wait(timeout=600)
        outputs.append((done.returncode, done.stdout, done.stderr))
    for code, out, err in outputs:
        assert code == 0, err[-2000:]
        assert "locked" not in err.lower()
    assert int(outputs[1][1].strip()) > 10  # the tight reader really read many times
    assert len(readers) >= 2
    trials = load_existing_study(url, "readers").get_trials()
    assert sum(trial_status(t) == "trained" for t in trials) == 60
