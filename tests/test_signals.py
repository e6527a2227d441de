"""`run` stops on Ctrl-C (SIGINT) and SIGTERM at any phase, with real processes: during start-up
and while a trial trains. It exits with status 130 within seconds, says how to resume, and the
next `run` finishes the study with nothing lost."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from search.record import trial_status
from search.status import status_dict
from search.storage import load_existing_study

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

# `python -m search run` with a stand-in trial function: "sleep" trains for a minute, once it has
# left a file named for its trial in started/ (the test waits for those, not for a while).
DRIVER = """
import os, signal, sys
# Ctrl-C as a terminal delivers it, also when the tests run where SIGINT is ignored (a background job
# of a shell, nohup), which the driver would inherit.
signal.signal(signal.SIGINT, signal.default_int_handler)
from search import cli, testing
from search.sweep import _driver
STARTED = os.path.abspath("started")

def sleeping(spec, data, report):
    open(os.path.join(STARTED, str(spec["number"])), "w").close()
    return testing.sleeping_trial(spec, data, report)

fn = {"sleep": sleeping, "cheap": testing.cheap_trial}[sys.argv[2]]
init = _driver.Sweep.__init__
_driver.Sweep.__init__ = lambda self, cfg, **kw: init(self, cfg, **{"trial_fn": fn, **kw})
sys.exit(cli.main(["run", sys.argv[1]]))
"""


def _study(tmp_path: Path) -> Path:
    path = tmp_path / "sig.yaml"
    path.write_text(yaml.safe_dump({
        "study": "sig", "data": {"dataset": "digits", "val_size": 200},
        "families": {"rsnet": {"knobs": {f"units.{i}": 1 for i in range(6)}}},
        "budget": {"n_trials": 3}, "fidelity": {"epochs": 1}, "sampler": {"name": "random", "seed": 1},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2}}))
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "started").mkdir()
    return path


def _started(tmp_path: Path) -> int:
    return len(list((tmp_path / "started").iterdir()))


def _start(tmp_path: Path, study: Path, fn: str) -> subprocess.Popen:
    before = _started(tmp_path)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(study), fn], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.trials_started_before = before
    return proc


def _wait_for_line(proc: subprocess.Popen, fragment: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if fragment in line:
            return
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"the driver never printed {fragment!r}")


def _wait_for_both_slots(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until two trials of this driver have started training (for a minute)."""
    folder = Path(proc.args[1]).parent
    deadline = time.monotonic() + timeout
    while _started(folder) < proc.trials_started_before + 2:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError("the driver never had two trials training")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen, sig: signal.Signals, phase: str) -> None:
    if phase == "start-up":
        time.sleep(1.5)  # importing, loading data, starting Ray
    else:
        _wait_for_line(proc, "concurrent trial(s)")
        _wait_for_both_slots(proc)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"`run` ignored {sig.name} during {phase} for 30 s")
    assert proc.returncode == 130, err[-2000:]
    assert time.monotonic() - sent < 30
    assert "interrupted; run the same command again to resume" in err


def _trials(tmp_path: Path) -> list:
    return load_existing_study(f"sqlite:///{tmp_path / 'runs' / 'sig' / 'study.db'}", "sig").get_trials()


def test_run_stops_on_signals_at_any_phase_and_resumes(tmp_path):
    """Ctrl-C during start-up, Ctrl-C while two trials train, SIGTERM while they train again: each
    stops `run` within seconds, and a last `run` finishes the study with nothing lost."""
    study = _study(tmp_path)
    _stop(_start(tmp_path, study, "sleep"), signal.SIGINT, "start-up")
    _stop(_start(tmp_path, study, "sleep"), signal.SIGINT, "training")
    url = f"sqlite:///{tmp_path / 'runs' / 'sig' / 'study.db'}"
    statuses = status_dict(load_existing_study(url, "sig"), url)["statuses"]
    assert statuses.get("interrupted", 0) >= 2 and "running" not in statuses  # no driver runs them now
    _stop(_start(tmp_path, study, "sleep"), signal.SIGTERM, "training")

    done = _start(tmp_path, study, "cheap")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-2000:]
    trials = _trials(tmp_path)
    assert sum(trial_status(t) == "trained" for t in trials) == 3
    assert not [t for t in trials if trial_status(t) in ("running", "waiting", "failed")]
    assert sum(trial_status(t) == "interrupted" for t in trials) >= 4  # both slots, twice
