"""Orchestration overhead per trial: effnas vs the anchors, side by side, over the same spans.

A trivially cheap trial (no training: it returns a made-up accuracy at once) goes through the whole
effnas machinery: Optuna ask with the family's hierarchical knobs, the cost model, the budget check,
scheduling on the execution backend, the result record and tell, on a real SQLite file with a real
local Ray instance (2 CPUs, 2 concurrent trials). Both effnas backends are measured: ``effnas``
(``execution.backend: actors``) and ``effnas_tune`` (``tune``: every trial a Ray Tune trial). The
anchor script (plain Optuna loop; Ray Tune + OptunaSearch, 2 concurrent trials) runs in the same
invocation, alternating with them.

Both sides are timed over two spans, the anchor's own definitions:
- whole (``*_ms_per_trial``): the call that runs the sweep, divided by N. For effnas that is
  ``Sweep.run()`` with Ray already initialised: opening the study, recovery, starting the workers and
  the pricer, the loop, closing. For Ray Tune it is ``tuner.fit()`` (Tune's start-up and teardown).
  ``ray.init`` is outside the span on both sides.
- steady (``*_steady_ms_per_trial``): from the first trained result to the last, divided by N - 1.

    python bench/orchestration_overhead.py [--trials 40] [--repeats 3] [--anchor PATH]

The last line is one JSON object: per side and span, the median and every run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIDES = ("effnas", "effnas_tune", "plain_optuna_sqlite", "ray_tune_optunasearch")
BACKENDS = {"effnas": "actors", "effnas_tune": "tune"}  # side -> execution.backend


def effnas_spans(n: int, workdir: str, side: str = "effnas") -> dict[str, float]:
    """Milliseconds per trial of one effnas sweep of ``n`` cheap trials on the side's backend, over both spans."""
    import ray

    from search.config import parse_study
    from search.sweep import Sweep
    from search.testing import cheap_trial
    from trainers.data import DataConfig, load_data

    cfg = parse_study({
        "study": "overhead", "run_dir": os.path.join(workdir, side), "execution": {"backend": BACKENDS[side]},
        "data": {"dataset": "digits", "val_size": 200},
        "families": {"condensenet": {}, "rsnet": {}, "igcv2": {}, "slimconv": {}},
        "budget": {"n_trials": n, "max_stalls": 10 * n}, "fidelity": {"epochs": 1},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2},
    }, "bench")
    data = load_data(DataConfig(dataset="digits", val_size=200))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        s = Sweep(cfg, trial_fn=cheap_trial, data=data, log=lambda _: None).run()
        whole = time.perf_counter() - t0
    finally:
        ray.shutdown()
    if s.trained != n:
        raise SystemExit(f"{side} trained {s.trained} of {n} trials: the benchmark measured something else")
    steady = (s.last_result_at - s.first_result_at) / max(1, s.trained - 1)
    proposals = s.trained + s.duplicate + s.infeasible
    return {f"{side}_ms_per_trial": 1000 * whole / n, f"{side}_steady_ms_per_trial": 1000 * steady,
            f"{side}_loop_ms_per_proposal": 1000 * s.loop_seconds / max(1, proposals)}


def anchor_spans(path: str, n: int) -> dict[str, float]:
    # RAY_ADDRESS=local: the anchor's ray.init() starts its own instance even where a cluster runs.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    out = subprocess.run([sys.executable, path, str(n)], capture_output=True, text=True, check=True, env=env).stdout
    pairs = (line.split() for line in out.splitlines())
    found = {p[0]: float(p[1]) for p in pairs if len(p) == 2 and p[0].endswith("_ms_per_trial")}
    needed = [f"{side}{span}_ms_per_trial" for side in SIDES if side not in BACKENDS for span in ("", "_steady")]
    missing = [k for k in needed if k not in found]
    if missing:
        raise SystemExit(f"{path} printed no {missing}: it is not the anchor this benchmark reads")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating")
    ap.add_argument("--anchor", default=str(REPO.parent / "shared" / "anchors" / "orchestration_overhead.py"))
    args = ap.parse_args()
    runs: dict[str, list[float]] = {}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            figures = {**effnas_spans(args.trials, tmp, "effnas"), **anchor_spans(args.anchor, args.trials),
                       **effnas_spans(args.trials, tmp, "effnas_tune")}
        for k, v in figures.items():
            runs.setdefault(k, []).append(round(v, 1))
        print(f"run {r}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\nmedians over {args.repeats} runs of {args.trials} trials (ms per trial):")
    print(f"{'side':<24}{'whole':>10}{'steady':>10}")
    for side in SIDES:
        print(f"{side:<24}{med[f'{side}_ms_per_trial']:>10.1f}{med[f'{side}_steady_ms_per_trial']:>10.1f}")
    ratios = {side: {span: [e / t for e, t in zip(runs[f"{side}{span}_ms_per_trial"],
                                                   runs[f"ray_tune_optunasearch{span}_ms_per_trial"])]
                        for span in ("", "_steady")} for side in BACKENDS}
    for side in BACKENDS:
        for span, name in (("", "whole"), ("_steady", "steady")):
            r = ratios[side][span]
            print(f"{side} / ray_tune_optunasearch, {name}: " + " ".join(f"{x:.2f}" for x in r)
                  + f" (median {statistics.median(r):.2f})")
    print(json.dumps({"trials": args.trials, "repeats": args.repeats, "median_ms_per_trial": med, "runs": runs,
                      "ratio_to_ray_tune": {side: {"whole": [round(x, 3) for x in ratios[side][""]],
                                                   "steady": [round(x, 3) for x in ratios[side]["_steady"]]}
                                            for side in BACKENDS}}))


if __name__ == "__main__":
    main()
