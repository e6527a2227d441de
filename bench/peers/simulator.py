"""The simulated clock every peer runs on: W asynchronous workers, an event queue, no sleeping.

A method is driven through ``ask`` / ``tell`` (and ``report`` per epoch for a multi-fidelity one):

- whenever a worker is free and the simulated clock is before the budget's end, the method is asked
  for a proposal; it is resolved to a table entry (``Space.resolve``);
- a proposal over the MACs limit costs no time and scores nothing: it is told to the method as
  infeasible at once (status ``infeasible``);
- a proposal already evaluated costs no time and is told the known result at once (status
  ``duplicate``); one whose original is still training is told the original's result when that
  finishes, without taking a worker;
- otherwise it takes a worker: one run of the entry is drawn (``numpy.random.default_rng(seed)``,
  ``integers(number of runs)`` at every training start, in start order), and the trial ends after
  the entry's seconds (the sum of ``epoch_seconds`` over the epochs trained) with the drawn run's
  accuracy at its last epoch (status ``trained``, or ``stopped`` when a multi-fidelity method stopped
  it at an earlier epoch: then it ends after that epoch's seconds, with that epoch's accuracy);
- completions are processed in simulated-time order (ties: the earlier start first); a trial that
  would end after the budget is recorded ``unfinished`` and never told;
- a method that makes ``max_zero_cost_streak`` zero-cost proposals in a row while no worker is busy
  (``stalled``), that has made ``max_proposals`` proposals (``proposal_cap``: duplicates and
  infeasible proposals cost no simulated time, so a sampler that keeps repeating itself would
  otherwise never reach the end of the budget), or that has nothing left to propose (``exhausted``)
  proposes no more; trials already training still finish.
"""
from __future__ import annotations

import heapq

import numpy as np

from .tables import arch_key

DEFAULT_MAX_ZERO_COST_STREAK = 500
PROPOSALS_PER_EVALUATION = 5  # default max_proposals: 5 x the budget in evaluations


class Method:
    """What the simulator drives. ``values`` are the normalised objectives (all minimised)."""

    multi_fidelity = False

    def ask(self):
        """(token, family, knobs), or None when the method has nothing (more) to propose."""
        raise NotImplementedError

    def tell(self, token, values: tuple, feasible: bool, info: dict) -> None:
        raise NotImplementedError

    def report(self, token, epoch: int, values: tuple) -> bool:
        """An epoch's result of a running trial (multi-fidelity methods); False stops the trial."""
        return True


