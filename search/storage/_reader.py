"""Reading a whole study fast, as one consistent snapshot, for `status`, `trials` and `export`.

Optuna's ``get_trials`` materialises every parameter, distribution and attribute of every trial
(seconds per 10,000 trials), and opening a study through Optuna's storage costs SQLAlchemy, Optuna's
table models and its schema check before the first row. These commands need each trial's state,
times, objective values and small user attributes, a few figures out of every trial record, and
the whole record and parameters of the few front members only. This reader selects exactly that
from Optuna's schema:

- all of it in **one read transaction** (SQLite: ``BEGIN`` on one connection, which holds one WAL
  snapshot; other databases: one SQLAlchemy connection at REPEATABLE READ), so a trial a driver
  adds between two queries is either wholly in the snapshot or not at all;
- on SQLite through the standard library's ``sqlite3`` (no SQLAlchemy, no Optuna storage), with
  the figures taken out of each record by SQLite's ``json_extract`` (C) instead of decoding every
  record in Python; the records themselves (``record``, ``record_pending``: 1-2 kB each) are
  fetched and decoded only when something reads them (the front members' records, a seed's).

:class:`StoredTrial` reads like Optuna's ``FrozenTrial`` for every attribute effnas uses (its
``user_attrs`` hold every attribute, the large ones fetched when first read), plus ``facts``: the
record's figures (:data:`FACTS`). :func:`open_snapshot` opens a study for reading without Optuna's
storage (a :class:`StoredStudy`, which reads like ``optuna.Study`` for these commands).

The schema is Optuna's; the versions it was checked against are in ``KNOWN_SCHEMAS``. Any other
version (or a storage that is not a relational database) falls back to Optuna's own API.
Parameters and records of finished trials never change (Optuna refuses to update them), so reading
the front members' ones after the snapshot reads what the snapshot would have.
"""
from __future__ import annotations

import datetime as dt
import gc
import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from optuna.trial import TrialState

__all__ = ["StoredTrial", "StoredStudy", "read_trials", "read_params", "open_snapshot", "facts_of", "knobs_of",
           "FACTS", "KNOWN_SCHEMAS"]

KNOWN_SCHEMAS = {"v3.2.0.a"}  # Optuna 3.2 to 5.1 write this alembic version
_STATES = {s.name: s for s in TrialState}
_SPECIAL = {"INF_POS": math.inf, "INF_NEG": -math.inf}
_LARGE = ("record", "record_pending")  # user attributes fetched and decoded when first read

# The figures of a trial record that `status`, `trials` and the plots read for every trial. ``knobs``
# stays JSON text in the facts (see knobs_of): decoding 100,000 of them is wasted when only the
# front members' are shown.
FACTS = ("family", "val_acc", "macs", "params", "test_acc", "epochs", "fidelity_reached", "latency_ms",
         "train_seconds", "worker_seconds", "queued_seconds", "resumed_from_epoch", "duplicate_of",
         "failure_reason", "proxies", "sim_end")
_EXTRACT = "json_extract(a.value_json, " + ", ".join(f"'$.{k}'" for k in FACTS) + ")"


class _Attrs(dict):
    """A trial's user attributes. The large ones are known by name and fetched (by ``_large``, one
    query for the trial) the first time anything reads them; until then every other key reads as in
    a plain dict."""

    __slots__ = ("_pending", "_large", "_tid")

    def __init__(self, large: "Callable[[list[int]], dict] | None" = None, tid: int = -1) -> None:
        super().__init__()
        self._pending: tuple | None = None  # names of the large attributes not fetched yet
        self._large, self._tid = large, tid

    def _fill(self, values: dict) -> None:
        """The large attributes, fetched (by the trial itself or in a batch)."""
        for key in self._pending or ():
            if key in values:
                dict.__setitem__(self, key, values[key])
        self._pending = None

    def _resolve(self) -> "_Attrs":
        if self._pending:
            self._fill(self._large([self._tid]).get(self._tid, {}))
        return self

    # Reads of a large key, or of the whole mapping, fetch first.
    def __getitem__(self, key):
        if self._pending and key in self._pending:
            self._resolve()
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        if self._pending and key in self._pending:
            self._resolve()
        return dict.get(self, key, default)

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or bool(self._pending and key in self._pending)

    def __len__(self) -> int:
        return dict.__len__(self) + len(self._pending or ())

    def __iter__(self):
        return dict.__iter__(self._resolve())

    def keys(self):
        return dict.keys(self._resolve())

    def values(self):
        return dict.values(self._resolve())

    def items(self):
        return dict.items(self._resolve())

    def copy(self) -> dict:
        return dict(dict.items(self._resolve()))

    def __eq__(self, other) -> bool:
        return dict.__eq__(self._resolve(), other._resolve() if isinstance(other, _Attrs) else other)

    def __ne__(self, other) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return dict.__repr__(self._resolve())

    def __reduce__(self):
        return (dict, (dict(dict.items(self._resolve())),))


