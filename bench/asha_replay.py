"""Early stopping against the front: no stopping, accuracy-only ASHA and Pareto ASHA on the same
real learning curves.

Replays the 64 full CIFAR-10 learning curves recorded by ``bench/record_curves.py`` (random
proposals of all four families, 4 epochs) through each rule of ``search.asha`` (grace period 1,
reduction factor 2: rungs at epochs 1 and 2), one trial after another in an arrival order, so every
rule sees the same proposals at equal trial counts. A trial stopped at a rung costs the epochs it
ran (seconds: its recorded per-epoch training time); the front is made of the trials that trained to
the last epoch. Reported per rule, as the median over ``--orders`` arrival orders (the recorded one
and shuffles): the hypervolume of the validation front in (accuracy, log10 MACs, log10 params)
against (0.1, 7, 6.5), the compute spent, and the share of the no-stopping front that the rule
stopped. Goal: Pareto ASHA keeps at least 90% of the no-stopping hypervolume at no more compute than
accuracy-only ASHA.

Sequential replay leaves out one effect of asynchrony: with several workers, a trial can pass a
rung before slower ones have been recorded there.

    python bench/asha_replay.py [--curves bench/data/cifar10_curves.json] [--orders 20]

The last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.asha import Asha  # noqa: E402
from search.pareto import hypervolume, non_dominated  # noqa: E402

REFERENCE = [0.1, 7.0, 6.5]
DIRECTIONS = ["maximize", "minimize", "minimize"]


def _point(row: dict) -> list[float]:
    return [row["val_acc"], math.log10(row["macs"]), math.log10(row["params"])]


def replay(rows: list[dict], rank: str | None) -> dict:
    """Epochs each trial runs under ``rank`` (None: no stopping), the compute, and the front."""
    epochs = len(rows[0]["curve"])
    rule = Asha(1, 2, epochs, rank=rank) if rank else None
    ran, seconds = {}, 0.0
    for row in rows:
        per_epoch = (row["train_seconds"] or 0.0) / epochs
        reached = epochs
        for e in range(1, epochs):
            if rule is not None and not rule.should_continue(e, row["curve"][e - 1], (row["macs"], row["params"])):
                reached = e
                break
        ran[row["trial"]] = reached
        seconds += reached * per_epoch
    full = [r for r in rows if ran[r["trial"]] == epochs]
    front = [full[i]["trial"] for i in non_dominated([_point(r) for r in full], DIRECTIONS)]
    return {"hypervolume": hypervolume([_point(r) for r in full], DIRECTIONS, REFERENCE),
            "epochs": sum(ran.values()), "seconds": seconds, "front": front, "ran": ran}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curves", default=str(REPO / "bench" / "data" / "cifar10_curves.json"))
    ap.add_argument("--orders", type=int, default=20, help="arrival orders: the recorded one, then shuffles")
    args = ap.parse_args()
    rows = [r for r in json.loads(Path(args.curves).read_text())["architectures"] if r["curve"]]
    results: dict[str, dict[str, list]] = {name: {"hypervolume": [], "seconds": [], "epochs": [], "front_stopped": []}
                                           for name in ("none", "accuracy", "pareto")}
    for k in range(args.orders):
        order = rows[:] if k == 0 else random.Random(k).sample(rows, len(rows))
        base = replay(order, None)
        for name, rank in (("none", None), ("accuracy", "accuracy"), ("pareto", "pareto")):
            out = base if rank is None else replay(order, rank)
            stopped = [t for t in base["front"] if out["ran"][t] < len(rows[0]["curve"])]
            res = results[name]
            res["hypervolume"].append(out["hypervolume"])
            res["seconds"].append(out["seconds"])
            res["epochs"].append(out["epochs"])
            res["front_stopped"].append(len(stopped) / len(base["front"]))
    med = {name: {k: statistics.median(v) for k, v in res.items()} for name, res in results.items()}
    spread = {name: {k: (min(v), max(v)) for k, v in res.items()} for name, res in results.items()}
    print(f"{len(rows)} real CIFAR-10 curves, {args.orders} arrival orders; medians (min-max):")
    print(f"{'rule':<10}{'hypervolume':>22}{'% of none':>11}{'compute s':>22}{'epochs':>9}{'front stopped':>20}")
    for name in results:
        m, s = med[name], spread[name]
        print(f"{name:<10}{m['hypervolume']:>9.4f} ({s['hypervolume'][0]:.3f}-{s['hypervolume'][1]:.3f})"
              f"{100 * m['hypervolume'] / med['none']['hypervolume']:>10.1f}%"
              f"{m['seconds']:>9.0f} ({s['seconds'][0]:.0f}-{s['seconds'][1]:.0f})"
              f"{m['epochs']:>9.0f}{100 * m['front_stopped']:>10.0f}% ({100 * s['front_stopped'][0]:.0f}-"
              f"{100 * s['front_stopped'][1]:.0f}%)")
    keeps = med["pareto"]["hypervolume"] >= 0.9 * med["none"]["hypervolume"]
    cheaper = med["pareto"]["seconds"] <= med["accuracy"]["seconds"]
    print(f"goal (Pareto >= 90% of no-stopping hypervolume at <= accuracy-ASHA compute): "
          f"{'met' if keeps and cheaper else 'not met'} (hypervolume {'ok' if keeps else 'short'}, "
          f"compute {'ok' if cheaper else 'more'})")
    print(json.dumps({"n": len(rows), "orders": args.orders, "median": med, "runs": results}))


if __name__ == "__main__":
    main()
