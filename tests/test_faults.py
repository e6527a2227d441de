"""Crash safety with real processes: `export` SIGKILLed midway, then run again; the fault-injection
matrix (every driver fault point x every kind of trial) on the simulated backend.

A driver SIGKILLed at a chosen moment of its loop is part of every backend's contract
(``tests/backend_contract.py``); the full matrix, pre-screened trials on Ray and ``unbeaten`` on
PostgreSQL included, is ``bench/fault_injection.py`` (``unbeaten`` is also ``test_shared_kills.py``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections import Counter
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


# -- the matrix ---------------------------------------------------------------------------------------

def _bench():
    spec = importlib.util.spec_from_file_location("fault_injection", REPO / "bench" / "fault_injection.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_injection"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# Forks a driver per request from one warm interpreter of its own (clean: no Ray or other threads
# of the test process to fork), so a driver costs a fraction of a second instead of a start-up.
ZYGOTE = """
import os, sys, traceback
from search.config import load_study
from search.sweep import Sweep

def run(study):
    Sweep(load_study(study), log=lambda _: None).run()

run(sys.argv[1])  # the imports a sweep makes, made once here
print("ready", flush=True)
for line in sys.stdin:
    study, kill_at = line.split()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.pop("EFFNAS_KILL_AT", None)
            os.environ.update({"EFFNAS_KILL_AT": kill_at} if kill_at != "-" else {})
            run(study)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)
"""


class ForkedDrivers:
    """Drivers forked from a warm interpreter; ``driver`` has bench/fault_injection.py's signature."""

    def __init__(self, tmp_path: Path, warm_study: Path):
        env = {k: v for k, v in os.environ.items() if k != "EFFNAS_KILL_AT"}
        env["PYTHONPATH"] = str(REPO)
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(warm_study)], cwd=tmp_path, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def driver(self, folder: Path, study: Path, case, kill_at: str | None) -> int:
        self.proc.stdin.write(f"{study} {kill_at or '-'}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# (point, n): the first trials (seeds) and a later one, where the simulated study holds retries.
MATRIX = {"asked": (1, 11), "proposed": (1, 11), "submitted": (1, 6), "epoch": (1, 11), "recorded": (1, 4),
          "told": (1, 4), "retry_queued": (1,)}


def test_every_fault_point_on_every_kind_of_trial_loses_nothing(tmp_path):
    """The simulated study of the bench (seeds, a warm start, failures and retries, the rung rule)
    killed at every driver fault point it passes, early and late, then run to the end: nothing lost,
    trained twice or left running, the budget exact, each seed trained once with its own knobs over
    every epoch, the source imported once. Every kind of trial this backend has was in flight at
    some kill (pre-screened trials need Ray: bench/fault_injection.py, test_prescreen.py)."""
    fi = _bench()
    (case,) = fi.cases(tmp_path, None, ray=False)
    assert set(MATRIX) == set(case.points)
    warm = tmp_path / "warm.yaml"
    warm.write_text(yaml.safe_dump(case.raw(tmp_path / "warm", "warm")))
    drivers, caught, problems, missed = ForkedDrivers(tmp_path, warm), Counter(), Counter(), []
    try:
        for point, ns in MATRIX.items():
            cell = fi.run_cell(tmp_path, case, point, ns, drivers.driver)
            caught.update(cell.caught)
            problems.update(cell.problems)
            missed += [point] if cell.kills != len(ns) else []
    finally:
        drivers.close()
    assert not missed, f"points not passed as often as the matrix says: {missed}"
    assert not +problems, dict(+problems)
    assert set(caught) == {"seed", "retry", "warm-started", "plain"}, dict(caught)