def simulate(method: Method, table, space, normaliser, settings: dict, seed: int) -> tuple[list[dict], dict]:
    """Run ``method`` on the table under the settings; returns the evaluation dicts (in proposal
    order) and a note of how the run ended."""
    budget = float(settings["budget_seconds"])
    workers = int(settings["workers"])
    max_macs = settings.get("max_macs")
    streak_limit = int(settings.get("max_zero_cost_streak") or DEFAULT_MAX_ZERO_COST_STREAK)
    max_proposals = settings.get("max_proposals")
    epochs_full = int(table.epochs)
    rng = np.random.default_rng(seed)
    entries = table.entries

    records: list[dict] = []
    tokens: list = []
    known: dict[str, int] = {}          # arch key -> index of the record holding its result
    inflight: dict[str, int] = {}       # arch key -> index of the record training it
    waiting: dict[int, list[int]] = {}  # record index -> duplicate records waiting for its result
    heap: list = []                     # (time, start sequence, record index, epoch)
    clock, busy, ended = 0.0, 0, None

    def values_of(rec: dict, epoch: int) -> tuple:
        entry = entries[rec["_entry"]]
        acc = entry.runs[rec["run"]][epoch - 1]
        return normaliser.point(acc, entry.macs, entry.params)

    def new_record(entry, status: str) -> dict:
        rec = {"trial": len(records), "family": entry.family, "knobs": entry.knobs, "start": clock, "end": clock,
               "status": status, "accuracy": None, "run": None, "epochs": 0, "macs": int(entry.macs),
               "params": int(entry.params)}
        records.append(rec)
        return rec

    while True:
        streak = 0
        while busy < workers and clock < budget and ended is None:
            if max_proposals is not None and len(records) >= max_proposals:
                ended = "proposal_cap"
                break
            proposal = method.ask()
            if proposal is None:
                ended = "exhausted"
                break
            token, family, knobs = proposal
            row = space.resolve(family, knobs)
            if row is None:
                raise ValueError(f"proposal of unknown family {family!r}")
            entry = entries[row]
            key = arch_key(entry.family, entry.knobs)
            if max_macs is not None and entry.macs > max_macs:
                rec = new_record(entry, "infeasible")
                tokens.append(token)
                method.tell(token, normaliser.worst, False, {"macs": entry.macs, "params": entry.params,
                                                             "constraint": float(entry.macs - max_macs)})
                streak += 1
            elif key in known:
                src = records[known[key]]
                rec = new_record(entry, "duplicate")
                rec.update(accuracy=src["accuracy"], run=src["run"], duplicate_of=src["trial"])
                tokens.append(token)
                method.tell(token, src["_values"], True, _info(src, max_macs))
                streak += 1
            elif key in inflight:
                rec = new_record(entry, "duplicate")
                rec["duplicate_of"] = records[inflight[key]]["trial"]
                tokens.append(token)
                waiting.setdefault(inflight[key], []).append(rec["trial"])
                streak += 1
            else:
                rec = new_record(entry, "running")
                tokens.append(token)
                rec["_entry"] = row
                rec["run"] = int(rng.integers(len(entry.runs)))
                inflight[key] = rec["trial"]
                first = 1 if method.multi_fidelity else epochs_full
                heapq.heappush(heap, (clock + float(sum(entry.epoch_seconds[:first])), rec["trial"], rec["trial"], first))
                busy += 1
                streak = 0
            if streak >= streak_limit:
                if busy == 0:
                    ended = "stalled"
                break
        if not heap:
            break
        when, _, idx, epoch = heapq.heappop(heap)
        if when > budget:
            heapq.heappush(heap, (when, idx, idx, epoch))
            break
        clock = when
        rec = records[idx]
        entry = entries[rec["_entry"]]
        values = values_of(rec, epoch)
        if method.multi_fidelity:
            go_on = method.report(tokens[idx], epoch, values)
            if epoch < epochs_full and go_on:
                heapq.heappush(heap, (clock + float(entry.epoch_seconds[epoch]), idx, idx, epoch + 1))
                continue
        rec.update(end=clock, epochs=epoch, accuracy=float(entry.runs[rec["run"]][epoch - 1]),
                   status="trained" if epoch == epochs_full else "stopped")
        rec["_values"] = values
        busy -= 1
        key = arch_key(entry.family, entry.knobs)
        inflight.pop(key, None)
        known[key] = idx
        method.tell(tokens[idx], values, True, _info(rec, max_macs))
        for w in waiting.pop(idx, []):
            records[w].update(end=clock, accuracy=rec["accuracy"], run=rec["run"])
            method.tell(tokens[w], values, True, _info(rec, max_macs))
    for when, _, idx, epoch in heap:
        rec = records[idx]
        rec.update(status="unfinished", end=when, epochs=epoch - 1 if method.multi_fidelity else 0)
        for w in waiting.pop(idx, []):
            records[w].update(status="unfinished", end=when)
    for rec in records:
        rec.pop("_entry", None)
        rec.pop("_values", None)
    return records, {"ended": ended or "budget", "simulated_seconds": clock}


def _info(rec: dict, max_macs) -> dict:
    return {"macs": rec["macs"], "params": rec["params"], "epochs": rec["epochs"],
            "constraint": float(rec["macs"] - max_macs) if max_macs is not None else None}
