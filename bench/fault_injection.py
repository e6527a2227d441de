"""Fault injection over the matrix: every fault point x every kind of trial.

For each fault point of ``search/faults.py`` and a few ``n`` (``PASSES``: the first trials, which
are seeds, to late ones, retries among them), a fresh study is run by a real driver process that
SIGKILLs itself at the n-th pass through the point
(``EFFNAS_KILL_AT=point:n``), then run again to the end. The trials the dead driver left RUNNING
are sorted into kinds: ``seed`` (a seed design), ``pre-screened`` (in a pre-screening pool or
chosen by it), ``retry`` (a failed trial queued again), ``warm-started`` (the kill hit a study that
imported another's trials) and ``plain`` (drawn by the sampler, nothing else). Every round is then
checked; the counts must all be 0:

- ``lost``: a result recorded before the kill changed or vanished, or an interrupted trial that had
  drawn (or carried a seed) was not queued again;
- ``twice``: an architecture trained (or imported) twice; ``budget``: the budget not met exactly;
- ``left``: trials left RUNNING or WAITING; ``seed``: a seed not trained exactly once with its own
  knobs over every epoch (never stopped at a rung); ``import``: the source study not imported
  exactly once; ``screened``: a trial pre-screening had chosen screened again;
- ``failed``: the run after the kill did not end cleanly.

The studies (``CASES``): ``simulated`` (NAS-Bench-Macro replayed with 4-epoch curves and the rung
rule, two seeds, a warm start, simulated failures and retries: every point but ``screened`` and
``unbeaten``, which the driver passes only with pre-screening or on a server database);
``postgres`` (the same study on a private PostgreSQL server, for ``unbeaten``); ``prescreen`` (the
digits study on Ray with seeds, pre-screening and failing first attempts, stand-in training:
every point but ``unbeaten``; pre-screening refuses a shared database). ``exporting`` kills
``export`` midway on each finished study and checks that what it left is whole after a second one.

    python bench/fault_injection.py --ray-passes 2 2>/dev/null | tee bench/data/fault_injection.log
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from search.faults import POINTS  # noqa: E402
from search.record import read_record, trial_status  # noqa: E402
from search.storage import load_existing_study  # noqa: E402
from search.sweep._policy import budget_used  # noqa: E402

KINDS = ("seed", "pre-screened", "retry", "warm-started", "plain")
CHECKS = ("lost", "twice", "budget", "left", "seed", "import", "screened", "failed")
N_SIMULATED, N_PRESCREEN = 8, 4
NBM_SEEDS = [{"family": "nas_bench_macro", "name": "all-k3", "knobs": {"layer": [1] * 8}},
             {"family": "nas_bench_macro", "name": "all-k5", "knobs": {"layer": [2] * 8}}]

# A driver process; on a server database its heartbeat is 1 s (a trial is stale after 6 s).
DRIVER = """
import sys
if len(sys.argv) > 3:
    import search.storage
    search.storage.HEARTBEAT_S = int(sys.argv[3])
from search import testing
from search.config import load_study
from search.sweep import Sweep
fn = sys.argv[2]
Sweep(load_study(sys.argv[1]), trial_fn=getattr(testing, fn) if fn != "-" else None, log=lambda _: None).run()
"""


@dataclass
class Case:
    """A study to kill: its file, the stand-in trial function (Ray), the points it passes."""

    name: str
    raw: Callable[[Path, str], dict]       # (folder, study name) -> study file
    points: tuple
    trial_fn: str = "-"
    heartbeat_s: int | None = None
    prescreened: bool = False
    warm_source: str | None = None         # the warm-start source's URL


# -- the studies ------------------------------------------------------------------------------------

def simulated_raw(folder: Path, name: str, storage: str | None = None, source: str | None = None) -> dict:
    """NAS-Bench-Macro replayed with rising 4-epoch curves and the rung rule; seeds, a warm start
    and simulated failures (two retries each)."""
    from studies import curve_table, simulated_raw as base, with_changes

    table = folder.parent / "curves.json.gz"
    if not table.exists():
        curve_table(table)
    raw = with_changes(base(folder), {
        "study": name, "budget": {"n_trials": N_SIMULATED}, "seeds": NBM_SEEDS, "execution__table": str(table),
        "execution__failure_rate": 0.3, "retry": {"max_retries": 2},
        "fidelity": {"epochs": 4, "asha": {"grace_period": 1, "reduction_factor": 2}}})
    if storage:
        raw["storage"] = storage
    if source:
        raw["warm_start"] = {"storage": source, "study": "source"}
    return raw


def source_study(folder: Path) -> str:
    """The warm start's source: the simulated study trained without seeds or failures; its URL."""
    from search.config import parse_study
    from search.sweep import Sweep

    raw = simulated_raw(folder / "source", "source")
    for key in ("seeds", "retry"):
        raw.pop(key)
    raw["execution"]["failure_rate"] = 0.0
    raw["budget"]["n_trials"] = 6
    cfg = parse_study(raw, str(folder / "source.yaml"))
    Sweep(cfg, log=lambda _: None).run()
    return cfg.storage_url


