"""`python -m search status`: counts by state, the current front, time spent, driver overhead."""
from __future__ import annotations

from collections import Counter

import optuna
from optuna.trial import TrialState

from search.export._tables import member_entry
from search.pareto import front_hypervolumes, hypervolume_over_time, objectives_of, pareto_front, simulated_seconds
from search.record import trial_status
from search.seed_report import seed_entries

__all__ = ["status_dict", "print_status", "trial_rows", "print_trials"]


def _seconds(trials, facts) -> tuple[float, float]:
    """Active wall time (the union of the trials' ask-to-tell spans: the gaps between runs, when no
    driver ran, are not counted) and summed training time."""
    spans = sorted((t.datetime_start.timestamp(), t.datetime_complete.timestamp())
                   for t in trials if t.datetime_start and t.datetime_complete)
    wall, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            wall += stop - max(start, end)
            end = stop
    return wall, sum(f.get("train_seconds") or 0.0 for f in facts)


def _overhead_ms(trials, facts) -> float | None:
    """Driver time per trial that occupied a worker (trained, stopped or failed): its wall time from
    ask to tell minus the worker's busy time and the time it waited, priced, for a free worker."""
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() - f["worker_seconds"] - (f.get("queued_seconds") or 0.0)
             for t, f in zip(trials, facts)
             if t.datetime_start and t.datetime_complete and f.get("worker_seconds") is not None]
    return 1000 * sum(spans) / len(spans) if spans else None


def _statuses(trials, driver_running: bool | None) -> dict:
    """Counts by status; trials RUNNING with no driver left (SQLite lock free) are interrupted."""
    counts = Counter(str(trial_status(t)) for t in trials)
    if driver_running is False and counts.get("running"):
        counts["interrupted"] += counts.pop("running")
    return dict(counts)


def status_dict(study: optuna.Study, storage_url: str | None = None) -> dict:
    """Everything `status` reports; with ``storage_url`` (SQLite), trials left RUNNING by a driver
    that no longer runs count as interrupted."""
    from search.storage import driver_holds, read_trials
    from search.storage._reader import facts_of

    trials = read_trials(study, storage_url)
    driver_running = driver_holds(storage_url) if storage_url else None
    facts = [facts_of(t) for t in trials]  # the records' figures, not whole records: 100,000 of them
    wall, train = _seconds(trials, facts)
    front = pareto_front(study, trials, storage_url)
    seeds = seed_entries(study, front, trials)
    return {
        "study": study.study_name,
        "objectives": objectives_of(study),
        "states": dict(Counter(t.state.name for t in trials)),
        "statuses": _statuses(trials, driver_running),
        "driver_running": driver_running,
        "resumed_from_checkpoint": sum(1 for f in facts if f.get("resumed_from_epoch")),
        "n_trials": len(trials),
        "n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "wall_seconds": wall,
        "train_seconds": train,
        "overhead_ms_per_trial": _overhead_ms(trials, facts),
        "simulated_seconds": simulated_seconds(trials),  # None unless the study ran on the simulated backend
        "proxies_scored": sum(1 for f in facts if f.get("proxies") and any(v is not None for v in f["proxies"].values())),
        "pareto": [member_entry(m) for m in front],  # the same entries, under the same keys, as pareto.json
        "seeds": seeds,
        "hypervolume": front_hypervolumes(study, front, seeds),
        "hypervolume_over_time": hypervolume_over_time(study, trials),
    }


def print_status(study: optuna.Study, storage_url: str | None = None) -> None:
    s = status_dict(study, storage_url)
    print(f"study {s['study']}: {s['n_trials']} trials; " +
          ", ".join(f"{k} {v}" for k, v in sorted(s["statuses"].items())))
    overhead = s["overhead_ms_per_trial"]
    if s["statuses"].get("interrupted"):
        print(f"{s['statuses']['interrupted']} interrupted (their driver stopped; `run` again re-queues them"
              + (f"; {s['resumed_from_checkpoint']} retries resumed from a checkpoint)" if s["resumed_from_checkpoint"] else ")"))
    if s["simulated_seconds"] is not None:  # worker and training times are the table's, not this machine's
        print(f"time: {s['simulated_seconds']:,.0f}s simulated ({s['simulated_seconds'] / 3600:.1f} h on the simulated "
              f"clock), {s['train_seconds']:,.0f}s of recorded training; {s['wall_seconds']:.1f}s wall for the driver")
    else:
        print(f"time: {s['wall_seconds']:.1f}s wall (while trials ran), {s['train_seconds']:.1f}s training"
              + (f", driver overhead {overhead:.0f} ms per trial on a worker" if overhead is not None else ""))
    if s["proxies_scored"]:
        screened = s["statuses"].get("screened", 0)
        print(f"zero-cost proxies scored on {s['proxies_scored']} proposals"
              + (f"; pre-screening left {screened} untrained" if screened else ""))
    print(f"Pareto front ({len(s['pareto'])} members; " + ", ".join(s["objectives"]) + "):")
    for m in s["pareto"]:
        vals = "  ".join(f"{k} {v:.4f}" if k == "accuracy" else f"{k} {v:,.0f}" for k, v in m["objectives"].items())
        proxies = "  ".join(f"{k} {v:.3g}" for k, v in m["proxies"].items() if v is not None)
        print(f"  #{m['trial']:<5d} {m['family']:12s} {vals}" + (f"  | {proxies}" if proxies else ""))
    _print_seeds(s)
    _print_hypervolume_over_time(s["hypervolume_over_time"])


