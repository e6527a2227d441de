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
match, else to the nearest entry of the same family (``Space.resolve``): numeric parameters by
their distance scaled to [0, 1], the others by mismatch, ties to the entry listed first. On a full
grid such as NAS-Bench-Macro every proposal matches exactly.
"""
from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}.{i}", out)
    elif isinstance(value, dict):
        for k in sorted(value):
            _flatten(value[k], f"{prefix}.{k}", out)
    else:
        out[prefix] = value


def _shape(value):
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_shape(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _shape(value[k])) for k in sorted(value)))
    return "leaf"


def _rebuild(shape, prefix: str, flat: dict):
    if shape == "leaf":
        return flat[prefix]
    kind, parts = shape
    if kind == "list":
        return [_rebuild(s, f"{prefix}.{i}", flat) for i, s in enumerate(parts)]
    return {k: _rebuild(s, f"{prefix}.{k}", flat) for k, s in parts}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sorted_choices(values) -> list:
    values = list({json.dumps(v): v for v in values}.values())
    if all(_is_number(v) for v in values):
        return sorted(values)
    return sorted(values, key=lambda v: json.dumps(v))


@dataclass
class FamilySpace:
    family: str
    knob_order: list            # top-level knob names
    shapes: dict                # knob -> structure shape, or None for a knob coded as JSON text
    params: list                # [(parameter name, choices)], names "family.knob[.i...]"
    entry_rows: list            # table indices of this family's entries
    codes: np.ndarray           # entries x params: numeric value scaled to [0, 1], or choice index
    numeric: np.ndarray         # per parameter: True where every choice is a number


class Space:
    """Per family, the table's knobs as categorical parameters; proposals resolved to entries."""

    def __init__(self, table):
        self.table = table
        self.entries = list(table.entries)
        self.index = {arch_key(e.family, e.knobs): i for i, e in enumerate(self.entries)}
        self.families: dict[str, FamilySpace] = {}
        by_family: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            by_family.setdefault(e.family, []).append(i)
        for family, rows in by_family.items():
            knobs = [self.entries[i].knobs for i in rows]
            names = sorted({k for kn in knobs for k in kn})
            shapes = {}
            for k in names:
                seen = {json.dumps(_shape(kn.get(k)), sort_keys=True) for kn in knobs}
                shapes[k] = _shape(knobs[0][k]) if len(seen) == 1 and all(k in kn for kn in knobs) else None
            flats = [self._flat(family, kn, shapes) for kn in knobs]
            pnames = list(flats[0])
            params = [(p, _sorted_choices(f[p] for f in flats)) for p in pnames]
            numeric = np.array([all(_is_number(c) for c in ch) for _, ch in params], dtype=bool)
            codes = np.zeros((len(rows), len(params)))
            for j, (p, ch) in enumerate(params):
                if numeric[j]:
                    lo, hi = min(ch), max(ch)
                    codes[:, j] = [(f[p] - lo) / (hi - lo) if hi > lo else 0.0 for f in flats]
                else:
                    pos = {json.dumps(c): n for n, c in enumerate(ch)}
                    codes[:, j] = [pos[json.dumps(f[p])] for f in flats]
            self.families[family] = FamilySpace(family, names, shapes, params, rows, codes, numeric)

    @staticmethod
    def _flat(family: str, knobs: dict, shapes: dict) -> dict:
        out: dict = {}
        for k, shape in shapes.items():
            if shape is None:
                out[f"{family}.{k}"] = json.dumps(knobs.get(k), sort_keys=True)
            else:
                _flatten(knobs[k], f"{family}.{k}", out)
        return out

    @property
    def family_names(self) -> list[str]:
        return list(self.families)

    def params_of(self, entry_index: int) -> dict:
        """The parameters (with ``family`` when the table has several) that name a table entry."""
        e = self.entries[entry_index]
        fs = self.families[e.family]
        out = {"family": e.family} if len(self.families) > 1 else {}
        out.update(self._flat(e.family, e.knobs, fs.shapes))
        return out

    def knobs_of(self, family: str, params: dict) -> dict:
        """Knobs of ``family`` from its flattened parameters (parameters of other families ignored)."""
        fs = self.families[family]
        out = {}
        for k in fs.knob_order:
            shape = fs.shapes[k]
            if shape is None:
                out[k] = json.loads(params[f"{family}.{k}"])
            else:
                out[k] = _rebuild(shape, f"{family}.{k}", params)
        return out

    def resolve(self, family: str, knobs: dict) -> int | None:
        """The table entry a proposal stands for: exact match, else the nearest of its family."""
        hit = self.index.get(arch_key(family, knobs))
        if hit is not None:
            return hit
        fs = self.families.get(family)
        if fs is None:
            return None
        flat = self._flat(family, knobs, fs.shapes)
        row = np.zeros(len(fs.params))
        for j, (p, ch) in enumerate(fs.params):
            v = flat.get(p)
            if fs.numeric[j] and _is_number(v):
                lo, hi = min(ch), max(ch)
                row[j] = (v - lo) / (hi - lo) if hi > lo else 0.0
            else:
                pos = {json.dumps(c): n for n, c in enumerate(ch)}
                row[j] = pos.get(json.dumps(v), -1)
        diff = np.abs(fs.codes - row)
        dist = np.where(fs.numeric, diff, (diff > 0).astype(float)).sum(axis=1)
        return fs.entry_rows[int(np.argmin(dist))]

    def size(self) -> int:
        return len(self.entries)


def log10(x: float) -> float:
    return math.log10(max(float(x), 1e-12))