@dataclass
class StoredTrial:
    """A trial as the database holds it (the ``FrozenTrial`` attributes effnas reads)."""

    number: int
    state: TrialState
    datetime_start: dt.datetime | None
    datetime_complete: dt.datetime | None
    values: list | None = None
    user_attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # filled by read_params for the trials that need them
    trial_id: int = -1
    facts: dict | None = None  # the record's FACTS (None: no record), knobs as JSON text under "knobs"


@dataclass
class StoredStudy:
    """A study read in one snapshot: what ``status``, ``trials`` and ``export`` ask of ``optuna.Study``."""

    study_name: str
    directions: list
    user_attrs: dict
    trials: list
    url: str

    def get_trials(self, deepcopy: bool = False, states=None) -> list:
        return [t for t in self.trials if states is None or t.state in states]


def _when(value) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


def _no_gc(read: Callable):
    """Run ``read`` with the cyclic garbage collector off: millions of small objects (rows, decoded
    attributes) come in at once, and the collector would walk all of them again and again while
    they are built (most of the time at 100,000 trials). None of them form cycles; frozen
    afterwards, they are never walked again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return read()
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


# --- the queries, on one connection -----------------------------------------------------------

class _Source:
    """Where a study's rows come from: one DBAPI connection inside one read transaction."""

    def __init__(self, conn, paramstyle: str, close: Callable[[], None], sqlite: bool):
        self.conn, self.mark, self._close, self.sqlite = conn, "?" if paramstyle == "qmark" else "%s", close, sqlite

    def rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql.replace("?", self.mark), args)
            return cursor.fetchall()
        finally:
            cursor.close()

    def close(self) -> None:
        self._close()


def _sqlite_source(path: Path) -> _Source:
    """One connection in one read transaction (``BEGIN``; the snapshot is taken at the first read)."""
    from search.storage._sqlite import prepare_sqlite

    prepare_sqlite(path)  # WAL, as every effnas connection expects (readers never block the driver)
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only = 1")
    conn.execute("PRAGMA mmap_size = 1073741824")  # pages read in place, not copied: the scans take half the time
    conn.execute("BEGIN")

    def close() -> None:
        try:
            conn.execute("COMMIT")
        finally:
            conn.close()

    return _Source(conn, "qmark", close, sqlite=True)


