"""Recorded tables for the search benchmark: loading them, and the search space a peer sees.

``search.tables.load_table`` is the loader of record. Until a table file in its format exists, two
stand-ins read the raw sources into ``search.tables``'s own ``Table`` and ``TableEntry``:

- the raw NAS-Bench-Macro JSON (``../shared/data/nas-bench-macro/nas-bench-macro_cifar10.json``):
  family ``nas_bench_macro``, knobs ``{"layer": [8 choices in 0, 1, 2]}``, one epoch per curve
  (the recorded accuracy), three runs, and seconds modelled as the table file models them,
  50 x (4 + 10 x MACs / 1e8) (the benchmark records no times);
- ``bench/data/cifar10_curves.json`` (64 architectures of the four effnas families, 4-epoch curves
  of one run, ``train_seconds`` spread evenly over the epochs).

The space a peer searches is built from the table's entries alone (``Space``): per family, every
knob flattened into scalar parameters (``growth.1``) with the values the table holds as the
categorical choices; a knob whose structure differs between entries (lists of different lengths)
is one categorical parameter over its JSON texts. A proposal is resolved to a table entry by exact
match, else to the nearest entry of the same family (``Space.resolve``, which is ``search.tables.Table.nearest``,
the rule effnas's ``execution.match: nearest`` serves proposals by): numeric parameters by
their distance scaled to [0, 1], the others by mismatch, ties to the entry listed first. On a full
grid such as NAS-Bench-Macro every proposal matches exactly.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

from search.tables import Table, TableEntry, canonical_knobs

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"

NAMED_TABLES = {
    "nas-bench-macro": [REPO / "examples" / "nas_bench_macro" / "table.json.gz",
                        SHARED / "data" / "nas-bench-macro" / "nas-bench-macro_cifar10.json"],
    "effnas-curves": [REPO / "bench" / "data" / "cifar10_curves_table.json.gz",
                      REPO / "bench" / "data" / "cifar10_curves.json"],
}


# The stand-ins build the loader of record's own classes; one architecture text for every lookup.
arch_key = canonical_knobs


def _read_json(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def _nas_bench_macro_raw(path: Path, data: dict) -> Table:
    entries = []
    for key in sorted(data):
        row = data[key]
        runs = tuple((float(a) / 100.0,) for a in row["test_acc"])
        entries.append(TableEntry(family="nas_bench_macro", knobs={"layer": [int(c) for c in key]},
                                  params=int(row["params"]), macs=int(row["flops"]), runs=runs,
                                  epoch_seconds=(round(50 * (4.0 + 10.0 * row["flops"] / 1e8), 2),)))
    return Table(name="nas-bench-macro", epochs=1, entries=tuple(entries), path=str(path),
                 provenance={"source": str(path), "stand_in": "raw NAS-Bench-Macro JSON",
                             "seconds": "modelled as the table file does: 50 * (4 + 10 * MACs / 1e8)"})


def _curves_raw(path: Path, data: dict) -> Table:
    epochs = int(data["provenance"]["epochs"])
    entries = []
    for a in data["architectures"]:
        curve = tuple(float(x) for x in a["curve"])
        if len(curve) != epochs:
            continue
        entries.append(TableEntry(family=a["family"], knobs=a["knobs"], params=int(a["params"]),
                                  macs=int(a["macs"]), runs=(curve,),
                                  epoch_seconds=(float(a["train_seconds"]) / epochs,) * epochs))
    provenance = {**data["provenance"], "stand_in": "bench/data/cifar10_curves.json"}
    if isinstance(provenance.get("data"), dict):  # CIFAR-10: 10 classes of RGB images
        provenance["data"] = {"num_classes": 10, "in_channels": 3, **provenance["data"]}
    return Table(name="effnas-curves", epochs=epochs, entries=tuple(entries), path=str(path), provenance=provenance)


def load(name_or_path: str) -> tuple[object, str]:
    """The table a name (``nas-bench-macro``, ``effnas-curves``) or a path stands for, and which
    loader read it (``search.tables`` or a stand-in)."""
    candidates = NAMED_TABLES.get(name_or_path, [Path(name_or_path)])
    for path in candidates:
        if not path.exists():
            continue
        data = _read_json(path)
        if isinstance(data, dict) and "format" not in data and "architectures" in data and "provenance" in data:
            return _curves_raw(path, data), "stand-in: " + path.name
        if isinstance(data, dict) and data and all(isinstance(v, dict) and "test_acc" in v
                                                   for v in list(data.values())[:5]):
            return _nas_bench_macro_raw(path, data), "stand-in: " + path.name
        from search.tables import load_table  # the loader of record, for every table file

        return load_table(str(path)), "search.tables"
    raise FileNotFoundError(f"no table for {name_or_path!r} (looked at: {', '.join(map(str, candidates))})")


def as_table_file(table, directory: str | Path) -> str:
    """A stand-in table written in ``search.tables``' format (for arms that read table files only)."""
    from search.tables import TableEntry as RecordEntry, write_table

    path = Path(directory) / "table.json.gz"
    write_table(path, name=table.name, epochs=int(table.epochs), provenance=dict(table.provenance),
                entries=[RecordEntry(family=e.family, knobs=e.knobs, params=e.params, macs=e.macs, runs=e.runs,
                                     epoch_seconds=e.epoch_seconds) for e in table.entries])
    return str(path)


