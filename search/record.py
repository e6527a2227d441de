"""The trial record: what effnas stores about every proposal, typed, with one way in and out of
Optuna's user attributes.

Database keys (never rename; a study written by any earlier effnas must still open):

- ``status``       a :class:`TrialStatus` value
- ``family``       the family name
- ``constraints``  values <= 0 mean feasible (Optuna's convention); read by constrained samplers
- ``final``        on failed trials: no retry follows
- ``record``       everything else (:class:`TrialRecord`) in one JSON object
- ``record_pending`` the proposal part, written when the trial is sent to a worker (other drivers
  on a shared database read its ``arch_key`` to skip an architecture being trained)
- ``retry_of``, ``attempt``, ``retry_reason``  on re-queued trials (set by ``enqueue_trial``)
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from optuna.trial import FrozenTrial, TrialState

__all__ = ["TrialStatus", "TrialRecord", "arch_key", "trial_status", "read_record", "write_record",
           "record_attrs", "write_pending", "pending_arch_key"]


class TrialStatus(str, enum.Enum):
    """What became of a proposal. A ``str`` so that it compares with, and serialises as, its value."""

    TRAINED = "trained"        # trained to the study's fidelity; on the front if not dominated
    STOPPED = "stopped"        # stopped at a rung
    INFEASIBLE = "infeasible"  # over the MACs/params/latency budget; never trained
    DUPLICATE = "duplicate"    # an architecture already trained at this fidelity
    FAILED = "failed"          # the worker raised, diverged or died
    SURPLUS = "surplus"        # asked after other drivers had taken the budget; released
    SCREENED = "screened"      # not chosen by pre-screening (zero-cost proxy for its cost); never trained
    IMPORTED = "imported"      # trained by another study at this fidelity (warm_start); never trained here
    INTERRUPTED = "interrupted"  # its driver stopped (Ctrl-C, kill, crash) while it ran; re-queued, not counted
    RUNNING = "running"        # asked and not finished (priced, queued or training)
    WAITING = "waiting"        # queued by enqueue_trial (a retry), not asked yet

    def __str__(self) -> str:
        return self.value

    # Every rule about which statuses count for what, stated once.
    @property
    def reached_result(self) -> bool:
        """Occupied a worker to a result: trained to the study's fidelity or stopped at a rung."""
        return self in (TrialStatus.TRAINED, TrialStatus.STOPPED)

    @property
    def settles_architecture(self) -> bool:
        """Its architecture is never trained again in this study (a duplicate repeats its values)."""
        return self in (TrialStatus.TRAINED, TrialStatus.STOPPED, TrialStatus.SCREENED, TrialStatus.IMPORTED)

    @property
    def has_curve(self) -> bool:
        """Holds a learning curve at this study's fidelity (what rung tables are built from)."""
        return self in (TrialStatus.TRAINED, TrialStatus.STOPPED, TrialStatus.IMPORTED)

    @property
    def may_join_front(self) -> bool:
        """Trained to the full fidelity here or in a warm-start source: a candidate for the front."""
        return self in (TrialStatus.TRAINED, TrialStatus.IMPORTED)


_BY_VALUE = {s.value: s for s in TrialStatus}