def _engine_source(engine) -> _Source | None:
    """One connection of ``engine`` in one REPEATABLE READ transaction (SQLite engines: the file)."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        return _sqlite_source(Path(database)) if database and database != ":memory:" else None
    conn = engine.connect()
    if engine.dialect.name in ("postgresql", "mysql", "mariadb"):
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    transaction = conn.begin()
    raw = conn.connection.dbapi_connection

    def close() -> None:
        try:
            transaction.rollback()  # read only: nothing to keep
        finally:
            conn.close()

    return _Source(raw, engine.dialect.paramstyle, close, sqlite=False)


def _schema_known(source: _Source) -> bool:
    try:
        return source.rows("SELECT version_num FROM alembic_version")[0][0] in KNOWN_SCHEMAS
    except Exception:  # no such table, another schema: Optuna's API decides
        return False


def _study_id(source: _Source, name: str) -> int | None:
    rows = source.rows("SELECT study_id FROM studies WHERE study_name = ?", (name,))
    return rows[0][0] if rows else None


def _decoder() -> Callable[[str], Any]:
    """JSON decoding with scalar results shared (statuses and families repeat 100,000 times);
    lists and objects are decoded each time, so no two trials share a mutable value."""
    decode = json.JSONDecoder().decode
    scalars: dict[str, Any] = {}

    def cached(raw: str):
        value = scalars.get(raw, scalars)
        if value is scalars:
            value = decode(raw)
            if not isinstance(value, (list, dict)) and len(scalars) < 10_000:
                scalars[raw] = value
        return value

    return cached


def _read(source: _Source, study_id: int, large: Callable[[list[int]], dict]) -> list[StoredTrial]:
    # A file holding this study alone (the usual case) needs no join to find the study's rows.
    alone = source.rows("SELECT COUNT(*) FROM studies")[0][0] == 1
    mine = "" if alone else " JOIN trials t ON t.trial_id = {0}.trial_id WHERE t.study_id = ?"
    args = () if alone else (study_id,)
    by_id: dict[int, StoredTrial] = {}
    for tid, number, state, start, end in source.rows(
            "SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
            "WHERE study_id = ? ORDER BY number", (study_id,)):
        by_id[tid] = StoredTrial(number, _STATES[state], _when(start), _when(end), user_attrs=_Attrs(large, tid),
                                 trial_id=tid)
    last, vals = None, None
    for tid, value, kind in source.rows(  # in trial and objective order: one list per trial
            "SELECT v.trial_id, v.value, v.value_type FROM trial_values v" + mine.format("v")
            + " ORDER BY v.trial_id, v.objective", args):
        if tid != last:
            trial = by_id.get(tid)
            vals = trial.values = [] if trial is not None and trial.state == TrialState.COMPLETE else None
            last = tid
        if vals is not None:
            vals.append(value if kind == "FINITE" else _SPECIAL.get(kind, value))
    decode = _decoder()
    if not (source.sqlite and _read_attrs_extracting(source, mine.format("a"), args, by_id, decode)):
        for tid, key, raw in source.rows("SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a"
                                         + mine.format("a"), args):
            trial = by_id[tid]
            value = decode(raw)
            dict.__setitem__(trial.user_attrs, key, value)
            if key == "record":
                trial.facts = _facts_from(value, {})
    for trial in by_id.values():
        if trial.facts is not None and not trial.facts["family"]:
            trial.facts["family"] = dict.get(trial.user_attrs, "family", "")
    return list(by_id.values())


def _read_attrs_extracting(source: _Source, mine: str, args: tuple, by_id: dict, decode) -> bool:
    """User attributes in one pass: small ones decoded, each record's FACTS taken out by SQLite,
    the large ones left to be fetched when read. False when this SQLite has no JSON functions."""
    try:
        rows = source.rows(
            f"SELECT a.trial_id, a.key, CASE a.key WHEN 'record' THEN {_EXTRACT} "
            f"WHEN 'record_pending' THEN NULL ELSE a.value_json END, "
            f"CASE a.key WHEN 'record' THEN json_extract(a.value_json, '$.knobs') END "
            f"FROM trial_user_attributes a" + mine, args)
    except sqlite3.OperationalError:  # no json_extract in this SQLite: decode in Python
        return False
    array = json.JSONDecoder().decode
    setitem = dict.__setitem__
    for tid, key, raw, knobs in rows:
        if key == "record":
            trial = by_id[tid]
            facts = trial.facts = dict(zip(FACTS, array(raw)))
            facts["knobs"] = knobs
        elif key != "record_pending":
            setitem(by_id[tid].user_attrs, key, decode(raw))
            continue
        attrs = by_id[tid].user_attrs
        attrs._pending = (key,) if attrs._pending is None else attrs._pending + (key,)
    return True


def _facts_from(record: dict, attrs) -> dict:
    facts = {k: record.get(k) for k in FACTS}
    facts["knobs"] = record.get("knobs")
    if not facts["family"]:
        facts["family"] = attrs.get("family", "")
    return facts


def _large_loader(open_source: Callable[[], _Source]) -> Callable[[list[int]], dict]:
    """``load(trial_ids) -> {trial_id: {key: value}}`` of the large attributes, on a connection of
    its own (they are read after the snapshot; records of finished trials never change)."""

    def load(ids: list[int]) -> dict:
        source = open_source()
        try:
            return _large_attrs(source, ids)
        finally:
            source.close()

    return load


def _large_attrs(source: _Source, ids: list[int]) -> dict:
    out: dict[int, dict] = {}
    decode = json.JSONDecoder().decode
    for i in range(0, len(ids), 500):  # SQLite takes at most 999 bound parameters
        chunk = ids[i:i + 500]
        marks = ", ".join("?" * len(chunk))
        for tid, key, raw in source.rows(
                f"SELECT trial_id, key, value_json FROM trial_user_attributes WHERE trial_id IN ({marks}) "
                f"AND key IN ('record', 'record_pending')", tuple(chunk)):
            out.setdefault(tid, {})[key] = decode(raw)
    return out


# --- entry points -----------------------------------------------------------------------------

def _opener(study, url: str | None) -> Callable[[], _Source] | None:
    """How to open a read transaction on ``study``'s database, or None (not a relational one)."""
    from search.storage._urls import sqlite_path

    if isinstance(study, StoredStudy):
        url = study.url
    path = sqlite_path(url) if url else None
    if path is not None:
        return lambda: _sqlite_source(path)
    from search.storage import _optuna_compat as compat

    engine = compat.rdb_engine(study, url) if not isinstance(study, StoredStudy) else None
    if engine is None and url:
        return None
    return (lambda: _engine_source(engine)) if engine is not None else None


