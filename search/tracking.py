"""Experiment tracking: every trial the sweep trains, as a run of an MLflow experiment.

``tracking: {mlflow: {uri: http://host:5000, experiment: NAME}}`` in the study file. The driver
logs, whatever the execution backend, since every trial's proposal, epoch reports and result pass
through it: one MLflow run per attempt (tags: study, trial number, family, attempt), the knobs and
the training recipe as params, the exact costs (MACs, params of both forms) as metrics at step 0,
the per-epoch metrics (``val_acc``, ``val_loss``, ``train_loss``) at their epoch, the final
numbers, the whole trial record as ``record.json``, and the run's end state (FINISHED for a trained
or stopped trial, FAILED, KILLED when the sweep was interrupted). The Optuna study stays the record;
MLflow is a view of it for the tools people already use.

A tracking server that does not answer is an error before anything trains; one that fails later
costs a warning, never the sweep.
"""
from __future__ import annotations

import importlib.util
import json
from typing import Any, Callable

from search.exceptions import EffnasError

__all__ = ["TrackingError", "Tracker", "NoTracking", "MlflowTracker", "make_tracker"]

_EPOCH_METRICS = ("val_acc", "val_loss", "train_loss")
_FINAL_METRICS = ("val_acc", "val_loss", "test_acc", "epochs", "train_seconds", "worker_seconds", "latency_ms")
_COST_METRICS = ("macs", "params", "train_macs", "train_params")


class TrackingError(EffnasError):
    """The experiment tracker asked for cannot be used (package missing, server not answering)."""


class Tracker:
    """What the driver tells a tracker; the base class tracks nothing."""

    def started(self, number: int, family: str, knobs: dict, train: dict, record: dict) -> None:
        pass

    def epoch(self, number: int, metrics: dict) -> None:
        pass

    def finished(self, number: int, status: str, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


NoTracking = Tracker


def _flat(prefix: str, values: dict) -> dict[str, str]:
    """``{"growth": [8, 16]}`` -> ``{"knobs.growth": "[8, 16]"}`` (MLflow params are strings)."""
    return {f"{prefix}.{k}": (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:500] for k, v in values.items()}


class MlflowTracker(Tracker):
    """One MLflow run per trial attempt, through ``MlflowClient`` (no global active run, so several
    trials are tracked at once from one driver).

    Raises:
        TrackingError: mlflow is not installed, or the server does not answer.
    """

    def __init__(self, uri: str, experiment: str, study: str, log: Callable[[str], None] = print) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise TrackingError("tracking.mlflow needs the mlflow package, which is not installed; install it with: "
                                "pip install 'effnas[mlflow]'")
        from mlflow.tracking import MlflowClient

        self.client, self.study, self.log = MlflowClient(tracking_uri=uri), study, log
        self.runs: dict[int, str] = {}
        self.logged_epochs: dict[int, int] = {}
        self.broken: str | None = None
        self.experiment = experiment
        try:  # reads only (`validate` builds the tracker too); the experiment is created with the first run
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else None
        except Exception as e:  # a wrong URI or a server that is down: say so before anything trains
            raise TrackingError(f"tracking.mlflow.uri {uri!r}: cannot reach the MLflow tracking server "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); start it or fix the URI") from None

    def _safely(self, what: str, call: Callable[[], Any]) -> None:
        if self.broken:
            return
        try:
            call()
        except Exception as e:  # tracking is a view: it must never stop the sweep
            self.broken = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
            self.log(f"warning: MLflow tracking stopped at {what} ({self.broken}); the sweep goes on")

    def started(self, number: int, family: str, knobs: dict, train: dict, record: dict) -> None:
        def start() -> None:
            tags = {"effnas.study": self.study, "effnas.trial": str(number), "effnas.family": family,
                    "effnas.attempt": str(record.get("attempt") or 0)}
            if self.experiment_id is None:
                self.experiment_id = self.client.create_experiment(self.experiment)
            run = self.client.create_run(self.experiment_id, run_name=f"{self.study} trial {number}", tags=tags)
            run_id = run.info.run_id
            params = {"family": family, **_flat("knobs", knobs), **_flat("train", train)}
            from mlflow.entities import Metric, Param

            costs = [Metric(k, float(record[k]), 0, 0) for k in _COST_METRICS if record.get(k) is not None]
            self.client.log_batch(run_id, metrics=costs, params=[Param(k, v) for k, v in params.items()])
            self.runs[number], self.logged_epochs[number] = run_id, 0

        self._safely(f"the start of trial {number}", start)

    def epoch(self, number: int, metrics: dict) -> None:
        run_id, step = self.runs.get(number), int(metrics.get("epoch", 0))
        if run_id is None or step <= self.logged_epochs.get(number, 0):
            return

        def log() -> None:
            from mlflow.entities import Metric

            batch = [Metric(k, float(metrics[k]), 0, step) for k in _EPOCH_METRICS if metrics.get(k) is not None]
            self.client.log_batch(run_id, metrics=batch)
            self.logged_epochs[number] = step

        self._safely(f"epoch {step} of trial {number}", log)

    def finished(self, number: int, status: str, record: dict) -> None:
        if number not in self.runs:
            return
        # Epochs the live reports did not bring (they are best-effort) come from the result's curve.
        for step, acc in enumerate(record.get("curve") or [], start=1):
            self.epoch(number, {"epoch": step, "val_acc": acc})
        run_id = self.runs.pop(number)

        def finish() -> None:
            from mlflow.entities import Metric

            final = [Metric(f"final_{k}", float(record[k]), 0, 0) for k in _FINAL_METRICS
                     if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)]
            self.client.log_batch(run_id, metrics=final)
            self.client.set_tag(run_id, "effnas.status", status)
            self.client.log_dict(run_id, record, "record.json")
            self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

        self._safely(f"the end of trial {number}", finish)
        self.logged_epochs.pop(number, None)

    def close(self) -> None:
        for number, run_id in list(self.runs.items()):  # trials still running when the sweep stopped
            self._safely(f"closing trial {number}", lambda r=run_id: self.client.set_terminated(r, "KILLED"))
        self.runs.clear()


def make_tracker(cfg, log: Callable[[str], None] = print) -> Tracker:
    """The tracker ``cfg.tracking`` asks for (none by default)."""
    section = cfg.tracking.mlflow if cfg.tracking is not None else None
    if section is None:
        return NoTracking()
    return MlflowTracker(section.uri, section.experiment or cfg.study, cfg.study, log)
