"""Is the search worth it? effnas's front per unit of wall time against random search and against the
Ray Tune + OptunaSearch (NSGA-II) script a user would write instead, on real CIFAR-10.

Every arm gets the same wall-clock budget on this machine (2 trials at a time, 1 CPU each) and the
same CPU-sized fidelity, knob ranges, MACs limit and seed designs: ``bench/studies/cifar10_search.yaml``
(3,000 16x16 training images, 1,000 validation images, 4 epochs, max_macs 1e7, two IGCV2 seeds).
Every arm prices each drawn network with effnas's cost model and refuses one over the limit before
training it (it would score nothing: the reference point sits on the limit), and trains the seeds
first. Arms:

- ``random``: random sampler through effnas's driver, with the study's MACs pre-filter and seeds, no
  early stopping.
- ``ray_tune``: ``bench/ray_tune_nsga2.py``, the hand-written script: ``tune.Tuner`` with
  ``OptunaSearch(NSGAIISampler)`` over the same knob draws, each trial trained with the same trainer;
  it prices every draw, tells an over-limit one to Optuna as infeasible without starting a trial, and
  gets the seeds through ``points_to_evaluate``.
- ``effnas``: the study file as written (the default sampler, TPE; the MACs pre-filter, Pareto ASHA,
  two paper seeds).
- ``effnas_no_prefilter``, ``effnas_no_asha``, ``effnas_no_seeds``: one feature off each.

Reported per arm and run: the hypervolume of the validation front over time (every 15 s, and at every
trained trial), in (accuracy, log10 MACs, log10 params) against the fixed reference (0.1 = chance,
7 = the 1e7 MACs limit, 6.5); the median final hypervolume over the sampler seeds; every proposal as a
point (arm, seed, trial, start/end seconds, family, knobs, accuracy, MACs, params, status). Time to
target is measured against random search's own curves: the target is random's median final
hypervolume; for every run, the first time its front reached it (``None``: never); per arm, the median
of those times over its runs (a run that never reached it counts as later than any time, so the median
is ``None`` when half or more never did), and its ratio to random's own median time. The time at which
random's median run (the one whose final is the target; with an even number of runs, the one just
above it) first reached it is reported as well. Only trials finished within the budget count.
Runs go round-robin over the arms (random, ray_tune, effnas for each seed, then the ablations), so
that drift of the machine's speed spreads over all of them. Each run is its own process.

    python bench/search_efficiency.py [--minutes 5] [--seeds 0 1 2] [--ablation-seed 0] [--arms ...]

The whole benchmark is 12 runs (3 seeds x 3 main arms, 3 ablations) of 5-8 minutes each (start-up,
and effnas's driver waits for the trials still training at the limit): 75-90 minutes. A smoke run of
the three main arms: ``--minutes 0.5 --seeds 0 --arms random ray_tune effnas`` (3 runs of 1-4 minutes;
at that budget few or no trials finish within it: it checks the plumbing and the trial points, not
the result).

The last line is one JSON object: per arm, every run's curve, the median final hypervolume and the
median time to reach random's final hypervolume; under ``runs``, every run with its trial points.
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


def _log_point(acc: float, macs: float, params: float) -> list[float]:
    return [acc, math.log10(max(macs, 1)), math.log10(max(params, 1))]


def curve_of(finished: list[tuple[float, float, float, float]], horizon_s: float) -> list[tuple[float, float]]:
    """Hypervolume over time, every ``STEP_S``, from (seconds since start, accuracy, MACs, params) of
    finished trials."""
    from search.pareto import hypervolume

    done = sorted(f for f in finished if f[0] <= horizon_s)
    points, curve, i = [], [], 0
    for k in range(1, int(math.ceil(horizon_s / STEP_S)) + 1):
        at = min(k * STEP_S, horizon_s)
        while i < len(done) and done[i][0] <= at:
            points.append(_log_point(*done[i][1:]))
            i += 1
        curve.append((round(at, 1), hypervolume(points, DIRECTIONS, REFERENCE)))
    return curve


def steps_of(finished: list[tuple[float, float, float, float]], horizon_s: float) -> list[tuple[float, float]]:
    """Hypervolume at each trial's finish within the horizon: (seconds, hypervolume), exact times
    (time to target is read from these, not from the 15-s grid)."""
    from search.pareto import hypervolume

    points, steps = [], []
    for t, acc, macs, params in sorted(f for f in finished if f[0] <= horizon_s):
        points.append(_log_point(acc, macs, params))
        steps.append((round(t, 3), hypervolume(points, DIRECTIONS, REFERENCE)))
    return steps


def _effnas_cfg(arm: str, seed: int, minutes: float, workdir: str):
    from search.config import ConstraintsSection, FidelitySection, load_study

    cfg = load_study(STUDY)
    cfg = dataclasses.replace(cfg, run_dir=str(Path(workdir) / arm), study=f"{arm}-{seed}",
                              sampler=dataclasses.replace(cfg.sampler, seed=seed),
                              budget=dataclasses.replace(cfg.budget, time_limit_s=60 * minutes))
    no_asha = FidelitySection(epochs=cfg.fidelity.epochs, asha=None)
    if arm == "random":  # the study's MACs limit (priced and refused before training) and seeds, as every arm
        return dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, name="random", options={}),
                                   fidelity=no_asha)
    if arm == "effnas_no_prefilter":
        return dataclasses.replace(cfg, constraints=ConstraintsSection())
    if arm == "effnas_no_asha":
        return dataclasses.replace(cfg, fidelity=no_asha)
    if arm == "effnas_no_seeds":
        return dataclasses.replace(cfg, seeds=())
    return cfg


def effnas_points(trials, started: float) -> list[dict]:
    """One point per trial of an effnas study: times in seconds since ``started`` (start: when it began
    on a worker, from its worker seconds, else when it was asked; a refused one starts and ends when it
    was told), family, knobs, the seed design it is, accuracy, costs and effnas's status."""
    from search.record import read_record, trial_status
    from search.seeds import SEED_ATTR

    points = []
    for t in trials:
        r = read_record(t)
        asked = t.datetime_start.timestamp() - started if t.datetime_start else None
        end = t.datetime_complete.timestamp() - started if t.datetime_complete else None
        start = end - r.worker_seconds if end is not None and r.worker_seconds else asked
        points.append({"trial": t.number, "start_s": None if start is None else round(start, 3),
                       "end_s": None if end is None else round(end, 3), "family": r.family, "knobs": r.knobs,
                       "design": t.user_attrs.get(SEED_ATTR), "accuracy": r.val_acc, "macs": r.macs,
                       "params": r.params, "status": str(trial_status(t))})
    return points


