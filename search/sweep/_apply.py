"""Applying what became of a proposal, in one place: the record written, the study told, the
tracker and the progress view informed, the policy updated, and a failed trial's retry queued.

Proposals settled without a worker (infeasible, duplicate, screened, surplus) and trials that came
back from one (a :class:`~search.sweep.outcome.TrialOutcome`) go through :class:`Outcomes`.
"""
from __future__ import annotations

from optuna.trial import TrialState

from search import faults
from search.feasibility import latency_constraint
from search.lineage import requeue
from search.record import TrialRecord, TrialStatus, write_record
from search.storage import set_constraints
from search.storage._optuna_compat import set_user_attrs
from search.sweep._policy import Decision
from search.sweep._state import SweepState
from search.sweep.outcome import TrialOutcome

__all__ = ["Outcomes", "proposal_record"]


def proposal_record(state: SweepState, p, cost: dict, constraints: dict, proxies: dict) -> TrialRecord:
    """The proposal part of a trial's record: what is known before training."""
    return TrialRecord(family=p.family, knobs=p.knobs_dict, arch_key=p.key, fidelity=state.fidelity,
                       constraints=list(constraints.values()) or [0.0], **state.data_meta,
                       **{k: cost[k] for k in ("params", "macs", "train_params", "train_macs")},
                       proxies=proxies or None)


class Outcomes:
    """Records outcomes in the study and tells everyone who follows the sweep."""

    def __init__(self, state: SweepState):
        self.s = state

    def objective_values(self, acc: float, cost: dict, latency: float | None) -> list[float]:
        table = {"accuracy": acc, "macs": cost["macs"], "params": cost["params"],
                 "latency": latency if latency is not None else float("inf")}
        return [float(table[o]) for o in self.s.cfg.objectives]

    # -- settled without a worker -------------------------------------------------------------------
    def without_training(self, trial, status: TrialStatus, values, rec: TrialRecord) -> None:
        write_record(trial, status, rec, set_user_attrs)
        if values is None:
            self.s.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.s.study.tell(trial, values)

    def infeasible(self, p, rec: TrialRecord, cost: dict, constraints: dict) -> None:
        if self.s.cfg.constraints.max_latency_ms is not None:
            constraints = {**constraints, "max_latency_ms": 0.0}  # never measured: no verdict
        set_constraints(p.trial, constraints)
        self.without_training(p.trial, TrialStatus.INFEASIBLE, self.objective_values(0.0, cost, None), rec)
        self.s.summary.infeasible += 1
        self.s.progress.line(f"trial {p.number} {p.family} infeasible (macs {cost['macs']:,}, params {cost['params']:,})")

    def duplicate(self, p, rec: TrialRecord, decision: Decision) -> None:
        rec = rec.with_outcome(duplicate_of=decision.duplicate_of)
        self.without_training(p.trial, TrialStatus.DUPLICATE, decision.duplicate_values, rec)
        self.s.summary.duplicate += 1

    def released(self, p, rec: TrialRecord, status: TrialStatus) -> None:
        """Screened out by pre-screening, or surplus (priced after the budget filled up)."""
        self.without_training(p.trial, status, None, rec)
        self.s.policy.finished(p.key, p.number, status)
        if status == TrialStatus.SCREENED:
            self.s.summary.screened += 1

    # -- back from a worker -------------------------------------------------------------------------
    def finished(self, number: int, out: TrialOutcome) -> None:
        """Apply the outcome of trial ``number``, which this driver sent to the backend."""
        s = self.s
        p, rec = s.inflight.pop(number)
        s.progress.running = len(s.inflight)
        will_retry = out.status == TrialStatus.FAILED and s.policy.will_retry(rec.attempt or 0, out.failure_kind)
        s.progress.trial_finished(number, s.policy.counts(out.status, will_retry))
        rec = rec.with_outcome(**out.record_fields())
        rec = self._with_latency_verdict(p, rec, out)
        s.tracker.finished(number, out.status.value, rec.to_dict())
        if out.status.reached_result:
            self._trained(p, rec, out)
        elif out.status == TrialStatus.INFEASIBLE:
            write_record(p.trial, out.status, rec, set_user_attrs)
            s.study.tell(p.trial, self.objective_values(0.0, _costs(rec), out.latency_ms))
            s.policy.finished(p.key, number, out.status)
            s.summary.infeasible += 1
            s.progress.line(f"trial {number} {p.family} infeasible (latency {out.latency_ms:.2f} ms)")
        else:
            self._failed(p, rec, will_retry)

    def _with_latency_verdict(self, p, rec: TrialRecord, out: TrialOutcome) -> TrialRecord:
        limit = self.s.cfg.constraints.max_latency_ms
        if limit is None or out.latency_ms is None:
            return rec
        cost_constraints = self.s.costs[p.key][1]
        latency_c = latency_constraint(out.latency_ms, limit)
        set_constraints(p.trial, {**cost_constraints, "max_latency_ms": latency_c})
        return rec.with_outcome(constraints=[*cost_constraints.values(), latency_c])

    def _trained(self, p, rec: TrialRecord, out: TrialOutcome) -> None:
        s = self.s
        write_record(p.trial, out.status, rec, set_user_attrs)
        faults.checkpoint("recorded")
        values = None
        if out.status == TrialStatus.TRAINED:
            values = self.objective_values(out.val_acc, _costs(rec), out.latency_ms)
            s.study.tell(p.trial, values)
            if s.plateau is not None:
                s.plateau.note(values)
            s.summary.trained += 1
            s.summary.stamp_result()
            s.progress.note_trained(rec.val_acc, p.number, values)
        else:
            s.study.tell(p.trial, state=TrialState.PRUNED)
            s.summary.stopped += 1
        faults.checkpoint("told")
        s.policy.finished(p.key, p.number, out.status, values)
        seconds = out.metrics.get("train_seconds") or 0
        s.progress.line(f"trial {p.number} {p.family} {out.status} acc {out.val_acc:.4f} "
                        f"({out.epochs} ep, {seconds:.1f}s) macs {rec.macs:,} params {rec.params:,}")

    def _failed(self, p, rec: TrialRecord, will_retry: bool) -> None:
        """Record the failure; its retry is queued before the failure is told, so a driver killed in
        between leaves a RUNNING trial whose recovery finds the retry already queued."""
        s = self.s
        attempt = rec.attempt or 0
        rec = rec.with_outcome(final=not will_retry)
        write_record(p.trial, TrialStatus.FAILED, rec, set_user_attrs)
        if will_retry:
            requeue(s.study, p.trial, attempt + 1, diverged=rec.failure_kind == "nonfinite")
            faults.checkpoint("retry_queued")
        s.study.tell(p.trial, state=TrialState.FAIL)
        s.summary.failed += 1
        s.policy.finished(p.key, p.number, TrialStatus.FAILED, will_retry=will_retry)
        s.progress.line(f"trial {p.number} {p.family} failed: {rec.failure_reason}"
                        + (f" (retry {attempt + 1}/{s.cfg.retry.max_retries} queued)" if will_retry else ""))


def _costs(rec: TrialRecord) -> dict:
    return {"macs": rec.macs, "params": rec.params}
