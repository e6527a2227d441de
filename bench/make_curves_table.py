"""effnas's own four families as a recorded table (``search.tables``) for the simulated backend.

    python bench/make_curves_table.py [--curves bench/data/cifar10_curves.json]
        [--more bench/data/cifar10_curves_2.json ...] [--study URL NAME ...] [--out bench/data/cifar10_curves_table.json.gz]

The shipped table: ``--more bench/data/cifar10_curves_2.json`` (211 architectures: the first
recording's 64 and the second's 150, less one the families' current rules refuse and duplicates).

Reads the curves ``bench/record_curves.py`` recorded (real CIFAR-10, 3,000 16x16 training images,
1,000 validation images, 4 epochs; one run each) from its JSON and, with ``--study``, from further
recording studies (their trained trials; the same study file with another sampler seed), and writes
one table: per architecture its family, knobs, params and MACs (deploy form), its curve, and its
seconds per epoch.

Seconds: the first recording measured whole trainings on a quiet machine (``train_seconds``); later
recordings ran beside other work on the same 2 cores, which stretched their epochs 2-6x by load
alone. So every entry's epoch seconds come from one stated model fitted on the quiet recording:
least squares of seconds per epoch on training-form MACs, per family, applied to all entries (the
measured values are kept in the provenance's fit summary). Only the ratios matter to a simulated
sweep.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rows_from_study(url: str, name: str) -> list[dict]:
    from search.record import TrialStatus, read_record, trial_status
    from search.storage import load_existing_study

    rows = []
    for t in load_existing_study(url, name).get_trials(deepcopy=False):
        if trial_status(t) != TrialStatus.TRAINED:
            continue
        r = read_record(t)
        rows.append({"family": r.family, "knobs": r.knobs, "params": r.params, "macs": r.macs,
                     "train_macs": r.train_macs, "curve": r.curve, "train_seconds": r.train_seconds})
    return rows


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return Path(path).name


def _refused(row: dict) -> str | None:
    """Why the family's current rules refuse a recorded architecture's knobs, or None."""
    from space.registry import get_family

    try:
        get_family(row["family"]).knobs_from_dict(row["knobs"])
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def _fit(rows: list[dict]) -> dict:
    """Per family: seconds per epoch = a + b x training MACs, least squares on the quiet recording."""
    import numpy as np

    fits = {}
    for family in sorted({r["family"] for r in rows}):
        mine = [r for r in rows if r["family"] == family]
        x = np.array([r["train_macs"] for r in mine], dtype=float)
        y = np.array([r["train_seconds"] / len(r["curve"]) for r in mine])
        b, a = np.polyfit(x, y, 1) if len(mine) > 1 else (0.0, float(y.mean()))
        fits[family] = {"a": float(max(a, 0.1)), "b": float(max(b, 0.0)), "n": len(mine),
                        "measured_seconds_per_epoch": [round(float(v), 2) for v in (y.min(), y.max())]}
    return fits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curves", default=str(REPO / "bench" / "data" / "cifar10_curves.json"))
    ap.add_argument("--more", action="append", default=[], metavar="JSON",
                    help="a further recording's JSON (bench/record_curves.py's output; the same study file, "
                         "another sampler seed), e.g. bench/data/cifar10_curves_2.json")
    ap.add_argument("--study", nargs=2, action="append", default=[], metavar=("URL", "NAME"))
    ap.add_argument("--out", default=str(REPO / "bench" / "data" / "cifar10_curves_table.json.gz"))
    args = ap.parse_args()

    from search.tables import TableEntry, write_table

    doc = json.loads(Path(args.curves).read_text())
    quiet = doc["architectures"]
    rows = list(quiet)
    for path in args.more:
        more = json.loads(Path(path).read_text())
        if more["provenance"]["study_file"] != doc["provenance"]["study_file"]:
            raise SystemExit(f"{path}: recorded with {more['provenance']['study_file']}, not "
                             f"{doc['provenance']['study_file']}: one table holds one recording space")
        rows += more["architectures"]
    for url, name in args.study:
        rows += _rows_from_study(url, name)
    fits = _fit(quiet)
    seen, entries, refused = set(), [], []
    for r in rows:
        key = json.dumps([r["family"], r["knobs"]], sort_keys=True)
        if key in seen or not r.get("curve") or len(r["curve"]) != doc["provenance"]["epochs"]:
            continue
        why = _refused(r)
        if why:  # recorded under an older rule of its family: a sweep could never propose it now
            refused.append({"family": r["family"], "knobs": r["knobs"], "why": why})
            continue
        seen.add(key)
        f = fits[r["family"]]
        per_epoch = round(f["a"] + f["b"] * r["train_macs"], 3)
        entries.append(TableEntry(r["family"], r["knobs"], r["params"], r["macs"], (tuple(r["curve"]),),
                                  (per_epoch,) * len(r["curve"])))
    data = doc["provenance"]["data"]
    provenance = {
        "source": "bench/record_curves.py: effnas sweeps with the random sampler on real CIFAR-10 "
                  f"({data['train_size']} training images at {data['image_size']}x{data['image_size']}, "
                  f"{data['val_size']} validation images, {doc['provenance']['epochs']} epochs, one run each)",
        # the recordings' sampled space: what a sweep over this sparse table searches (bench/effnas_arms.py)
        "study_file": doc["provenance"]["study_file"],
        "recordings": [_relative(args.curves)] + [_relative(m) for m in args.more]
                      + [f"study {n} (the same study file, another sampler seed)" for _, n in args.study],
        "val_acc": "validation accuracy after each epoch (fraction), one run per architecture",
        "epoch_seconds": {"kind": "a model fitted on the quiet recording, not each entry's measurement",
                          "formula": "a + b x train_macs per epoch, per family (least squares)", "fits": fits},
        "data": {"dataset": "cifar10", "num_classes": 10, "image_size": data["image_size"], "in_channels": 3},
        "made_by": "bench/make_curves_table.py",
        "left_out": {"why": "recorded, but the family's current rules refuse the knobs", "architectures": refused},
    }
    out = write_table(args.out, name="effnas-cifar10-curves", epochs=doc["provenance"]["epochs"],
                      provenance=provenance, entries=entries)
    by_family = {}
    for e in entries:
        by_family[e.family] = by_family.get(e.family, 0) + 1
    print(f"{len(entries)} architectures written to {out}: {by_family}; {len(refused)} left out (refused by "
          f"their family's current rules)")


if __name__ == "__main__":
    main()
