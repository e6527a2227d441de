"""`python -m search run`: the sweep driver.

One loop keeps up to ``max_concurrent`` trials training on Ray actors. For every free slot it asks
the Optuna study for a family and knobs (valid by construction), prices the architecture with the
cost model, records over-budget and already-trained architectures at once without using a worker,
and ships the rest to a worker. Results come back to the driver, which alone writes the database.

Budget accounting: ``n_trials`` counts architectures that occupied a worker to an outcome
(trained, stopped by ASHA, or failed with no retry left). Infeasible and duplicate proposals are
free but counted as stalls; ``budget.max_stalls`` of them in a row end the sweep with a clear error.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.asha import Asha
from search.config import StudyConfig
from search import faults
from search.errors import (DataError, SearchSpaceExhausted, StorageError, StudyLockedError,
                           WorkerStartError)
from search.study import (arch_key, budget_lock, display_url, open_study, params_in_one_write, set_constraints,
                          sqlite_path, trial_status)

__all__ = ["Sweep", "SweepSummary", "budget_used", "family_spaces", "propose", "price"]

_COUNTED = ("trained", "stopped")
_LOOKAHEAD = 1  # architectures asked and priced ahead of the free workers


@dataclass
class SweepSummary:
    trained: int = 0
    stopped: int = 0
    failed: int = 0
    infeasible: int = 0
    duplicate: int = 0
    wall_seconds: float = 0.0
    loop_seconds: float = 0.0       # the scheduling loop alone (no Ray start, no data loading)
    # perf_counter stamps of the first and last trained result: the steady-state span that
    # benchmarks compare with other tools' first-to-last-result span.
    first_result_at: float | None = None
    last_result_at: float | None = None
    overhead_ms_per_trial: float = 0.0
    nodes: set = field(default_factory=set)


# --- proposing and pricing architectures --------------------------------------------------------

def family_spaces(cfg: StudyConfig) -> dict[str, dict]:
    """Each family's search space with the study file's overrides applied (prefixed names)."""
    from space.knobs import apply_overrides
    from space.registry import get_family

    return {name: apply_overrides(get_family(name).search_space(),
                                  {f"{name}.{k}": v for k, v in sec.knobs.items()})
            for name, sec in cfg.families.items()}


def propose(trial, spaces: dict[str, dict]) -> tuple[str, Any]:
    """Draw a family and its knobs through ``trial`` (an Optuna trial)."""
    from space.knobs import draw_from_trial
    from space.registry import get_family

    family = trial.suggest_categorical("family", sorted(spaces))
    return family, get_family(family).sample(draw_from_trial(trial, spaces[family]))


def price(cfg: StudyConfig, family: str, knobs, data_meta: dict) -> tuple[dict, dict[str, float]]:
    """Costs of an architecture and its constraint values (<= 0 is feasible, Optuna's convention),
    relative to the limit so that samplers see comparable magnitudes."""
    from space.cost import measure

    cost = measure(family, knobs, num_classes=data_meta["num_classes"], image_size=data_meta["image_size"],
                   in_channels=data_meta["in_channels"]).as_dict()
    c = cfg.constraints
    constraints = {}
    if c.max_macs is not None:
        constraints["max_macs"] = cost["macs"] / c.max_macs - 1.0
    if c.max_params is not None:
        constraints["max_params"] = cost["params"] / c.max_params - 1.0
    return cost, constraints


def get_family_knobs(pending) -> Any:
    from space.registry import get_family

    return get_family(pending.family).knobs_from_dict(pending.knobs)


def budget_used(trials: list[FrozenTrial]) -> int:
    """Trials that occupied a worker to an outcome (a failed trial counts once no retry follows)."""
    used = sum(1 for t in trials if trial_status(t) in _COUNTED)
    return used + sum(1 for t in trials if trial_status(t) == "failed" and t.user_attrs.get("final", False))


def _knobs_dict(knobs) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(knobs)))


# --- the driver ----------------------------------------------------------------------------------

class _DriverLock:
    """One driver per SQLite study: a second one would corrupt the run directory and the record.

    The lock is a file next to the database (``study.db.lock``), held with flock for the driver's
    lifetime; the kernel drops it when the process dies, even by SIGKILL."""

    def __init__(self, cfg: StudyConfig):
        self.cfg, self.fd = cfg, None

    def __enter__(self):
        db = sqlite_path(self.cfg.storage_url)
        if db is None:
            return self  # server databases handle concurrent drivers
        path = db.with_name(db.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"{self.cfg.path}: storage: cannot create {path.parent}: {e.strerror}; "
                               f"set `storage:` (or `run_dir:`) to a writable place") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise StudyLockedError(
                f"another driver is already running study {self.cfg.study!r} on {display_url(self.cfg.storage_url)}; "
                f"wait for it or stop it (SQLite studies take one driver; use a PostgreSQL `storage:` URL "
                f"to share a study between drivers)") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


class _Heartbeat:
    """Records heartbeats of this driver's running trials on a shared database, so another driver
    can tell a trial whose driver died (no heartbeat for the grace period) from a live one."""

    def __init__(self, study, sweep: "Sweep"):
        import threading

        self.study, self.sweep = study, sweep
        self.interval = getattr(study._storage, "get_heartbeat_interval", lambda: None)()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True) if self.interval else None

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            waiting = [p.trial for p, _ in list(self.sweep.ready)]
            for trial in [f.trial for f in list(self.sweep.inflight.values())] + waiting:
                try:
                    self.study._storage.record_heartbeat(trial._trial_id)
                except Exception:  # a missed beat is retried at the next interval
                    pass

    def __enter__(self):
        if self.thread:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=5)


@dataclass
class _Pending:
    """An asked trial whose architecture is being priced."""

    trial: optuna.Trial
    family: str
    knobs: dict
    key: str
    asked_at: float
    queued_at: float | None = None  # when it started waiting for a free worker


@dataclass
class _InFlight:
    trial: optuna.Trial
    family: str
    key: str
    record: dict
    asked_at: float
    worker: Any


class Sweep:
    """Runs (or resumes) the study described by ``cfg``.

    Args:
        cfg: the validated study file.
        n_more: train this many more architectures instead of filling up to ``budget.n_trials``.
        trial_fn: replaces the training function on the workers (benchmarks use a trivial one).
        data: an already loaded ``DataSplits`` (tests reuse one); loaded from ``cfg.data`` if None.
        log: where progress lines go.
    """

    def __init__(self, cfg: StudyConfig, n_more: int | None = None, trial_fn: Callable | None = None,
                 data=None, log: Callable[[str], None] = print):
        self.cfg, self.n_more, self.trial_fn, self.data, self.log = cfg, n_more, trial_fn, data, log
        self.summary = SweepSummary()
        self.costs: dict[str, tuple[dict, list[float]]] = {}
        self.known: dict[str, FrozenTrial] = {}
        self.inflight: dict[Any, _InFlight] = {}
        self.idle_workers: list = []
        self.overhead_s = 0.0
        self.final_failures = 0
        self.shared_db = False
        self.others_running: set[str] = set()
        self.pricing: dict[Any, _Pending] = {}
        self.ready: list[tuple[_Pending, dict]] = []  # priced, trainable, waiting for a free worker
        self.pricer = None
        self.started = time.perf_counter()
        self.best: tuple[float, int] | None = None  # (validation accuracy, trial number)

    # -- set-up ---------------------------------------------------------------------------------
    def _recover(self, study: optuna.Study) -> int:
        """Mark trials a dead driver left RUNNING as failed and re-enqueue their parameters.

        On SQLite this driver holds the study's lock, so every RUNNING trial is orphaned. On a
        shared database only trials whose heartbeat stopped are (Optuna's stale-trial check; the
        re-enqueue happens in its callback, see ``search.study``)."""
        if self.shared_db:
            before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            optuna.storages.fail_stale_trials(study)
            return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before
        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in stale:
            study._storage.set_trial_user_attr(t._trial_id, "status", "failed")
            study._storage.set_trial_user_attr(t._trial_id, "failure_reason",
                                               "interrupted: the driver stopped while this trial ran")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if t.params:  # a trial killed before it drew anything has nothing to retry
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number,
                                                          "attempt": t.user_attrs.get("attempt", 0)},
                                    skip_if_exists=False)
        return len(stale)

    def _load_data(self):
        if self.data is None:
            from trainers.data import DataConfig, load_data

            d = self.cfg.data
            try:
                self.data = load_data(DataConfig(dataset=d.dataset, root=d.root, train_size=d.train_size,
                                                 val_size=d.val_size, test_size=d.test_size,
                                                 image_size=d.image_size, seed=self.cfg.train.seed,
                                                 download=d.download))
            except (OSError, ValueError) as e:  # missing files, sizes the dataset cannot give, ...
                raise DataError(f"{self.cfg.path}: data: {e}") from None
        self.data_meta = {"num_classes": self.data.num_classes, "image_size": self.data.image_size,
                          "in_channels": self.data.in_channels,
                          "mean": list(self.data.mean), "std": list(self.data.std)}

    def _start_ray(self):
        import ray

        r = self.cfg.ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                      "configure_logging": False}
            if r.address:
                ray.init(address=r.address, **kwargs)
            else:
                # "local": a private instance, whatever RAY_ADDRESS or a left-behind cluster address
                # file says (plain ray.init() would try to join that cluster).
                ray.init(address="local", num_cpus=r.num_cpus, num_gpus=r.num_gpus, **kwargs)
        return ray

    def _start_workers(self, ray, asha_actor) -> int:
        from search.worker import make_pricer, make_worker_class

        res = self.cfg.resources
        total = ray.cluster_resources()
        slots = int(total.get("CPU", 1) // res.cpus_per_trial)
        if res.gpus_per_trial:
            slots = min(slots, int(total.get("GPU", 0) // res.gpus_per_trial))
            if slots == 0:
                raise SearchSpaceExhausted(
                    f"{self.cfg.path}: resources.gpus_per_trial is {res.gpus_per_trial} but the Ray "
                    f"instance has {total.get('GPU', 0)} GPUs; lower it or set it to 0")
        slots = max(1, min(slots, res.max_concurrent or slots))
        worker_cls = make_worker_class(res.cpus_per_trial, res.gpus_per_trial)
        data_ref = ray.put(self.data)
        threads = max(1, int(res.cpus_per_trial))
        self._worker_factory = lambda: worker_cls.remote(data_ref, threads, self.trial_fn, asha_actor)
        self.pricer = make_pricer()
        self.idle_workers = [self._worker_factory() for _ in range(slots)]
        try:
            ray.get([w.ping.remote() for w in self.idle_workers])
        except Exception as e:  # an actor that cannot start would fail every trial the same way
            first = str(e).strip().splitlines()[-1][:400]
            raise WorkerStartError(f"Ray workers could not start ({first}); effnas must be installed "
                                   f"in the Python environment of every Ray node") from None
        return slots

    def _make_asha(self, study: optuna.Study):
        a = self.cfg.fidelity.asha
        if a is None:
            return None
        from search.worker import make_asha_actor

        rule = Asha(a.grace_period, a.reduction_factor, self.cfg.fidelity.epochs)
        for t in study.get_trials(deepcopy=False):
            if trial_status(t) in _COUNTED:
                rule.record_curve(t.user_attrs.get("record", {}).get("curve", []))
        return make_asha_actor(rule)

    # -- one proposal ---------------------------------------------------------------------------
    def _tell_without_training(self, study, trial, status: str, values, rec: dict) -> None:
        self._write_record(trial, {**rec, "status": status})
        if values is None:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, values)

    def _objective_values(self, acc: float, cost: dict, latency: float | None) -> list[float]:
        table = {"accuracy": acc, "macs": cost["macs"], "params": cost["params"],
                 "latency": latency if latency is not None else float("inf")}
        return [float(table[o]) for o in self.cfg.objectives]

    def _propose_one(self, study) -> None:
        """Ask the study for one architecture and get it priced.

        Pricing (the cost model, tens of ms for a deep dense network) runs on a separate pricer
        process when there is one, so it overlaps with this driver's database work for the next
        proposal; ``_decide`` takes over when the price is known."""
        t0 = time.perf_counter()
        if self.shared_db:
            with budget_lock(study):
                if self._budget_left(study, self.target) <= 0:  # others took the last slots meanwhile
                    return
                trial = study.ask()
            study._storage.record_heartbeat(trial._trial_id)  # a trial never beating is never stale
        else:
            trial = study.ask()
        faults.checkpoint("asked")
        if self.shared_db and self._is_surplus(study, trial):
            return
        with params_in_one_write(trial):
            family, knobs = propose(trial, self.spaces)
        faults.checkpoint("proposed")
        knobs_d = _knobs_dict(knobs)
        pending = _Pending(trial, family, knobs_d, arch_key(family, knobs_d, self.fidelity), t0)
        if pending.key in self.costs or self.pricer is None:
            if pending.key not in self.costs:
                self.costs[pending.key] = price(self.cfg, family, knobs, self.data_meta)
            self._decide(study, pending)
        else:
            self.pricing[self.pricer.price.remote(self.cfg, family, knobs_d, self.data_meta)] = pending
        self.overhead_s += time.perf_counter() - t0

    def _decide(self, study, p: "_Pending") -> None:
        """Record an over-budget or already-trained architecture at once, else send it to a worker."""
        t0 = time.perf_counter()
        trial, family, key = p.trial, p.family, p.key
        cost, constraints = self.costs[key]
        rec = {"family": family, "knobs": p.knobs, "arch_key": key, "fidelity": self.fidelity,
               "constraints": list(constraints.values()) or [0.0], **self.data_meta,
               **{k: cost[k] for k in ("params", "macs", "train_params", "train_macs")}}
        if constraints and max(constraints.values()) > 0:
            if self.cfg.constraints.max_latency_ms is not None:
                constraints = {**constraints, "max_latency_ms": 0.0}  # never measured: no verdict
            set_constraints(trial, constraints)
            self._tell_without_training(study, trial, "infeasible", self._objective_values(0.0, cost, None), rec)
            self.summary.infeasible += 1
            self.stalls += 1
            self._line(f"trial {trial.number} {family} infeasible (macs {cost['macs']:,}, params {cost['params']:,})")
        elif self._is_duplicate(study, key):
            self._record_duplicate(study, trial, key, rec)
        else:
            rec["attempt"] = trial.user_attrs.get("attempt", 0)
            if constraints and self.cfg.constraints.max_latency_ms is None:
                set_constraints(trial, constraints)  # else set with the measured latency on return
            trial.set_user_attr("record_pending", rec)  # one write now; the full record lands with the result
            self.stalls = 0
            if self.idle_workers:
                self._submit(p, rec)
            else:
                p.queued_at = time.perf_counter()
                self.ready.append((p, rec))
        self.overhead_s += time.perf_counter() - t0

    def _submit(self, p: "_Pending", rec: dict) -> None:
        # Time spent waiting for a worker is queueing, not driver work: `status` leaves it out.
        rec["queued_seconds"] = time.perf_counter() - p.queued_at if p.queued_at is not None else 0.0
        worker = self.idle_workers.pop()
        future = worker.run.remote(self._spec(p.trial.number, p.family, p.knobs, p.key))
        self.inflight[future] = _InFlight(p.trial, p.family, p.key, rec, p.asked_at, worker)
        faults.checkpoint("submitted")

    def _is_duplicate(self, study, key: str) -> bool:
        if self.shared_db:
            self._refresh_known(study)
        return key in self.known or key in self.others_running or self._started_number(key) is not None

    def _started_number(self, key: str) -> int | None:
        """The trial of this driver training ``key`` or waiting for a worker to, if any."""
        started = [(f.key, f.trial) for f in self.inflight.values()] + [(p.key, p.trial) for p, _ in self.ready]
        return next((trial.number for k, trial in started if k == key), None)

    def _refresh_known(self, study) -> None:
        """On a shared database, architectures other drivers trained or are training count too."""
        self.others_running = set()
        for t in study.get_trials(deepcopy=False):
            if trial_status(t) in _COUNTED:
                self.known.setdefault(t.user_attrs.get("record", {}).get("arch_key"), t)
            elif t.state == TrialState.RUNNING and "record_pending" in t.user_attrs:
                self.others_running.add(t.user_attrs["record_pending"].get("arch_key"))

    def _is_surplus(self, study, trial) -> bool:
        """With several drivers, a trial asked after the budget was taken by others is released."""
        trials = study.get_trials(deepcopy=False)
        # Trial numbers are handed out in order: a trial may train only if fewer than ``target``
        # lower-numbered trials have used the budget or may still use it (any RUNNING one).
        ahead = sum(1 for t in trials if t.number < trial.number and (
            trial_status(t) in _COUNTED or (trial_status(t) == "failed" and t.user_attrs.get("final"))
            or t.state == TrialState.RUNNING))
        if ahead < self.target:
            return False
        trial.set_user_attr("status", "surplus")
        study.tell(trial, state=TrialState.PRUNED)
        self.stalls += 1
        return True

    def _record_duplicate(self, study, trial, key: str, rec: dict) -> None:
        original = self.known.get(key)
        rec = {**rec, "duplicate_of": original.number if original else self._started_number(key)}
        values = list(original.values) if original is not None and original.values else None
        self._tell_without_training(study, trial, "duplicate", values, rec)
        self.summary.duplicate += 1
        self.stalls += 1

    def _spec(self, number: int, family: str, knobs: dict, key: str) -> dict:
        t = self.cfg.train
        train = {"epochs": self.cfg.fidelity.epochs, "batch_size": t.batch_size, "lr": t.lr,
                 "momentum": t.momentum, "weight_decay": t.weight_decay, "nesterov": t.nesterov,
                 "augment": t.augment, "amp": t.amp, "condensed_training": t.condensed_training,
                 "eval_test": t.eval_test, "seed": t.seed,
                 "device": "cuda" if self.cfg.resources.gpus_per_trial > 0 else "cpu",
                 "threads": max(1, int(self.cfg.resources.cpus_per_trial))}
        return {"number": number, "family": family, "knobs": knobs, "train": train,
                "checkpoint_dir": str((self.cfg.run_path / "checkpoints" / key).resolve()),
                "max_latency_ms": self.cfg.constraints.max_latency_ms,
                "measure_latency": "latency" in self.cfg.objectives,
                "use_gpu": self.cfg.resources.gpus_per_trial > 0}

    # -- one result -----------------------------------------------------------------------------
    def _finish(self, study, flight: _InFlight, out: dict) -> None:
        t0 = time.perf_counter()
        trial, rec = flight.trial, dict(flight.record)
        status = out.get("status", "failed")
        rec.update({k: v for k, v in out.items() if k not in ("status", "traceback")})
        rec["status"] = status
        self.summary.nodes.add(out.get("node"))
        limit = self.cfg.constraints.max_latency_ms
        if limit is not None and out.get("latency_ms") is not None:
            latency_c = out["latency_ms"] / limit - 1.0
            cost_constraints = self.costs[flight.key][1]
            rec["constraints"] = [*cost_constraints.values(), latency_c]
            set_constraints(trial, {**cost_constraints, "max_latency_ms": latency_c})
        if status in _COUNTED:
            rec["fidelity_reached"] = out.get("epochs")
            self._write_record(trial, rec)
            faults.checkpoint("recorded")
            if status == "trained":
                study.tell(trial, self._objective_values(out["val_acc"], rec, out.get("latency_ms")))
                self.summary.trained += 1
                self._stamp_result()
            else:
                study.tell(trial, state=TrialState.PRUNED)
                self.summary.stopped += 1
            faults.checkpoint("told")
            self.known[flight.key] = study._storage.get_trial(trial._trial_id)
            self._note_best(self.known[flight.key])
            self._line(f"trial {trial.number} {flight.family} {status} acc {out['val_acc']:.4f} "
                       f"({out.get('epochs')} ep, {out.get('train_seconds', 0):.1f}s) "
                       f"macs {rec['macs']:,} params {rec['params']:,}")
        elif status == "infeasible":
            self._write_record(trial, rec)
            study.tell(trial, self._objective_values(0.0, rec, out.get("latency_ms")))
            self.summary.infeasible += 1
            self._line(f"trial {trial.number} {flight.family} infeasible (latency {out.get('latency_ms'):.2f} ms)")
        else:
            self._fail(study, flight, rec, out)
        self.overhead_s += time.perf_counter() - t0

    def _stamp_result(self) -> None:
        now = time.perf_counter()
        if self.summary.first_result_at is None:
            self.summary.first_result_at = now
        self.summary.last_result_at = now

    def _fail(self, study, flight: _InFlight, rec: dict, out: dict) -> None:
        trial = flight.trial
        attempt = rec.get("attempt", 0)
        retry = self.cfg.retry
        retriable = out.get("failure_kind") != "nonfinite" or retry.retry_nonfinite
        will_retry = retriable and attempt < retry.max_retries
        rec["failure_reason"] = out.get("reason", "unknown failure")
        rec["final"] = not will_retry
        self._write_record(trial, rec)
        study.tell(trial, state=TrialState.FAIL)
        self.summary.failed += 1
        self.final_failures += not will_retry
        if will_retry:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "attempt": attempt + 1},
                                skip_if_exists=False)
        self._line(f"trial {trial.number} {flight.family} failed: {rec['failure_reason']}"
                   + (f" (retry {attempt + 1}/{retry.max_retries} queued)" if will_retry else ""))

    def _write_record(self, trial, rec: dict) -> None:
        # Top-level attributes are what other tools filter on; everything else in one write.
        trial.set_user_attr("status", rec.pop("status"))
        for key in ("family", "constraints", "final"):
            if key in rec:
                trial.set_user_attr(key, rec[key])
        trial.set_user_attr("record", rec)

    # -- the loop -------------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        s = self.summary
        elapsed = time.perf_counter() - self.started
        best = f" | best acc {self.best[0]:.4f} (trial {self.best[1]})" if self.best else ""
        self.log(f"[{elapsed:7.1f}s] {text} | running {len(self.inflight)} trained {s.trained} "
                 f"stopped {s.stopped} failed {s.failed} infeasible {s.infeasible} dup {s.duplicate}{best}")

    def _note_best(self, trial: FrozenTrial) -> None:
        """Keep the most accurate fully trained architecture for the progress lines."""
        rec = trial.user_attrs.get("record", {})
        if trial_status(trial) == "trained" and rec.get("val_acc") is not None:
            if self.best is None or rec["val_acc"] > self.best[0]:
                self.best = (rec["val_acc"], trial.number)

    def _collect(self, study, ray, timeout: float | None) -> None:
        ready, _ = ray.wait([*self.pricing, *self.inflight], num_returns=1, timeout=timeout)
        for future in ready:
            if future in self.pricing:
                pending = self.pricing.pop(future)
                try:
                    self.costs[pending.key] = ray.get(future)
                except Exception:  # the pricer died: price here, and from now on always here
                    self.pricer = None
                    knobs = get_family_knobs(pending)
                    self.costs[pending.key] = price(self.cfg, pending.family, knobs, self.data_meta)
                self._decide(study, pending)
                continue
            flight = self.inflight.pop(future)
            try:
                out = ray.get(future)
                self.idle_workers.append(flight.worker)
            except Exception as exc:  # the worker process died (killed, segfault, OOM killer)
                out = {"status": "failed", "failure_kind": "worker_died",
                       "reason": f"worker died: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                self.idle_workers.append(self._worker_factory())
            self._finish(study, flight, out)

    def _check_budget_reachable(self) -> None:
        """Refuse, before anything is written, a budget that no architecture of the space meets.

        Probes each family's lowest corner (smallest value of every knob) and a few random samples.
        """
        import random

        from space.knobs import draw_random
        from space.registry import get_family

        c = self.cfg.constraints
        if c.max_macs is None and c.max_params is None:
            return
        rng = random.Random(0)
        for name, space in self.spaces.items():
            family = get_family(name)
            lowest = {k: (d.choices[0] if hasattr(d, "choices") else d.low) for k, d in space.items()}
            probes = [family.sample(lowest.__getitem__)] + [family.sample(draw_random(space, rng)) for _ in range(20)]
            for knobs in probes:
                _, constraints = price(self.cfg, name, knobs, self.data_meta)
                if max(constraints.values()) <= 0:
                    return
        raise SearchSpaceExhausted(
            f"{self.cfg.path}: constraints: no probed architecture meets max_macs={c.max_macs} / "
            f"max_params={c.max_params} (the smallest corner of every family is over budget); raise the "
            f"limits or narrow the families' knobs towards smaller networks (`python -m search validate`)")

    def _prepare(self) -> None:
        """Everything that can fail on bad input, done before the run directory or database exist."""
        from search.study import check_existing_database, make_sampler

        make_sampler(self.cfg)  # bad sampler options
        self._load_data()
        self.spaces = family_spaces(self.cfg)
        self.fidelity = self.cfg.fidelity_key()
        self._check_budget_reachable()
        check_existing_database(self.cfg)

    def run(self) -> SweepSummary:
        self._prepare()
        with _DriverLock(self.cfg):
            study = open_study(self.cfg)
            self.shared_db = sqlite_path(self.cfg.storage_url) is None
            recovered = self._recover(study)
            trials = study.get_trials(deepcopy=False)
            for t in trials:
                if trial_status(t) in _COUNTED and t.user_attrs.get("record", {}).get("arch_key"):
                    self.known[t.user_attrs["record"]["arch_key"]] = t
                    self._note_best(t)
            self.used_at_start = budget_used(trials)
            target = self.used_at_start + self.n_more if self.n_more is not None else self.cfg.budget.n_trials
            self.log(f"study {self.cfg.study!r} in {display_url(self.cfg.storage_url)}: {self.used_at_start} of {target} "
                     f"trials done" + (f", {recovered} interrupted trial(s) re-queued" if recovered else ""))
            if self.used_at_start >= target:
                return self.summary
            ray = self._start_ray()
            slots = self._start_workers(ray, self._make_asha(study))
            self.log(f"{slots} concurrent trial(s), {self.cfg.resources.cpus_per_trial} CPU "
                     f"and {self.cfg.resources.gpus_per_trial} GPU each")
            loop_start = time.perf_counter()
            with _Heartbeat(study, self):
                self._loop(study, ray, target)
            self.summary.loop_seconds = time.perf_counter() - loop_start
        s = self.summary
        s.wall_seconds = time.perf_counter() - self.started
        n = s.trained + s.stopped + s.failed + s.infeasible + s.duplicate
        s.overhead_ms_per_trial = 1000 * self.overhead_s / max(1, n)
        return s

    def _budget_left(self, study, target: int) -> int:
        """Architectures still to ask for: the budget less what is used and what is under way.

        A single driver's own tally is exact and free. A shared database is recounted, since other
        drivers train too, and there every RUNNING trial counts, whether it is being priced or
        trained: the same rule ``_is_surplus`` applies, so a driver never asks for a trial that it
        would then have to release as surplus."""
        if not self.shared_db:
            s = self.summary
            return (target - (self.used_at_start + s.trained + s.stopped + self.final_failures)
                    - len(self.inflight) - len(self.ready) - len(self.pricing))
        trials = study.get_trials(deepcopy=False)
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        return target - budget_used(trials) - running

    def _loop(self, study, ray, target: int) -> None:
        deadline = (time.perf_counter() + self.cfg.budget.time_limit_s) if self.cfg.budget.time_limit_s else None
        self.stalls, exhausted = 0, False
        self.target = target
        while True:
            out_of_time = deadline is not None and time.perf_counter() > deadline
            while self.ready and self.idle_workers:
                self._submit(*self.ready.pop(0))
            # Proposing one architecture ahead of the free workers keeps the driver busy while the
            # pricer works: a worker that comes back finds its next trial priced and waiting.
            while (len(self.idle_workers) + _LOOKAHEAD > len(self.pricing) + len(self.ready)
                   and not (out_of_time or exhausted)
                   and self._budget_left(study, target) > 0):
                exhausted = self.stalls >= self.cfg.budget.max_stalls
                if not exhausted:
                    self._propose_one(study)
            if not self.inflight and not self.pricing and not self.ready:
                break
            self._collect(study, ray, timeout=None)
        if exhausted:
            self._give_up()
        if deadline is not None and time.perf_counter() > deadline:
            self.log(f"time limit of {self.cfg.budget.time_limit_s:.0f}s reached; `run` again to continue")

    def _give_up(self) -> None:
        s = self.summary
        raise SearchSpaceExhausted(
            f"{self.cfg.path}: the last {self.cfg.budget.max_stalls} proposals were all over budget or "
            f"already trained ({s.infeasible} infeasible, {s.duplicate} duplicates in this run); widen "
            f"`constraints:` or the families' knob ranges, or lower budget.n_trials")
