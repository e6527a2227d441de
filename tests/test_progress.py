"""What `run` shows while it works: per-epoch progress from the workers (plain lines, rate-limited),
the live tqdm view, and `--quiet`. Real local Ray, stand-in trials that take 0.6 s per epoch."""
from __future__ import annotations

import re

import pytest

from search.config import parse_study
from search.sweep import Sweep
from search import testing

pytestmark = pytest.mark.slow


def _cfg(tmp_path, name: str):
    return parse_study({
        "study": name, "run_dir": str(tmp_path / name), "data": {"dataset": "digits", "val_size": 200},
        "families": {"rsnet": {"knobs": {f"units.{i}": 1 for i in range(6)}}},
        "budget": {"n_trials": 3}, "fidelity": {"epochs": 3}, "sampler": {"name": "random", "seed": 2},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2}}, str(tmp_path / f"{name}.yaml"))


@pytest.fixture(scope="module")
def digits():
    from trainers.data import DataConfig, load_data

    return load_data(DataConfig(dataset="digits", val_size=200))


def test_plain_output_has_epoch_lines_from_the_workers(tmp_path, ray_local, digits):
    lines: list[str] = []
    Sweep(_cfg(tmp_path, "plain"), trial_fn=testing.slow_curve_trial, data=digits, log=lines.append).run()
    epoch_lines = [line for line in lines if re.search(r"trial \d+ rsnet epoch \d/3 acc 0\.\d{4} \(\d+\.\d s/epoch\)", line)]
    trials = {int(re.search(r"trial (\d+)", line).group(1)) for line in epoch_lines}
    assert len(trials) == 3, lines  # every trial reported an epoch while it trained
    per_trial = [sum(f"trial {n} " in line for line in epoch_lines) for n in trials]
    assert max(per_trial) < 3  # at most one line per trial every few seconds (3 epochs take 1.8 s)


def test_live_view_shows_budget_best_front_and_running_trials(tmp_path, ray_local, digits, capsys):
    Sweep(_cfg(tmp_path, "live"), trial_fn=testing.slow_curve_trial, data=digits, progress="live").run()
    out = capsys.readouterr().out
    assert re.search(r"trials: +100%\|.*\| 3/3", out), out[-2000:]
    assert re.search(r"best 0\.\d{4} \(#\d+\), front \d+", out)
    assert re.search(r"#\d+ rsnet epoch [123]/3, acc 0\.\d{4}, \d+\.\d s/ep", out)  # a row per running trial
    assert "trained acc" in out  # event lines above the bars


def test_quiet_prints_only_the_final_summary(tmp_path, capsys):
    import yaml

    from search.cli import main

    study = tmp_path / "q.yaml"
    study.write_text(yaml.safe_dump({"study": "q", "data": {"dataset": "digits", "val_size": 200},
                                     "families": {"rsnet": {"knobs": {f"units.{i}": 1 for i in range(6)}}},
                                     "budget": {"n_trials": 1}, "fidelity": {"epochs": 1}, "train": {"batch_size": 256},
                                     "resources": {"max_concurrent": 1}, "ray": {"num_cpus": 1}}))
    assert main(["run", str(study), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "done: 1 trained" in out and "Pareto front" in out
    assert "concurrent trial(s)" not in out and "[" not in out.split("done:")[0].split("checking")[-1]
