"""How well does early accuracy predict final accuracy, per family and pooled? (input to the rung rule)

Reads the full learning curves recorded by ``bench/record_curves.py`` (no early stopping) and prints,
for every candidate rung epoch, the Spearman rank correlation between validation accuracy at that
epoch and at the last epoch: pooled over all architectures and within each family. A rung rule that
compares trials of different families at one rung needs the pooled figure to be no worse than the
within-family ones.

    python bench/rung_correlation.py [--curves bench/data/cifar10_curves.json]

The last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]


def _rho(x, y) -> float | None:
    if len(x) < 4 or np.ptp(x) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curves", default=str(REPO / "bench" / "data" / "cifar10_curves.json"))
    args = ap.parse_args()
    rows = [r for r in json.loads(Path(args.curves).read_text())["architectures"] if r["curve"]]
    epochs = min(len(r["curve"]) for r in rows)
    families = sorted({r["family"] for r in rows})
    table: dict[str, dict[str, float | None]] = {}
    for e in range(1, epochs):
        groups = {"pooled": rows, **{f: [r for r in rows if r["family"] == f] for f in families}}
        table[f"epoch {e}"] = {g: _rho([r["curve"][e - 1] for r in rs], [r["curve"][epochs - 1] for r in rs])
                               for g, rs in groups.items()}
    print(f"{len(rows)} curves of {epochs} epochs; Spearman(acc at epoch e, acc at epoch {epochs})")
    print(f"{'rung':<10}" + "".join(f"{g:>13}" for g in ["pooled", *families]))
    for rung, row in table.items():
        print(f"{rung:<10}" + "".join(f"{'-' if row[g] is None else f'{row[g]:+.2f}':>13}" for g in ["pooled", *families]))
    print(json.dumps({"n": len(rows), "epochs": epochs,
                      "families": {f: sum(r["family"] == f for r in rows) for f in families}, "spearman": table}))


if __name__ == "__main__":
    main()