def make_table(name: str, rows: list[dict], epochs: int, path: str = "<memory>") -> Table:
    """A table from rows of ``family, knobs, params, macs, runs, epoch_seconds`` (tests, tiny tables)."""
    entries = tuple(TableEntry(family=r["family"], knobs=r["knobs"], params=int(r["params"]), macs=int(r["macs"]),
                               runs=tuple(tuple(float(x) for x in run) for run in r["runs"]),
                               epoch_seconds=tuple(float(s) for s in r["epoch_seconds"])) for r in rows)
    return Table(name=name, epochs=epochs, provenance={"made_by": "make_table"}, entries=entries, path=path)


def final_accuracy(entry, epoch: int | None = None) -> float:
    """Mean over the runs of the accuracy at ``epoch`` (1-based; the last when None), exactly summed
    and rounded to 12 decimals, so that equal means are equal whatever the order of the runs (on
    NAS-Bench-Macro a plain float sum ranks a front member above an equal, cheaper one)."""
    i = (epoch or len(entry.runs[0])) - 1
    return round(math.fsum(run[i] for run in entry.runs) / len(entry.runs), 12)


def full_seconds(entry) -> float:
    return float(sum(entry.epoch_seconds))


# ---------------------------------------------------------------------------------------------------
# The space a peer searches


class Space:
    """Per family, the table's knobs as categorical parameters; proposals resolved to entries."""

    def __init__(self, table):
        self.table = table
        self.entries = list(table.entries)
        self.row_of = {id(e): i for i, e in enumerate(self.entries)}
        self.families = {f: table.knob_codes(f) for f in dict.fromkeys(e.family for e in self.entries)}

    @property
    def family_names(self) -> list[str]:
        return list(self.families)

    def params_of(self, entry_index: int) -> dict:
        """The parameters (with ``family`` when the table has several) that name a table entry."""
        e = self.entries[entry_index]
        out = {"family": e.family} if len(self.families) > 1 else {}
        out.update(self.families[e.family].flat(e.knobs))
        return out

    def knobs_of(self, family: str, params: dict) -> dict:
        """Knobs of ``family`` from its flattened parameters (parameters of other families ignored)."""
        return self.families[family].knobs(params)

    def resolve(self, family: str, knobs: dict) -> int | None:
        """The table entry a proposal stands for: exact match, else the nearest of its family
        (``search.tables.Table.nearest``, the rule effnas's ``execution.match: nearest`` uses)."""
        entry = self.table.nearest(family, knobs)
        return None if entry is None else self.row_of[id(entry)]

    def size(self) -> int:
        return len(self.entries)


def log10(x: float) -> float:
    return math.log10(max(float(x), 1e-12))
