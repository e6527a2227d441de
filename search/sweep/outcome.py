"""What a trial sends back: one typed, frozen outcome, whichever backend ran it.

The trial function (``search.sweep.trial``) and every backend's failure path build a
:class:`TrialOutcome`; the driver applies it (``search.sweep._apply``). Plain dicts exist only at the
edges: a trial function may return the dict of the trial-function contract (``status``, ``val_acc``,
...), and Ray Tune carries results as JSON; :meth:`TrialOutcome.from_result` reads both.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from search.record import TrialStatus

__all__ = ["TrialOutcome", "Artifacts"]



@dataclass(frozen=True)
class Artifacts:
    """Where the trial's files went (``search.artifacts``)."""

    checkpoint: Optional[str] = None
    deploy_path: Optional[str] = None
    via: Optional[str] = None          # direct / driver store / pyarrow.fs


@dataclass(frozen=True)
class TrialOutcome:
    """One trial's outcome.

    ``metrics`` holds the numbers of a trained (or stopped) network under their record keys
    (``val_acc``, ``val_loss``, ``test_acc``, ``epochs``, ``train_seconds``, ``latency_ms``,
    ``latency_setup``, ``deploy_max_abs_diff``, ``resumed_from_epoch``, ...); ``curve`` the
    validation accuracy after every epoch; ``busy_seconds`` the worker's time on it; ``extra`` what a
    custom trial function returned beyond the contract (kept in the record's extras)."""

    status: TrialStatus
    curve: tuple = ()
    metrics: dict = field(default_factory=dict)
    busy_seconds: Optional[float] = None
    failure_kind: Optional[str] = None
    failure_reason: Optional[str] = None
    traceback: Optional[str] = None
    artifacts: Artifacts = Artifacts()
    node: Optional[str] = None
    pid: Optional[int] = None
    extra: dict = field(default_factory=dict)

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def failed(cls, kind: str, reason: str, traceback: str | None = None, **changes) -> "TrialOutcome":
        return cls(status=TrialStatus.FAILED, failure_kind=kind, failure_reason=reason, traceback=traceback,
                   **changes)

    @classmethod
    def worker_died(cls, error: BaseException | str) -> "TrialOutcome":
        """The worker process died under the trial (killed, segfault, OOM killer)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return cls.failed("worker_died", f"worker died: {text[:300]}")

    @classmethod
    def from_result(cls, result: dict) -> "TrialOutcome":
        """The trial-function contract's dict (or an outcome's :meth:`to_result`) as an outcome."""
        if isinstance(result, TrialOutcome):
            return result
        rest = dict(result)
        status = TrialStatus(rest.pop("status", "failed"))
        art = Artifacts(rest.pop("checkpoint", None), rest.pop("deploy_path", None), rest.pop("artifacts_via", None))
        outcome = dict(curve=tuple(float(a) for a in rest.pop("curve", ()) or ()),
                       busy_seconds=rest.pop("worker_seconds", None), failure_kind=rest.pop("failure_kind", None),
                       failure_reason=rest.pop("reason", None) or None,
                       traceback=rest.pop("traceback", None), artifacts=art, node=rest.pop("node", None),
                       pid=rest.pop("pid", None))
        failure_reason = rest.pop("failure_reason", None)  # the older spelling of "reason"
        if outcome["failure_reason"] is None:
            outcome["failure_reason"] = failure_reason
        metrics = {k: rest.pop(k) for k in _METRICS if k in rest}
        return cls(status=status, metrics=metrics, extra=rest, **outcome)

    def to_result(self) -> dict[str, Any]:
        """The contract's dict (for Ray Tune's JSON results); :meth:`from_result` reads it back."""
        out = {"status": self.status.value, **self.metrics, **self.extra, "curve": list(self.curve),
               "worker_seconds": self.busy_seconds, "node": self.node, "pid": self.pid,
               "checkpoint": self.artifacts.checkpoint, "deploy_path": self.artifacts.deploy_path,
               "artifacts_via": self.artifacts.via}
        if self.status == TrialStatus.FAILED:
            out.update(failure_kind=self.failure_kind, reason=self.failure_reason, traceback=self.traceback)
        return out

    def with_(self, **changes) -> "TrialOutcome":
        return dataclasses.replace(self, **changes)

    # -- reading --------------------------------------------------------------------------------
    @property
    def val_acc(self) -> Optional[float]:
        return self.metrics.get("val_acc")

    @property
    def latency_ms(self) -> Optional[float]:
        return self.metrics.get("latency_ms")

    @property
    def epochs(self) -> Optional[int]:
        return self.metrics.get("epochs")

    def record_fields(self) -> dict[str, Any]:
        """The outcome part of the trial record, under its stored keys (``search.record``)."""
        fields = {**self.metrics, **self.extra, "curve": list(self.curve), "worker_seconds": self.busy_seconds}
        if self.status in (TrialStatus.TRAINED, TrialStatus.STOPPED):
            fields.update(checkpoint=self.artifacts.checkpoint, deploy_path=self.artifacts.deploy_path)
            if self.artifacts.via is not None:
                fields["artifacts_via"] = self.artifacts.via
            fields["fidelity_reached"] = self.epochs
        if self.node is not None:
            fields["node"] = self.node
        if self.pid is not None:
            fields["pid"] = self.pid
        if self.status == TrialStatus.FAILED:
            fields.update(failure_kind=self.failure_kind, failure_reason=self.failure_reason or "unknown failure")
        return fields


# The contract's numeric and setup keys of a trained network (everything else a trial function
# returns is ``extra``).
_METRICS = ("val_acc", "val_loss", "test_acc", "epochs", "train_seconds", "latency_ms", "latency_setup",
            "deploy_max_abs_diff", "resumed_from_epoch", "epoch_seconds", "choices", "seed")
