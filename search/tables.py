"""Recorded tables: per-epoch validation accuracy and per-epoch seconds of whole search spaces.

A table stands in for training: the simulated execution backend replays an architecture's recorded
curve and epoch times instead of training it, so a sweep (driver, policy, sampler, rung rule,
storage) runs at the scale of hundreds of trials and many seeds in minutes. Benchmarks such as
NAS-Bench-Macro ship as tables (``examples/nas_bench_macro/table.json.gz``).

Format ``effnas-table/1``: one JSON object, in a plain ``.json`` file or gzip-compressed
(``.json.gz``; recognised by its contents, not its name)::

    {"format": "effnas-table/1",
     "name": "nas-bench-macro-cifar10",
     "provenance": {...},             # free-form: source, license, how it was measured, time model
     "epochs": E,                     # the fidelity every curve is recorded at
     "architectures": [
       {"family": "nas_bench_macro",  # a registered family (see space.registry)
        "knobs": {"layer": [0, 1, 2, 0, 1, 2, 0, 1]},   # the family's JSON knobs (space.registry.knobs_json)
        "params": 1234567, "macs": 45678901,            # deploy form, as space.cost counts them
        "val_acc": [[a_1, ..., a_E], [a_1, ..., a_E]],  # one curve per independent run, fractions in [0, 1]
        "epoch_seconds": [s_1, ..., s_E]},              # seconds each epoch took (or a stated model)
       ...]}

Rules, each checked when the table is read (:func:`load_table`), with a :class:`TableError` that
names the file, the architecture (its index, family and knobs) and what to fix:

- the top-level keys are exactly the five above (``format`` equal to ``effnas-table/1``), ``name``
  a string, ``provenance`` a mapping, ``epochs`` a positive integer, ``architectures`` a non-empty list;
- every architecture has exactly the keys above: ``family`` a non-empty string, ``knobs`` a mapping,
  ``params`` and ``macs`` non-negative integers, ``val_acc`` a non-empty list of runs, each a list of
  ``epochs`` numbers in [0, 1], ``epoch_seconds`` a list of ``epochs`` positive numbers;
- no two architectures share a family and knobs.

An architecture is found by its family and knobs (:meth:`Table.lookup`): knobs compare as
canonical JSON (keys sorted, tuples as lists), so ``{"layer": (0, 1)}`` finds ``{"layer": [0, 1]}``;
numbers compare as JSON writes them (``1`` is not ``1.0``). Tables are read once per file version
(path and modification time); :func:`write_table` writes one, deterministically.

Accuracy is a fraction (0.9312, not 93.12). Epoch seconds are what the provenance says they are:
a measurement on stated hardware, or a stated model when the source recorded no times.
"""
from __future__ import annotations

import gzip
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from search.exceptions import TableError
from trainers.atomic import write_atomic

__all__ = ["FORMAT", "TableError", "TableEntry", "Table", "KnobCodes", "load_table", "write_table", "canonical_knobs",
           "flatten_knobs", "knob_shape", "rebuild_knob"]

FORMAT = "effnas-table/1"
_TOP_KEYS = ("format", "name", "provenance", "epochs", "architectures")
_ENTRY_KEYS = ("family", "knobs", "params", "macs", "val_acc", "epoch_seconds")
_GZIP_MAGIC = b"\x1f\x8b"


def canonical_knobs(family: str, knobs: Any) -> str:
    """The lookup key of an architecture: its family and knobs as canonical JSON.

    ``knobs`` is the family's JSON form (a dict); a knobs dataclass is turned into it first."""
    if not isinstance(knobs, dict):
        from space.registry import knobs_json

        knobs = knobs_json(knobs)
    return _canonical([family, knobs])


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # one encoder, not one per call


@dataclass(frozen=True)
class TableEntry:
    """One architecture's recorded results."""

    family: str
    knobs: dict
    params: int
    macs: int
    runs: tuple[tuple[float, ...], ...]  # validation accuracy per epoch (fractions), one tuple per run
    epoch_seconds: tuple[float, ...]

    @property
    def seconds(self) -> float:
        """Seconds of the whole recorded training (all epochs)."""
        return math.fsum(self.epoch_seconds)

    def mean_curve(self) -> tuple[float, ...]:
        """Accuracy per epoch averaged over the runs."""
        return tuple(math.fsum(values) / len(values) for values in zip(*self.runs))