def run_effnas(arm: str, seed: int, minutes: float, workdir: str) -> dict:
    import ray

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
    points = effnas_points(study.get_trials(), started)
    statuses: dict[str, int] = {}
    for p in points:
        statuses[p["status"]] = statuses.get(p["status"], 0) + 1
    return {"trials": points, "statuses": statuses, "trained": summary.trained, "stopped": summary.stopped}


def run_ray_tune(seed: int, minutes: float, workdir: str) -> dict:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "ray_tune_nsga2.py"), "--study", str(STUDY),
                          "--seed", str(seed), "--minutes", str(minutes), "--workdir", workdir],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"ray_tune_nsga2.py failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def finished_of(points: list[dict]) -> list[tuple[float, float, float, float]]:
    """(end seconds, accuracy, MACs, params) of the trials trained to the full fidelity."""
    return [(p["end_s"], p["accuracy"], p["macs"], p["params"]) for p in points
            if p["status"] == "trained" and p["end_s"] is not None]


def one_run(arm: str, seed: int, minutes: float) -> dict:
    """Run one arm in this process; the curve counts only trials finished within the budget."""
    with tempfile.TemporaryDirectory() as tmp:
        wall0 = time.time()
        raw = run_ray_tune(seed, minutes, tmp) if arm == "ray_tune" else run_effnas(arm, seed, minutes, tmp)
        wall = time.time() - wall0
    horizon = 60 * minutes
    raw.pop("finished", None)
    points = [{"arm": arm, "seed": seed, **p} for p in raw.pop("trials")]
    if arm == "ray_tune":
        raw["statuses"] = {s: sum(1 for p in points if p["status"] == s) for s in sorted({p["status"] for p in points})}
    finished = finished_of(points)
    curve = curve_of(finished, horizon)
    return {"arm": arm, "seed": seed, "wall_seconds": round(wall, 1),
            "finished_in_budget": sum(1 for f in finished if f[0] <= horizon),
            "refused_in_budget": sum(1 for p in points if p["status"] == "infeasible"
                                     and p["end_s"] is not None and p["end_s"] <= horizon), **raw,
            "hypervolume_over_time": curve, "hypervolume_steps": steps_of(finished, horizon),
            "final_hypervolume": curve[-1][1] if curve else 0.0, "trials": points}