def _print_hypervolume_over_time(curve: dict | None) -> None:
    """Five moments of the curve (`export` plots all of it)."""
    if not curve:
        return
    n = len(curve["seconds"])
    picks = sorted({round(k * (n - 1) / 4) for k in range(5)})
    clock = "simulated time" if curve["clock"].startswith("simulated") else "active wall time"
    print(f"front hypervolume over {clock} (" + curve["space"] + "): "
          + ", ".join(f"{curve['hypervolume'][i]:.3f} at {curve['seconds'][i]:.0f}s" for i in picks))


def _print_seeds(s: dict) -> None:
    if not s["seeds"]:
        return
    print(f"seeds ({len(s['seeds'])}):")
    for e in s["seeds"]:
        verdict = (f"dominated by #{e['dominated_by']}" + (f" (and {e['n_dominating'] - 1} more)" if e["n_dominating"] > 1 else "")
                   if e["dominated_by"] is not None else "on the front" if e["values"] else e["status"])
        print(f"  {e['name']:24s} trial #{e['trained_in']:<5d} {e['family']:12s} {verdict}")
    hv = s["hypervolume"]
    if hv:
        ratio = f" ({hv['ratio']:.2f}x)" if hv["ratio"] else ""
        print(f"hypervolume ({hv['space']}): front {hv['front']:.4f}, seeds alone {hv['seeds']:.4f}{ratio}")


def trial_rows(study: optuna.Study, storage_url: str | None = None) -> list[dict]:
    """One entry per trial, from the database alone (`python -m search trials`); RUNNING trials of
    an SQLite study no driver runs are shown as interrupted."""
    from search.storage import driver_holds, read_trials
    from search.storage._reader import facts_of

    orphaned = storage_url is not None and driver_holds(storage_url) is False
    rows = []
    for t in read_trials(study, storage_url):
        f = facts_of(t)  # the record's figures (a whole record for each of 100,000 trials is slow)
        status = str(trial_status(t))
        if orphaned and status == "running":
            status = "interrupted"
        rows.append({"trial": t.number, "family": f.get("family") or t.params.get("family"), "status": status,
                     "epochs": f.get("fidelity_reached") if f.get("fidelity_reached") is not None else f.get("epochs"),
                     "accuracy": f.get("val_acc"), "test_accuracy": f.get("test_acc"), "macs": f.get("macs"),
                     "params": f.get("params"), "latency_ms": f.get("latency_ms"), "train_seconds": f.get("train_seconds"),
                     "seed": t.user_attrs.get("seed"), "retry_of": t.user_attrs.get("retry_of"),
                     "duplicate_of": f.get("duplicate_of"), "resumed_from_epoch": f.get("resumed_from_epoch"),
                     "failure_reason": f.get("failure_reason") or t.user_attrs.get("failure_reason")})
    return rows


def print_trials(study: optuna.Study, storage_url: str | None = None) -> None:
    def num(v, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-"

    print(f"{'trial':>5}  {'family':12s} {'status':10s} {'ep':>3} {'accuracy':>8} {'MACs':>14} {'params':>12}  note")
    for r in trial_rows(study, storage_url):
        note = r["failure_reason"] or (f"seed {r['seed']}" if r["seed"] else "") or (
            f"same as #{r['duplicate_of']}" if r["duplicate_of"] is not None else "")
        if r["retry_of"] is not None:
            resumed = f", resumed at epoch {r['resumed_from_epoch']}" if r["resumed_from_epoch"] else ""
            note = f"retry of #{r['retry_of']}{resumed}" + (f"; {note}" if note else "")
        print(f"{r['trial']:>5}  {str(r['family'] or '-'):12s} {r['status']:10s} {num(r['epochs'], 'd'):>3} "
              f"{num(r['accuracy'], '.4f'):>8} {num(r['macs'], ',d'):>14} {num(r['params'], ',d'):>12}  {note}")
