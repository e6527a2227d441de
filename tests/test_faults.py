"""Crash safety with real processes: `export` SIGKILLed midway, then run again.

A driver SIGKILLed at a chosen moment of its loop is part of every backend's contract
(``tests/backend_contract.py``); the long randomised version is ``bench/fault_injection.py``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
N_TRIALS = 5

DRIVER = """
import sys
from search.config import load_study
from search.sweep import Sweep
from search.testing import cheap_trial
Sweep(load_study(sys.argv[1]), trial_fn=cheap_trial).run()
"""


def write_study(tmp_path: Path, backend: str = "actors") -> Path:
    study = {
        "execution": {"backend": backend},
        "study": "faults", "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "digits", "val_size": 200},
        "families": {"igcv2": {}, "rsnet": {"knobs": {"units.0": [1, 2], "units.1": [1, 2], "units.2": [1, 2],
                                                        "units.3": [1, 2], "units.4": [1, 2], "units.5": [1, 2]}}},
        # Two seeds (trials 0 and 1): a seed is trained once, whatever moment the driver was killed at.
        "seeds": ["igcv2-c64-d8", {"family": "rsnet", "name": "rsnet-1x6", "knobs": {"units": [1] * 6}}],
        "budget": {"n_trials": N_TRIALS}, "fidelity": {"epochs": 1}, "sampler": {"name": "random", "seed": 7},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2},
    }
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(study))
    (tmp_path / "driver.py").write_text(DRIVER)
    return path


def run_driver(tmp_path: Path, study: Path, kill_at: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("EFFNAS_KILL_AT", None)
    if kill_at:
        env["EFFNAS_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(study)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_export_killed_midway_then_rerun_is_complete(tmp_path):
    study_path = write_study(tmp_path)
    assert run_driver(tmp_path, study_path, None).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "EFFNAS_KILL_AT": "exporting:1"}
    out = tmp_path / "export"
    cmd = [sys.executable, "-m", "search", "export", str(study_path), "--out", str(out)]
    killed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    # Files are replaced atomically: what exists after the kill is whole (and no temp file is left).
    assert {p.name for p in out.iterdir()} == {"pareto.json", "pareto.csv"}
    json.loads((out / "pareto.json").read_text())
    env.pop("EFFNAS_KILL_AT")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.name for p in out.iterdir()} >= {"pareto.csv", "pareto.json", "pareto.html", "pareto.png"}
