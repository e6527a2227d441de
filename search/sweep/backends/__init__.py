"""How trials are executed: the interface every execution backend implements.

The driver (``search.sweep._driver``) talks to a backend in five verbs and never sees Ray:

- ``start(data, rung_rule)``: bring up workers holding the dataset; returns the number of slots.
- ``price(token, family, knobs)``: run the cost model for a proposal, off the driver's thread where
  the backend can; the answer comes back as a :class:`Priced` event.
- ``submit(token, spec)``: train a :class:`TrialSpec` on a free slot (``free_slots() > 0``).
- ``next_events(timeout)``: block until something happened; returns :class:`Priced`,
  :class:`EpochReport` and :class:`Finished` events (a finished trial frees its slot).
- ``cancel(token)``, ``close()``.

The rung rule (``search.asha``) is handed to the backend at start: it answers "does this trial go on
after this epoch?" wherever the trial runs, so rung decisions never wait for the driver.

Backends:

- ``actors`` (:mod:`search.sweep.backends.actors`): one long-lived Ray actor per slot, a pricer
  actor and a rung actor; the lowest overhead per trial.
- ``tune`` (:mod:`search.sweep.backends.tune`): every trial a Ray Tune trial of one
  ``tune.Tuner``, whose ``Searcher`` hands out the specs ``submit`` queued, whose scheduler asks the
  rung rule, and whose callback turns results into events.
- A simulated-clock backend replays recorded curves: ``submit`` schedules the trial's epochs on a
  virtual clock with their recorded durations, ``next_events`` advances the clock to the next
  event, asking the rung rule at each epoch; pricing runs inline. Sweeps of thousands of trials then
  run in seconds, for benchmarks of the policy and the rung rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Union

__all__ = ["TrialSpec", "Priced", "EpochReport", "Finished", "Event", "Backend"]


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
    """A trial came back. ``result`` follows the trial-function contract (``status``, ``val_acc``,
    ...); a worker that died yields ``status: failed`` with ``failure_kind: worker_died``."""

    token: int
    result: dict = field(default_factory=dict)


Event = Union[Priced, EpochReport, Finished]


class Backend(Protocol):
    nodes: set

    def start(self, data, rung_rule) -> int: ...

    def free_slots(self) -> int: ...

    def price(self, token: int, family: str, knobs: dict) -> None: ...

    def submit(self, token: int, spec: TrialSpec) -> None: ...

    def next_events(self, timeout: float | None = None) -> list[Event]: ...

    def cancel(self, token: int) -> None: ...

    def close(self) -> None: ...