@dataclass(frozen=True)
class TrialRecord:
    """Everything known about one proposal; every field but ``family`` may be absent (None).

    The proposal part is known before training (knobs, costs, constraints, data shape); the
    outcome part comes back from the worker. Keys this version does not know are kept in
    ``extra`` and written back unchanged."""

    family: str = ""
    # -- the proposal --
    knobs: Optional[dict] = None
    arch_key: Optional[str] = None          # dedup key: family + knobs + fidelity
    fidelity: Optional[dict] = None
    constraints: Optional[list] = None
    params: Optional[int] = None            # deploy form (what the papers report)
    macs: Optional[int] = None
    train_params: Optional[int] = None      # training (masked) form
    train_macs: Optional[int] = None
    num_classes: Optional[int] = None
    image_size: Optional[int] = None
    in_channels: Optional[int] = None
    mean: Optional[list] = None
    std: Optional[list] = None
    attempt: Optional[int] = None
    duplicate_of: Optional[int] = None
    queued_seconds: Optional[float] = None  # waited, priced, for a free worker
    proxies: Optional[dict] = None          # zero-cost proxy scores at initialisation (trainers.proxies)
    prescreen: Optional[dict] = None        # pool, score and verdict of pre-screening
    # -- the outcome --
    val_acc: Optional[float] = None
    val_loss: Optional[float] = None
    test_acc: Optional[float] = None
    epochs: Optional[int] = None
    fidelity_reached: Optional[int] = None
    train_seconds: Optional[float] = None
    worker_seconds: Optional[float] = None
    latency_ms: Optional[float] = None
    latency_setup: Optional[dict] = None    # how latency_ms was measured: runtime, version, threads, batch, device
    deploy_max_abs_diff: Optional[float] = None
    checkpoint: Optional[str] = None
    resumed_from_epoch: Optional[int] = None  # a retry that continued from its checkpoint: the epochs it held
    deploy_path: Optional[str] = None
    curve: Optional[list] = None            # validation accuracy per epoch
    node: Optional[str] = None
    pid: Optional[int] = None
    failure_kind: Optional[str] = None
    failure_reason: Optional[str] = None
    final: Optional[bool] = None
    extra: dict = field(default_factory=dict)
    # Fields stored as null (a worker that reports "no latency" says so): kept as keys, as written.
    nulls: frozenset = field(default=frozenset(), compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialRecord":
        known = {k: v for k, v in data.items() if k in _FIELDS}
        return cls(**known, extra={k: v for k, v in data.items() if k not in _FIELDS and k != "status"},
                   nulls=frozenset(k for k, v in known.items() if v is None))

    def to_dict(self) -> dict[str, Any]:
        """The stored form: set fields under their database keys, then the unknown ones."""
        out = {f: getattr(self, f) for f in _FIELDS if getattr(self, f) is not None or f in self.nulls}
        out.update(self.extra)
        return json.loads(json.dumps(out))  # plain JSON types only (tuples become lists)

    def with_outcome(self, **changes) -> "TrialRecord":
        """A copy with outcome fields set; keys outside the record's fields land in ``extra``."""
        known = {k: v for k, v in changes.items() if k in _FIELDS}
        rest = {k: v for k, v in changes.items() if k not in _FIELDS}
        nulls = (self.nulls - known.keys()) | {k for k, v in known.items() if v is None}
        return dataclasses.replace(self, **known, extra={**self.extra, **rest}, nulls=nulls)


_FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord) if f.name not in ("extra", "nulls"))


def arch_key(family: str, knobs: dict, fidelity: dict) -> str:
    """Identity of an architecture at a fidelity: trained once, whoever proposes it again."""
    blob = json.dumps({"family": family, "knobs": knobs, "fidelity": fidelity}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def trial_status(trial: FrozenTrial) -> TrialStatus:
    """The record's status, with Optuna's own state for trials the record does not cover."""
    if trial.state == TrialState.RUNNING:
        return TrialStatus.RUNNING
    if trial.state == TrialState.WAITING:
        return TrialStatus.WAITING
    if trial.state == TrialState.FAIL:
        interrupted = trial.user_attrs.get("status") == TrialStatus.INTERRUPTED.value
        return TrialStatus.INTERRUPTED if interrupted else TrialStatus.FAILED
    stored = trial.user_attrs.get("status", trial.state.name.lower())
    return _BY_VALUE.get(stored, stored)


def read_record(trial: FrozenTrial) -> TrialRecord:
    """The trial's record (an empty one with the family for trials that have none yet)."""
    data = trial.user_attrs.get("record") or {}
    family = data.get("family") or trial.user_attrs.get("family", "")
    return TrialRecord.from_dict({**data, "family": family})


def record_attrs(status: TrialStatus, record: TrialRecord) -> dict[str, Any]:
    """The user attributes that store ``record``: top-level ones are what other tools filter on
    (optuna-dashboard, SQL); everything else is the ``record`` object."""
    attrs: dict[str, Any] = {"status": TrialStatus(status).value, "family": record.family}
    if record.constraints is not None:
        attrs["constraints"] = list(record.constraints)
    if record.final is not None:
        attrs["final"] = record.final
    attrs["record"] = record.to_dict()
    return attrs


def write_record(trial, status: TrialStatus, record: TrialRecord, set_attrs=None) -> None:
    """Store ``record`` on a live trial; ``set_attrs(trial, attrs)`` writes them all at once where
    the caller has such a writer (``search.storage.set_user_attrs``), else one by one."""
    attrs = record_attrs(status, record)
    if set_attrs is not None:
        set_attrs(trial, attrs)
        return
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def write_pending(trial, record: TrialRecord) -> None:
    """The proposal part, on a trial sent to a worker (one write; the full record comes later)."""
    trial.set_user_attr("record_pending", record.to_dict())


def pending_arch_key(trial: FrozenTrial) -> str | None:
    return (trial.user_attrs.get("record_pending") or {}).get("arch_key")
