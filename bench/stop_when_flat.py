"""``budget.stop_when_flat`` judged on the simulator: compute saved against hypervolume lost.

    python bench/stop_when_flat.py bench/data/search/nbm_effnas_nolimit.json.gz [--method effnas-tpe-mv]
        [--windows 20,50,100] [--gains 0.005,0.01,0.02]

Exact replay, no new sweep: a simulated sweep is a function of its seeds, and the watch only stops
proposing, so a run with the option is the recorded run without it up to the stop. For every
recorded run of the method (the search benchmark's ``--json`` file, raw per-trial results), the
watch (``search.sweep._plateau.Plateau``, the driver's own) is fed the trained trials in the order
they finished; at the first moment it says flat, proposing stops, trials already started finish,
and the run's front is what was trained by then. Reported per (window, min_gain): the median share
of the budget's simulated time used, the median normalised hypervolume lost (the benchmark's
normalisation, against the same run without the option), and how many runs stopped at all.
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.peers import metrics, tables  # noqa: E402
from search.sweep._plateau import Plateau  # noqa: E402


def replay(run: dict, table, normaliser, settings: dict, window: int, gain: float) -> dict:
    objectives = settings["objectives"]
    directions = ["maximize" if o == "accuracy" else "minimize" for o in objectives]
    watch = Plateau(window, gain, directions, objectives)
    trials = run["trials"]
    trained = sorted((t for t in trials if t["status"] == "trained"), key=lambda t: t["end"])
    stop = None
    for t in trained:
        values = {"accuracy": t["accuracy"], "macs": t["macs"], "params": t["params"]}
        watch.note([values[o] for o in objectives])
        if watch.flat:
            stop = t["end"]
            break
    budget = settings["budget_seconds"]
    kept = trials if stop is None else [t for t in trials if t["start"] < stop or t["end"] <= stop]
    used = budget if stop is None else min(budget, max(t["end"] for t in kept if t["status"] in ("trained", "stopped", "unfinished")))
    full = metrics.hv_curve(trials, table, normaliser, budget, settings.get("max_macs"))
    cut = metrics.hv_curve(kept, table, normaliser, budget, settings.get("max_macs"))
    hv_full, hv_cut = metrics.hv_at(full, budget), metrics.hv_at(cut, budget)
    return {"stopped": stop is not None, "time_used": used / budget,
            "hv_lost": (hv_full - hv_cut) / hv_full if hv_full else 0.0, "hv": hv_cut, "hv_without": hv_full}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", help="a search benchmark --json file")
    ap.add_argument("--method", default="effnas-tpe-mv")
    ap.add_argument("--windows", default="20,50,100")
    ap.add_argument("--gains", default="0.005,0.01,0.02")
    args = ap.parse_args()
    opener = gzip.open if args.runs.endswith(".gz") else open
    with opener(args.runs, "rt") as f:
        doc = json.load(f)
    settings = doc["settings"]
    table, _ = tables.load(settings["table_path"])
    normaliser = metrics.Normaliser(table, settings["objectives"])
    runs = [r for r in doc["runs"] if r["method"] == args.method and not r.get("error")]
    rows = []
    for window in (int(w) for w in args.windows.split(",")):
        for gain in (float(g) for g in args.gains.split(",")):
            out = [replay(r, table, normaliser, settings, window, gain) for r in runs]
            rows.append({"window": window, "min_gain": gain, "runs": len(out),
                         "stopped": sum(o["stopped"] for o in out),
                         "time_used_median": round(statistics.median(o["time_used"] for o in out), 3),
                         "hv_lost_median": round(statistics.median(o["hv_lost"] for o in out), 4),
                         "hv_lost_max": round(max(o["hv_lost"] for o in out), 4)})
            print(f"window {window:4d} min_gain {gain:.3f}: stopped {rows[-1]['stopped']}/{len(out)}, time used "
                  f"{rows[-1]['time_used_median']:.0%} (median), hypervolume lost {rows[-1]['hv_lost_median']:.2%} "
                  f"(median), {rows[-1]['hv_lost_max']:.2%} (worst)")
    print(json.dumps({"method": args.method, "runs_file": args.runs, "results": rows}))


if __name__ == "__main__":
    main()
