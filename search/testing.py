"""Stand-in trial functions for tests and benchmarks of the orchestrator (no training).

They follow the worker's trial-function contract, ``fn(spec, data, report) -> result dict``, and live
in the package (not in tests/) so Ray workers can import them by name.
"""
from __future__ import annotations

import hashlib
import json
import os

__all__ = ["cheap_trial", "curve_trial", "failing_trial", "nonfinite_trial", "dying_trial", "sleeping_trial"]


def _pseudo_accuracy(spec: dict) -> float:
    digest = hashlib.sha1(json.dumps(spec["knobs"], sort_keys=True).encode()).hexdigest()
    return int(digest[:6], 16) / 0xFFFFFF


def _result(acc: float, epochs: int) -> dict:
    return {"status": "trained", "val_acc": acc, "val_loss": 1 - acc, "test_acc": acc, "epochs": epochs,
            "train_seconds": 0.0, "latency_ms": None, "deploy_max_abs_diff": 0.0, "checkpoint": None}


def cheap_trial(spec: dict, data, report) -> dict:
    """Returns at once with a deterministic pseudo-accuracy of the architecture."""
    acc = _pseudo_accuracy(spec)
    report({"epoch": 1, "val_acc": acc, "val_loss": 1 - acc})
    return _result(acc, 1)


def curve_trial(spec: dict, data, report) -> dict:
    """Reports a rising curve per epoch and stops when the scheduler says so (ASHA tests)."""
    top = _pseudo_accuracy(spec)
    epochs = spec["train"]["epochs"]
    for epoch in range(1, epochs + 1):
        acc = top * epoch / epochs
        if not report({"epoch": epoch, "val_acc": acc, "val_loss": 1 - acc}) and epoch < epochs:
            return {**_result(acc, epoch), "status": "stopped"}
    return _result(top, epochs)


def failing_trial(spec: dict, data, report) -> dict:
    raise RuntimeError(f"simulated failure in trial {spec['number']}")


def nonfinite_trial(spec: dict, data, report) -> dict:
    from trainers.train import NonFiniteLossError

    raise NonFiniteLossError(epoch=1, step=3)


def dying_trial(spec: dict, data, report) -> dict:
    """The worker process dies (as under the OOM killer or SIGKILL)."""
    os._exit(1)


def sleeping_trial(spec: dict, data, report) -> dict:
    """Trains "for ever" (a minute): for tests that stop a running trial."""
    import time

    time.sleep(60)
    return cheap_trial(spec, data, report)
