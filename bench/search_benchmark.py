"""The search benchmark on recorded tables: effnas against Syne Tune, Optuna and random search, at equal
simulated compute, over many seeds.

    python bench/search_benchmark.py --table nas-bench-macro --methods random,optuna-tpe \\
        --seeds 20 --evaluations 300 --workers 4 --objectives accuracy,macs,params [--max-macs 30e6] \\
        [--json bench/data/x.json.gz]

``--table``: ``nas-bench-macro``, ``effnas-curves`` or a path (``bench.peers.tables.load``).
``--methods``: a comma list out of ``random``, ``optuna-tpe``, ``optuna-nsga2``, ``syne-morea``,
``syne-ehvi``, ``syne-moasha`` (tables with curves only), and the effnas arms ``effnas``,
``effnas-nsga2``, ``effnas-tpe``, ``effnas-gp``, ``effnas-random``, ``effnas-noasha`` (any other
``effnas-*`` name is passed to ``bench/effnas_arms.py`` as its variant).

Budget: ``--evaluations M`` full evaluations' worth of simulated time: total worker-seconds =
M x the table's mean full-training seconds; simulated wall time = that / ``--workers``. Only trials
that finish within it count.

Simulation rules, the same for every method (``bench/peers/simulator.py``): W asynchronous workers
on an event queue; an evaluation takes its table seconds (the sum of ``epoch_seconds`` over the
epochs trained) and yields one run of the entry, drawn per trial with ``numpy.random.default_rng(seed)``
(``integers(n_runs)`` at each training start); its accuracy is the run's curve at the last epoch
trained. A proposal over ``--max-macs`` costs no time and scores nothing (told as infeasible:
Optuna's constraints, the worst values elsewhere); a duplicate costs no time and returns the known
result. A run proposes at most ``max_proposals`` times (default 5 x M) and stops proposing after
``max_zero_cost_streak`` zero-cost proposals in a row with no worker busy. A proposal that is not in the table stands for the nearest entry of its family
(``Space.resolve``). Benchmark seed s is the method's seed s.

Metrics (``bench/peers/metrics.py``): each objective scaled to [0, 1] over the whole table's range
(accuracy: mean over runs of the final epoch; MACs and params in log10), all minimised, reference
point (1, ..., 1). A run's front holds the architectures trained to the table's full epochs within
the budget and the MACs limit, each at its table accuracy (mean over runs). Regret = 1 - HV / HV of
the table's true front under the same limit and objectives. Reported per method: median and
quartiles of the hypervolume at 25, 50 and 100% of the simulated time, the median final regret,
and the median simulated time to reach random search's median final hypervolume: the first time
the median over the method's runs of the hypervolume reaches it (null where it never does; with an
odd number of seeds, the median of the runs' own times).

The last line printed is one JSON object:
``{"methods": {name: {"hv": {"0.25": {"median", "q1", "q3"}, "0.5": ..., "1.0": ...},
"regret_final_median", "time_to_random_final_median", "regret_final": {quartiles},
"runs", "failed", "errors", "wall_seconds_per_run": {quartiles}, "statuses": {status: median count},
"ended": {how: count}}, ...}, "settings": {...}}``; a method that could not run at all is
``{"unavailable": reason}`` or ``{"error": message, "failed": n}``. ``--json PATH`` writes that object
plus ``"runs"``: every run's ``{"method", "seed", "wall_seconds", "ended", "error", "trials": [evaluation
dicts]}`` (gzip when PATH ends in ``.gz``). ``--merge A.json.gz B.json.gz [--json C.json.gz]``
summarises the runs of several such files of one setting together (methods or seeds run apart).

The contract with the effnas arms
--------------------------------
``bench/effnas_arms.py`` provides ``run_effnas(table_path: str, settings: dict, seed: int,
variant: str) -> list[dict]`` (imported lazily; without it the effnas methods are reported
unavailable). ``variant`` is the method's full name (``effnas``, ``effnas-nsga2``, ``effnas-tpe``,
``effnas-gp``, ``effnas-random``, ``effnas-noasha``); ``table_path`` is ``settings["table_path"]``.

``settings`` (the same dict every adapter gets, and ``"settings"`` in the output)::

    {"table": str,                 # the --table argument
     "table_name": str,            # Table.name
     "table_path": str,            # the table file (a stand-in source written in search.tables' format)
     "table_source": str,          # "search.tables" or "stand-in: <file>"
     "entries": int, "epochs": int,
     "objectives": [str],          # out of "accuracy", "macs", "params", in this order of naming
     "max_macs": float | None,
     "evaluations": int,           # M
     "workers": int,               # W
     "mean_full_seconds": float,   # mean over the table of sum(epoch_seconds)
     "worker_seconds": float,      # M x mean_full_seconds
     "budget_seconds": float,      # worker_seconds / W: the simulated wall time
     "seeds": [int],
     "seed_designs": [{"family": str, "knobs": dict}],   # [] for NAS-Bench-Macro
     "max_zero_cost_streak": int,  # zero-cost proposals in a row with no worker busy that end a run
     "max_proposals": int,         # proposals per run at most (duplicates and infeasible ones included)
     "checkpoints": [0.25, 0.5, 1.0],
     "true_front": {"size": int, "hv": float},
     ...}                          # informational keys may be added (versions, random's target)

One evaluation dict per proposal, in proposal order::

    {"trial": int,            # 0, 1, ... in proposal order within the run
     "family": str, "knobs": dict,   # the table entry's own family and knobs
     "start": float, "end": float,   # simulated seconds since the run's start (end == start at zero cost)
     "status": str,           # "trained" (all the table's epochs), "stopped" (early, by the rung rule),
                              # "infeasible" (over max_macs), "duplicate", "unfinished" (would end after
                              # the budget; never told)
     "accuracy": float | None,      # the drawn run's accuracy at the last epoch trained (fraction)
     "run": int | None,       # which of the entry's runs was drawn
     "epochs": int,           # epochs trained (0 when nothing was trained)
     "macs": int, "params": int,
     "duplicate_of": int}     # duplicates only: the trial holding the result

Only ``trial``, ``family``, ``knobs``, ``end``, ``status`` and ``epochs`` enter the metrics.
"""
from __future__ import annotations

