"""Record full learning curves of random architectures of all four families on real CIFAR-10.

Runs the study ``bench/studies/cifar10_curves.yaml`` (random sampler, no early stopping, 4 epochs on
3,000 16x16 training images, 1,000 validation images) through effnas's own sweep, then writes one
compact JSON file with, per trained architecture: family, knobs, params and MACs of both forms, the
validation accuracy after every epoch, and the training time. The rung- and proxy-correlation
benchmarks read that file, so the expensive part runs once.

    python bench/record_curves.py [--study bench/studies/cifar10_curves.yaml] [--out bench/data/cifar10_curves.json]

Resumable: run it again after an interruption and the sweep continues where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _relative(root: str | None) -> str | None:
    """The data folder relative to the repository root where it can be (the file travels)."""
    if root is None:
        return None
    try:
        return str(Path(os.path.relpath(Path(root).resolve(), REPO)))
    except ValueError:
        return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(REPO / "bench" / "studies" / "cifar10_curves.yaml"))
    ap.add_argument("--run-dir", default=str(REPO / "bench" / "out" / "curves"))
    ap.add_argument("--out", default=str(REPO / "bench" / "data" / "cifar10_curves.json"))
    args = ap.parse_args()

    from search.config import load_study
    from search.record import TrialStatus, read_record, trial_status
    from search.storage import load_existing_study
    from search.sweep import Sweep

    cfg = load_study(args.study)
    cfg = dataclasses.replace(cfg, run_dir=args.run_dir)
    started = time.time()
    Sweep(cfg).run()
    study = load_existing_study(cfg.storage_url, cfg.study)
    rows = []
    for t in study.get_trials():
        if trial_status(t) != TrialStatus.TRAINED:
            continue
        r = read_record(t)
        rows.append({"trial": t.number, "family": r.family, "knobs": r.knobs, "params": r.params,
                     "macs": r.macs, "train_params": r.train_params, "train_macs": r.train_macs,
                     "curve": r.curve, "epoch_seconds": r.extra.get("epoch_seconds"), "val_acc": r.val_acc,
                     "train_seconds": r.train_seconds})
    doc = {"provenance": {"made_by": "bench/record_curves.py", "study_file": str(Path(args.study).relative_to(REPO)),
                          "data": {**dataclasses.asdict(cfg.data), "root": _relative(cfg.data.root)},
                          "epochs": cfg.fidelity.epochs,
                          "train": dataclasses.asdict(cfg.train), "sampler": dataclasses.asdict(cfg.sampler),
                          "machine": f"{platform.machine()}, {platform.python_version()}",
                          "wall_seconds_last_run": round(time.time() - started, 1)},
           "architectures": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    by_family = {}
    for row in rows:
        by_family[row["family"]] = by_family.get(row["family"], 0) + 1
    print(f"{len(rows)} curves written to {args.out}: {by_family}")


if __name__ == "__main__":
    main()
