"""The Ray Tune backend: every effnas trial is a trial of one ``tune.Tuner(...).fit()``.

The driver keeps its loop on the main thread; ``start`` runs ``fit()`` in a daemon thread and the
two sides meet in thread-safe queues:

- :class:`_SpecSearcher` is the Tuner's ``Searcher``. It invents nothing: ``submit`` queues the
  spec the policy already chose, ``suggest`` hands it to Tune as the config ``{"token", "spec"}``
  (``None`` while nothing is queued, ``Searcher.FINISHED`` after ``close``). ``num_samples=-1`` and
  ``max_concurrent_trials`` = the slots, so Tune runs what is submitted, as many at once as fit.
- :func:`_trainable` is a function trainable. The dataset (and the trial function) reach it through
  ``tune.with_parameters``, so they go through the object store once; ``tune.with_resources`` asks for
  the study's CPUs and GPUs per trial. It calls :func:`search.sweep.trial.run_trial` and reports each
  epoch's numbers to Tune at the top level of the result, then one last result (``effnas_final``)
  carrying the whole result dict as JSON (it has nested values; newer Ray rejects return values).
- :class:`_RungScheduler` is the Tuner's ``TrialScheduler``: the rung rule (``search.asha``) decides
  STOP or CONTINUE on each epoch's result. A function trainable blocks inside ``report`` until the
  controller has decided and asks for the next result, so a stopped trial never trains another epoch:
  its training thread stays parked in that ``report`` until Tune ends it (when the actor is reused
  or stopped). Tune's controller runs in the driver's process, so the rule lives on the driver's
  node as the actors backend's rung actor does (no node loss can take it along).
- :class:`_Events` is a Tune ``Callback`` on the driver: per-epoch results become ``EpochReport``
  events, a completed trial a ``Finished`` event (the trial function's own result when it returned;
  for a trial the scheduler stopped, the result a stopped trial function would have returned, built
  from its reported epochs), a trial whose worker died a ``failed``/``worker_died`` one. Tune never
  retries (``FailureConfig(max_failures=0)``): the policy decides retries.
- Pricing runs on the pricer actor every Ray backend shares (``_ray.Pricing``), on the driver's node; its answers land on the
  same event queue (an object ref's future callback), so ``next_events`` waits on one queue only.
- A node lost for good: its trials come back as ``worker_died`` (the policy retries them), and while
  the live nodes hold fewer trials than at start the slots follow what they hold
  (``_ray.live_slots``, checked on each dead worker and while the driver waits), so the driver never
  hands Tune more trials than can run and the sweep finishes on the nodes left. Once the live nodes
  hold no trial at all, ``next_events`` raises ``ResourcesError`` (add a node, ``run`` again): Tune
  itself would keep a trial PENDING for ever, only warning of insufficient resources.

What Tune gives through it: its per-trial loggers (TensorBoard event files, ``progress.csv``,
``result.json`` of every epoch in ``<storage_path>/<name>/trial_<token>/``), placement of trials
by resources over a cluster, reuse of trial actors between trials, and any Tune callback added to
the list. Tune's experiment state is a cache only: the study database is the record, and a resumed
sweep starts a new Tune experiment. Tune's own searchers, schedulers, checkpoints and retries are
not used: the study's sampler proposes, the rung rule stops, the trial function keeps its
checkpoints (``search.artifacts``), the policy retries. A trial stopped at a rung comes back without
the fields only its trial function's return would carry (``test_acc``, ``latency_ms``,
``checkpoint``): Tune ends it inside ``report``, before the trial function returns.
"""
from __future__ import annotations

import json
import numbers
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from search.sweep.backends import EpochReport, Event, Finished, TrialSpec
from search.sweep.backends._ray import (Pricing, live_slots, no_room_error, prepare_worker, start_ray, trial_slots,
                                        worker_start_error)
from search.record import TrialStatus
from search.sweep.outcome import TrialOutcome
from search.sweep.trial import TrialFn, run_trial

__all__ = ["TuneBackend"]

_FINAL = "effnas_final"      # set on the one result reported after the trial function returned
_RESULT = "effnas_result"    # that result: the trial function's result dict, JSON
_NODE = "effnas_node"        # the reporting worker's Ray node id (Tune's own results name the IP only)
_EPOCH_KEYS = ("epoch", "val_acc")  # what an EpochReport carries (the progress view's needs)
_IDLE_WAIT_S = 5.0           # how long suggest() waits for a spec while no trial runs (see there)