import argparse
import gzip
import importlib
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers import metrics, tables  # noqa: E402
from bench.peers.adapters import PEERS  # noqa: E402
from bench.peers.simulator import DEFAULT_MAX_ZERO_COST_STREAK, PROPOSALS_PER_EVALUATION  # noqa: E402

EFFNAS_ARMS = ("effnas", "effnas-nsga2", "effnas-tpe", "effnas-gp", "effnas-random", "effnas-noasha", "effnas-tpe-mv",
               "effnas-nsga2-p24")
CHECKPOINTS = (0.25, 0.5, 1.0)
REQUIRED_KEYS = ("trial", "family", "knobs", "end", "status", "epochs")


def default_methods(table) -> list[str]:
    peers = [n for n, a in PEERS.items() if not a.needs_curves or table.epochs > 1]
    return peers + list(EFFNAS_ARMS)


def build_settings(args, table, source: str) -> dict:
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    normaliser = metrics.Normaliser(table, objectives)
    mean_full = statistics.fmean(tables.full_seconds(e) for e in table.entries)
    worker_seconds = args.evaluations * mean_full
    front, hv_true = metrics.true_front(table, normaliser, args.max_macs)
    seed_designs = []
    if args.seed_designs:
        seed_designs = json.loads(Path(args.seed_designs).read_text())
    table_path = str(table.path)
    if source.startswith("stand-in"):
        # The effnas arms read table files only: the stand-in, written in search.tables' format.
        try:
            table_path = tables.as_table_file(table, tempfile.mkdtemp(prefix="search_benchmark_"))
        except Exception as exc:  # noqa: BLE001: the peers do not need the file
            print(f"stand-in table not written as a table file ({type(exc).__name__}: {exc})", file=sys.stderr)
    return {"table": args.table, "table_name": table.name, "table_path": table_path, "table_source": source,
            "entries": len(table.entries), "epochs": int(table.epochs), "objectives": objectives,
            "max_macs": args.max_macs, "evaluations": args.evaluations, "workers": args.workers,
            "mean_full_seconds": mean_full, "worker_seconds": worker_seconds,
            "budget_seconds": worker_seconds / args.workers,
            "seeds": list(range(args.first_seed, args.first_seed + args.seeds)), "seed_designs": seed_designs,
            "max_zero_cost_streak": args.max_zero_cost_streak,
            "max_proposals": args.max_proposals or PROPOSALS_PER_EVALUATION * args.evaluations,
            "checkpoints": list(CHECKPOINTS),
            "true_front": {"size": len(front), "hv": hv_true}, "versions": _versions()}


