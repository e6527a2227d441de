"""What runs on a worker, whatever the backend: the default trial function and the wrapper that
turns any trial function's outcome (or exception) into the :class:`TrialOutcome` the driver applies.

Trial-function contract: ``fn(spec: dict, data, report) -> TrialOutcome | dict`` (the dict keys of
:meth:`TrialOutcome.from_result`); ``report(metrics)`` is called after each epoch with at least
``epoch`` and ``val_acc`` and returns False when the rung rule stops the trial. Stand-ins for tests
and benchmarks live in ``search.testing``.
"""
from __future__ import annotations

import time
import traceback
from typing import Any, Callable

from search.feasibility import latency_within
from search.record import TrialStatus
from search.sweep.outcome import Artifacts, TrialOutcome

__all__ = ["TrialFn", "train_architecture", "run_trial"]

TrialFn = Callable[[dict, Any, Callable], "TrialOutcome | dict"]


def _measure_latency(spec: dict, data) -> tuple[float, dict]:
    """Latency of the deploy form as the study's ``latency:`` says, and that setup as recorded.

    Random weights suffice (latency ignores values); ``to_deploy`` gives the final condensed
    structure whatever stage the masks are at, so the network is timed as a finished run deploys it.
    """
    from space.convert import to_deploy
    from space.registry import get_family
    from trainers.latency import LatencySetup, measure_deploy_latency

    setup = LatencySetup(**(spec.get("latency") or {"device": "cuda" if spec.get("use_gpu") else "cpu"}))
    family = get_family(spec["family"])
    model = family.build(family.knobs_from_dict(spec["knobs"]), num_classes=data.num_classes,
                         image_size=data.image_size, in_channels=data.in_channels)
    return measure_deploy_latency(to_deploy(model), data.image_size, data.in_channels, setup), setup.as_record()


def train_architecture(spec: dict, data, report: Callable[[dict], bool]) -> TrialOutcome:
    """Default trial function: (latency check,) train, convert, evaluate one architecture; its
    checkpoints and deploy weights are kept where the spec's folder lives (``search.artifacts``)."""
    from search.artifacts import trial_artifacts
    from space.registry import get_family
    from trainers.checkpoint import CHECKPOINT_NAME, DEPLOY_NAME
    from trainers.train import TrainConfig, train

    knobs = get_family(spec["family"]).knobs_from_dict(spec["knobs"])
    latency, setup = None, None
    if spec.get("max_latency_ms") is not None or spec.get("measure_latency"):
        latency, setup = _measure_latency(spec, data)
        if not latency_within(latency, spec.get("max_latency_ms")):
            return TrialOutcome(TrialStatus.INFEASIBLE, metrics={"latency_ms": latency, "latency_setup": setup})

    artifacts = trial_artifacts(spec["checkpoint_dir"])
    kept = {}
    try:
        artifacts.fetch(CHECKPOINT_NAME)  # a retry on any node resumes from the last epoch kept

        def on_epoch(r) -> bool:
            kept["checkpoint"] = artifacts.store(CHECKPOINT_NAME)  # kept before the epoch counts, so a resume finds it
            return report({"epoch": r.epoch, "val_acc": r.val_acc, "val_loss": r.val_loss,
                           "train_loss": r.train_loss, "elapsed_s": r.elapsed_s})

        result = train(spec["family"], knobs, data, TrainConfig(**spec["train"]), report=on_epoch,
                       checkpoint_dir=artifacts.local_dir)
        deploy_path = artifacts.store(DEPLOY_NAME) if result.deploy_path else None
        if "checkpoint" not in kept and result.checkpoint_path:  # resumed with no epoch left to train
            kept["checkpoint"] = artifacts.store(CHECKPOINT_NAME)
    finally:
        artifacts.close()
    metrics = {"val_acc": result.val_acc, "val_loss": result.val_loss, "test_acc": result.test_acc,
               "epochs": result.epochs, "train_seconds": result.train_seconds,
               "latency_ms": latency if latency is not None else result.latency_ms, "latency_setup": setup,
               "deploy_max_abs_diff": result.deploy_max_abs_diff, "resumed_from_epoch": result.resumed_from_epoch,
               "choices": result.choices, "seed": result.seed, "epoch_seconds": _epoch_seconds(result.history)}
    # The whole curve, epochs before a resumed checkpoint included (the report saw only the later ones).
    curve = tuple(float(h["val_acc"]) for h in result.history)
    return TrialOutcome(TrialStatus.STOPPED if result.stopped_early else TrialStatus.TRAINED, metrics=metrics,
                        curve=curve, artifacts=Artifacts(kept.get("checkpoint"), deploy_path, artifacts.via))


def _epoch_seconds(history: list[dict]) -> list[float]:
    """Seconds each epoch took (a recorded table's per-epoch times; ``elapsed_s`` counts across resumes)."""
    elapsed = [float(h.get("elapsed_s") or 0.0) for h in history]
    return [round(b - a, 3) for a, b in zip([0.0] + elapsed[:-1], elapsed)]


def _failure(exc: BaseException) -> TrialOutcome:
    from trainers.train import NonFiniteLossError

    kind = "exception"
    if isinstance(exc, NonFiniteLossError):
        kind = "nonfinite"
    elif isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        kind = "oom"
    tail = traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]
    return TrialOutcome.failed(kind, f"{type(exc).__name__}: {exc}".strip()[:500], "".join(tail)[-2000:])


def run_trial(trial_fn: TrialFn | None, spec: dict, data, goes_on: Callable[[dict], bool]) -> TrialOutcome:
    """Run one trial; its busy time, and its per-epoch accuracies (``curve``) unless the trial
    function gave its whole curve itself, are added to the outcome; an exception becomes a
    ``failed`` outcome (the worker stays usable)."""
    started = time.perf_counter()
    curve: list[float] = []

    def report(metrics: dict) -> bool:
        curve.append(float(metrics["val_acc"]))
        return goes_on(metrics)

    try:
        out = TrialOutcome.from_result((trial_fn or train_architecture)(spec, data, report))
    except Exception as exc:  # the driver records the reason
        out = _failure(exc)
    return out.with_(curve=out.curve if len(out.curve) >= len(curve) else tuple(curve),
                     busy_seconds=time.perf_counter() - started)