# -- the trainable (runs on the Tune trial actor) ----------------------------------------------
def _tune_report() -> Callable[[dict], None]:
    """``ray.tune.report`` (Ray >= 2.41), else ``ray.train.report``, which Tune read on Ray 2.40."""
    from ray import tune

    if hasattr(tune, "report"):
        return tune.report
    from ray import train

    return train.report


def _numbers(metrics: dict) -> dict:
    """The numeric metrics only: Tune's TensorBoard and CSV loggers write numbers."""
    return {k: v for k, v in metrics.items() if isinstance(v, numbers.Number) and not isinstance(v, bool)}


def _jsonable(value: Any):
    """json.dumps fallback: numpy scalars as numbers, anything else as its text."""
    return value.item() if hasattr(value, "item") else str(value)


def _trainable(config: dict, data=None, trial_fn: TrialFn | None = None, threads: int = 1, store=None,
               family_modules: tuple = ()) -> None:
    import ray

    prepare_worker(threads, family_modules)  # the trial's CPUs; the actor may be reused with them set
    if store is not None:
        from search.artifacts import bind_driver_store

        bind_driver_store(store)
    report = _tune_report()
    node = ray.get_runtime_context().get_node_id()

    def goes_on(metrics: dict) -> bool:
        # Blocks until Tune's controller asks for the next result; when the scheduler says STOP,
        # Tune ends this thread inside report, so True is all this ever returns.
        report({**_numbers(metrics), _NODE: node})
        return True

    out = run_trial(trial_fn, config["spec"], data, goes_on).with_(node=node, pid=os.getpid())
    # done: the trial ends on this result, without one more round trip to find the function returned.
    report({_FINAL: 1, "done": True, _NODE: node, _RESULT: json.dumps(out.to_result(), default=_jsonable)})


# -- the Tune side (runs in the fit thread) ----------------------------------------------------
class _SpecSearcher(Searcher):
    """Hands Tune the specs the driver submitted, in order, and nothing else."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Condition()
        self._queued: list[tuple[int, dict]] = []
        self._live: set[str] = set()
        self._finished = False

    def put(self, token: int, spec: dict) -> None:
        with self._lock:
            self._queued.append((token, spec))
            self._lock.notify_all()

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            self._lock.notify_all()

    def suggest(self, trial_id: str):
        with self._lock:
            # With no trial of its own left, Tune's controller polls suggest() once a second
            # (sleeping in between). Waiting here instead starts a trial the moment it is
            # submitted; the controller has nothing else to do meanwhile.
            if not self._live and not self._queued and not self._finished:
                self._lock.wait(_IDLE_WAIT_S)
            if self._finished:
                return Searcher.FINISHED
            if not self._queued:
                return None
            token, spec = self._queued.pop(0)
            self._live.add(trial_id)
        return {"token": token, "spec": spec}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        with self._lock:
            self._live.discard(trial_id)

    # Tune saves its searcher with the experiment state (and pickles it into tuner.pkl); effnas
    # never restores from that (the study database is the record), and a lock cannot be pickled.
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __reduce__(self):
        return (_SpecSearcher, ())


class _RungScheduler(FIFOScheduler):
    """FIFO, with the rung rule deciding after each epoch whether a trial goes on."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(_FINAL):
            return TrialScheduler.CONTINUE  # the trial function has returned: let the trial end
        spec = trial.config["spec"]
        if self.rule is None or not spec.get("early_stopping", True) or "epoch" not in result:
            return TrialScheduler.CONTINUE
        goes_on = self.rule.should_continue(result["epoch"], result["val_acc"], tuple(spec.get("rung_costs", ())))
        return TrialScheduler.CONTINUE if goes_on else TrialScheduler.STOP


class _CloseStopper(Stopper):
    """Stops every running trial once the driver closes the backend."""

    def __init__(self):
        self.closing = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.closing


class _StartFailed:
    """A trial that could not even load effnas on its node (raised by ``next_events``)."""

    def __init__(self, message: str):
        self.message = message


def _trial_error(trial) -> tuple[str, str]:
    """(type name, text) of the error a trial failed with. Tune keeps it in the trial's local
    folder first (pickled when it is a Ray error) and copies it to the storage path later."""
    import ray.cloudpickle

    try:
        if trial.pickled_error_file and os.path.exists(trial.pickled_error_file):
            with open(trial.pickled_error_file, "rb") as f:
                exc = ray.cloudpickle.load(f)
            return type(exc).__name__, str(exc)
        if trial.error_file and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:  # "Failure # n (occurred at ...)", then the error
                return "Error", f.read().split("\n", 1)[-1]
    except Exception:  # an unreadable error is still a failure
        pass
    return "Error", "unknown error"