def time_to_reach(steps: list, target: float) -> float | None:
    """The first time a (seconds, hypervolume) curve reaches ``target``; None if it never does."""
    return next((t for t, hv in steps if hv >= target - 1e-12), None)


def median_time(times: list) -> float | None:
    """Median of times to target where None (never reached) counts as later than any time; None when
    the median itself is "never"."""
    if not times:
        return None
    m = statistics.median(math.inf if t is None else t for t in times)
    return None if math.isinf(m) else m


def _steps(run: dict) -> list:
    """Exact (seconds, hypervolume) steps; the 15-s curve for runs recorded before steps were kept."""
    return run["hypervolume_steps"] if "hypervolume_steps" in run else run["hypervolume_over_time"]


def summarise(runs: list[dict]) -> dict:
    """Per arm: final hypervolumes and their median; time to random search's median final, per run
    and as a median, against random's own median time (see the module docstring)."""
    by_arm: dict[str, list[dict]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], []).append(r)
    randoms = by_arm.get("random", [])
    target = statistics.median(r["final_hypervolume"] for r in randoms) if randoms else None
    random_time = median_run = median_run_time = None
    if target is not None:
        random_time = median_time([time_to_reach(_steps(r), target) for r in randoms])
        median_run = min((r for r in randoms if r["final_hypervolume"] >= target - 1e-12),
                         key=lambda r: r["final_hypervolume"])
        median_run_time = time_to_reach(_steps(median_run), target)
    out = {}
    for arm, rs in by_arm.items():
        times = [time_to_reach(_steps(r), target) if target is not None else None for r in rs]
        med = median_time(times)
        out[arm] = {"median_final_hypervolume": statistics.median(r["final_hypervolume"] for r in rs),
                    "final_hypervolumes": [round(r["final_hypervolume"], 4) for r in rs],
                    "seeds": [r["seed"] for r in rs],
                    "time_to_random_final_s": times,
                    "median_time_to_random_final_s": med,
                    "median_time_vs_random": (round(med / random_time, 3)
                                              if med is not None and random_time else None),
                    "finished_in_budget": [r["finished_in_budget"] for r in rs],
                    "refused_in_budget": [r.get("refused_in_budget") for r in rs]}
    return {"random_final_hypervolume": target, "random_median_time_to_target_s": random_time,
            "random_median_run": None if median_run is None else {"seed": median_run["seed"],
                                                                   "time_to_target_s": median_run_time},
            "arms": out}


def _seconds(t: float | None) -> str:
    return "never" if t is None else f"{t:.0f} s"


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
              f"{run['finished_in_budget']} trained and {run['refused_in_budget']} refused over the limit "
              f"within {args.minutes:g} min ({run['wall_seconds']:.0f}s wall)", flush=True)
    summary = summarise(runs)
    median_run = summary["random_median_run"]
    print(f"\nhypervolume in (accuracy, log10 MACs, log10 params) against {REFERENCE}, "
          f"{args.minutes:g} min per run; random's median final: {summary['random_final_hypervolume']}, "
          f"reached by random's runs after a median {_seconds(summary['random_median_time_to_target_s'])}"
          + (f" (its median run, seed {median_run['seed']}: {_seconds(median_run['time_to_target_s'])})"
             if median_run else ""))
    for arm, a in summary["arms"].items():
        ratio = a["median_time_vs_random"]
        print(f"  {arm:<22} median final {a['median_final_hypervolume']:.4f} {a['final_hypervolumes']}; "
              f"time to random's final: {a['time_to_random_final_s']} (median "
              f"{_seconds(a['median_time_to_random_final_s'])}"
              + (f", {ratio:g}x random's" if ratio is not None else "") + ")")
    print(json.dumps({"minutes": args.minutes, "reference": REFERENCE, "seeds": args.seeds,
                      "ablation_seed": args.ablation_seed, **summary, "runs": runs}))


if __name__ == "__main__":
    main()
