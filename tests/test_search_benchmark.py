"""The search benchmark (bench/search_benchmark.py, bench/peers/): metrics against hand-computed
cases, the simulated clock, every peer adapter on a tiny table, the true front of NAS-Bench-Macro."""
from __future__ import annotations

import gzip
import json
import math
import os
import sys
from pathlib import Path

import pytest

from conftest import SHARED

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers import metrics, tables  # noqa: E402
from bench.peers.adapters import PEERS  # noqa: E402
from bench.peers.simulator import Method, simulate  # noqa: E402

NBM_RAW = SHARED / "data" / "nas-bench-macro" / "nas-bench-macro_cifar10.json"
NBM_TABLE = REPO / "examples" / "nas_bench_macro" / "table.json.gz"
STATUSES = {"trained", "stopped", "infeasible", "duplicate", "unfinished"}


# --- tiny tables ----------------------------------------------------------------------------------


def tiny_grid(n_layers: int = 3, epochs: int = 1, runs: int = 2):
    """A full grid of 3 ** n_layers architectures (27 for 3 layers): accuracy rises with cost."""
    import itertools

    rows = []
    for layer in itertools.product((0, 1, 2), repeat=n_layers):
        cost = sum(layer)
        macs = int(1e6 * (1 + cost + 0.1 * layer[0]))
        params = int(1e4 * (1 + 2 * layer[-1] + cost))
        final = 0.5 + 0.04 * cost + 0.01 * ((layer[0] * 7 + layer[1] * 3) % 5)
        curves = []
        for r in range(runs):
            last = min(final + 0.005 * r, 1.0)
            curves.append([last * (e + 1) / epochs for e in range(epochs)])
        rows.append({"family": "grid", "knobs": {"layer": list(layer)}, "params": params, "macs": macs,
                     "runs": curves, "epoch_seconds": [10.0 + macs / 1e6] * epochs})
    return tables.make_table("tiny-grid", rows, epochs)


def fixed_table(seconds: dict, macs: dict | None = None):
    """Architectures named by a letter (knobs {"name": letter}) with the given full seconds."""
    rows = []
    for i, (name, s) in enumerate(seconds.items()):
        rows.append({"family": "f", "knobs": {"name": name}, "params": 1000 * (i + 1),
                     "macs": (macs or {}).get(name, 1_000_000 * (i + 1)),
                     "runs": [[0.5 + 0.05 * i]], "epoch_seconds": [s]})
    return tables.make_table("fixed", rows, 1)


class FixedOrder(Method):
    """Proposes the given names in order; records what it is told, in order."""

    def __init__(self, names):
        self.names = list(names)
        self.told = []

    def ask(self):
        if not self.names:
            return None
        name = self.names.pop(0)
        return name, "f", {"name": name}

    def tell(self, token, values, feasible, info):
        self.told.append((token, feasible, tuple(values)))


def _settings(table, evaluations=10, workers=2, objectives=("accuracy", "macs", "params"), max_macs=None, **extra):
    mean = sum(tables.full_seconds(e) for e in table.entries) / len(table.entries)
    return {"objectives": list(objectives), "max_macs": max_macs, "workers": workers, "evaluations": evaluations,
            "budget_seconds": evaluations * mean / workers, "seed_designs": [], **extra}


def _run_fixed(table, names, budget=1e9, workers=2, max_macs=None):
    method = FixedOrder(names)
    norm = metrics.Normaliser(table)
    settings = {"budget_seconds": budget, "workers": workers, "max_macs": max_macs}
    records, note = simulate(method, table, tables.Space(table), norm, settings, seed=0)
    return method, records, note


# --- metrics --------------------------------------------------------------------------------------


def test_normalisation_scales_each_objective_over_the_table_with_costs_in_log10():
    rows = [{"family": "f", "knobs": {"i": i}, "params": p, "macs": m, "runs": [[a - 0.1], [a + 0.1]],
             "epoch_seconds": [1.0]}
            for i, (a, m, p) in enumerate([(0.5, 1e6, 1e3), (0.7, 1e7, 1e4), (0.9, 1e8, 1e5)])]
    table = tables.make_table("t", rows, 1)
    norm = metrics.Normaliser(table)
    assert norm.point(0.7, 1e7, 1e4) == pytest.approx((0.5, 0.5, 0.5))
    assert norm.entry_point(table.entries[0]) == pytest.approx((1.0, 0.0, 0.0))  # worst accuracy, cheapest
    assert norm.entry_point(table.entries[2]) == pytest.approx((0.0, 1.0, 1.0))
    assert metrics.Normaliser(table, ("macs", "accuracy")).point(0.8, 10 ** 7.5, 1) == pytest.approx((0.75, 0.25))
    with pytest.raises(ValueError):
        metrics.Normaliser(table, ("accuracy", "latency"))


