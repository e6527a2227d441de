"""The simulated backend: the real sweep over a recorded table, on a simulated clock.

Nothing trains and nothing sleeps. The driver, the policy, the sampler, the storage, the rung rule,
seeds and retries run as they do on Ray; only the trial itself is replayed: a submitted architecture
is looked up in the table (``search.tables``), one of its recorded runs is drawn (seeded by the
study's ``execution.seed`` and the trial number, so a sweep is deterministic for a seed), and its
epochs are scheduled on a clock shared by ``execution.workers`` asynchronous workers, each epoch as
long as the table says. ``next_events`` advances the clock to the next epoch end, asks the rung rule
there (as a worker would between epochs), and returns that epoch's report and, when the trial ends,
its outcome. Events come back in simulated-time order; ties in submission order.

Pricing is the table's: params and MACs as recorded (equal to effnas's cost model, which a test
checks for the shipped tables), the study's constraints applied to them. A proposal the table does
not hold stops the sweep with a :class:`~search.exceptions.TableError` naming it, unless the study
says ``execution.match: nearest``: then the nearest recorded architecture of its family
(:meth:`search.tables.Table.nearest`) stands for it from the start (its knobs are the trial's record
and its dedup key, so two proposals served by one architecture train it once), which lets a sweep
run over a sparse table such as a few hundred recorded architectures of effnas's own families.

The clock is the study's: a resumed sweep starts where the last simulated trial ended, so a study's
simulated time (``status``, ``export``) and ``budget.time_limit_s`` count across runs. Every record
says ``simulated: true`` with its start and end on that clock. ``execution.failure_rate`` makes that
share of trials fail at a random epoch (``failure_kind: simulated``), to try retry settings.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from dataclasses import dataclass
from typing import Callable

from search.exceptions import TableError
from search.record import TrialStatus
from search.sweep.backends import EpochReport, Event, Finished, Priced, TrialSpec
from search.sweep.outcome import TrialOutcome
from search.tables import Table, TableEntry, load_table

__all__ = ["SimulatedBackend", "table_data_meta", "study_clock", "check_table_covers"]


def study_clock(trials) -> float:
    """Simulated seconds a study has spent: where its last simulated trial ended."""
    ends = [(t.user_attrs.get("record") or {}).get("sim_end") for t in trials]
    return max([e for e in ends if isinstance(e, (int, float))], default=0.0)


def table_data_meta(table: Table) -> dict:
    """The data shape the table's networks were recorded on (its provenance's ``data``): what the
    cost model and the fidelity key need, since the simulated backend loads no data."""
    data = table.provenance.get("data") or {}
    missing = [k for k in ("num_classes", "image_size", "in_channels") if k not in data]
    if missing:
        raise TableError(f"{table.path}: provenance.data lacks {', '.join(missing)}: say which data shape the "
                         f"networks were recorded on (num_classes, image_size, in_channels)")
    channels = int(data["in_channels"])
    return {"num_classes": int(data["num_classes"]), "image_size": int(data["image_size"]), "in_channels": channels,
            "mean": list(data.get("mean", [0.0] * channels)), "std": list(data.get("std", [1.0] * channels))}


def check_table_covers(cfg, table: Table, spaces: dict[str, dict], probes: int = 300) -> None:
    """The study's space stays inside the table: its lowest corner and ``probes`` seeded random draws
    of every family are all recorded (what `validate` can know before a sweep meets a gap).

    Raises:
        TableError: naming the first architecture the table lacks and the fix.
    """
    from space.knobs import draw_random
    from space.registry import get_family, knobs_json

    rng = random.Random(0)
    for name, space in spaces.items():
        family = get_family(name)
        lowest = {k: (d.choices[0] if hasattr(d, "choices") else d.low) for k, d in space.items()}
        draws = [family.sample(lowest.__getitem__)] + [family.sample(draw_random(space, rng)) for _ in range(probes)]
        for knobs in draws:
            if table.lookup(name, knobs) is None:
                raise TableError(f"{cfg.path}: families.{name}: the space reaches {knobs_json(knobs)}, which the table "
                                 f"{table.path} does not hold; narrow the family's knobs to what the table records")


@dataclass
class _Trial:
    token: int
    spec: TrialSpec
    entry: TableEntry
    curve: tuple            # the drawn run, cut at the study's epochs
    run: int                # which recorded run
    started: float
    fails_at: int | None    # the epoch whose end it fails at (failure_rate), else None
    epoch: int = 0          # epochs done


class SimulatedBackend:
    """Trials replayed from ``table`` on a clock of ``workers`` asynchronous workers.

    Args:
        table: the recorded table.
        workers: concurrent trials.
        seed: draws of recorded runs (and of simulated failures), per trial number.
        cost_constraints: ``cost dict -> constraint values`` (the study's limits).
        epochs: the study's fidelity (at most the table's epochs).
        clock_start: simulated seconds already spent by the study (a resumed sweep).
        failure_rate: share of trials that fail at a random epoch.
    """

    nodes: set

    def __init__(self, table: Table, workers: int, seed: int, cost_constraints: Callable[[dict], dict],
                 epochs: int, clock_start: float = 0.0, failure_rate: float = 0.0):
        self.table, self.workers, self.seed, self.epochs = table, workers, seed, epochs
        self.cost_constraints, self.failure_rate = cost_constraints, failure_rate
        self.now = clock_start
        self.nodes = {"simulated"}
        self.rule = None
        self.priced: list[Event] = []
        self.running: dict[int, _Trial] = {}
        self.queue: list[tuple[float, int, int]] = []  # (time of the next epoch end, order, token)
        self.order = itertools.count()

    @classmethod
    def from_config(cls, cfg, clock_start: float = 0.0) -> "SimulatedBackend":
        from search.feasibility import cost_constraints

        ex = cfg.execution
        return cls(load_table(ex.table), ex.workers, ex.seed, lambda cost: cost_constraints(cfg, cost),
                   cfg.fidelity.epochs, clock_start=clock_start, failure_rate=ex.failure_rate)

    # -- the verbs ------------------------------------------------------------------------------
    def start(self, data, rung_rule) -> int:
        self.rule = rung_rule
        return self.workers

    def served(self, proposal, fidelity: dict):
        """``execution.match: nearest``: the proposal, or the table's nearest recorded architecture of
        its family standing for it (knobs and dedup key; the trial's parameters keep what the sampler
        proposed, so the sampler learns what its proposal was served)."""
        from search.record import arch_key
        from space.registry import get_family

        entry = self.table.nearest(proposal.family, proposal.knobs_dict)
        if entry is None or entry.knobs == proposal.knobs_dict:  # recorded as proposed
            return proposal
        return dataclasses.replace(proposal, knobs=get_family(proposal.family).knobs_from_dict(entry.knobs),
                                   knobs_dict=entry.knobs, key=arch_key(proposal.family, entry.knobs, fidelity))

    def free_slots(self) -> int:
        return self.workers - len(self.running)

    def price(self, token: int, family: str, knobs: dict) -> None:
        entry = self._entry(family, knobs)
        cost = {"params": entry.params, "macs": entry.macs, "train_params": entry.params, "train_macs": entry.macs}
        self.priced.append(Priced(token, cost, self.cost_constraints(cost)))

    def submit(self, token: int, spec: TrialSpec) -> None:
        entry = self._entry(spec.family, spec.knobs)
        rng = random.Random(f"{self.seed}:{spec.number}")
        run = rng.randrange(len(entry.runs))
        fails_at = rng.randint(1, self.epochs) if rng.random() < self.failure_rate else None
        trial = _Trial(token, spec, entry, entry.runs[run][:self.epochs], run, self.now, fails_at)
        self.running[token] = trial
        heapq.heappush(self.queue, (self.now + entry.epoch_seconds[0], next(self.order), token))

    def next_events(self, timeout: float | None = None) -> list[Event]:
        if self.priced:
            events, self.priced = self.priced, []
            return events
        if not self.queue:
            return []
        when, _, token = heapq.heappop(self.queue)
        self.now = when
        return self._epoch_end(self.running[token])

    def clock(self) -> float:
        return self.now

    def close(self) -> None:
        self.running.clear()
        self.queue.clear()

    # -- one epoch ------------------------------------------------------------------------------
    def _epoch_end(self, t: _Trial) -> list[Event]:
        t.epoch += 1
        acc = t.curve[t.epoch - 1]
        report = EpochReport(t.token, {"epoch": t.epoch, "val_acc": acc})
        if t.fails_at == t.epoch:
            return [report, self._finish(t, TrialOutcome.failed(
                "simulated", f"simulated failure at epoch {t.epoch} (execution.failure_rate)"))]
        if t.epoch == self.epochs:
            return [report, self._finish(t, self._result(t, TrialStatus.TRAINED))]
        if self.rule is not None and t.spec.early_stopping and \
                not self.rule.should_continue(t.epoch, acc, tuple(t.spec.rung_costs)):
            return [report, self._finish(t, self._result(t, TrialStatus.STOPPED))]
        heapq.heappush(self.queue, (self.now + t.entry.epoch_seconds[t.epoch], next(self.order), t.token))
        return [report]

    def _result(self, t: _Trial, status: TrialStatus) -> TrialOutcome:
        seconds = sum(t.entry.epoch_seconds[:t.epoch])
        return TrialOutcome(status, metrics={"val_acc": t.curve[t.epoch - 1], "epochs": t.epoch,
                                             "train_seconds": seconds})

    def _finish(self, t: _Trial, outcome: TrialOutcome) -> Finished:
        del self.running[t.token]
        return Finished(t.token, outcome.with_(
            curve=t.curve[:t.epoch], busy_seconds=self.now - t.started, node="simulated",
            extra={**outcome.extra, "simulated": True, "sim_run": t.run, "sim_start": t.started,
                   "sim_end": self.now}))

    def _entry(self, family: str, knobs: dict) -> TableEntry:
        entry = self.table.lookup(family, knobs)
        if entry is None:
            raise TableError(f"{self.table.path}: holds no {family} architecture with knobs {knobs}: the study's "
                             f"search space reaches beyond the table; narrow families: to what the table records")
        return entry
