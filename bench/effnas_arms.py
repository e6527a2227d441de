"""effnas's arms of the search benchmark (``bench/search_benchmark.py``): the real sweep driver,
policy, sampler, rung rule and SQLite study on the simulated backend, over the benchmark's table.

``run_effnas(table_path, settings, seed, variant)`` runs one study and returns its trials as the
benchmark's evaluation dicts (the contract in ``bench/search_benchmark.py``'s docstring). Variants:

- ``effnas``: the defaults a user gets (the study file's defaults: sampler, Pareto ASHA where the
  table has curves, the retry and stall rules);
- ``effnas-nsga2``, ``effnas-tpe``, ``effnas-gp``, ``effnas-random``: the defaults with that sampler;
- ``effnas-noasha``: the defaults without the rung rule;
- ``effnas-tpe-mv``: TPE modelling the knobs jointly, with running trials told as "liars" (so
  asynchronous workers do not all sample the same point); ``effnas-nsga2-p24``: NSGA-II with a
  population of 24 (candidates for the default).

Same rules as every arm: ``settings["workers"]`` simulated workers, the simulated-time budget
(``budget.time_limit_s`` on the simulated clock: no trial starts after it; trials that would end
after it are reported ``unfinished``), the MACs limit as a study constraint (priced before training:
no worker time), the benchmark seed as the sampler seed and the backend's draw of recorded runs,
the benchmark's seed designs as study seeds, and at most ``max_proposals`` proposals.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NBM_FAMILY = REPO / "examples" / "nas_bench_macro" / "family.py"
SAMPLERS = {"effnas-nsga2": "nsga2", "effnas-tpe": "tpe", "effnas-gp": "gp", "effnas-random": "random",
            "effnas-tpe-mv": "tpe", "effnas-nsga2-p24": "nsga2"}
# Candidate defaults: sampler options beyond the library's own defaults.
OPTIONS = {"effnas-tpe-mv": {"multivariate": True, "constant_liar": True},  # joint model, running trials as liars
           "effnas-nsga2-p24": {"population_size": 24}}


def study_raw(table, settings: dict, seed: int, variant: str, run_dir: Path) -> dict:
    """The study file of one arm's run (a dict, as ``parse_study`` reads it)."""
    from search.config import SamplerSection

    families = sorted(table.families())
    raw = {"study": "bench", "run_dir": str(run_dir), "data": {"dataset": "cifar10"},
           "families": {f: {} for f in families}, "objectives": list(settings["objectives"]),
           "execution": {"backend": "simulated", "table": settings["table_path"], "workers": settings["workers"],
                         "seed": seed},
           "sampler": {"name": SAMPLERS.get(variant, SamplerSection().name), "seed": seed,
                       "options": OPTIONS.get(variant, {})},
           "budget": {"n_trials": settings["max_proposals"], "max_trials": settings["max_proposals"],
                      "max_stalls": settings["max_zero_cost_streak"], "time_limit_s": settings["budget_seconds"]},
           "fidelity": {"epochs": table.epochs}}
    if "nas_bench_macro" in families:
        raw["family_modules"] = [str(NBM_FAMILY)]
    if settings.get("max_macs"):
        raw["constraints"] = {"max_macs": float(settings["max_macs"])}
    if table.epochs > 1 and variant != "effnas-noasha":
        raw["fidelity"]["asha"] = {"grace_period": 1, "reduction_factor": 2}
    designs = settings.get("seed_designs") or []
    if designs:
        raw["seeds"] = [{"family": d["family"], "knobs": d["knobs"], "name": f"design-{i}"} for i, d in enumerate(designs)]
    return raw


def evaluations(trials, budget_seconds: float) -> list[dict]:
    """The study's trials as evaluation dicts, in proposal order."""
    from search.record import read_record, trial_status

    out, clock = [], 0.0
    for t in sorted(trials, key=lambda t: t.number):
        rec, status = read_record(t), str(trial_status(t))
        start, end = rec.extra.get("sim_start"), rec.extra.get("sim_end")
        if start is None:  # settled without a worker: at no cost, when it was proposed
            start = end = clock
        clock = max(clock, start)
        if status in ("trained", "stopped") and end > budget_seconds + 1e-9:
            status = "unfinished"
        if status not in ("trained", "stopped", "infeasible", "duplicate", "unfinished"):
            continue  # failed/interrupted/surplus: none in a simulated run without failures
        row = {"trial": len(out), "family": rec.family, "knobs": rec.knobs, "start": start, "end": end,
               "status": status, "accuracy": rec.val_acc if status in ("trained", "stopped") else None,
               "run": rec.extra.get("sim_run"), "epochs": (rec.epochs or 0) if status != "duplicate" else 0,
               "macs": rec.macs, "params": rec.params}
        if status == "duplicate":
            row["duplicate_of"] = rec.duplicate_of
        out.append(row)
    return out


def run_effnas(table_path: str, settings: dict, seed: int, variant: str) -> list[dict]:
    import optuna

    from search.config import parse_study
    from search.exceptions import SearchSpaceExhausted
    from search.storage import load_existing_study
    from search.sweep import Sweep
    from search.tables import load_table

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = load_table(table_path)
    with tempfile.TemporaryDirectory(prefix="effnas-arm-") as tmp:
        cfg = parse_study(study_raw(table, settings, seed, variant, Path(tmp) / "run"), str(Path(tmp) / "bench.yaml"))
        try:
            Sweep(cfg, log=lambda _: None, progress="quiet").run()
        except SearchSpaceExhausted:  # every proposal of the last max_stalls was free: the run ends as the others do
            pass
        trials = load_existing_study(cfg.storage_url, cfg.study).get_trials(deepcopy=False)
        return evaluations(trials, settings["budget_seconds"])
