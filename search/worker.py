"""What runs on a Ray worker: one long-lived actor per concurrent trial slot, and the trial function.

Actors are reused across trials (no process start per trial), hold the dataset they were given once
through Ray's object store (workers never download), and never touch the study database: they return
a plain result dict and the driver alone writes the record. Per-epoch reports go to the ASHA actor,
which answers whether the trial goes on.
"""
from __future__ import annotations

import os
import time
import traceback
from typing import Any, Callable

__all__ = ["train_architecture", "make_worker_class", "make_asha_actor", "make_pricer"]

TrialFn = Callable[[dict, Any, Callable], dict]


def _check_latency(spec: dict, data) -> float | None:
    """Batch-1 latency of the deploy form (random weights suffice: latency ignores values)."""
    from space.convert import to_deploy
    from space.registry import get_family
    from trainers.latency import measure_latency

    family = get_family(spec["family"])
    knobs = family.knobs_from_dict(spec["knobs"])
    model = family.build(knobs, num_classes=data.num_classes, image_size=data.image_size,
                         in_channels=data.in_channels)
    device = "cuda" if spec.get("use_gpu") else "cpu"
    return measure_latency(to_deploy(model), data.image_size, data.in_channels, device=device)


def train_architecture(spec: dict, data, report: Callable[[dict], bool]) -> dict:
    """Default trial function: (latency check,) train, convert, evaluate one architecture."""
    from space.registry import get_family
    from trainers.train import TrainConfig, train

    family = get_family(spec["family"])
    knobs = family.knobs_from_dict(spec["knobs"])
    latency = None
    if spec.get("max_latency_ms") is not None or spec.get("measure_latency"):
        latency = _check_latency(spec, data)
        if spec.get("max_latency_ms") is not None and latency > spec["max_latency_ms"]:
            return {"status": "infeasible", "latency_ms": latency}

    def on_epoch(r) -> bool:
        return report({"epoch": r.epoch, "val_acc": r.val_acc, "val_loss": r.val_loss,
                       "train_loss": r.train_loss, "elapsed_s": r.elapsed_s})

    cfg = TrainConfig(**spec["train"])
    result = train(spec["family"], knobs, data, cfg, report=on_epoch, checkpoint_dir=spec["checkpoint_dir"])
    return {
        "status": "stopped" if result.stopped_early else "trained",
        "val_acc": result.val_acc, "val_loss": result.val_loss, "test_acc": result.test_acc,
        "epochs": result.epochs, "train_seconds": result.train_seconds,
        "latency_ms": latency if latency is not None else result.latency_ms,
        "deploy_max_abs_diff": result.deploy_max_abs_diff, "checkpoint": result.checkpoint_path,
        "deploy_path": result.deploy_path,
    }


def _failure(exc: BaseException) -> dict:
    from trainers.train import NonFiniteLossError

    kind = "exception"
    if isinstance(exc, NonFiniteLossError):
        kind = "nonfinite"
    elif isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        kind = "oom"
    tail = traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]
    return {"status": "failed", "failure_kind": kind,
            "reason": f"{type(exc).__name__}: {exc}".strip()[:500], "traceback": "".join(tail)[-2000:]}


class _Worker:
    """Body of the trial actor (wrapped by ``ray.remote`` in :func:`make_worker_class`)."""

    def __init__(self, data, threads: int, trial_fn: TrialFn | None, asha=None):
        import torch

        self.data, self.asha = data, asha
        self.trial_fn = trial_fn or train_architecture
        torch.set_num_threads(max(1, int(threads)))

    def ping(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, spec: dict) -> dict:
        import ray

        started = time.perf_counter()
        curve: list[float] = []

        def report(metrics: dict) -> bool:
            curve.append(float(metrics["val_acc"]))
            if self.asha is None:
                return True
            return ray.get(self.asha.should_continue.remote(metrics["epoch"], metrics["val_acc"]))

        try:
            out = self.trial_fn(spec, self.data, report)
        except Exception as exc:  # the driver records the reason; the actor stays usable
            out = _failure(exc)
        out["curve"] = curve
        out["worker_seconds"] = time.perf_counter() - started
        out["node"] = ray.get_runtime_context().get_node_id()
        out["pid"] = os.getpid()
        return out


def make_worker_class(cpus: float, gpus: float):
    import ray

    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(_Worker)


def make_asha_actor(asha):
    """The ASHA rule as a tiny actor, so workers ask it directly between epochs."""
    import ray

    @ray.remote(num_cpus=0)
    class AshaActor:
        def __init__(self, rule):
            self.rule = rule

        def should_continue(self, epoch: int, accuracy: float) -> bool:
            return self.rule.should_continue(epoch, accuracy)

    return AshaActor.remote(asha)


class _Pricer:
    """Runs the cost model next to the driver (not on a trial slot: it asks for no CPU)."""

    def __init__(self):
        import torch

        torch.set_num_threads(1)

    def price(self, cfg, family: str, knobs: dict, data_meta: dict):
        from search.runner import price
        from space.registry import get_family

        return price(cfg, family, get_family(family).knobs_from_dict(knobs), data_meta)


def make_pricer():
    """The pricer actor, placed on the driver's node (costs are tiny messages, specs stay local)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(num_cpus=0)(_Pricer)
    try:
        here = ray.get_runtime_context().get_node_id()
        return actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
    except Exception:  # a client-mode driver has no node of its own
        return actor.remote()