@dataclass(frozen=True)
class Table:
    """A recorded table (see the module docstring); ``path`` is the file it was read from."""

    name: str
    epochs: int
    provenance: dict
    entries: tuple[TableEntry, ...]
    path: str
    _index: dict = field(init=False, repr=False, compare=False)
    _codes: dict = field(init=False, repr=False, compare=False)  # family -> KnobCodes, built when first asked

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {canonical_knobs(e.family, e.knobs): e for e in self.entries})
        object.__setattr__(self, "_codes", {})

    def lookup(self, family: str, knobs: Any) -> TableEntry | None:
        """The entry of ``family`` with ``knobs`` (JSON form or dataclass), or None if not recorded."""
        return self._index.get(canonical_knobs(family, knobs))

    def families(self) -> set[str]:
        return {e.family for e in self.entries}

    def nearest(self, family: str, knobs: Any) -> TableEntry | None:
        """The entry of ``family`` with ``knobs``, else the nearest recorded one of that family (see
        :class:`KnobCodes`; ties to the entry listed first); None when the table has no such family."""
        hit = self.lookup(family, knobs)
        if hit is not None:
            return hit
        codes = self.knob_codes(family)
        return None if codes is None else codes.entries[codes.nearest(knobs)]

    def knob_codes(self, family: str) -> "KnobCodes | None":
        """The family's entries as a matrix of knob codes (built once per table and family)."""
        if family not in self._codes:
            entries = [e for e in self.entries if e.family == family]
            self._codes[family] = KnobCodes(family, entries) if entries else None
        return self._codes[family]

    def __len__(self) -> int:
        return len(self.entries)


# --- the nearest recorded architecture -------------------------------------------------------------
#
# A sparse table (a few hundred recorded architectures of a space of millions) holds few of the
# proposals a sampler makes; serving each by the nearest recorded architecture of its family lets a
# sweep run over it (``execution.match: nearest``) and lets every searcher in a benchmark see the
# same table through the same rule.


def flatten_knobs(value: Any, prefix: str, out: dict) -> None:
    """Nested knobs as scalar parameters: ``{"growth": [8, 16]}`` -> ``growth.0``, ``growth.1``."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            flatten_knobs(v, f"{prefix}.{i}", out)
    elif isinstance(value, dict):
        for k in sorted(value):
            flatten_knobs(value[k], f"{prefix}.{k}", out)
    else:
        out[prefix] = value


def knob_shape(value: Any):
    """The nesting of a knob's value (lists, mappings, leaves), to flatten and rebuild it."""
    if isinstance(value, (list, tuple)):
        return ("list", tuple(knob_shape(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, knob_shape(value[k])) for k in sorted(value)))
    return "leaf"


def rebuild_knob(shape, prefix: str, flat: dict) -> Any:
    """The inverse of :func:`flatten_knobs` for one knob of ``shape``."""
    if shape == "leaf":
        return flat[prefix]
    kind, parts = shape
    if kind == "list":
        return [rebuild_knob(s, f"{prefix}.{i}", flat) for i, s in enumerate(parts)]
    return {k: rebuild_knob(s, f"{prefix}.{k}", flat) for k, s in parts}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sorted_choices(values: Iterable) -> list:
    values = list({json.dumps(v): v for v in values}.values())
    return sorted(values) if all(_is_number(v) for v in values) else sorted(values, key=json.dumps)


