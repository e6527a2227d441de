"""Time of one Pareto rung decision with N results already at the rung: the rule of ``search.asha``
against the reference it replaced (``ReferenceAsha`` of ``tests/test_asha.py``, which sorts the whole
rung at every decision).

Rung results are drawn from the recorded CIFAR-10 curves (``bench/data/cifar10_curves.json``): a
random architecture's epoch-1 accuracy plus noise, rounded to the validation set's 1/1000 steps, with
its MACs and params jittered on a log scale; 2 objectives are (accuracy, MACs), 3 are (accuracy,
MACs, params). ``--uniform`` draws accuracy and log costs independently and uniformly instead, with
no ties: a stress case with many more fronts. For each N and objective count, a rule is rebuilt from
N stored results (``record_curve``), and then ``--decisions`` new results are decided one after
another at the rung, as a sweep does (each result recorded after its decision); the reference runs
``--reference-decisions`` of them, up to ``--reference-max-n``, and must agree with the rule on each.

    python bench/rung_rule_speed.py [--n 500 1000 10000] [--decisions 200] [--uniform]

Prints one JSON line: per objective count and N, ms per decision (mean, median, 99th percentile, max;
wall clock and CPU time of the deciding thread) of the rule and the reference, the rule's rebuild
time from N stored results, and the number of fronts at the rung. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.asha import Asha  # noqa: E402


def _reference_class():
    spec = importlib.util.spec_from_file_location("asha_reference", REPO / "tests" / "test_asha.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReferenceAsha


def _drawer(rng: random.Random, n_costs: int, uniform: bool):
    if uniform:
        return lambda: (rng.random(), tuple(10 ** rng.uniform(4, 8) for _ in range(n_costs)))
    rows = json.loads((REPO / "bench" / "data" / "cifar10_curves.json").read_text())["architectures"]

    def draw():
        row = rng.choice(rows)
        acc = min(1.0, max(0.0, round(row["curve"][0] + rng.gauss(0, 0.02), 3)))
        costs = (row["macs"] * math.exp(rng.gauss(0, 0.3)), row["params"] * math.exp(rng.gauss(0, 0.3)))
        return acc, tuple(float(round(c)) for c in costs[:n_costs])
    return draw


def _ms(seconds: list[float]) -> dict:
    ms = [1000 * s for s in seconds]
    return {"mean": round(statistics.fmean(ms), 3), "median": round(statistics.median(ms), 3),
            "p99": round(sorted(ms)[min(len(ms) - 1, int(0.99 * len(ms)))], 3), "max": round(max(ms), 3)}


def _decide(rule, results: list[tuple]) -> tuple[list[bool], dict]:
    """Decide each result in turn; ms per decision on the wall clock and in CPU time of this thread
    (the machine is shared: the wall clock also counts time the process waited for a core)."""
    decisions, wall, cpu = [], [], []
    for acc, costs in results:
        start, start_cpu = time.perf_counter(), time.thread_time()
        decisions.append(rule.should_continue(1, acc, costs))
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return decisions, {"decisions": len(results), "wall": _ms(wall), "cpu": _ms(cpu)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[500, 1000, 10_000])
    ap.add_argument("--decisions", type=int, default=200)
    ap.add_argument("--reference-decisions", type=int, default=5)
    ap.add_argument("--reference-max-n", type=int, default=1000)
    ap.add_argument("--reduction-factor", type=int, default=3)
    ap.add_argument("--uniform", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    reference_class = _reference_class()
    out = {"distribution": "uniform" if args.uniform else "recorded cifar10 curves, epoch 1",
           "reduction_factor": args.reduction_factor, "ms_per_decision": {}}
    for n_costs in (1, 2):
        per_n = out["ms_per_decision"][f"{n_costs + 1} objectives"] = {}
        for n in args.n:
            rng = random.Random(f"{args.seed}-{n_costs}-{n}")
            draw = _drawer(rng, n_costs, args.uniform)
            stored = [draw() for _ in range(n)]
            new = [draw() for _ in range(args.decisions)]
            rule = Asha(1, args.reduction_factor, args.reduction_factor, rank="pareto")  # one rung: epoch 1
            start = time.perf_counter()
            for acc, costs in stored:
                rule.record_curve([acc], costs)
            rule._order[1]._flush()  # the sort of the stored results, which the first decision would do
            rebuild = time.perf_counter() - start
            decisions, timing = _decide(rule, new)
            row = {"new": timing, "new_rebuild_s": round(rebuild, 3),
                   "new_fronts": int(rule._order[1].front[:rule._order[1].size].max()) + 1,
                   "new_continued": sum(decisions)}
            if n <= args.reference_max_n and args.reference_decisions:
                reference = reference_class(1, args.reduction_factor, args.reduction_factor, rank="pareto")
                for acc, costs in stored:
                    reference.record_curve([acc], costs)
                expected, timing = _decide(reference, new[:args.reference_decisions])
                assert expected == decisions[:len(expected)], "the rule and the reference disagree"
                row["reference"] = timing
            per_n[str(n)] = row
            print(f"{n_costs + 1} objectives, N={n}: {row}", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
