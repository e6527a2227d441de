"""Pre-screening: the choice within a pool (pure), and a real sweep that trains exactly the stated
fraction, records the rest as `screened`, and survives a SIGKILL without screening or training
anything twice."""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from search.prescreen import Candidate, choose, cost_adjusted
from search.record import read_record, trial_status
from search.storage import load_existing_study

REPO = Path(__file__).resolve().parents[1]


# --- the choice ----------------------------------------------------------------------------------

def _on_trend(number: int, macs: int, factor: float = 1.0) -> Candidate:
    """A proposal whose synflow grows as MACs^2 (the size trend), times ``factor``."""
    return Candidate(number, factor * float(macs) ** 2, macs, macs // 10)


def test_the_best_score_for_its_cost_wins_not_the_largest_score():
    history = [_on_trend(i, 10 ** (3 + i % 4)) for i in range(12)]
    pool = [_on_trend(100, 10 ** 6), _on_trend(101, 10 ** 5), _on_trend(102, 10 ** 3, factor=50.0),
            _on_trend(103, 10 ** 4, factor=0.1)]
    # Raw synflow prefers the largest network; for its cost, the small one 50x above the trend wins.
    assert max(pool, key=lambda c: c.score).number == 100
    assert choose("synflow", pool, history, keep=1) == {102}
    adjusted = cost_adjusted("synflow", pool, history)
    assert adjusted[2] == pytest.approx(math.log(50.0), abs=1e-6)
    assert adjusted[3] == pytest.approx(math.log(0.1), abs=1e-6)


def test_unscored_members_come_last_and_ties_go_to_the_cheaper():
    pool = [Candidate(0, None, 10, 1), Candidate(1, 5.0, 300, 3), Candidate(2, 5.0, 200, 2)]
    assert choose("naswot", pool, [], keep=1) == {2}      # no fit yet: raw scores, tie -> cheaper
    assert choose("naswot", pool, [], keep=2) == {1, 2}
    assert choose("naswot", pool, [], keep=3) == {0, 1, 2}


def test_without_history_the_raw_score_decides():
    pool = [Candidate(0, 10.0, 100, 10), Candidate(1, 1000.0, 100, 10), Candidate(2, 1e-3, 50, 5)]
    assert choose("snip", pool, [], keep=1) == {1}
    assert cost_adjusted("snip", pool, [])[1] == pytest.approx(math.log(1000.0))


# --- a real sweep ----------------------------------------------------------------------------------

DRIVER = """
import sys
from search.config import load_study
from search.sweep import Sweep
from search.testing import cheap_trial
s = Sweep(load_study(sys.argv[1]), trial_fn=cheap_trial).run()
print("SUMMARY", s.trained, s.screened, s.duplicate, s.infeasible, flush=True)
"""


def _study_file(tmp_path: Path, n_trials: int) -> Path:
    study = {"study": "screen", "run_dir": str(tmp_path / "run"),
             "data": {"dataset": "digits", "val_size": 200, "image_size": 8},
             "families": {"condensenet": {"knobs": {"num_stages": 3, "layers.0": [1, 3], "layers.1": [1, 3],
                                                    "layers.2": [1, 3], "growth.0": [8, 32], "growth.1": [8, 32],
                                                    "growth.2": [8, 32], "stem_channels": [8, 32], "se_start": -1,
                                                    "hs_start": -1, "head_channels": 0, "stem_stride": 1}},
                          "rsnet": {"knobs": {f"units.{i}": [1, 2] for i in range(6)}}},
             "budget": {"n_trials": n_trials}, "fidelity": {"epochs": 1}, "sampler": {"name": "random", "seed": 2},
             "proxies": {"names": ["synflow", "naswot", "snip", "grad_norm"], "batch_size": 8}, "prescreen": {"proxy": "synflow", "pool": 4, "keep": 0.5},
             "resources": {"cpus_per_trial": 1, "max_concurrent": 1}, "ray": {"num_cpus": 1}}
    path = tmp_path / "screen.yaml"
    path.write_text(yaml.safe_dump(study))
    (tmp_path / "driver.py").write_text(DRIVER)
    return path


def _run(warm_python, tmp_path: Path, study: Path, kill_at: str | None = None):
    """The driver in a process of its own (forked warm: tests/warm.py), to its end or its kill point."""
    env = {k: v for k, v in os.environ.items() if k != "EFFNAS_KILL_AT"}
    env["PYTHONPATH"] = str(REPO)
    if kill_at:
        env["EFFNAS_KILL_AT"] = kill_at
    return warm_python.run(DRIVER, [str(tmp_path / "driver.py"), str(study)], env, tmp_path, timeout=300)


def _trials(tmp_path: Path):
    return load_existing_study(f"sqlite:///{tmp_path / 'run' / 'study.db'}", "screen").get_trials()


def _pools(trials) -> dict[tuple, list]:
    pools: dict[tuple, list] = {}
    for t in trials:
        verdict = read_record(t).prescreen if t.user_attrs.get("record") else None
        if verdict:
            pools.setdefault(tuple(verdict["pool"]), []).append((t, verdict["kept"]))
    return pools


@pytest.mark.slow
def test_each_pool_trains_its_stated_fraction_and_records_the_rest(tmp_path, warm_python):
    study = _study_file(tmp_path, n_trials=4)
    proc = _run(warm_python, tmp_path, study)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _trials(tmp_path)
    statuses = Counter(trial_status(t) for t in trials)
    assert statuses["trained"] == 4 and statuses["screened"] == 4, statuses   # n_trials counts trained only
    pools = _pools(trials)
    assert len(pools) == 2 and all(len(members) == 4 for members in pools.values())
    assert all(sum(kept for _, kept in members) == 2 for members in pools.values())
    for t in trials:
        rec = read_record(t)
        assert rec.proxies and set(rec.proxies) == {"synflow", "naswot", "snip", "grad_norm"}, t.number
        if trial_status(t) == "screened":
            assert t.state == TrialState.PRUNED and rec.macs and rec.params and rec.worker_seconds is None
            assert rec.prescreen["kept"] is False
    assert "SUMMARY 4 4" in proc.stdout


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_screening_or_training_twice(tmp_path, warm_python):
    study = _study_file(tmp_path, n_trials=4)
    killed = _run(warm_python, tmp_path, study, kill_at="submitted:2")  # the second kept trial of the first pool
    assert killed.returncode != 0
    before = _trials(tmp_path)
    screened_before = {t.number for t in before if trial_status(t) == "screened"}
    kept_before = {t.number for t in before if t.user_attrs.get("prescreen_kept") and trial_status(t) == "running"}
    assert len(screened_before) == 2 and kept_before, [(t.number, trial_status(t)) for t in before]
    proc = _run(warm_python, tmp_path, study)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _trials(tmp_path)
    statuses = Counter(trial_status(t) for t in trials)
    assert statuses["trained"] == 4, statuses
    assert {t.number for t in trials if trial_status(t) == "screened"} >= screened_before
    # Interrupted trials that pre-screening had chosen are retried straight away, not pooled again.
    retries = [t for t in trials if t.user_attrs.get("retry_of") in kept_before]
    assert retries and all(t.user_attrs.get("prescreen_kept") for t in retries)
    assert all(trial_status(t) == "trained" and read_record(t).prescreen is None for t in retries)
    keys = Counter(read_record(t).arch_key for t in trials if trial_status(t) in ("trained", "screened"))
    assert max(keys.values()) == 1, "an architecture was screened or trained twice"
