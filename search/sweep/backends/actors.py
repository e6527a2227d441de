"""The Ray actors backend: one long-lived actor per concurrent trial slot, a pricer, a rung actor.

Actors are reused across trials (no process start per trial), hold the dataset they were given once
through Ray's object store (workers never download), and never touch the study database: they return
a :class:`~search.sweep.outcome.TrialOutcome` and the driver alone writes the record. Per-epoch
reports go to the rung actor (on the driver's node, so it lives as long as the driver's node does),
which answers whether the trial goes on, and to an epoch log the driver drains for its progress
view. Pricing (the cost model, tens of ms for a deep dense network) runs on a pricer actor on the
driver's node, so it overlaps with the driver's database work; if the pricer dies, pricing
continues inline.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from search.artifacts import start_driver_store
from search.sweep.backends import EpochReport, Event, Finished, TrialSpec
from search.sweep.backends._ray import (Pricing, live_slots, no_room_error, on_driver_node, prepare_worker, start_ray,
                                        trial_slots, worker_start_error)
from search.sweep.outcome import TrialOutcome
from search.sweep.trial import TrialFn, run_trial

__all__ = ["ActorsBackend"]


class _Worker:
    """Body of the trial actor (wrapped by ``ray.remote`` in :meth:`ActorsBackend.start`)."""

    def __init__(self, data, threads: int, trial_fn: TrialFn | None, rung=None, epochs=None, store=None,
                 family_modules: tuple = ()):
        from search.artifacts import bind_driver_store

        prepare_worker(threads, family_modules)
        bind_driver_store(store)  # trials on another node keep their files in the driver's run directory
        self.data, self.rung, self.trial_fn, self.epochs = data, rung, trial_fn, epochs

    def ping(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, spec: dict) -> TrialOutcome:
        import ray

        costs = tuple(spec.get("rung_costs", ()))

        def goes_on(metrics: dict) -> bool:
            if self.epochs is not None:  # per-epoch progress for the driver (fire and forget)
                self.epochs.put.remote((spec["number"], {k: metrics[k] for k in ("epoch", "val_acc") if k in metrics}))
            if self.rung is None or not spec.get("early_stopping", True):
                return True
            return ray.get(self.rung.should_continue.remote(metrics["epoch"], metrics["val_acc"], costs))

        out = run_trial(self.trial_fn, spec, self.data, goes_on)
        return out.with_(node=ray.get_runtime_context().get_node_id(), pid=os.getpid())


class _EpochLog:
    """Per-epoch reports of every worker, drained by the driver for its progress view."""

    def __init__(self):
        self.items: list = []

    def put(self, item) -> None:
        self.items.append(item)

    def drain(self) -> list:
        items, self.items = self.items, []
        return items


class _RungActor:
    """The rung rule as a tiny actor, so workers ask it directly between epochs."""

    def __init__(self, rule):
        self.rule = rule

    def should_continue(self, epoch: int, accuracy: float, costs: tuple = ()) -> bool:
        return self.rule.should_continue(epoch, accuracy, costs)


class ActorsBackend:
    """Trials on Ray actors (see the module docstring).

    Args:
        cpus_per_trial, gpus_per_trial, max_concurrent: the study file's ``resources``.
        price_fn: ``(family, knobs_dict) -> (cost, constraints, proxies)``, picklable (runs on the pricer).
        trial_fn: replaces the training function on the workers (benchmarks use a trivial one).
        where: the study file, for messages.
        ray_address: the study file's ``ray.address``: None starts a private local instance.
        num_cpus, num_gpus: resources of that local instance (None: what the machine has).
        artifacts_root: the driver's folder of trial artifacts, kept by a store actor on the driver's
            node (``search.artifacts``); None when the study names an ``artifacts:`` location.
        family_modules: the study's ``family_modules:`` (absolute paths or module names), loaded on every worker.
    """

    def __init__(self, cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None,
                 price_fn: Callable[[str, dict], tuple[dict, dict]], trial_fn: TrialFn | None = None,
                 where: str = "study", ray_address: str | None = None, num_cpus: int | None = None,
                 num_gpus: int | None = None, connect_timeout_s: float = 15.0, artifacts_root: str | None = None,
                 family_modules: tuple = ()):
        self.artifacts_root, self.family_modules = artifacts_root, family_modules
        self.ray_address, self.num_cpus, self.num_gpus = ray_address, num_cpus, num_gpus
        self.connect_timeout_s = connect_timeout_s
        self.cpus, self.gpus, self.max_concurrent = cpus_per_trial, gpus_per_trial, max_concurrent
        self.trial_fn, self.where = trial_fn, where
        self.pricing = Pricing(price_fn, family_modules)
        self.idle: list = []
        self.busy: dict[Any, tuple[int, Any]] = {}      # future -> (token, worker)
        self.priced: dict[Any, tuple[int, str, dict]] = {}  # future -> (token, family, knobs)
        self.inline: list[Event] = []                    # events produced without Ray (inline pricing)
        self.epoch_log = None
        self.nodes: set = set()
        self._new_worker: Callable[[], Any] | None = None
        self.started_at = time.monotonic()

    # -- set-up ---------------------------------------------------------------------------------
    def start(self, data, rung_rule) -> int:
        ray = start_ray(self.ray_address, self.num_cpus, self.num_gpus, self.connect_timeout_s, self.where)
        slots = trial_slots(ray, self.cpus, self.gpus, self.max_concurrent, self.where)
        worker_cls = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0)(_Worker)
        rung = None
        if rung_rule is not None:
            rung = on_driver_node(ray.remote(num_cpus=0)(_RungActor), soft=False).remote(rung_rule)
        data_ref, threads = ray.put(data), max(1, int(self.cpus))
        self.epoch_log = on_driver_node(ray.remote(num_cpus=0)(_EpochLog)).remote()
        store = start_driver_store(self.artifacts_root) if self.artifacts_root else None
        self._new_worker = lambda: worker_cls.remote(data_ref, threads, self.trial_fn, rung, self.epoch_log, store,
                                                     self.family_modules)
        self.pricing.start(ray)
        self.idle = [self._new_worker() for _ in range(slots)]
        try:
            ray.get([w.ping.remote() for w in self.idle])
        except Exception as e:  # an actor that cannot start would fail every trial the same way
            raise worker_start_error(str(e).strip().splitlines()[-1]) from e
        self.started_at = time.monotonic()
        return slots

    # -- the verbs ------------------------------------------------------------------------------
    def free_slots(self) -> int:
        return len(self.idle)

    def price(self, token: int, family: str, knobs: dict) -> None:
        future = self.pricing.remote(family, knobs)
        if future is None:
            self.inline.append(self.pricing.inline(token, family, knobs))
        else:
            self.priced[future] = (token, family, knobs)

    def submit(self, token: int, spec: TrialSpec) -> None:
        worker = self.idle.pop()
        self.busy[worker.run.remote(spec.to_dict())] = (token, worker)

    def next_events(self, timeout: float | None = None) -> list[Event]:
        if self.inline:
            events, self.inline = self.inline, []
            return events
        import ray

        self._check_workers_left()
        ready, _ = ray.wait([*self.priced, *self.busy], num_returns=1, timeout=timeout)
        epochs = self._epoch_reports() if self.epoch_log is not None and self.busy else []
        return epochs + [self._priced(f) if f in self.priced else self._finished(f) for f in ready]

    def _epoch_reports(self) -> list[EpochReport]:
        import ray

        try:
            return [EpochReport(token, metrics) for token, metrics in ray.get(self.epoch_log.drain.remote(), timeout=5)]
        except Exception:  # progress is never worth failing the sweep over
            return []

    def _priced(self, future):
        import ray

        token, family, knobs = self.priced.pop(future)
        return self.pricing.settle(token, family, knobs, lambda: ray.get(future))

    def _finished(self, future) -> Finished:
        import ray

        token, worker = self.busy.pop(future)
        try:
            out = ray.get(future)
            self.idle.append(worker)
        except Exception as exc:  # the worker process died (killed, segfault, OOM killer, its node lost)
            out = TrialOutcome.worker_died(exc)
            self._replace_worker()
        self.nodes.add(out.node)
        return Finished(token, out)

    def _replace_worker(self) -> None:
        """A new worker for a dead one, where the cluster's live nodes still hold a slot for it: a
        node lost for good takes its slots along and the sweep goes on on the nodes left (a worker
        made without room would wait for ever for a place to start)."""
        import ray

        room = live_slots(ray, self.cpus, self.gpus, self.max_concurrent)
        if len(self.idle) + len(self.busy) < room:
            self.idle.append(self._new_worker())

    def _check_workers_left(self) -> None:
        """Raises once every worker died with its node and the live nodes have no room for one."""
        if not self.idle and not self.busy:
            import ray

            raise no_room_error(ray, self.where, self.cpus, self.gpus)

    def clock(self) -> float:
        return time.monotonic() - self.started_at

    def close(self) -> None:
        """No more trials: workers still training are killed (their trials end with the driver)."""
        import ray

        busy = [worker for _, worker in self.busy.values()]
        self.idle, self.busy, self.priced = [], {}, {}
        for worker in busy:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # already gone
                pass
