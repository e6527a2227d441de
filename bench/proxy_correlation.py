"""Do zero-cost proxies predict trained accuracy better than size does? Rank correlations on real data.

Reads the architectures recorded by ``bench/record_curves.py`` (all four families, trained on real
CIFAR-10 at a CPU-sized fidelity), scores each with every proxy on one seeded batch of the same
training data (the training form at initialisation, one CPU thread), and prints the Spearman rank
correlation with the trained validation accuracy, for each proxy and for params and MACs alone:

- overall, and within each family;
- within equal-cost bins (quartiles of MACs): the mean of the four within-bin correlations, the
  question pre-screening asks (among networks of similar cost, which trains better?);
- for the cost-adjusted score that ``prescreen`` ranks by (``search.prescreen``: the proxy's residual
  above its fit on log MACs), overall and within bins.

It also times each proxy: per recorded architecture, and on ``condensenetv2-110`` at 32x32 (the goal
there: under one second each on one thread).

    python bench/proxy_correlation.py [--curves bench/data/cifar10_curves.json] [--batch 32]

The last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scipy.stats import spearmanr  # noqa: E402

from search.prescreen import Candidate, cost_adjusted  # noqa: E402
from space.registry import get_family, get_preset  # noqa: E402
from trainers.data import DataConfig, load_data  # noqa: E402
from trainers.proxies import PROXIES, proxy_batch, score_network  # noqa: E402


def _rho(x, y) -> float | None:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 4 or np.ptp(x[ok]) == 0:
        return None
    return float(spearmanr(x[ok], y[ok]).statistic)


def _within_bins(values, acc, macs) -> tuple[float | None, list]:
    edges = np.quantile(macs, [0.25, 0.5, 0.75])
    bins = np.searchsorted(edges, macs, side="right")
    per_bin = [_rho(np.asarray(values)[bins == b], np.asarray(acc)[bins == b]) for b in range(4)]
    known = [r for r in per_bin if r is not None]
    return (statistics.mean(known) if known else None), per_bin


def _score_all(rows: list[dict], x, y, num_classes: int) -> tuple[dict[str, list], dict[str, list]]:
    """Every proxy of every architecture, and the seconds each took (one proxy per call)."""
    scores = {p: [] for p in PROXIES}
    seconds = {p: [] for p in PROXIES}
    for row in rows:
        fam = get_family(row["family"])
        knobs = fam.knobs_from_dict(row["knobs"])
        for p in PROXIES:
            t0 = time.perf_counter()
            value = score_network(lambda: fam.build(knobs, num_classes=num_classes, image_size=x.shape[-1],
                                                    in_channels=x.shape[1]), x, y, [p])[p]
            seconds[p].append(time.perf_counter() - t0)
            scores[p].append(value)
    return scores, seconds


def _preset_seconds(batch: int) -> dict[str, float]:
    preset = get_preset("condensenetv2-110")
    fam = get_family(preset.family)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, preset.image_size, preset.image_size, generator=g)
    y = torch.randint(0, preset.num_classes, (batch,), generator=g)
    out = {}
    for p in PROXIES:
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            score_network(lambda: fam.build(preset.knobs, num_classes=preset.num_classes,
                                            image_size=preset.image_size), x, y, [p])
            runs.append(time.perf_counter() - t0)
        out[p] = statistics.median(runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curves", default=str(REPO / "bench" / "data" / "cifar10_curves.json"))
    ap.add_argument("--batch", type=int, default=32, help="images the proxies see (as proxies.batch_size)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    doc = json.loads(Path(args.curves).read_text())
    rows, d = doc["architectures"], doc["provenance"]["data"]
    root = Path(d["root"]) if Path(d["root"]).is_absolute() else REPO / d["root"]
    if not root.exists():  # recorded on another checkout: the same arrays in this one's ../shared
        root = Path(os.environ.get("EFFNAS_SHARED", REPO.parent / "shared")) / "data" / "cifar10"
    data = load_data(DataConfig(dataset=d["dataset"], root=root, train_size=d["train_size"], val_size=d["val_size"],
                                test_size=d["test_size"], image_size=d["image_size"], seed=doc["provenance"]["train"]["seed"]))
    x, y = proxy_batch(data, args.batch, seed=0)
    scores, seconds = _score_all(rows, x, y, data.num_classes)
    acc = [r["val_acc"] for r in rows]
    macs = np.array([r["macs"] for r in rows], dtype=float)
    measures = {**scores, "params": [r["params"] for r in rows], "macs": list(macs)}
    for p in PROXIES:
        pool = [Candidate(i, s, int(r["macs"]), int(r["params"])) for i, (s, r) in enumerate(zip(scores[p], rows))]
        adjusted = cost_adjusted(p, pool, pool)
        measures[f"{p}|cost"] = [np.nan if v is None else v for v in adjusted]
    families = sorted({r["family"] for r in rows})
    table = {}
    for name, values in measures.items():
        vals = [np.nan if v is None else float(v) for v in values]
        in_bins, per_bin = _within_bins(vals, acc, macs)
        table[name] = {"overall": _rho(vals, acc), "within_mac_quartiles": in_bins, "per_quartile": per_bin,
                       **{f"family:{f}": _rho([v for v, r in zip(vals, rows) if r["family"] == f],
                                              [a for a, r in zip(acc, rows) if r["family"] == f]) for f in families}}
    fmt = lambda v: "   -  " if v is None else f"{v:+.2f} "  # noqa: E731
    counts = {f: sum(r["family"] == f for r in rows) for f in families}
    print(f"{len(rows)} architectures ({', '.join(f'{f} {n}' for f, n in counts.items())}); "
          f"Spearman rank correlation with trained validation accuracy")
    print(f"{'measure':<18}{'overall':>8}{'in MAC quartiles':>18}  " + "".join(f"{f:>12}" for f in families))
    for name, t in table.items():
        print(f"{name:<18}{fmt(t['overall']):>8}{fmt(t['within_mac_quartiles']):>18}  "
              + "".join(f"{fmt(t[f'family:{f}']):>12}" for f in families))
    per_arch = {p: statistics.median(seconds[p]) for p in PROXIES}
    preset = _preset_seconds(args.batch)
    print("seconds per architecture, one thread (median over the recorded ones): "
          + ", ".join(f"{p} {v:.3f}" for p, v in per_arch.items()))
    print(f"seconds on condensenetv2-110 at 32x32, batch {args.batch} (median of 3): "
          + ", ".join(f"{p} {v:.2f}" for p, v in preset.items()))
    best_size = max(table["params"]["within_mac_quartiles"] or -1, table["macs"]["within_mac_quartiles"] or -1)
    beats = [p for p in PROXIES if (table[p]["within_mac_quartiles"] or -1) > best_size]
    print(f"proxies that beat both params and MACs within equal-cost bins: {beats or 'none'}")
    print(json.dumps({"n": len(rows), "families": counts, "spearman": table, "seconds_per_architecture": per_arch,
                      "seconds_condensenetv2_110": preset, "batch": args.batch,
                      "beat_params_and_macs_within_bins": beats}))


if __name__ == "__main__":
    main()
