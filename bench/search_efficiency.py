"""Is the search worth it? effnas's front per unit of wall time against random search and against the
Ray Tune + OptunaSearch (NSGA-II) script a user would write instead, on real CIFAR-10.

Every arm gets the same wall-clock budget on this machine (2 trials at a time, 1 CPU each) and the
same CPU-sized fidelity, knob ranges and MACs limit: ``bench/studies/cifar10_search.yaml`` (3,000
16x16 training images, 1,000 validation images, 4 epochs). Arms:

- ``random``: random sampler, no pre-filter (nothing is priced and refused before training: the MACs
  limit is applied after the fact, by the reference point), no early stopping, no seeds.
- ``ray_tune``: ``bench/ray_tune_nsga2.py``, the hand-written script: ``tune.Tuner`` with
  ``OptunaSearch(NSGAIISampler)`` over the same knob draws, each trial trained with the same trainer.
- ``effnas``: the study file as written (NSGA-II, the MACs pre-filter, Pareto ASHA, two paper seeds).
- ``effnas_no_prefilter``, ``effnas_no_asha``, ``effnas_no_seeds``: one feature off each.

Reported per arm and run: the hypervolume of the validation front over time (every 15 s), in
(accuracy, log10 MACs, log10 params) against the fixed reference (0.1 = chance, 7 = the 1e7 MACs
limit, 6.5); the median final hypervolume over the sampler seeds; and the wall time each run needs
to reach the median final hypervolume of ``random``. Only trials finished within the budget count.
Runs go round-robin over the arms (random, ray_tune, effnas for each seed, then the ablations), so
that drift of the machine's speed spreads over all of them. Each run is its own process.

    python bench/search_efficiency.py [--minutes 5] [--seeds 0 1 2] [--ablation-seed 0] [--arms ...]

The last line is one JSON object: per arm, every run's curve, the median final hypervolume and the
median time to reach random's final hypervolume.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STUDY = REPO / "bench" / "studies" / "cifar10_search.yaml"
REFERENCE = [0.1, 7.0, 6.5]
DIRECTIONS = ["maximize", "minimize", "minimize"]
STEP_S = 15.0
MAIN_ARMS = ("random", "ray_tune", "effnas")
ABLATIONS = ("effnas_no_prefilter", "effnas_no_asha", "effnas_no_seeds")


def curve_of(finished: list[tuple[float, float, float, float]], horizon_s: float) -> list[tuple[float, float]]:
    """Hypervolume over time from (seconds since start, accuracy, MACs, params) of finished trials."""
    from search.pareto import hypervolume

    done = sorted(f for f in finished if f[0] <= horizon_s)
    points, curve, i = [], [], 0
    for k in range(1, int(math.ceil(horizon_s / STEP_S)) + 1):
        at = min(k * STEP_S, horizon_s)
        while i < len(done) and done[i][0] <= at:
            _, acc, macs, params = done[i]
            points.append([acc, math.log10(max(macs, 1)), math.log10(max(params, 1))])
            i += 1
        curve.append((round(at, 1), hypervolume(points, DIRECTIONS, REFERENCE)))
    return curve


def _effnas_cfg(arm: str, seed: int, minutes: float, workdir: str):
    from search.config import ConstraintsSection, FidelitySection, load_study

    cfg = load_study(STUDY)
    cfg = dataclasses.replace(cfg, run_dir=str(Path(workdir) / arm), study=f"{arm}-{seed}",
                              sampler=dataclasses.replace(cfg.sampler, seed=seed),
                              budget=dataclasses.replace(cfg.budget, time_limit_s=60 * minutes))
    no_asha = FidelitySection(epochs=cfg.fidelity.epochs, asha=None)
    if arm == "random":
        return dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, name="random"), seeds=(),
                                   constraints=ConstraintsSection(), fidelity=no_asha)
    if arm == "effnas_no_prefilter":
        return dataclasses.replace(cfg, constraints=ConstraintsSection())
    if arm == "effnas_no_asha":
        return dataclasses.replace(cfg, fidelity=no_asha)
    if arm == "effnas_no_seeds":
        return dataclasses.replace(cfg, seeds=())
    return cfg


def run_effnas(arm: str, seed: int, minutes: float, workdir: str) -> dict:
    import ray

    from search.record import read_record, trial_status
    from search.storage import load_existing_study
    from search.sweep import Sweep

    cfg = _effnas_cfg(arm, seed, minutes, workdir)
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    started = time.time()
    try:
        summary = Sweep(cfg, log=lambda line: print(f"[{arm}/{seed}] {line}", flush=True)).run()
    finally:
        ray.shutdown()
    study = load_existing_study(cfg.storage_url, cfg.study)
    finished, statuses = [], {}
    for t in study.get_trials():
        status = str(trial_status(t))
        statuses[status] = statuses.get(status, 0) + 1
        if status == "trained" and t.datetime_complete:
            r = read_record(t)
            finished.append((t.datetime_complete.timestamp() - started, r.val_acc, r.macs, r.params))
    return {"finished": finished, "statuses": statuses, "trained": summary.trained, "stopped": summary.stopped}


def run_ray_tune(seed: int, minutes: float, workdir: str) -> dict:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "ray_tune_nsga2.py"), "--study", str(STUDY),
                          "--seed", str(seed), "--minutes", str(minutes), "--workdir", workdir],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"ray_tune_nsga2.py failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_run(arm: str, seed: int, minutes: float) -> dict:
    """Run one arm in this process; the curve counts only trials finished within the budget."""
    with tempfile.TemporaryDirectory() as tmp:
        wall0 = time.time()
        raw = run_ray_tune(seed, minutes, tmp) if arm == "ray_tune" else run_effnas(arm, seed, minutes, tmp)
        wall = time.time() - wall0
    horizon = 60 * minutes
    finished = [tuple(f) for f in raw.pop("finished")]
    curve = curve_of(finished, horizon)
    return {"arm": arm, "seed": seed, "wall_seconds": round(wall, 1),
            "finished_in_budget": sum(1 for f in finished if f[0] <= horizon), **raw,
            "hypervolume_over_time": curve, "final_hypervolume": curve[-1][1] if curve else 0.0}


def time_to_reach(curve: list, target: float) -> float | None:
    return next((t for t, hv in curve if hv >= target - 1e-12), None)


def summarise(runs: list[dict]) -> dict:
    by_arm: dict[str, list[dict]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], []).append(r)
    target = statistics.median(r["final_hypervolume"] for r in by_arm.get("random", [])) if "random" in by_arm else None
    out = {}
    for arm, rs in by_arm.items():
        times = [time_to_reach(r["hypervolume_over_time"], target) if target else None for r in rs]
        reached = [t for t in times if t is not None]
        out[arm] = {"median_final_hypervolume": statistics.median(r["final_hypervolume"] for r in rs),
                    "final_hypervolumes": [round(r["final_hypervolume"], 4) for r in rs],
                    "seeds": [r["seed"] for r in rs],
                    "time_to_random_final_s": times,
                    "median_time_to_random_final_s": statistics.median(reached) if len(reached) * 2 > len(rs) else None,
                    "finished_in_budget": [r["finished_in_budget"] for r in rs]}
    return {"random_final_hypervolume": target, "arms": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds of the main arms")
    ap.add_argument("--ablation-seed", type=int, default=0)
    ap.add_argument("--arms", nargs="+", default=list(MAIN_ARMS + ABLATIONS))
    ap.add_argument("--raw", default=None, help="append each run's JSON line to this file as it finishes")
    ap.add_argument("--one", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one[0], int(args.one[1]), args.minutes)))
        return
    plan = [(arm, s) for s in args.seeds for arm in MAIN_ARMS if arm in args.arms]
    plan += [(arm, args.ablation_seed) for arm in ABLATIONS if arm in args.arms]
    runs = []
    for arm, seed in plan:
        child = subprocess.run([sys.executable, __file__, "--minutes", str(args.minutes), "--one", arm, str(seed)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            print(f"{arm} seed {seed} failed:\n{child.stderr[-3000:]}", flush=True)
            continue
        run = json.loads(child.stdout.strip().splitlines()[-1])
        runs.append(run)
        if args.raw:
            with open(args.raw, "a") as f:
                f.write(json.dumps(run) + "\n")
        print(f"{arm:<22} seed {seed}: final hypervolume {run['final_hypervolume']:.4f}, "
              f"{run['finished_in_budget']} trained within {args.minutes:g} min "
              f"({run['wall_seconds']:.0f}s wall)", flush=True)
    summary = summarise(runs)
    print(f"\nhypervolume in (accuracy, log10 MACs, log10 params) against {REFERENCE}, "
          f"{args.minutes:g} min per run; random's median final: {summary['random_final_hypervolume']}")
    for arm, a in summary["arms"].items():
        t = a["median_time_to_random_final_s"]
        print(f"  {arm:<22} median final {a['median_final_hypervolume']:.4f} {a['final_hypervolumes']}; "
              f"time to random's final: {a['time_to_random_final_s']} (median {t if t is not None else 'not reached'})")
    print(json.dumps({"minutes": args.minutes, "reference": REFERENCE, "seeds": args.seeds,
                      "ablation_seed": args.ablation_seed, **summary, "runs": runs}))


if __name__ == "__main__":
    main()