class KnobCodes:
    """A family's recorded architectures as parameters and a code matrix, for nearest matching.

    Every knob is flattened into scalar parameters (``growth.1``); a knob whose nesting differs
    between entries (lists of different lengths) is one parameter over its JSON texts. ``params``
    lists each parameter with the values the table holds (sorted). Distance between a proposal and an
    entry: per numeric parameter the difference scaled by the parameter's range over the family's
    entries, per other parameter 1 on a mismatch; summed.
    """

    def __init__(self, family: str, entries: list[TableEntry]):
        import numpy as np

        self.family, self.entries = family, entries
        knobs = [e.knobs for e in entries]
        self.knob_order = sorted({k for kn in knobs for k in kn})
        self.shapes = {}
        for k in self.knob_order:
            seen = {json.dumps(knob_shape(kn.get(k)), sort_keys=True) for kn in knobs}
            same = len(seen) == 1 and all(k in kn for kn in knobs)
            self.shapes[k] = knob_shape(knobs[0][k]) if same else None
        flats = [self.flat(kn) for kn in knobs]
        self.params = [(p, _sorted_choices(f[p] for f in flats)) for p in flats[0]]
        self.numeric = np.array([all(_is_number(c) for c in ch) for _, ch in self.params], dtype=bool)
        self._positions = [{json.dumps(c): n for n, c in enumerate(ch)} for _, ch in self.params]
        self.codes = np.array([self._row(f) for f in flats]).reshape(len(flats), len(self.params))

    def flat(self, knobs: dict) -> dict:
        """``knobs`` as this family's scalar parameters (named ``family.knob[.i...]``)."""
        out: dict = {}
        for k, shape in self.shapes.items():
            if shape is None:
                out[f"{self.family}.{k}"] = json.dumps(knobs.get(k), sort_keys=True)
            else:
                flatten_knobs(knobs.get(k), f"{self.family}.{k}", out)
        return out

    def knobs(self, params: dict) -> dict:
        """Knobs from this family's parameters (parameters of other families are ignored)."""
        return {k: json.loads(params[f"{self.family}.{k}"]) if shape is None
                else rebuild_knob(shape, f"{self.family}.{k}", params) for k, shape in self.shapes.items()}

    def _row(self, flat: dict) -> list[float]:
        row = []
        for j, (p, choices) in enumerate(self.params):
            v = flat.get(p)
            if self.numeric[j] and _is_number(v):
                lo, hi = choices[0], choices[-1]
                row.append((v - lo) / (hi - lo) if hi > lo else 0.0)
            elif self.numeric[j]:
                row.append(math.nan)  # a value of another kind: a mismatch
            else:
                row.append(float(self._positions[j].get(json.dumps(v), -1)))
        return row

    def nearest(self, knobs: Any) -> int:
        """The index (into ``entries``) of the entry nearest ``knobs`` (JSON form or dataclass)."""
        import numpy as np

        if not isinstance(knobs, dict):
            from space.registry import knobs_json

            knobs = knobs_json(knobs)
        row = np.array(self._row(self.flat(knobs)))
        diff = np.abs(self.codes - row)
        dist = np.where(self.numeric, np.nan_to_num(diff, nan=1.0), (diff > 0).astype(float)).sum(axis=1)
        return int(np.argmin(dist))


# --- reading ------------------------------------------------------------------------------------

_CACHE: dict[tuple[str, int, int], Table] = {}


