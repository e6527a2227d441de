"""Reading a whole study fast, for `status`, `trials` and `export`.

Optuna's ``get_trials`` materialises every parameter, distribution and attribute of every trial
(seconds per 10,000 trials). These commands need each trial's state, times, objective values and
user attributes, and the parameters of the few front members only. This reader selects exactly
those columns of Optuna's schema with SQLAlchemy Core, in four queries, and returns
:class:`StoredTrial` s that read like Optuna's ``FrozenTrial`` for every attribute effnas uses.

The schema is Optuna's; the versions it was checked against are in ``KNOWN_SCHEMAS``. Any other
version (or a storage that is not a relational database) falls back to ``get_trials``.
"""
from __future__ import annotations

import datetime as dt
import gc
import json
import math
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

__all__ = ["StoredTrial", "read_trials", "read_params", "KNOWN_SCHEMAS"]

KNOWN_SCHEMAS = {"v3.2.0.a"}  # Optuna 3.2 to 5.0 write this alembic version
_STATES = {s.name: s for s in TrialState}
_SPECIAL = {"INF_POS": math.inf, "INF_NEG": -math.inf}


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


def _when(value) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


def _engine_and_study_id(study: optuna.Study, url: str | None):
    from search.storage import _optuna_compat as compat

    engine = compat.rdb_engine(study, url)
    if engine is None:
        return None, None
    import sqlalchemy as sa

    with engine.connect() as conn:
        try:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        except sa.exc.SQLAlchemyError:
            return None, None
        if version not in KNOWN_SCHEMAS:
            return None, None
        study_id = conn.execute(sa.text("SELECT study_id FROM studies WHERE study_name = :n"),
                                {"n": study.study_name}).scalar()
    return engine, study_id


def _rows(engine, sql: str, study_id: int) -> list[tuple]:
    """All rows of one query as plain tuples, through the DBAPI cursor: SQLAlchemy's row objects
    cost more than the query itself at 100,000 rows. ``?`` is the study id's placeholder."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        cursor.execute(sql.replace("?", mark), (study_id,))
        rows = cursor.fetchall()
        cursor.close()
        return rows
    finally:
        raw.close()


def read_trials(study: optuna.Study, url: str | None = None) -> list:
    """Every trial of ``study``, in number order: :class:`StoredTrial` s through SQL where the schema
    is known, else Optuna's ``FrozenTrial`` s."""
    engine, study_id = _engine_and_study_id(study, url)
    if engine is None or study_id is None:
        return study.get_trials(deepcopy=False)
    # Millions of small objects (decoded records) come in at once: the cyclic garbage collector
    # would walk all of them again and again while they are built (most of the time at 100,000
    # trials). None of them can form garbage cycles; collection resumes afterwards, and frozen,
    # they are never walked again.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _read(engine, study_id)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _read(engine, study_id: int) -> list[StoredTrial]:
    by_id: dict[int, StoredTrial] = {}
    for tid, number, state, start, end in _rows(engine, "SELECT trial_id, number, state, datetime_start, "
                                                "datetime_complete FROM trials WHERE study_id = ? ORDER BY number",
                                                study_id):
        by_id[tid] = StoredTrial(number, _STATES[state], _when(start), _when(end), trial_id=tid)
    values: dict[int, dict[int, float]] = {}
    for tid, objective, value, kind in _rows(engine, "SELECT v.trial_id, v.objective, v.value, v.value_type "
                                             "FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id "
                                             "WHERE t.study_id = ?", study_id):
        values.setdefault(tid, {})[objective] = _SPECIAL.get(kind, value)
    decode = json.JSONDecoder().decode
    for tid, key, raw in _rows(engine, "SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a "
                               "JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = ?", study_id):
        by_id[tid].user_attrs[key] = decode(raw)
    for tid, vals in values.items():
        if tid in by_id and by_id[tid].state == TrialState.COMPLETE:
            by_id[tid].values = [vals[k] for k in sorted(vals)]
    return list(by_id.values())


def read_params(study: optuna.Study, trials: list, url: str | None = None) -> None:
    """Fill in the Optuna parameters of ``trials`` (stored trials only; FrozenTrials have theirs)."""
    stored = {t.trial_id: t for t in trials if isinstance(t, StoredTrial)}
    if not stored:
        return
    engine, _ = _engine_and_study_id(study, url)
    import sqlalchemy as sa
    from optuna.distributions import json_to_distribution

    ids = list(stored)
    with engine.connect() as conn:
        for i in range(0, len(ids), 500):  # SQLite takes at most 999 bound parameters
            chunk = ids[i:i + 500]
            marks = ", ".join(f":p{j}" for j in range(len(chunk)))
            rows = conn.execute(sa.text(f"SELECT trial_id, param_name, param_value, distribution_json "
                                        f"FROM trial_params WHERE trial_id IN ({marks})"),
                                {f"p{j}": tid for j, tid in enumerate(chunk)})
            for tid, name, internal, dist_json in rows:
                dist = json_to_distribution(dist_json)
                stored[tid].params[name] = dist.to_external_repr(internal)
