"""Does pre-screening buy a better front for the same compute? Pre-screening on vs off, real CIFAR-10.

Both arms run the study ``bench/studies/cifar10_curves.yaml`` (random sampler with the same seed,
all four families, 4 epochs on 3,000 16x16 images, 2 trials at a time) for the same wall-clock
budget; the second arm adds ``prescreen: {proxy: P, pool: N, keep: F}``. Reported per arm: the
hypervolume of the validation front over time, at a fixed reference point, in (accuracy,
log10 MACs, log10 params) with reference (0.1 = chance, 7 = the study's 1e7 MACs limit, 6.5), and
the counts of trained and screened proposals. Proxy time is part of each arm's budget.

    python bench/prescreen_efficiency.py [--minutes 8] [--proxy naswot] [--pool 4] [--keep 0.25] [--seed 11]

The last line is one JSON object with both arms' figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REFERENCE = [0.1, 7.0, 6.5]
DIRECTIONS = ["maximize", "minimize", "minimize"]


def _front_over_time(study, started: float, step_s: float, horizon_s: float) -> list[tuple[float, float]]:
    from search.pareto import hypervolume
    from search.record import read_record, trial_status

    done = sorted((t.datetime_complete.timestamp() - started, read_record(t)) for t in study.get_trials()
                  if trial_status(t) == "trained" and t.datetime_complete)
    points, curve, i = [], [], 0
    steps = int(horizon_s // step_s) + 1
    for k in range(1, steps + 1):
        at = min(k * step_s, horizon_s)
        while i < len(done) and done[i][0] <= at:
            r = done[i][1]
            points.append([r.val_acc, math.log10(max(r.macs, 1)), math.log10(max(r.params, 1))])
            i += 1
        curve.append((round(at, 1), hypervolume(points, DIRECTIONS, REFERENCE)))
    return curve


def run_arm(name: str, cfg, minutes: float, workdir: str) -> dict:
    import ray

    from search.record import trial_status
    from search.storage import load_existing_study
    from search.sweep import Sweep

    cfg = dataclasses.replace(cfg, run_dir=str(Path(workdir) / name),
                              budget=dataclasses.replace(cfg.budget, n_trials=10_000, time_limit_s=60 * minutes))
    started = time.time()
    try:
        summary = Sweep(cfg, log=lambda line: print(f"[{name}] {line}", flush=True)).run()
    finally:
        ray.shutdown()
    wall = time.time() - started
    study = load_existing_study(cfg.storage_url, cfg.study)
    curve = _front_over_time(study, started, 60.0, wall)
    statuses: dict[str, int] = {}
    for t in study.get_trials():
        statuses[str(trial_status(t))] = statuses.get(str(trial_status(t)), 0) + 1
    return {"arm": name, "wall_seconds": round(wall, 1), "trained": summary.trained, "screened": summary.screened,
            "statuses": statuses, "hypervolume_over_time": curve, "final_hypervolume": curve[-1][1] if curve else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(REPO / "bench" / "studies" / "cifar10_curves.yaml"))
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget per arm")
    ap.add_argument("--proxy", default="naswot")
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    from search.config import PrescreenSection, ProxiesSection, load_study

    base = load_study(args.study)
    base = dataclasses.replace(base, sampler=dataclasses.replace(base.sampler, seed=args.seed))
    screened = dataclasses.replace(base, proxies=ProxiesSection(names=(args.proxy,)),
                                   prescreen=PrescreenSection(proxy=args.proxy, pool=args.pool, keep=args.keep))
    with tempfile.TemporaryDirectory() as tmp:
        arms = [run_arm("prescreen_off", base, args.minutes, tmp), run_arm("prescreen_on", screened, args.minutes, tmp)]
    print(f"\nsame budget of {args.minutes:g} min per arm; hypervolume in (accuracy, log10 MACs, log10 params) "
          f"against {REFERENCE}:")
    for a in arms:
        print(f"  {a['arm']:<14} trained {a['trained']:>3}, screened {a['screened']:>3}, final hypervolume "
              f"{a['final_hypervolume']:.4f}; over time " + " ".join(f"{hv:.3f}" for _, hv in a["hypervolume_over_time"]))
    ratio = arms[1]["final_hypervolume"] / arms[0]["final_hypervolume"] if arms[0]["final_hypervolume"] else None
    print(f"prescreen_on / prescreen_off final hypervolume: {ratio:.3f}" if ratio else "no front in the off arm")
    print(json.dumps({"minutes": args.minutes, "proxy": args.proxy, "pool": args.pool, "keep": args.keep,
                      "seed": args.seed, "reference": REFERENCE, "arms": arms, "ratio_on_off": ratio}))


if __name__ == "__main__":
    main()