def _is_start_failure(text: str) -> bool:
    """The trial actor could not import effnas (run_trial turns every error of a trial function
    into a result, so an import error that reaches Tune comes from loading the trainable)."""
    return "No module named 'search'" in text or "No module named 'trainers'" in text or \
        "No module named 'space'" in text


def _stopped_outcome(epochs: list[dict]) -> TrialOutcome:
    """What a trial function returns for a trial stopped after ``epochs`` (its reported results)."""
    last = epochs[-1] if epochs else {}
    worker_s = float(last.get("time_total_s", 0.0))
    metrics = {"val_acc": last.get("val_acc"), "val_loss": last.get("val_loss"), "epochs": last.get("epoch"),
               "train_seconds": float(last.get("elapsed_s", worker_s))}
    return TrialOutcome(TrialStatus.STOPPED, curve=tuple(float(r["val_acc"]) for r in epochs if "val_acc" in r),
                        metrics=metrics, busy_seconds=worker_s, node=last.get(_NODE), pid=last.get("pid"))


class _Events(Callback):
    """Tune's trial results, as effnas events on the driver's queue."""

    def __init__(self, events: queue.Queue):
        self.events = events
        self.epochs: dict[str, list[dict]] = {}  # trial id -> its per-epoch results so far
        self.live: dict[str, Any] = {}           # trial id -> its actor, while it runs

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        # Kept here: Tune forgets a trial's actor as soon as it asks it to stop.
        self.live[trial.trial_id] = getattr(trial.temporary_state, "ray_actor", None)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get(_FINAL):
            return
        self.epochs.setdefault(trial.trial_id, []).append(
            {k: result[k] for k in ("epoch", "val_acc", "val_loss", "elapsed_s", "time_total_s", "pid", _NODE)
             if k in result})
        self.events.put(EpochReport(trial.config["token"], {k: result[k] for k in _EPOCH_KEYS if k in result}))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.live.pop(trial.trial_id, None)
        token, epochs = trial.config["token"], self.epochs.pop(trial.trial_id, [])
        last = trial.last_result or {}
        out = TrialOutcome.from_result(json.loads(last[_RESULT])) if last.get(_FINAL) else _stopped_outcome(epochs)
        self.events.put(Finished(token, out))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.live.pop(trial.trial_id, None)
        self.epochs.pop(trial.trial_id, None)
        kind, text = _trial_error(trial)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or ["unknown error"]
        if _is_start_failure(text):
            self.events.put(_StartFailed(lines[-1][:400]))
        self.events.put(Finished(trial.config["token"], TrialOutcome.worker_died(f"{kind}: {lines[0]}")))

    def __reduce__(self):  # pickled into tuner.pkl with the run config: the queue stays here
        return (_Events, (None,))


def _trial_name(trial) -> str:
    return f"trial_{trial.config['token']}"


def _config_classes():
    """``RunConfig``, ``FailureConfig``: ``ray.tune``'s (Ray >= 2.41), else ``ray.train``'s (2.40)."""
    from ray import tune

    if hasattr(tune, "RunConfig"):
        return tune.RunConfig, tune.FailureConfig
    from ray import train

    return train.RunConfig, train.FailureConfig


def _set_env(values: dict[str, str]) -> dict:
    """Set the variables not set yet; returns what to restore."""
    previous = {}
    for key, value in values.items():
        if key not in os.environ:
            previous[key] = None
            os.environ[key] = value
    return previous


def _restore_env(previous: dict) -> None:
    for key in previous:
        os.environ.pop(key, None)


def _drop_incomplete_trials(record) -> bool:
    """A logging filter: fit() ends listing the trials that failed, which the driver has already
    recorded and reported one by one (and retried)."""
    return not str(record.msg).startswith("Trials did not complete")


class _PriceDone:
    """A pricer answer (or its failure), put on the event queue by the object ref's callback."""

    def __init__(self, token: int, family: str, knobs: dict, future):
        self.token, self.family, self.knobs, self.future = token, family, knobs, future