def _versions() -> dict:
    out = {}
    for name in ("numpy", "optuna", "syne_tune", "botorch", "torch"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 (a version is information only)
            out[name] = None
    return out


class _EffnasArm:
    def __init__(self, name: str, run_effnas):
        self.name, self._run = name, run_effnas

    def run(self, table, settings, seed):
        return self._run(settings["table_path"], dict(settings), seed, self.name)


def resolve_method(name: str, table):
    """(runner with ``run(table, settings, seed)``, None) or (None, why it is unavailable)."""
    if name in PEERS:
        adapter = PEERS[name]
        if adapter.needs_curves and table.epochs <= 1:
            return None, f"{name} needs learning curves; table {table.name} has one epoch per curve"
        return adapter(), None
    if name == "effnas" or name.startswith("effnas-"):  # bench/effnas_arms.py knows its variants
        try:
            module = importlib.import_module("bench.effnas_arms")
        except ModuleNotFoundError as exc:
            if exc.name in ("bench.effnas_arms", "bench"):
                return None, "bench/effnas_arms.py does not exist yet"
            raise
        return _EffnasArm(name, module.run_effnas), None
    raise SystemExit(f"--methods: unknown method {name!r}; known: {', '.join(list(PEERS) + list(EFFNAS_ARMS))} "
                     "(and effnas-* variants)")


def run_one(runner, table, settings: dict, seed: int) -> dict:
    t0 = time.perf_counter()
    out = {"seed": seed, "error": None, "ended": None, "trials": []}
    try:
        trials = runner.run(table, settings, seed)
        missing = [k for k in REQUIRED_KEYS if any(k not in t for t in trials)]
        if missing:
            raise ValueError(f"evaluation dicts lack {missing}")
        out["trials"] = trials
        out["ended"] = getattr(runner, "last_note", {}).get("ended", "budget")
    except Exception as exc:  # noqa: BLE001: one failing run is recorded, the benchmark goes on
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc(limit=6)
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def summarise(runs: list[dict], table, settings: dict, target: float | None) -> dict:
    normaliser = metrics.Normaliser(table, settings["objectives"])
    budget, hv_true = settings["budget_seconds"], settings["true_front"]["hv"]
    ok = [r for r in runs if r["error"] is None]
    errors = sorted({r["error"] for r in runs if r["error"]})
    if not ok:
        return {"error": errors[0] if errors else "no run", "failed": len(runs), "errors": errors[:3]}
    curves = [metrics.hv_curve(r["trials"], table, normaliser, budget, settings["max_macs"]) for r in ok]
    hv = {str(c): metrics.quartiles([metrics.hv_at(cv, c * budget) for cv in curves]) for c in CHECKPOINTS}
    finals = [metrics.hv_at(cv, budget) for cv in curves]
    regrets = [metrics.regret(h, hv_true) for h in finals]
    counts = [{} for _ in ok]
    for c, r in zip(counts, ok):
        for t in r["trials"]:
            c[t["status"]] = c.get(t["status"], 0) + 1
    statuses = {k: [c.get(k, 0) for c in counts] for k in sorted({k for c in counts for k in c})}
    ended: dict[str, int] = {}
    for r in ok:
        ended[r["ended"]] = ended.get(r["ended"], 0) + 1
    return {"hv": hv, "regret_final_median": metrics.quartiles(regrets)["median"],
            "time_to_random_final_median": metrics.median_time_to_target(curves, target),
            "regret_final": metrics.quartiles(regrets), "runs": len(ok), "failed": len(runs) - len(ok),
            "errors": errors[:3], "wall_seconds_per_run": metrics.quartiles([r["wall_seconds"] for r in ok]),
            "statuses": {k: statistics.median(v) for k, v in statuses.items()}, "ended": ended}


def summarise_methods(names: list[str], runs: list[dict], table, settings: dict, unavailable: dict) -> dict:
    """The "methods" object: random search first, whose median final hypervolume is every method's
    target (also recorded as ``settings["random_final_hv_median"]``)."""
    summary: dict = {}
    target = None
    for name in sorted(names, key=lambda n: n != "random"):
        if name in unavailable:
            summary[name] = {"unavailable": unavailable[name]}
            continue
        mine = [r for r in runs if r["method"] == name]
        if name == "random":
            first = summarise(mine, table, settings, None)
            if "hv" in first:
                target = first["hv"]["1.0"]["median"]
                settings["random_final_hv_median"] = target
        summary[name] = summarise(mine, table, settings, target)
    return {n: summary[n] for n in names}


def load_json(path: str) -> dict:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)


