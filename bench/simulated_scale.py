"""The real sweep at scale: thousands of NAS-Bench-Macro trials through the driver, the policy, the
sampler and an SQLite study, on the simulated backend (no training, no sleeping).

    python bench/simulated_scale.py --trials 10000 --workers 64 [--sampler tpe|nsga2|random|gp] [--asha] [--profile]

The sampler is the study default (TPE, with its default options: multivariate, constant liar)
unless ``--sampler`` or ``--options`` say otherwise.

The table holds 6,561 architectures, so the study is capped at ``--trials`` trials of every status
(``budget.max_trials``): trained ones and the duplicates the sampler proposes again (recorded at
once, without a worker). ``--asha`` replays the table's final accuracies as 4-epoch curves (each run
rising linearly to its recorded accuracy, a quarter of the time per epoch) with Pareto ASHA, so the
rung rule decides inside the sweep; without it the rung rule is timed apart, on a rung holding
10,000 results of the table (accuracy of each recorded run, exact costs).

Prints one JSON object as its last line: ``trials``, ``trained``, ``wall_seconds``,
``ms_per_trial_first_1000``, ``ms_per_trial_last_1000`` (wall time between the 1st and 1,000th
completed trial, and over the last 1,000), ``rung_decision_ms_at_largest_rung`` (median, and the
rung's size), the simulated seconds, and with ``--profile`` the share of the driver process's time
spent in Optuna's sampler, the storage (Optuna's RDB layer, SQLAlchemy, SQLite), the rung rule, and
the rest of the driver.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TABLE = REPO / "examples" / "nas_bench_macro" / "table.json.gz"
FAMILY = REPO / "examples" / "nas_bench_macro" / "family.py"


def study(run_dir: Path, args, table: Path):
    from search.config import parse_study

    raw = {"study": "scale", "run_dir": str(run_dir), "family_modules": [str(FAMILY)], "data": {"dataset": "cifar10"},
           "families": {"nas_bench_macro": {}}, "objectives": ["accuracy", "macs", "params"],
           "execution": {"backend": "simulated", "table": str(table), "workers": args.workers, "seed": args.seed},
           "sampler": {"name": args.sampler, "seed": args.seed, "options": json.loads(args.options)},
           "budget": {"n_trials": args.trials, "max_trials": args.trials, "max_stalls": args.trials},
           "fidelity": {"epochs": 4 if args.asha else 1}}
    if args.asha:
        raw["fidelity"]["asha"] = {"grace_period": 1, "reduction_factor": 3}
    return parse_study(raw, str(run_dir / "scale.yaml"))


class RungTimer:
    """Times every decision of the rung rule the sweep makes (wrapping Asha.should_continue)."""

    def __init__(self):
        from search.asha import Asha

        self.samples: list[tuple[int, float]] = []  # (results in the rung, seconds)
        original = Asha.should_continue

        def timed(rule, epoch, accuracy, costs=()):
            n = len(rule.rungs.get(epoch, ()))
            t0 = time.perf_counter()
            out = original(rule, epoch, accuracy, costs)
            self.samples.append((n, time.perf_counter() - t0))
            return out

        Asha.should_continue = timed

    def at_largest_rung(self) -> dict:
        if not self.samples:
            return {"ms": None, "results": 0}
        largest = max(n for n, _ in self.samples)
        tail = [s for n, s in self.samples if n >= 0.9 * largest]
        return {"ms": round(1000 * statistics.median(tail), 3), "results": largest, "decisions": len(tail)}


def rung_apart(n: int = 10_000, decisions: int = 200) -> dict:
    """A decision of the Pareto rung rule with ``n`` table results already in the rung."""
    import random

    from search.asha import Asha
    from search.tables import load_table

    points = [(acc, (e.macs, e.params)) for e in load_table(TABLE).entries for acc in (r[-1] for r in e.runs)]
    random.Random(0).shuffle(points)
    rule = Asha(1, 3, 4, rank="pareto")
    for acc, costs in points[:n]:
        rule.record_curve([acc], costs)
    rule.should_continue(1, *points[n])  # the rung's arrays are built at the first decision
    times = []
    for acc, costs in points[n + 1:n + 1 + decisions]:
        t0 = time.perf_counter()
        rule.should_continue(1, acc, costs)
        times.append(time.perf_counter() - t0)
    return {"ms": round(1000 * statistics.median(times), 3), "results": n, "decisions": decisions, "apart": True}


def per_trial_ms(trials) -> tuple[float, float]:
    done = sorted(t.datetime_complete.timestamp() for t in trials if t.datetime_complete is not None)
    start = min(t.datetime_start.timestamp() for t in trials if t.datetime_start is not None)
    k = min(1000, len(done) - 1)
    first = (done[k - 1] - start) / k
    last = (done[-1] - done[-1 - k]) / k
    return round(1000 * first, 2), round(1000 * last, 2)


def shares(profile: cProfile.Profile) -> dict:
    """Share of the profiled time by where it was spent (own time of each function, by file)."""
    buckets = {"sampler": 0.0, "storage": 0.0, "rung_rule": 0.0, "driver_and_rest": 0.0}
    for (filename, _, _), (_, _, tottime, _, _) in pstats.Stats(profile).stats.items():
        if "/optuna/samplers/" in filename or "/optuna/_hypervolume" in filename or "/optuna/_gp" in filename:
            buckets["sampler"] += tottime
        elif "/optuna/storages/" in filename or "sqlalchemy" in filename or "sqlite3" in filename or filename == "~":
            buckets["storage"] += tottime
        elif filename.endswith("search/asha.py"):
            buckets["rung_rule"] += tottime
        else:
            buckets["driver_and_rest"] += tottime
    total = sum(buckets.values()) or 1.0
    return {k: round(v / total, 3) for k, v in buckets.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2", "random", "gp"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--options", default="{}", help='sampler options as JSON, e.g. \'{"multivariate": true}\'')
    ap.add_argument("--asha", action="store_true", help="4-epoch curves and Pareto ASHA (rung decisions in the sweep)")
    ap.add_argument("--profile", action="store_true", help="where the driver process's time goes")
    args = ap.parse_args()

    import optuna

    from search.storage import load_existing_study
    from search.sweep import Sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="effnas-scale-") as tmp:
        table = TABLE
        if args.asha:
            from studies import curve_table

            table = curve_table(Path(tmp) / "curves.json.gz")
        cfg = study(Path(tmp) / "run", args, table)
        timer = RungTimer()
        profile = cProfile.Profile() if args.profile else None
        t0 = time.perf_counter()
        if profile:
            profile.enable()
        summary = Sweep(cfg, log=lambda _: None, progress="quiet").run()
        if profile:
            profile.disable()
        wall = time.perf_counter() - t0
        trials = load_existing_study(cfg.storage_url, cfg.study).get_trials(deepcopy=False)
        first, last = per_trial_ms(trials)
        out = {"table": "nas-bench-macro" + (" (4-epoch curves)" if args.asha else ""), "sampler": args.sampler,
               "options": json.loads(args.options),
               "workers": args.workers, "trials": len(trials), "trained": summary.trained, "stopped": summary.stopped,
               "duplicates": summary.duplicate, "wall_seconds": round(wall, 1),
               "ms_per_trial_first_1000": first, "ms_per_trial_last_1000": last,
               "last_over_first": round(last / first, 2),
               "rung_decision_ms_at_largest_rung": timer.at_largest_rung() if args.asha else rung_apart(),
               "simulated_seconds": round(summary.clock_seconds, 1)}
        if profile:
            out["profile_shares"] = shares(profile)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