def prescreen_raw(folder: Path, name: str) -> dict:
    """The digits study on Ray: seeds, pre-screening (pools of 4, half kept), one retry."""
    from studies import TINY_SLIMCONV, corner_seeds, digits_raw, with_changes

    return with_changes(digits_raw(folder), {
        "study": name, "budget": {"n_trials": N_PRESCREEN}, "seeds": corner_seeds("slimconv", TINY_SLIMCONV),
        "prescreen": {"proxy": "synflow", "pool": 4, "keep": 0.5}, "proxies": {"names": ["synflow"], "batch_size": 8},
        "retry": {"max_retries": 1}, "resources": {"cpus_per_trial": 1, "max_concurrent": 1}, "ray": {"num_cpus": 1}})


DRIVER_POINTS = tuple(p for p in POINTS if p != "exporting")


def cases(folder: Path, postgres_url: str | None, ray: bool) -> list[Case]:
    source = source_study(folder)
    out = [Case("simulated", lambda f, n: simulated_raw(f, n, source=source),
                tuple(p for p in DRIVER_POINTS if p not in ("screened", "unbeaten")), warm_source=source)]
    if postgres_url:
        out.append(Case("postgres", lambda f, n: simulated_raw(f, n, storage=postgres_url, source=source),
                        ("unbeaten",), heartbeat_s=1, warm_source=source))
    if ray:
        out.append(Case("prescreen", prescreen_raw, tuple(p for p in DRIVER_POINTS if p != "unbeaten"),
                        trial_fn="flaky_trial", prescreened=True))
    return out


# -- a driver process ---------------------------------------------------------------------------------

def subprocess_driver(folder: Path, study: Path, case: Case, kill_at: str | None) -> int:
    """Run the study's driver in a fresh process (as `python -m search run` would); its exit status."""
    (folder / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k not in ("EFFNAS_KILL_AT", "RAY_ADDRESS")}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'tests'}"
    if kill_at:
        env["EFFNAS_KILL_AT"] = kill_at
    argv = [sys.executable, str(folder / "driver.py"), str(study), case.trial_fn]
    argv += [str(case.heartbeat_s)] if case.heartbeat_s else []
    with open(folder / "driver.log", "a") as log:
        return subprocess.run(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600).returncode


# -- what a kill caught, and what must hold after it ---------------------------------------------------------

def caught(trials, case: Case) -> set[str]:
    """The kinds of the trials the dead driver left RUNNING."""
    kinds = {"warm-started"} if case.warm_source else set()
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        is_seed, is_retry = "seed" in t.user_attrs, t.user_attrs.get("retry_of") is not None
        kinds |= {k for k, hit in (("seed", is_seed), ("retry", is_retry)) if hit}
        if case.prescreened and not is_seed:
            kinds.add("pre-screened")
        elif not (is_seed or is_retry or case.prescreened):
            kinds.add("plain")
    return kinds


def results(trials) -> dict:
    """Trial number -> (values, params) of every trial that reached a result."""
    return {t.number: (tuple(t.values or ()), t.params) for t in trials if trial_status(t) in ("trained", "stopped")}


def _lost(trials, before: dict) -> int:
    after = results(trials)
    changed = sum(1 for n, v in before.items() if after.get(n) != v)
    copied = {t.user_attrs.get("retry_of") for t in trials}
    dropped = sum(1 for t in trials if trial_status(t) == "interrupted" and t.number not in copied
                  and (t.params or t.system_attrs.get("fixed_params")))
    return changed + dropped


