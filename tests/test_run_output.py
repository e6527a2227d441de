"""What a local `run` prints: nothing its user cannot act on (no Ray token-authentication notice, no
Optuna INFO lines), and with `--quiet` the final summary alone. A real run of the shipped quick
study (one trial; its outputs in a temporary folder), as a user starts it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
NOISE = ("Token authentication", "RAY_AUTH_MODE", "A new study created", "[I ")


def _run(study: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}  # Ray's defaults
    return subprocess.run([sys.executable, "-m", "search", "run", str(study), "--n-trials", "1", *extra],
                          cwd=study.parent, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=600)


def test_local_run_prints_no_banner_and_quiet_prints_the_summary_alone(tmp_path):
    raw = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
    raw["run_dir"] = str(tmp_path / "run")
    study = tmp_path / "quickstart.yaml"
    study.write_text(yaml.safe_dump(raw))

    first = _run(study)
    assert first.returncode == 0, first.stderr[-3000:]
    output = first.stdout + first.stderr
    assert "checking" in first.stdout and "done: 1 trained" in first.stdout
    assert not [line for line in output.splitlines() if any(n in line for n in NOISE)], output

    quiet = _run(study, "--quiet")  # one more trial, resumed from the database
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stderr == "", quiet.stderr
    lines = quiet.stdout.splitlines()
    assert lines[0].startswith("done: 1 trained"), quiet.stdout  # the summary, from its first line
    assert lines[1].startswith("study quickstart: 2 trials") and any(l.startswith("Pareto front") for l in lines)
