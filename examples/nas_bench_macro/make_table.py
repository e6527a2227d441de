"""Make ``table.json.gz`` (an effnas table, see ``search/tables.py``) from NAS-Bench-Macro's JSON.

Usage, from the repository root::

    python examples/nas_bench_macro/make_table.py [SOURCE_JSON] [--out PATH]

``SOURCE_JSON`` defaults to ``../shared/data/nas-bench-macro/nas-bench-macro_cifar10.json`` next to
the repository; ``--out`` to ``table.json.gz`` beside this script. The same source gives the same
bytes. What is taken from the source and what is modelled is in ``PROVENANCE.md`` beside this file
and in the table's ``provenance``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "nas-bench-macro" / "nas-bench-macro_cifar10.json"
DEFAULT_OUT = HERE / "table.json.gz"
SOURCE_SHA256 = "686dee8363cc21cca8c1f321ad5749454f2d9b9ca5972682e137e539bc522297"
FAMILY = "nas_bench_macro"
NAME = "nas-bench-macro-cifar10"

# The time model (the source records no times): see PROVENANCE.md.
TRAINING_EPOCHS = 50            # the benchmark's recipe; the table's one epoch stands for all of them
DATA_SECONDS_PER_EPOCH = 4.0    # loading and augmenting CIFAR-10's 50,000 training images, any network
SECONDS_PER_EPOCH_PER_100M_MACS = 10.0  # forward and backward passes, proportional to MACs


def modelled_seconds(macs: int) -> float:
    """Modelled GPU seconds of the whole 50-epoch training of a network of ``macs`` MACs."""
    per_epoch = DATA_SECONDS_PER_EPOCH + SECONDS_PER_EPOCH_PER_100M_MACS * macs / 1e8
    return round(TRAINING_EPOCHS * per_epoch, 2)


def provenance(sha256: str) -> dict:
    return {
        "source": "NAS-Bench-Macro, from 'Prioritized Architecture Sampling with Monte-Carlo Tree Search' "
                  "(Su et al., CVPR 2021): file data/nas-bench-macro_cifar10.json of the repository "
                  "xiusu/NAS-Bench-Macro, commit 61a2bfc",
        "source_sha256": sha256,
        "license": "Apache-2.0 (LICENSE beside this table)",
        "dataset": "CIFAR-10, 32x32, 10 classes",
        # The data shape the simulated backend prices and keys trials with (it loads no data).
        "data": {"dataset": "cifar10", "num_classes": 10, "image_size": 32, "in_channels": 3,
                 "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
        "val_acc": "each of the three independent trainings' recorded accuracy, a fraction (the source's "
                   "percent / 100, exact: CIFAR-10's 10,000 test images make it a multiple of 0.0001). It is "
                   "the best test-set accuracy over 50 epochs: the authors selected the epoch on the test set.",
        "fidelity": "epochs 1: the table's one epoch stands for the benchmark's whole 50-epoch training "
                    "(SGD momentum 0.9, lr 0.1 cosine, weight decay 5e-4, batch 256, crop and flip); the "
                    "source has no learning curves",
        "params_macs": "the source's params (every parameter, BN and classifier bias included) and flops "
                       "(multiply-accumulates of every convolution and the linear layer, one 3x32x32 image); "
                       "equal to effnas's cost model on examples/nas_bench_macro/family.py for every key",
        "epoch_seconds": {
            "kind": "a model, not a measurement: the source records no training times",
            "formula": "TRAINING_EPOCHS * (DATA_SECONDS_PER_EPOCH + SECONDS_PER_EPOCH_PER_100M_MACS * macs / 1e8), "
                       "rounded to 0.01 s",
            "TRAINING_EPOCHS": TRAINING_EPOCHS,
            "DATA_SECONDS_PER_EPOCH": DATA_SECONDS_PER_EPOCH,
            "SECONDS_PER_EPOCH_PER_100M_MACS": SECONDS_PER_EPOCH_PER_100M_MACS,
            "unit": "seconds of one assumed GPU (of the order of a V100 at batch 256); only the ratios "
                    "between architectures matter to a simulated sweep",
        },
        "made_by": "examples/nas_bench_macro/make_table.py",
    }


def read_source(path: Path) -> tuple[dict, str]:
    """The source's entries and its sha256; raises ValueError naming the file and the problem."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the NAS-Bench-Macro JSON ({e}); pass its path as the first "
                         f"argument") from None
    try:
        source = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not JSON ({e}); pass nas-bench-macro_cifar10.json") from None
    if not isinstance(source, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by 8-digit architecture keys")
    for key, value in source.items():
        if not (len(key) == 8 and set(key) <= set("012")):
            raise ValueError(f"{path}: {key!r} is not a NAS-Bench-Macro key (8 digits out of 0, 1, 2)")
        if not (isinstance(value, dict) and isinstance(value.get("test_acc"), list) and value["test_acc"]
                and isinstance(value.get("params"), int) and isinstance(value.get("flops"), int)):
            raise ValueError(f"{path}: entry {key!r} lacks test_acc (a list), params or flops (integers)")
    return source, hashlib.sha256(data).hexdigest()


def table_entries(source: dict) -> list:
    """One table entry per key, sorted by key."""
    from search.tables import TableEntry

    return [TableEntry(family=FAMILY, knobs={"layer": [int(c) for c in key]},
                       params=value["params"], macs=value["flops"],
                       runs=tuple((round(acc / 100, 4),) for acc in value["test_acc"]),
                       epoch_seconds=(modelled_seconds(value["flops"]),))
            for key, value in sorted(source.items())]


def make_table(source_path: Path, out: Path) -> Path:
    from search.tables import write_table

    source, sha256 = read_source(source_path)
    if sha256 != SOURCE_SHA256:
        print(f"note: {source_path} has sha256 {sha256}, not the {SOURCE_SHA256} of the file this table "
              f"was first made from; the table records the new one", file=sys.stderr)
    return write_table(out, name=NAME, epochs=1, provenance=provenance(sha256), entries=table_entries(source))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE,
                        help=f"NAS-Bench-Macro's JSON (default: {DEFAULT_SOURCE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the table to write (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    from search.exceptions import TableError

    try:
        out = make_table(args.source, args.out)
    except (ValueError, TableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
