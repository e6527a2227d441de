"""effnas's arms of the search benchmark (``bench/search_benchmark.py``): the real sweep driver,
policy, sampler, rung rule and SQLite study on the simulated backend, over the benchmark's table.

``run_effnas(table_path, settings, seed, variant)`` runs one study and returns its trials as the
benchmark's evaluation dicts (the contract in ``bench/search_benchmark.py``'s docstring). Variants:

- ``effnas``: the defaults a user gets (the study file's defaults: sampler, Pareto ASHA where the
  table has curves, the retry and stall rules);
- ``effnas-nsga2``, ``effnas-tpe``, ``effnas-gp``, ``effnas-random``: the defaults with that sampler;
- ``effnas-noasha``: the defaults without the rung rule; ``effnas-asha-acc``: the rung rule ranking
  by accuracy alone (Ray Tune's ASHA) instead of Pareto ranking;
- ``effnas-tpe-mv``: TPE modelling the knobs jointly, with running trials told as "liars" (so
  asynchronous workers do not all sample the same point); ``effnas-nsga2-p24``: NSGA-II with a
  population of 24 (candidates for the default).

A sparse table (effnas's own curves: a few hundred recorded architectures) is searched over the
space it was recorded from (the families of the recording's study file, its provenance's
``study_file``) with ``execution.match: nearest``: a proposal the table lacks is served by the
nearest recorded architecture, the rule the peers' proposals are resolved by (``Space.resolve``).
The rung rule's settings are MOASHA's in the benchmark: grace period 1, reduction factor 3.

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
    recorded_from = recording_families(table)
    raw = {"study": "bench", "run_dir": str(run_dir), "data": {"dataset": "cifar10"},
           "families": recorded_from or {f: {} for f in families}, "objectives": list(settings["objectives"]),
           "execution": {"backend": "simulated", "table": settings["table_path"], "workers": settings["workers"],
                         "seed": seed, "match": "nearest" if recorded_from else "exact"},
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
        raw["fidelity"]["asha"] = {"grace_period": 1, "reduction_factor": 3}
        if variant == "effnas-asha-acc":
            raw["fidelity"]["asha"]["rank"] = "accuracy"
    designs = settings.get("seed_designs") or []
    if designs:
        raw["seeds"] = [{"family": d["family"], "knobs": d["knobs"], "name": f"design-{i}"} for i, d in enumerate(designs)]
    return raw


def recording_families(table) -> dict | None:
    """The ``families:`` section of the study file a sparse table was recorded with (its
    provenance's ``study_file``, relative to the repository), or None for a table without one."""
    import yaml

    name = table.provenance.get("study_file")
    if not name:
        return None
    with open(REPO / name) as f:
        families = yaml.safe_load(f)["families"]
    return {f: families[f] for f in sorted(table.families())}


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