def test_hypervolume_2d_by_hand():
    # two boxes up to (1, 1): 0.8 x 0.4 + 0.5 x 0.7 - overlap 0.5 x 0.4 = 0.47
    points = [(0.2, 0.6), (0.5, 0.3), (0.6, 0.7), (1.0, 0.1)]  # a dominated point; one on the reference
    assert metrics.hypervolume(points) == pytest.approx(0.47)
    assert metrics.hypervolume([]) == 0.0
    assert metrics.hypervolume([(0.25,)]) == pytest.approx(0.75)


def test_hypervolume_3d_by_hand():
    a, b, c = (0.5, 0.5, 0.5), (0.25, 0.75, 0.75), (0.75, 0.25, 0.9)
    assert metrics.hypervolume([a]) == pytest.approx(0.125)
    # a + b - (a and b): 0.125 + 0.75*0.25*0.25 - 0.5*0.25*0.25
    assert metrics.hypervolume([a, b]) == pytest.approx(0.140625)
    # inclusion-exclusion over the three boxes
    expected = 0.125 + 0.046875 + 0.01875 - 0.03125 - 0.0125 - 0.00625 + 0.00625
    assert metrics.hypervolume([c, a, b, (0.6, 0.6, 0.6)]) == pytest.approx(expected)


def test_regret_time_to_target_and_hv_over_time():
    assert metrics.regret(0.3, 0.6) == pytest.approx(0.5)
    curve = [(10.0, 0.2), (30.0, 0.5), (50.0, 0.6)]
    assert metrics.hv_at(curve, 5.0) == 0.0 and metrics.hv_at(curve, 40.0) == 0.5 and metrics.hv_at(curve, 50.0) == 0.6
    assert metrics.time_to_target(curve, 0.5) == 30.0
    assert metrics.time_to_target(curve, 0.45) == 30.0
    assert metrics.time_to_target(curve, 0.7) is None
    assert metrics.time_to_target(curve, None) is None


def test_median_time_to_target_is_when_the_median_run_gets_there():
    a, b, c = [(10.0, 0.2), (30.0, 0.5)], [(20.0, 0.6)], [(40.0, 0.3)]
    # the runs' own times: 30, 20, never -> median 30
    assert metrics.median_time_to_target([a, b, c], 0.5) == 30.0
    assert metrics.quartiles([metrics.time_to_target(x, 0.5) for x in (a, b, c)])["median"] == 30.0
    assert metrics.median_time_to_target([a, b], 0.5) == 30.0  # even: mean of 0.5 and 0.6 at 30
    assert metrics.median_time_to_target([a, b], 0.55) == 30.0
    assert metrics.median_time_to_target([a, c], 0.5) is None  # median (0.5 + 0.3) / 2 < 0.5
    assert metrics.median_time_to_target([a, b, c], 0.7) is None
    assert metrics.median_time_to_target([a], None) is None


def test_quartiles_interpolate_linearly_and_never_is_null():
    assert metrics.quartiles([5, 1, 3, 2, 4]) == {"median": 3.0, "q1": 2.0, "q3": 4.0}
    assert metrics.quartiles([1, 2, 3, 4]) == {"median": 2.5, "q1": 1.75, "q3": 3.25}
    assert metrics.quartiles([1.0, None, 3.0]) == {"median": 3.0, "q1": 2.0, "q3": None}
    assert metrics.quartiles([None, None, 1.0]) == {"median": None, "q1": None, "q3": None}


def test_hv_curve_counts_full_trainings_within_the_budget_at_the_table_accuracy():
    table = fixed_table({"a": 10, "b": 10, "c": 10})
    norm = metrics.Normaliser(table, ("accuracy", "macs"))
    ev = [{"family": "f", "knobs": {"name": "c"}, "end": 5.0, "status": "trained", "epochs": 1},
          {"family": "f", "knobs": {"name": "a"}, "end": 7.0, "status": "trained", "epochs": 1},
          {"family": "f", "knobs": {"name": "b"}, "end": 8.0, "status": "duplicate", "epochs": 0},
          {"family": "f", "knobs": {"name": "b"}, "end": 20.0, "status": "trained", "epochs": 1}]
    curve = metrics.hv_curve(ev, table, norm, budget_s=10.0)
    # c: best accuracy, dearest: (0, 1) adds nothing; a: (1, 0) nothing; b beyond the budget
    assert curve == [] or all(v == 0.0 for _, v in curve)
    curve = metrics.hv_curve(ev, table, norm, budget_s=20.0)
    b = (0.5, math.log10(2) / math.log10(3))  # accuracy 0.55 of 0.5..0.6; MACs 2e6 of 1e6..3e6
    assert curve[-1][0] == 20.0 and curve[-1][1] == pytest.approx((1 - b[0]) * (1 - b[1]))