def _twice(trials) -> int:
    keys = Counter(read_record(t).arch_key for t in trials if trial_status(t) in ("trained", "stopped", "imported"))
    return sum(n - 1 for n in keys.values() if n > 1)


def _bad_seeds(trials, raw: dict) -> int:
    """Seeds not trained exactly once, with their own knobs, over every epoch (a seed whose every
    attempt failed, as simulated failures may have it, is not counted)."""
    epochs, bad = raw["fidelity"]["epochs"], 0
    for seed in raw.get("seeds", []):
        mine = [t for t in trials if t.user_attrs.get("seed") == seed["name"]]
        runs = [t for t in mine if trial_status(t) in ("trained", "stopped")]
        if not runs and any(trial_status(t) == "failed" and t.user_attrs.get("final") for t in mine):
            continue
        ok = len(runs) == 1 and trial_status(runs[0]) == "trained" and len(read_record(runs[0]).curve or []) == epochs
        bad += not (ok and read_record(runs[0]).knobs == {**read_record(runs[0]).knobs, **seed["knobs"]})
    return bad


def _bad_import(trials, case: Case) -> int:
    if not case.warm_source:
        return 0
    source = sorted(t.number for t in load_existing_study(case.warm_source, "source").get_trials()
                    if trial_status(t) == "trained")
    imported = sorted(t.user_attrs["imported_from"]["number"] for t in trials if "imported_from" in t.user_attrs)
    return int(imported != source)


def _screened_again(trials) -> int:
    kept = {t.number for t in trials if t.user_attrs.get("prescreen_kept")}
    return sum(1 for t in trials if t.user_attrs.get("retry_of") in kept and trial_status(t) == "screened")


def problems(trials, raw: dict, case: Case, before: dict) -> Counter:
    return Counter({
        "lost": _lost(trials, before), "twice": _twice(trials),
        "budget": int(budget_used(trials) != raw["budget"]["n_trials"]),
        "left": sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials),
        "seed": _bad_seeds(trials, raw), "import": _bad_import(trials, case), "screened": _screened_again(trials)})


# -- rounds -------------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One (case, point): kills delivered, kinds caught, problems found, over its rounds."""

    rounds: int = 0
    kills: int = 0
    caught: Counter = field(default_factory=Counter)
    problems: Counter = field(default_factory=Counter)


def _study_name(case: Case, point: str, n: int) -> str:
    return f"{case.name}_{point}_{n}_{os.getpid()}_{time.time_ns() % 10**9}"


def one_round(folder: Path, case: Case, point: str, n: int, driver=subprocess_driver) -> tuple[bool, set, Counter]:
    """Kill a fresh study's driver at ``point:n``, run it again; (killed?, kinds caught, problems)."""
    folder.mkdir(parents=True)
    name = _study_name(case, point, n)
    raw = case.raw(folder, name)
    if raw["execution"]["backend"] == "simulated":  # other simulated failures each round
        raw["execution"]["seed"] = n
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    url = raw.get("storage") or f"sqlite:///{folder / 'run' / 'study.db'}"
    killed = driver(folder, path, case, f"{point}:{n}") == -signal.SIGKILL
    trials = load_existing_study(url, name).get_trials() if killed else []
    kinds, before = caught(trials, case) if killed else set(), results(trials)
    rc = driver(folder, path, case, None)
    found = problems(load_existing_study(url, name).get_trials(), raw, case, before)
    found["failed"] = int(rc != 0)
    return killed, kinds, found


# The n of point:n, from the first trials (seeds) to late ones (retries); a point passed less often
# than n is not killed (its row says so).
PASSES = {"simulated": (1, 3, 6, 11), "postgres": (1, 2, 3, 5), "prescreen": (1, 3, 5)}
POINT_PASSES = {"epoch": (1, 6, 11, 15), "retry_queued": (1, 2, 3)}


def passes_of(case: Case, point: str, k: int) -> tuple:
    own = POINT_PASSES.get(point) if case.name == "simulated" else None
    return (own or PASSES[case.name])[:k]


def run_cell(root: Path, case: Case, point: str, ns, driver=subprocess_driver) -> Cell:
    cell = Cell()
    for n in ns:
        killed, kinds, found = one_round(root / f"{case.name}-{point}-{n}", case, point, n, driver)
        cell.rounds += 1
        cell.kills += killed
        cell.caught.update(kinds)
        cell.problems.update(found)
    return cell


