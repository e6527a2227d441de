"""How trials are executed: the interface every execution backend implements.

The driver (``search.sweep._driver``) talks to a backend in five verbs and never sees Ray:

- ``start(data, rung_rule)``: bring up workers holding the dataset; returns the number of slots.
- ``price(token, family, knobs)``: run the cost model for a proposal, off the driver's thread where
  the backend can; the answer comes back as a :class:`Priced` event.
- ``submit(token, spec)``: train a :class:`TrialSpec` on a free slot (``free_slots() > 0``).
- ``next_events(timeout)``: block until something happened; returns :class:`Priced`,
  :class:`EpochReport` and :class:`Finished` events (a finished trial frees its slot and carries
  its :class:`~search.sweep.outcome.TrialOutcome`).
- ``close()``: no more trials; trials still running are stopped.
- ``clock()``: the backend's time in seconds (wall time; simulated time for the simulated backend).

:func:`make_backend` builds the one a study file's ``execution:`` names.

The rung rule (``search.asha``) is handed to the backend at start: it answers "does this trial go on
after this epoch?" wherever the trial runs, so rung decisions never wait for the driver.

Backends:

- ``actors`` (:mod:`search.sweep.backends.actors`): one long-lived Ray actor per slot, a pricer
  actor and a rung actor; the lowest overhead per trial.
- ``tune`` (:mod:`search.sweep.backends.tune`): every trial a Ray Tune trial of one
  ``tune.Tuner``, whose ``Searcher`` hands out the specs ``submit`` queued, whose scheduler asks the
  rung rule, and whose callback turns results into events.
- ``simulated`` (:mod:`search.sweep.backends.simulated`): no Ray and no training: each trial's
  per-epoch accuracy and seconds come from a recorded table (``search.tables``), on a simulated
  clock with N asynchronous workers; pricing runs inline. Thousands of trials in minutes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Union

if TYPE_CHECKING:
    from search.config import StudyConfig
    from search.sweep.outcome import TrialOutcome

__all__ = ["TrialSpec", "Priced", "EpochReport", "Finished", "Event", "Backend", "make_backend"]


@dataclass(frozen=True)
class TrialSpec:
    """What a worker needs to train one architecture (crosses the process boundary as a dict: the
    trial-function contract ``fn(spec: dict, data, report) -> dict``)."""

    number: int
    family: str
    knobs: dict
    train: dict                      # trainers.train.TrainConfig fields
    checkpoint_dir: str
    max_latency_ms: float | None = None
    measure_latency: bool = False
    latency: dict | None = None      # trainers.latency.LatencySetup fields (StudyConfig.latency_setup)
    use_gpu: bool = False
    rung_costs: tuple = ()           # the exact costs the rung rule ranks on (MACs, params)
    early_stopping: bool = True      # False: the rung rule is not asked (seeds)

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "family": self.family, "knobs": self.knobs, "train": dict(self.train),
                "checkpoint_dir": self.checkpoint_dir, "max_latency_ms": self.max_latency_ms,
                "measure_latency": self.measure_latency, "latency": self.latency, "use_gpu": self.use_gpu,
                "rung_costs": list(self.rung_costs), "early_stopping": self.early_stopping}


@dataclass(frozen=True)
class Priced:
    token: int
    cost: dict                       # space.cost.Cost.as_dict()
    constraints: dict[str, float]
    proxies: dict = field(default_factory=dict)  # zero-cost proxy scores (None: not scored)


@dataclass(frozen=True)
class EpochReport:
    token: int
    metrics: dict                    # epoch, val_acc, val_loss, ...


@dataclass(frozen=True)
class Finished:
    """A trial came back (a worker that died yields a ``failed`` outcome, ``failure_kind: worker_died``)."""

    token: int
    outcome: "TrialOutcome"


Event = Union[Priced, EpochReport, Finished]


class Backend(Protocol):
    nodes: set

    def start(self, data, rung_rule) -> int: ...

    def free_slots(self) -> int: ...

    def price(self, token: int, family: str, knobs: dict) -> None: ...

    def submit(self, token: int, spec: TrialSpec) -> None: ...

    def next_events(self, timeout: float | None = None) -> list[Event]: ...

    def close(self) -> None: ...

    def clock(self) -> float: ...


def make_backend(cfg: "StudyConfig", price_fn: Callable, trial_fn: Callable | None = None,
                 clock_start: float = 0.0) -> Backend:
    """The execution backend the study file's ``execution:`` names, with its ``resources``, ``ray``
    and ``artifacts`` settings.

    Args:
        cfg: the validated study file.
        price_fn: ``(family, knobs_dict) -> (cost, constraints, proxies)``, picklable (runs on a pricer).
        trial_fn: replaces the training function on the workers (tests and benchmarks).
        clock_start: the simulated backend's clock at start (the study's simulated seconds so far).
    """
    ex = cfg.execution
    if ex.backend == "simulated":
        from search.sweep.backends.simulated import SimulatedBackend

        return SimulatedBackend.from_config(cfg, clock_start)
    r, res = cfg.ray, cfg.resources
    common = dict(price_fn=price_fn, trial_fn=trial_fn, where=cfg.path, ray_address=r.address,
                  num_cpus=r.num_cpus, num_gpus=r.num_gpus, connect_timeout_s=r.connect_timeout_s,
                  artifacts_root=None if cfg.artifacts else str((cfg.run_path / "checkpoints").resolve()),
                  family_modules=tuple(cfg.family_modules))
    if ex.backend == "tune":
        from search.sweep.backends.tune import TuneBackend

        return TuneBackend(res.cpus_per_trial, res.gpus_per_trial, res.max_concurrent,
                           storage_path=str((cfg.run_path / "tune").resolve()), name=cfg.study, **common)
    from search.sweep.backends.actors import ActorsBackend

    return ActorsBackend(res.cpus_per_trial, res.gpus_per_trial, res.max_concurrent, **common)