# --- the simulated clock -------------------------------------------------------------------------


def test_two_workers_complete_in_simulated_time_order():
    table = fixed_table({"A": 10.0, "B": 3.0, "C": 4.0, "D": 1.0})
    method, records, note = _run_fixed(table, "ABCD")
    assert [t for t, _, _ in method.told] == ["B", "C", "D", "A"]
    by = {r["knobs"]["name"]: r for r in records}
    assert [(by[n]["start"], by[n]["end"]) for n in "ABCD"] == [(0, 10), (0, 3), (3, 7), (7, 8)]
    assert all(r["status"] == "trained" and r["epochs"] == 1 for r in records)
    assert note["ended"] == "exhausted"


def test_over_limit_proposals_cost_no_time_and_score_nothing():
    table = fixed_table({"A": 10.0, "X": 50.0, "B": 3.0}, macs={"X": 90_000_000})
    method, records, _ = _run_fixed(table, "XAXB", max_macs=10_000_000)
    by = [(r["knobs"]["name"], r["status"], r["start"], r["end"]) for r in records]
    assert by == [("X", "infeasible", 0, 0), ("A", "trained", 0, 10), ("X", "infeasible", 0, 0),
                  ("B", "trained", 0, 3)]
    assert [(t, f) for t, f, _ in method.told][:2] == [("X", False), ("X", False)]
    assert method.told[0][2] == (1.0, 1.0, 1.0)  # the worst values


def test_duplicates_cost_no_time_and_return_the_known_result():
    table = fixed_table({"A": 10.0, "B": 3.0, "C": 1.0})
    method, records, _ = _run_fixed(table, "AABCA", workers=2)
    rows = [(r["knobs"]["name"], r["status"], r["start"], r["end"]) for r in records]
    # A trains 0-10; the second A waits for it without a worker; B 0-3; C 3-4; at t=4 A is asked again
    # while it still trains: it waits, too, and both duplicates are told A's result at 10.
    assert rows == [("A", "trained", 0, 10), ("A", "duplicate", 0, 10), ("B", "trained", 0, 3),
                    ("C", "trained", 3, 4), ("A", "duplicate", 4, 10)]
    assert [t for t, _, _ in method.told] == ["B", "C", "A", "A", "A"]
    assert len({v for t, _, v in method.told if t == "A"}) == 1


def test_trials_past_the_budget_are_unfinished_and_never_told():
    table = fixed_table({"A": 10.0, "B": 3.0, "C": 4.0})
    method, records, note = _run_fixed(table, "ABC", budget=6.0)
    assert [(r["knobs"]["name"], r["status"]) for r in records] == [("A", "unfinished"), ("B", "trained"),
                                                                      ("C", "unfinished")]
    assert [t for t, _, _ in method.told] == ["B"]
    assert note["ended"] == "budget"


def test_multi_fidelity_trials_stop_at_the_epoch_the_method_chooses():
    table = tiny_grid(n_layers=2, epochs=3, runs=1)

    class StopAtTwo(Method):
        multi_fidelity = True

        def __init__(self):
            self.rows = [e.knobs for e in table.entries[:2]]
            self.reports = []

        def ask(self):
            return (len(self.rows), "grid", self.rows.pop(0)) if self.rows else None

        def report(self, token, epoch, values):
            self.reports.append((token, epoch))
            return token != 2 or epoch < 2  # the first proposal (token 2) stops after epoch 2

        def tell(self, token, values, feasible, info):
            pass

    method = StopAtTwo()
    records, _ = simulate(method, table, tables.Space(table), metrics.Normaliser(table),
                          {"budget_seconds": 1e9, "workers": 1}, seed=0)
    first, second = records
    e0 = table.entries[0]
    assert first["status"] == "stopped" and first["epochs"] == 2 and first["end"] == pytest.approx(2 * e0.epoch_seconds[0])
    assert first["accuracy"] == e0.runs[0][1]
    assert second["status"] == "trained" and second["epochs"] == 3 and second["start"] == first["end"]
    assert method.reports == [(2, 1), (2, 2), (1, 1), (1, 2), (1, 3)]