def export_round(folder: Path, study: Path) -> Counter:
    """`export` SIGKILLed midway, then again: what the first left is whole, the second completes."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "EFFNAS_KILL_AT": "exporting:1"}
    out = folder / "export"
    cmd = [sys.executable, "-m", "search", "export", str(study), "--out", str(out)]
    killed = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, timeout=600).returncode == -signal.SIGKILL
    whole = all(json.loads(p.read_text()) is not None for p in out.glob("*.json"))
    no_temp = not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]
    env.pop("EFFNAS_KILL_AT")
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, timeout=600).returncode == 0
    complete = done and {"pareto.csv", "pareto.json", "pareto.html"} <= {p.name for p in out.iterdir()}
    return Counter(kills=int(killed), lost=int(not (whole and no_temp)), failed=int(not complete))


def export_cell(root: Path, case: Case) -> Cell:
    study = sorted(root.glob(f"{case.name}-*/study.yaml"))[-1]  # a finished study of the case
    found = export_round(study.parent, study)
    return Cell(rounds=1, kills=found.pop("kills"), problems=found)


# -- the report ----------------------------------------------------------------------------------------------

def table(cells: dict[tuple[str, str], Cell]) -> list[str]:
    head = f"{'case':<10} {'point':<13} {'rounds':>6} {'kills':>5} | " + " ".join(f"{k:>12}" for k in KINDS)
    head += " | " + " ".join(f"{c:>8}" for c in CHECKS)
    lines = [head, "-" * len(head)]
    total = Cell()
    for (case, point), c in cells.items():
        lines.append(f"{case:<10} {point:<13} {c.rounds:>6} {c.kills:>5} | "
                     + " ".join(f"{c.caught[k]:>12}" for k in KINDS) + " | "
                     + " ".join(f"{c.problems[k]:>8}" for k in CHECKS))
        total.rounds, total.kills = total.rounds + c.rounds, total.kills + c.kills
        total.caught.update(c.caught)
        total.problems.update(c.problems)
    lines.append("-" * len(head))
    lines.append(f"{'all':<10} {'':<13} {total.rounds:>6} {total.kills:>5} | "
                 + " ".join(f"{total.caught[k]:>12}" for k in KINDS) + " | "
                 + " ".join(f"{total.problems[k]:>8}" for k in CHECKS))
    return lines


def _postgres():
    from pg_server import start_postgres

    try:
        return start_postgres()
    except RuntimeError as e:
        print(f"no PostgreSQL server ({e}): `unbeaten` not run", flush=True)
        return None, lambda: None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=4, help="kills per point on the simulated studies (of PASSES)")
    ap.add_argument("--ray-passes", type=int, default=3, help="kills per point on the Ray pre-screening study")
    ap.add_argument("--no-ray", action="store_true", help="leave out the Ray pre-screening study")
    ap.add_argument("--no-postgres", action="store_true", help="leave out the PostgreSQL study (`unbeaten`)")
    ap.add_argument("--points", nargs="*", default=list(POINTS), help="only these points")
    args = ap.parse_args()
    print(f"python bench/fault_injection.py {' '.join(sys.argv[1:])}  ({time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} CPUs)", flush=True)
    t0 = time.perf_counter()
    url, stop = (None, lambda: None) if args.no_postgres else _postgres()
    cells: dict[tuple[str, str], Cell] = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            for case in cases(root, url, ray=not args.no_ray):
                k = args.ray_passes if case.name == "prescreen" else args.passes
                for point in (p for p in case.points if p in args.points):
                    cells[(case.name, point)] = cell = run_cell(root, case, point, passes_of(case, point, k))
                    print(f"{case.name} {point}: {cell.kills}/{cell.rounds} killed, caught {dict(cell.caught)}, "
                          f"problems {dict(+cell.problems)}", flush=True)
                if "exporting" in args.points:
                    cells[(case.name, "exporting")] = export_cell(root, case)
    finally:
        stop()
    print("\n".join(table(cells)))
    print(f"({time.perf_counter() - t0:.0f} s; kinds: kills that caught at least one trial of the kind in flight)")


if __name__ == "__main__":
    main()