def merge(paths: list[str]) -> tuple[dict, list[dict]]:
    """Settings and runs of several result files of one benchmark setting (other methods or seeds)."""
    docs = [load_json(p) for p in paths]
    same = ("table_name", "objectives", "max_macs", "evaluations", "workers", "budget_seconds", "max_proposals",
            "max_zero_cost_streak")
    base = dict(docs[0]["settings"])
    for p, d in zip(paths[1:], docs[1:]):
        differ = [k for k in same if d["settings"].get(k) != base.get(k)]
        if differ:
            raise SystemExit(f"--merge: {p} has other settings than {paths[0]}: {', '.join(differ)}")
    runs: dict[tuple, dict] = {}
    for d in docs:
        for r in d["runs"]:
            runs[(r["method"], r["seed"])] = r
    base["seeds"] = sorted({r["seed"] for r in runs.values()})
    base["merged_from"] = [str(p) for p in paths]
    return base, list(runs.values())


def write_json(path: str, doc: dict) -> None:
    text = json.dumps(doc, separators=(",", ":"))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    if p.name.endswith(".gz"):
        with gzip.open(tmp, "wt") as f:
            f.write(text)
    else:
        tmp.write_text(text)
    tmp.replace(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", default="nas-bench-macro", help="nas-bench-macro, effnas-curves, or a path")
    ap.add_argument("--methods", default=None, help="comma list (default: every peer the table admits and the effnas arms)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--evaluations", type=int, default=300)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--objectives", default="accuracy,macs,params")
    ap.add_argument("--max-macs", type=float, default=None)
    ap.add_argument("--seed-designs", default=None, help="JSON file: [{family, knobs}] evaluated first where a method takes known points")
    ap.add_argument("--max-zero-cost-streak", type=int, default=DEFAULT_MAX_ZERO_COST_STREAK)
    ap.add_argument("--max-proposals", type=int, default=None,
                    help=f"proposals per run at most (default {PROPOSALS_PER_EVALUATION} x --evaluations)")
    ap.add_argument("--json", default=None, help="where to write the summary and every run's trials (.gz: gzip)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="summarise the runs of several --json files of one setting together (other methods or seeds)")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.evaluations < 1 or args.workers < 1:
        ap.error("--seeds, --evaluations and --workers must be positive")

    import logging
    logging.getLogger("syne_tune").setLevel(logging.ERROR)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass

    if args.merge:
        settings, raw_runs = merge(args.merge)
        table, _ = tables.load(settings["table"])
        names = list(dict.fromkeys(r["method"] for r in sorted(raw_runs, key=lambda r: r["method"] != "random")))
        doc = {"methods": summarise_methods(names, raw_runs, table, settings, {}), "settings": settings}
        if args.json:
            write_json(args.json, {**doc, "runs": raw_runs})
        print(json.dumps(doc))
        return 0

    table, source = tables.load(args.table)
    settings = build_settings(args, table, source)
    names = [m.strip() for m in args.methods.split(",")] if args.methods else default_methods(table)
    names = sorted(dict.fromkeys(names), key=lambda n: n != "random")  # random first: its final HV is the target
    runners = {n: resolve_method(n, table) for n in names}
    unavailable = {n: why for n, (runner, why) in runners.items() if runner is None}

    raw_runs: list[dict] = []
    normaliser = metrics.Normaliser(table, settings["objectives"])
    for name in names:
        runner = runners[name][0]
        if runner is None:
            continue
        for seed in settings["seeds"]:
            r = {"method": name, **run_one(runner, table, settings, seed)}
            raw_runs.append(r)
            if not args.quiet:
                curve = metrics.hv_curve(r["trials"], table, normaliser, settings["budget_seconds"], settings["max_macs"])
                print(f"{name} seed {seed}: hv {metrics.hv_at(curve, settings['budget_seconds']):.4f}, "
                      f"{len(r['trials'])} proposals, {r['wall_seconds']:.1f} s"
                      + (f", ERROR {r['error']}" if r["error"] else ""), file=sys.stderr, flush=True)
            if args.json:  # what is done so far survives an interrupted benchmark
                done = list(dict.fromkeys(x["method"] for x in raw_runs))
                write_json(args.json, {"methods": summarise_methods(done, raw_runs, table, settings, unavailable),
                                       "settings": settings, "runs": raw_runs})
    doc = {"methods": summarise_methods(names, raw_runs, table, settings, unavailable), "settings": settings}
    if args.json:
        write_json(args.json, {**doc, "runs": raw_runs})
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