def test_nearest_entry_stands_for_a_proposal_outside_the_table():
    rows = [{"family": "f", "knobs": {"w": w, "act": act}, "params": 10 * w, "macs": 1000 * w, "runs": [[0.5]],
             "epoch_seconds": [1.0]} for w, act in [(8, "relu"), (16, "relu"), (32, "silu")]]
    table = tables.make_table("t", rows, 1)
    space = tables.Space(table)
    assert space.resolve("f", {"w": 16, "act": "relu"}) == 1
    assert space.resolve("f", {"w": 30, "act": "silu"}) == 2
    assert space.resolve("f", {"w": 12, "act": "relu"}) == 0  # a tie: the entry listed first
    assert space.knobs_of("f", space.params_of(2)) == {"w": 32, "act": "silu"}


# --- the peers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in PEERS if n != "syne-moasha"])
def test_each_peer_runs_two_seeds_on_a_tiny_table(name):
    table = tiny_grid()  # 27 architectures
    evaluations = 6 if name == "syne-ehvi" else 16
    settings = _settings(table, evaluations=evaluations, workers=2, max_proposals=60,
                         ehvi_options={"optimization_strategy": "random", "num_raw_samples": 16, "mc_samples": 8})
    adapter = PEERS[name]()
    runs = [adapter.run(table, settings, seed) for seed in (0, 1)]
    for records in runs:
        assert records and {r["status"] for r in records} <= STATUSES
        trained = [r for r in records if r["status"] == "trained"]
        assert len(trained) >= 3
        assert all(r["end"] <= settings["budget_seconds"] for r in trained)
        keys = [tables.arch_key(r["family"], r["knobs"]) for r in trained]
        assert len(keys) == len(set(keys))  # nothing trained twice
    if name != "syne-ehvi":  # seeded: the same seed, the same run (EHVI: not checked, it is slow)
        assert adapter.run(table, settings, 0) == runs[0]


def test_moasha_reports_per_epoch_and_stops_some_trials():
    table = tiny_grid(epochs=4, runs=2)
    settings = _settings(table, evaluations=12, workers=2, max_proposals=80)
    runs = [PEERS["syne-moasha"]().run(table, settings, seed) for seed in (0, 1)]
    for records in runs:
        statuses = {r["status"] for r in records}
        assert statuses <= STATUSES and "stopped" in statuses and "trained" in statuses
        assert all(1 <= r["epochs"] < 4 for r in records if r["status"] == "stopped")


def test_optuna_learns_the_limit_as_a_constraint():
    table = tiny_grid()
    limit = sorted(e.macs for e in table.entries)[8]
    settings = _settings(table, evaluations=12, workers=2, max_macs=limit, max_proposals=80)
    for name in ("optuna-tpe", "optuna-nsga2", "syne-morea", "random"):
        records = PEERS[name]().run(table, settings, 0)
        assert all(r["macs"] <= limit for r in records if r["status"] in ("trained", "stopped"))
        assert all(r["start"] == r["end"] for r in records if r["status"] == "infeasible")
        if name == "random":
            assert not any(r["status"] == "infeasible" for r in records)  # rejected before proposing


def test_random_search_reaches_the_whole_front_of_a_small_table():
    table = tiny_grid()
    settings = _settings(table, evaluations=200, workers=2)
    records = PEERS["random"]().run(table, settings, 3)
    norm = metrics.Normaliser(table)
    _, hv_true = metrics.true_front(table, norm)
    curve = metrics.hv_curve(records, table, norm, settings["budget_seconds"])
    assert metrics.regret(metrics.hv_at(curve, settings["budget_seconds"]), hv_true) == pytest.approx(0.0, abs=1e-12)


