"""Orchestration overhead per trial: effnas vs the anchors, side by side in one run.

A trivially cheap trial (no training: it returns a made-up accuracy at once) goes through the whole
effnas machinery: Optuna ask with the family's hierarchical knobs, the cost model, the budget check,
Ray actor scheduling, the result record and tell, on a real SQLite file with a real local Ray
instance (2 CPUs, 2 concurrent trials). The anchor script (plain Optuna loop; Ray Tune +
OptunaSearch) runs in the same invocation.

    python bench/orchestration_overhead.py [--trials 40] [--anchor ../shared/anchors/orchestration_overhead.py]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def effnas_ms_per_trial(n: int, workdir: str) -> tuple[float, float]:
    import ray

    from search.config import parse_study
    from search.runner import Sweep
    from search.testing import cheap_trial
    from trainers.data import DataConfig, load_data

    cfg = parse_study({
        "study": "overhead", "run_dir": os.path.join(workdir, "effnas"),
        "data": {"dataset": "digits", "val_size": 200},
        "families": {"condensenet": {}, "rsnet": {}, "igcv2": {}, "slimconv": {}},
        "budget": {"n_trials": n, "max_stalls": 10 * n}, "fidelity": {"epochs": 1},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2},
    }, "bench")
    data = load_data(DataConfig(dataset="digits", val_size=200))
    summary = Sweep(cfg, trial_fn=cheap_trial, data=data, log=lambda _: None).run()
    ray.shutdown()
    proposals = summary.trained + summary.duplicate + summary.infeasible
    return 1000 * summary.loop_seconds / n, 1000 * summary.loop_seconds / max(1, proposals)


def anchor(path: str, n: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, path, str(n)], capture_output=True, text=True, check=True).stdout
    pairs = (line.split() for line in out.splitlines())
    return {p[0]: float(p[1]) for p in pairs if len(p) == 2 and p[0].endswith("_ms_per_trial")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--anchor", default=str(REPO.parent / "shared" / "anchors" / "orchestration_overhead.py"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours, per_proposal = effnas_ms_per_trial(args.trials, tmp)
        print(f"effnas_ms_per_trained_trial {ours:.1f}", flush=True)
    ref = anchor(args.anchor, args.trials)
    tune = ref["ray_tune_optunasearch_ms_per_trial"]
    print(f"effnas_ms_per_trained_trial {ours:.1f}  (per proposal incl. duplicates: {per_proposal:.1f})")
    print(f"plain_optuna_sqlite_ms_per_trial {ref['plain_optuna_sqlite_ms_per_trial']:.1f}")
    print(f"ray_tune_optunasearch_ms_per_trial {tune:.1f}")
    print(f"effnas / ray_tune_optunasearch = {ours / tune:.2f}  (goal <= 0.50)")


if __name__ == "__main__":
    main()