def read_trials(study, url: str | None = None) -> list:
    """Every trial of ``study``, in number order: :class:`StoredTrial` s through SQL where the schema
    is known, else Optuna's ``FrozenTrial`` s. A :class:`StoredStudy` has its trials already."""
    if isinstance(study, StoredStudy):
        return study.trials
    opener = _opener(study, url)
    source = opener() if opener is not None else None
    if source is None:
        return study.get_trials(deepcopy=False)
    try:
        study_id = _study_id(source, study.study_name) if _schema_known(source) else None
        if study_id is None:
            return study.get_trials(deepcopy=False)
        return _no_gc(lambda: _read(source, study_id, _large_loader(opener)))
    finally:
        source.close()


def read_params(study, trials: list, url: str | None = None) -> None:
    """Fill in the Optuna parameters of ``trials`` (stored trials only; FrozenTrials have theirs),
    and fetch their large attributes (their records) in the same pass."""
    stored = {t.trial_id: t for t in trials if isinstance(t, StoredTrial)}
    if not stored:
        return
    opener = _opener(study, url)
    source = opener() if opener is not None else None
    if source is None:
        raise RuntimeError("read_params: the trials were read from a database that cannot be opened again")
    from optuna.distributions import json_to_distribution

    try:
        ids = list(stored)
        dists: dict[str, Any] = {}
        for i in range(0, len(ids), 500):  # SQLite takes at most 999 bound parameters
            chunk = ids[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            for tid, name, internal, dist_json in source.rows(
                    f"SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                    f"WHERE trial_id IN ({marks})", tuple(chunk)):
                dist = dists.get(dist_json)
                if dist is None:
                    dist = dists[dist_json] = json_to_distribution(dist_json)
                stored[tid].params[name] = dist.to_external_repr(internal)
        waiting = [tid for tid, t in stored.items() if isinstance(t.user_attrs, _Attrs) and t.user_attrs._pending]
        if waiting:
            large = _large_attrs(source, waiting)
            for tid in waiting:
                stored[tid].user_attrs._fill(large.get(tid, {}))
    finally:
        source.close()


def open_snapshot(url: str, name: str | None):
    """The study ``name`` (or the only one) of the database at ``url``, read for reporting: a
    :class:`StoredStudy` with every trial, read in one transaction, for an SQLite file of a known
    schema; else Optuna's ``Study`` (``search.storage.load_existing_study``). Writes nothing but
    the switch to WAL that every effnas connection makes.

    Raises:
        StorageError: no database there, no such study, or several and none named.
    """
    from search.storage._urls import sqlite_path

    path = sqlite_path(url)
    if path is None or not path.is_file():
        return _load_with_optuna(url, name)
    source = _sqlite_source(path)
    try:
        if _schema_known(source):
            return _snapshot(source, path, url, name)
    finally:
        source.close()
    return _load_with_optuna(url, name)  # another schema: Optuna decides (and says what is wrong)


def _snapshot(source: _Source, path: Path, url: str, name: str | None) -> StoredStudy:
    """The study ``name`` (or the only one) and all its trials, read through ``source``."""
    from optuna.study import StudyDirection

    from search.exceptions import StorageError

    names = [r[0] for r in source.rows("SELECT study_name FROM studies ORDER BY study_id")]
    if name is None:
        if len(names) != 1:
            raise StorageError(f"{url!r} holds {len(names)} studies {names}; name one")
        name = names[0]
    if name not in names:
        raise StorageError(f"{url!r} holds no study {name!r}; studies there: {names}")
    study_id = _study_id(source, name)
    directions = [StudyDirection[d] for _, d in source.rows(
        "SELECT objective, direction FROM study_directions WHERE study_id = ? ORDER BY objective", (study_id,))]
    user_attrs = {k: json.loads(v) for k, v in source.rows(
        "SELECT key, value_json FROM study_user_attributes WHERE study_id = ?", (study_id,))}
    trials = _no_gc(lambda: _read(source, study_id, _large_loader(lambda: _sqlite_source(path))))
    return StoredStudy(name, directions, user_attrs, trials, url)


def _load_with_optuna(url: str, name: str | None):
    from search.storage import load_existing_study

    return load_existing_study(url, name)


def facts_of(trial) -> dict:
    """The record's :data:`FACTS` of any trial (``StoredTrial`` or Optuna's), an empty dict with the
    family when it has no record; ``knobs`` may be JSON text (see :func:`knobs_of`)."""
    facts = getattr(trial, "facts", None)
    if facts is not None:
        return facts
    record = trial.user_attrs.get("record")
    if record is None:
        return {"family": trial.user_attrs.get("family", "")}
    return _facts_from(record, trial.user_attrs)


def knobs_of(facts: dict) -> dict:
    """The knobs of :func:`facts_of`, decoded (``{}`` when the record has none)."""
    knobs = facts.get("knobs")
    if isinstance(knobs, str):
        knobs = facts["knobs"] = json.loads(knobs)
    return knobs or {}