def test_the_script_prints_the_summary_and_keeps_every_trial(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("search_benchmark", REPO / "bench" / "search_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = tiny_grid(epochs=2)
    raw = {"provenance": {"epochs": 2}, "architectures": [
        {"family": e.family, "knobs": e.knobs, "params": e.params, "macs": e.macs, "curve": list(e.runs[0]),
         "train_seconds": sum(e.epoch_seconds)} for e in table.entries]}
    path = tmp_path / "curves.json"
    path.write_text(json.dumps(raw))
    out = tmp_path / "raw.json.gz"
    assert bench.main(["--table", str(path), "--methods", "random,optuna-tpe,syne-moasha,effnas-gp", "--seeds", "3",
                       "--evaluations", "10", "--workers", "2", "--objectives", "accuracy,macs", "--json", str(out),
                       "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("random", "optuna-tpe", "syne-moasha"):
        m = doc["methods"][name]
        assert set(m["hv"]) == {"0.25", "0.5", "1.0"}
        assert all(set(q) == {"median", "q1", "q3"} for q in m["hv"].values())
        assert m["hv"]["0.25"]["median"] <= m["hv"]["1.0"]["median"] and m["regret_final_median"] >= 0
        assert "time_to_random_final_median" in m
    assert doc["methods"]["random"]["time_to_random_final_median"] is not None
    assert set(doc["methods"]["effnas-gp"]) <= {"unavailable", "hv", "regret_final_median", "time_to_random_final_median",
                                                "regret_final", "runs", "failed", "errors", "wall_seconds_per_run",
                                                "statuses", "ended", "error"}
    s = doc["settings"]
    assert s["objectives"] == ["accuracy", "macs"] and s["workers"] == 2 and s["seeds"] == [0, 1, 2]
    assert s["budget_seconds"] == pytest.approx(10 * s["mean_full_seconds"] / 2)
    with gzip.open(out, "rt") as f:
        saved = json.load(f)
    assert saved["methods"] == doc["methods"]
    run = next(r for r in saved["runs"] if r["method"] == "optuna-tpe" and r["seed"] == 1)
    trial = run["trials"][0]
    assert {"trial", "family", "knobs", "start", "end", "status", "accuracy", "run", "epochs", "macs",
            "params"} <= set(trial)

    # methods run apart, summarised together: the same figures as one run of both
    common = ["--table", str(path), "--seeds", "3", "--evaluations", "10", "--workers", "2", "--objectives",
              "accuracy,macs", "--quiet"]
    assert bench.main(common + ["--methods", "random", "--json", str(tmp_path / "a.json")]) == 0
    assert bench.main(common + ["--methods", "optuna-tpe", "--json", str(tmp_path / "b.json")]) == 0
    capsys.readouterr()
    assert bench.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    merged = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("random", "optuna-tpe"):
        for key in ("hv", "regret_final_median", "time_to_random_final_median"):
            assert merged["methods"][name][key] == doc["methods"][name][key]


# --- NAS-Bench-Macro's true front (the anchor: 177 keys, hypervolume 0.686) -------------------------


def test_the_true_front_of_nas_bench_macro_matches_the_anchor():
    if not NBM_RAW.exists():
        reason = f"NAS-Bench-Macro not found at {NBM_RAW} (set EFFNAS_SHARED to the folder holding data/)"
        if os.environ.get("EFFNAS_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    sources = [NBM_RAW] + ([NBM_TABLE] if NBM_TABLE.exists() else [])
    for source in sources:
        table, _ = tables.load(str(source))
        assert len(table.entries) == 6561
        front, hv = metrics.true_front(table, metrics.Normaliser(table))
        assert len(front) == 177, source
        assert hv == pytest.approx(0.686, abs=5e-4), source
        assert math.isclose(hv, 0.68614, abs_tol=1e-5)


@pytest.mark.parametrize("variant", ["effnas", "effnas-asha-acc"])
def test_effnas_arms_search_the_sparse_curves_table_through_its_nearest_entries(variant):
    from bench.effnas_arms import run_effnas

    path = REPO / "bench" / "data" / "cifar10_curves_table.json.gz"
    table, _ = tables.load(str(path))
    settings = {**_settings(table, evaluations=6, workers=2, max_proposals=30), "table_path": str(path),
                "max_zero_cost_streak": 30}
    records = run_effnas(str(path), settings, 0, variant)
    assert records and {r["status"] for r in records} <= STATUSES
    index = {tables.arch_key(e.family, e.knobs): e for e in table.entries}
    ran = [r for r in records if r["status"] in ("trained", "stopped")]
    assert ran and "stopped" in {r["status"] for r in ran}  # the rung rule acts on the recorded curves
    for r in ran:  # every trial is a recorded architecture, at its recorded costs and curve
        entry = index[tables.arch_key(r["family"], r["knobs"])]
        assert (r["macs"], r["params"]) == (entry.macs, entry.params)
        assert r["accuracy"] == entry.runs[0][r["epochs"] - 1]
    keys = [tables.arch_key(r["family"], r["knobs"]) for r in ran]
    assert len(keys) == len(set(keys))  # served twice, trained once