class TuneBackend:
    """Trials as Ray Tune trials (see the module docstring).

    Args:
        cpus_per_trial, gpus_per_trial, max_concurrent: the study file's ``resources``.
        price_fn: ``(family, knobs_dict) -> (cost, constraints, proxies)``, picklable (runs on the pricer).
        trial_fn: replaces the training function on the workers (benchmarks use a trivial one).
        where: the study file, for messages.
        ray_address: the study file's ``ray.address``: None starts a private local instance.
        num_cpus, num_gpus: resources of that local instance (None: what the machine has).
        storage_path: where Tune keeps its experiment folder (the run directory's ``tune``); None:
            Tune's default.
        name: the experiment's name before its timestamp (default: the study file's stem).
        artifacts_root: as for the actors backend: the driver's folder of trial artifacts, kept by
            a store actor on the driver's node (``search.artifacts``).
    """

    def __init__(self, cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None,
                 price_fn: Callable[[str, dict], tuple], trial_fn: TrialFn | None = None,
                 where: str = "study", ray_address: str | None = None, num_cpus: int | None = None,
                 num_gpus: int | None = None, connect_timeout_s: float = 15.0, storage_path: str | None = None,
                 name: str | None = None, artifacts_root: str | None = None, family_modules: tuple = ()):
        self.cpus, self.gpus, self.max_concurrent = cpus_per_trial, gpus_per_trial, max_concurrent
        self.trial_fn, self.where, self.family_modules = trial_fn, where, family_modules
        self.pricing = Pricing(price_fn, family_modules)
        self.ray_address, self.num_cpus, self.num_gpus = ray_address, num_cpus, num_gpus
        self.connect_timeout_s, self.artifacts_root = connect_timeout_s, artifacts_root
        self.storage_path = str(Path(storage_path).resolve()) if storage_path else None
        self.name = name or Path(where).stem or "effnas"
        self.experiment: str | None = None    # the Tune experiment's name, once started
        self.events: queue.Queue = queue.Queue()
        self.running: set[int] = set()        # submitted, no Finished event handed out yet
        self.slots = 0                        # trials the driver may have in flight now (free_slots)
        self.most_slots = 0                   # the slots at start: Tune's max_concurrent_trials
        self.room_at_start = 0                # what the live nodes held at start (live_slots)
        self.started_at = time.monotonic()
        self.searcher = None
        self.stopper = None
        self.callback: _Events | None = None
        self.nodes: set = set()
        self._fit: threading.Thread | None = None
        self._fit_error: BaseException | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def start(self, data, rung_rule) -> int:
        ray = start_ray(self.ray_address, self.num_cpus, self.num_gpus, self.connect_timeout_s, self.where)
        self.slots = self.most_slots = trial_slots(ray, self.cpus, self.gpus, self.max_concurrent, self.where)
        self.room_at_start = live_slots(ray, self.cpus, self.gpus, self.max_concurrent)
        self.pricing.start(ray)
        tuner = self._tuner(data, rung_rule)
        self._fit = threading.Thread(target=self._run_fit, args=(tuner, _set_env(self._tune_env())),
                                     name="effnas-tune-fit", daemon=True)
        self._fit.start()
        return self.slots

    def _tune_env(self) -> dict[str, str]:
        """What Tune reads from the environment when fit() starts, unless the user set it."""
        return {
            # fit() runs off the main thread, where Tune installs no signal handler anyway: the
            # driver handles Ctrl-C and SIGTERM and closes this backend.
            "TUNE_DISABLE_SIGINT_HANDLER": "1",
            # Tune's newer console output prints its experiment table even at verbose=0; the
            # legacy engine is silent there (the driver prints its own progress).
            "RAY_AIR_NEW_OUTPUT": "0",
            # Older Tune lets a custom searcher have one trial waiting for resources at a time.
            "TUNE_MAX_PENDING_TRIALS_PG": str(self.slots),
            # A failed trial comes back to the driver, which records and prints its reason.
            "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
        }

    def _tuner(self, data, rung_rule):
        from ray import tune

        store = None
        if self.artifacts_root:
            from search.artifacts import start_driver_store

            store = start_driver_store(self.artifacts_root)
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, data=data, trial_fn=self.trial_fn, threads=max(1, int(self.cpus)),
                                 store=store, family_modules=self.family_modules),
            {"cpu": self.cpus, "gpu": self.gpus})
        self.searcher = _SpecSearcher()
        self.stopper = _CloseStopper()
        self.callback = _Events(self.events)
        run_config, failure_config = _config_classes()
        self.experiment = f"{self.name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=self.searcher, scheduler=_RungScheduler(rung_rule),
                num_samples=-1, max_concurrent_trials=self.slots, reuse_actors=True,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=run_config(
                name=self.experiment, storage_path=self.storage_path, verbose=0, stop=self.stopper,
                failure_config=failure_config(max_failures=0),
                callbacks=[self.callback]))

    def _run_fit(self, tuner, previous_env: dict) -> None:
        import logging

        tune_log = logging.getLogger("ray.tune.tune")
        tune_log.addFilter(_drop_incomplete_trials)
        try:
            tuner.fit()
        except BaseException as e:  # handed to the driver's thread by next_events
            self._fit_error = e
        finally:
            tune_log.removeFilter(_drop_incomplete_trials)
            _restore_env(previous_env)

    # -- the verbs ------------------------------------------------------------------------------
    def free_slots(self) -> int:
        # Below zero after a lost node took slots that trials in flight hold: none is free.
        return max(0, self.slots - len(self.running))

    def price(self, token: int, family: str, knobs: dict) -> None:
        ref = self.pricing.remote(family, knobs)
        if ref is None:
            self.events.put(self.pricing.inline(token, family, knobs))
            return
        ref.future().add_done_callback(lambda f: self.events.put(_PriceDone(token, family, knobs, f)))

    def submit(self, token: int, spec: TrialSpec) -> None:
        self.running.add(token)
        self.searcher.put(token, spec.to_dict())

    def next_events(self, timeout: float | None = None) -> list[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        raw = []
        while not raw:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            try:
                raw.append(self.events.get(timeout=max(0.0, wait)))
            except queue.Empty:
                self._check_fit()
                self._check_room()
                if deadline is not None and time.monotonic() >= deadline:
                    return []
        while True:  # and whatever else is there already
            try:
                raw.append(self.events.get_nowait())
            except queue.Empty:
                break
        return [self._settle(e) for e in raw]

    def _check_fit(self) -> None:
        """A fit thread that ended while trials were in flight would leave the driver waiting."""
        if self.running and self._fit is not None and not self._fit.is_alive():
            cause = self._fit_error
            raise RuntimeError(f"Ray Tune stopped with {len(self.running)} trial(s) in flight"
                               + (f": {type(cause).__name__}: {cause}" if cause else "")) from cause

    def _check_room(self) -> None:
        """Raises once the live nodes hold no trial at all. Tune would keep a trial waiting for a
        place for ever (it only warns of insufficient resources), and the driver submits nothing
        while no slot is free. Polled while idle: Ray marks a lost node dead a moment after the
        trials on it failed, and a node may go while no trial of this sweep runs there."""
        self._follow_nodes()
        if self.slots == 0:
            import ray

            raise no_room_error(ray, self.where, self.cpus, self.gpus)

    def _follow_nodes(self) -> None:
        """The slots follow what the live nodes hold once it is less than at start: a node lost for
        good takes its slots along, so the driver never hands Tune more trials than can run (retries
        of the trials the node ran included), and one that joins again gives them back, up to the
        start's (Tune's ``max_concurrent_trials``). Compared with the start, not zero: a cluster
        that started with no room (an autoscaler's, growing on demand) is not a lost node."""
        import ray

        room = live_slots(ray, self.cpus, self.gpus, self.max_concurrent)
        self.slots = self.most_slots if room >= self.room_at_start else min(self.most_slots, room)

    def _settle(self, event) -> Event:
        """An event from the queue as the driver gets it (on the driver's thread)."""
        if isinstance(event, _StartFailed):
            raise worker_start_error(event.message)
        if isinstance(event, _PriceDone):
            return self.pricing.settle(event.token, event.family, event.knobs, event.future.result)
        if isinstance(event, Finished):
            self.running.discard(event.token)
            if event.outcome.node:
                self.nodes.add(event.outcome.node)
            if event.outcome.failure_kind == "worker_died":  # its node may be gone: before the retry
                self._follow_nodes()
        return event

    def clock(self) -> float:
        return time.monotonic() - self.started_at

    def close(self, timeout_s: float = 30.0) -> None:
        """End the Tune experiment: no more trials, running ones stopped (the driver closes only
        when the sweep is done, failed or was interrupted), and wait for fit() to return."""
        if self.searcher is not None:
            self.searcher.finish()
        if self.stopper is not None:
            self.stopper.closing = True
        if self._fit is not None:
            self._fit.join(0.5)  # a trial waiting between epochs stops at once
            if self._fit.is_alive():
                # One in the middle of an epoch would finish it first (Tune waits up to 10 s for
                # a graceful stop): the sweep is over, its process goes now.
                self._kill_live_trials()
            self._fit.join(timeout_s)
        self.running.clear()

    def _kill_live_trials(self) -> None:
        import ray

        for actor in list(self.callback.live.values()):
            if actor is not None:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # already gone
                    pass