def load_table(path: str | Path) -> Table:
    """Read and check a table file (plain or gzip-compressed JSON); cached per path and mtime.

    Raises:
        TableError: the file is missing or unreadable, not gzip or not JSON, or breaks a rule of
            the format; the message names the file, the architecture and the fix.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        raise TableError(f"{path}: no such table file; give the path of an effnas table "
                         f"(.json or .json.gz, format {FORMAT!r})") from None
    except OSError as e:
        raise TableError(f"{path}: cannot read the table file: {e}") from None
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        for old in [k for k in _CACHE if k[0] == key[0]]:  # an older version of the same file
            del _CACHE[old]
        _CACHE[key] = _parse(_read_json(resolved, str(path)), str(resolved), str(path))
    return _CACHE[key]


def _read_json(resolved: Path, shown: str) -> Any:
    try:
        data = resolved.read_bytes()
    except OSError as e:
        raise TableError(f"{shown}: cannot read the table file: {e}") from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise TableError(f"{shown}: not a valid gzip file ({e}); write the table again, "
                             f"or give the uncompressed .json") from None
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise TableError(f"{shown}: not a JSON file (not UTF-8 text, nor gzip); an effnas table is "
                         f"JSON, optionally gzip-compressed") from None
    except json.JSONDecodeError as e:
        raise TableError(f"{shown}: not a JSON file (line {e.lineno}, column {e.colno}: {e.msg}); "
                         f"an effnas table is JSON, optionally gzip-compressed") from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_keys(raw: dict, expected: tuple, where: str, what: str) -> None:
    missing = [k for k in expected if k not in raw]
    if missing:
        raise TableError(f"{where}: missing key {missing[0]!r}; {what} has the keys {list(expected)}")
    unknown = sorted(k for k in raw if k not in expected)
    if unknown:
        raise TableError(f"{where}: unknown key {unknown[0]!r}; {what} has only the keys {list(expected)}")


def _parse(raw: Any, resolved: str, shown: str) -> Table:
    if not isinstance(raw, dict):
        raise TableError(f"{shown}: the table must be a JSON object with keys {list(_TOP_KEYS)}, "
                         f"got {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        got = f"format {raw['format']!r}" if "format" in raw else "no 'format' key"
        raise TableError(f"{shown}: {got}; this effnas reads {FORMAT!r} tables (set \"format\": \"{FORMAT}\" "
                         f"in a table written to this format)")
    _check_keys(raw, _TOP_KEYS, shown, "a table")
    if not isinstance(raw["name"], str):
        raise TableError(f"{shown}: name must be a string, got {raw['name']!r}")
    if not isinstance(raw["provenance"], dict):
        raise TableError(f"{shown}: provenance must be a mapping (source, license, how measured), "
                         f"got {type(raw['provenance']).__name__}")
    epochs = raw["epochs"]
    if not _is_int(epochs) or epochs < 1:
        raise TableError(f"{shown}: epochs must be a positive integer (the fidelity of every curve), got {epochs!r}")
    archs = raw["architectures"]
    if not isinstance(archs, list) or not archs:
        raise TableError(f"{shown}: architectures must be a non-empty list, got {archs!r}"[:300])
    entries = tuple(_entry(arch, i, epochs, shown) for i, arch in enumerate(archs))
    table = Table(name=raw["name"], epochs=epochs, provenance=raw["provenance"], entries=entries, path=resolved)
    if len(table._index) < len(entries):
        _raise_duplicate(entries, shown)
    return table


def _raise_duplicate(entries: tuple[TableEntry, ...], shown: str) -> None:
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        key = canonical_knobs(entry.family, entry.knobs)
        if key in seen:
            raise TableError(f"{shown}: architectures[{i}] ({entry.family} {_short(entry.knobs)}) repeats "
                             f"architectures[{seen[key]}]; each family and knobs may appear once (merge the "
                             f"runs into one val_acc list)")
        seen[key] = i


def _short(knobs: Any) -> str:
    text = json.dumps(knobs, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 120 else text[:117] + "..."


def _entry(arch: Any, i: int, epochs: int, shown: str) -> TableEntry:
    if not isinstance(arch, dict):
        raise TableError(f"{shown}: architectures[{i}]: must be a mapping with keys {list(_ENTRY_KEYS)}, "
                         f"got {type(arch).__name__}")
    family, knobs = arch.get("family"), arch.get("knobs")
    if len(arch) != len(_ENTRY_KEYS) or not all(k in arch for k in _ENTRY_KEYS):
        _check_keys(arch, _ENTRY_KEYS, _where(shown, i, arch), "an architecture")
    if _plain(arch, epochs):  # the common case passes this one fast test
        runs, seconds = tuple(tuple(run) for run in arch["val_acc"]), tuple(arch["epoch_seconds"])
    else:  # find what is wrong, or convert the integers written where floats were expected
        runs, seconds = _checked(arch, epochs, _where(shown, i, arch))
    return TableEntry(family=family, knobs=knobs, params=arch["params"], macs=arch["macs"], runs=runs,
                      epoch_seconds=seconds)


def _where(shown: str, i: int, arch: dict) -> str:
    family, knobs = arch.get("family"), arch.get("knobs")
    named = f" ({family} {_short(knobs)})" if isinstance(family, str) and family and isinstance(knobs, dict) else ""
    return f"{shown}: architectures[{i}]{named}"


def _plain(arch: dict, epochs: int) -> bool:
    """True when the architecture follows every rule (floats throughout; ints pass the slow path)."""
    family, knobs, val_acc, seconds = arch["family"], arch["knobs"], arch["val_acc"], arch["epoch_seconds"]
    return (type(family) is str and family != "" and type(knobs) is dict
            and type(arch["params"]) is int and arch["params"] >= 0 and type(arch["macs"]) is int and arch["macs"] >= 0
            and type(val_acc) is list and len(val_acc) > 0
            and all(type(run) is list and len(run) == epochs and all(type(a) is float and 0.0 <= a <= 1.0 for a in run)
                    for run in val_acc)
            and type(seconds) is list and len(seconds) == epochs
            and all(type(x) is float and 0.0 < x < math.inf for x in seconds))


def _checked(arch: dict, epochs: int, where: str) -> tuple[tuple, tuple]:
    """The runs and epoch seconds of ``arch`` as floats, or the TableError that says what is wrong."""
    family, knobs = arch["family"], arch["knobs"]
    if not isinstance(family, str) or not family:
        raise TableError(f"{where}: family must be a family name (a non-empty string), got {family!r}")
    if not isinstance(knobs, dict):
        raise TableError(f"{where}: knobs must be a mapping (the family's JSON knobs), got {knobs!r}")
    for name in ("params", "macs"):
        if not _is_int(arch[name]) or arch[name] < 0:
            raise TableError(f"{where}: {name} must be a non-negative integer (deploy form), got {arch[name]!r}")
    return _runs(arch["val_acc"], epochs, where), _seconds(arch["epoch_seconds"], epochs, where)


def _runs(val_acc: Any, epochs: int, where: str) -> tuple[tuple[float, ...], ...]:
    if not isinstance(val_acc, list) or not val_acc or not all(isinstance(r, list) for r in val_acc):
        raise TableError(f"{where}: val_acc must be a non-empty list of runs, each a list of {epochs} "
                         f"accuracies (one per epoch), got {val_acc!r}"[:400])
    runs = []
    for r, run in enumerate(val_acc):
        if len(run) != epochs:
            raise TableError(f"{where}: val_acc run {r} has {len(run)} epochs, but the table's epochs is {epochs}; "
                             f"every run must record one accuracy per epoch")
        for e, acc in enumerate(run):
            if not _is_number(acc) or not 0.0 <= acc <= 1.0:
                raise TableError(f"{where}: val_acc run {r} epoch {e + 1} is {acc!r}; accuracies are fractions "
                                 f"in [0, 1] (0.93, not 93)")
        runs.append(tuple(float(a) for a in run))
    return tuple(runs)


def _seconds(seconds: Any, epochs: int, where: str) -> tuple[float, ...]:
    if not isinstance(seconds, list) or len(seconds) != epochs:
        n = len(seconds) if isinstance(seconds, list) else None
        got = f"{n} values" if n is not None else repr(seconds)
        raise TableError(f"{where}: epoch_seconds must be a list of {epochs} seconds (one per epoch), got {got}")
    for e, s in enumerate(seconds):
        if not _is_number(s) or s <= 0:
            raise TableError(f"{where}: epoch_seconds epoch {e + 1} is {s!r}; every epoch takes a positive, "
                             f"finite number of seconds")
    return tuple(float(s) for s in seconds)


# --- writing ------------------------------------------------------------------------------------

def write_table(path: str | Path, *, name: str, epochs: int, provenance: dict,
                entries: Iterable[TableEntry]) -> Path:
    """Write a table (gzip-compressed if ``path`` ends in ``.gz``), checked as :func:`load_table`
    would check it, with the same bytes for the same contents; returns the path.

    Raises:
        TableError: the contents break a rule of the format (nothing is written).
    """
    path = Path(path)
    raw = {"format": FORMAT, "name": name, "provenance": provenance, "epochs": epochs,
           "architectures": [{"family": e.family, "knobs": e.knobs, "params": e.params, "macs": e.macs,
                              "val_acc": [list(run) for run in e.runs],
                              "epoch_seconds": list(e.epoch_seconds)} for e in entries]}
    text = json.dumps(raw, separators=(",", ":"))
    _parse(json.loads(text), str(path), str(path))  # what a reader would refuse is never written
    data = text.encode()
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)  # mtime 0: the same bytes every time
    write_atomic(path, data)
    return path
