"""Benchmark scripts refuse to report a figure for something that is wrong."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wrong_deploy(model):
    """A deploy form whose last layer is off: the same shapes, other outputs."""
    broken = copy.deepcopy(model).eval()
    with torch.no_grad():
        list(broken.parameters())[-1].add_(1.0)
    return broken


def test_deploy_latency_exits_1_when_the_deploy_form_is_wrong(monkeypatch, capsys):
    bench = _load("deploy_latency")
    monkeypatch.setattr(bench, "to_deploy", _wrong_deploy)
    assert bench.main(["--presets", "condensenet-86", "--threads", "1", "--runs", "1", "--rounds", "1",
                       "--archs", "0"]) == 1
    captured = capsys.readouterr()
    assert "computes other outputs" in captured.err and "deploy ORT /" not in captured.out


def test_deploy_latency_reports_a_ratio_for_a_correct_deploy_form(capsys):
    bench = _load("deploy_latency")
    assert bench.main(["--presets", "condensenet-86", "--threads", "1", "--runs", "1", "--rounds", "1",
                       "--archs", "2", "--rank-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "deploy ORT / masked ORT" in out and "rank agreement over 2 random architectures" in out


# -- bench/search_efficiency.py and bench/ray_tune_nsga2.py: the same limits, seeds and yardstick ------

DATA_META = {"num_classes": 10, "image_size": 16, "in_channels": 3}  # the search benchmark's data shape


def _run(arm: str, seed: int, final: float, steps: list) -> dict:
    return {"arm": arm, "seed": seed, "final_hypervolume": final, "hypervolume_steps": steps,
            "hypervolume_over_time": [], "finished_in_budget": len(steps), "refused_in_budget": 0}


def test_time_to_target_is_read_from_random_searchs_own_curves():
    bench = _load("search_efficiency")
    runs = [_run("random", 0, 0.5, [(40.0, 0.3), (200.0, 0.5)]),
            _run("random", 1, 0.7, [(30.0, 0.2), (90.0, 0.7), (250.0, 0.7)]),
            _run("random", 2, 0.9, [(60.0, 0.9)]),
            _run("effnas", 0, 0.8, [(20.0, 0.65), (100.0, 0.8)]),
            _run("effnas", 1, 0.5, [(10.0, 0.5)]),
            _run("effnas", 2, 0.9, [(45.0, 0.9)]),
            _run("ray_tune", 0, 0.6, [(70.0, 0.6)]),
            _run("ray_tune", 1, 0.65, [(80.0, 0.65)]),
            _run("ray_tune", 2, 0.8, [(280.0, 0.8)])]
    s = bench.summarise(runs)
    assert s["random_final_hypervolume"] == 0.7
    # random's own runs: never, 90 s, 60 s -> median 90 s; its median run (seed 1) got there at 90 s,
    # not at the end of the budget
    assert s["arms"]["random"]["time_to_random_final_s"] == [None, 90.0, 60.0]
    assert s["random_median_time_to_target_s"] == 90.0
    assert s["random_median_run"] == {"seed": 1, "time_to_target_s": 90.0}
    assert s["arms"]["effnas"]["time_to_random_final_s"] == [100.0, None, 45.0]
    assert s["arms"]["effnas"]["median_time_to_random_final_s"] == 100.0
    assert s["arms"]["effnas"]["median_time_vs_random"] == round(100 / 90, 3)
    # two of three never got there: no median time, not the median of the one that did
    assert s["arms"]["ray_tune"]["time_to_random_final_s"] == [None, None, 280.0]
    assert s["arms"]["ray_tune"]["median_time_to_random_final_s"] is None
    assert s["arms"]["ray_tune"]["median_time_vs_random"] is None


def test_time_to_target_steps_are_exact_finish_times():
    bench = _load("search_efficiency")
    finished = [(50.0, 0.5, 5e6, 1e5), (20.0, 0.3, 2e6, 5e4), (400.0, 0.9, 1e6, 1e4)]  # the last is late
    steps = bench.steps_of(finished, horizon_s=300.0)
    assert [t for t, _ in steps] == [20.0, 50.0]
    assert steps[1][1] > steps[0][1] > 0
    assert bench.time_to_reach(steps, steps[1][1]) == 50.0
    assert bench.curve_of(finished, 300.0)[-1][1] == steps[-1][1]


def test_random_search_keeps_the_studys_macs_limit_and_seeds(tmp_path):
    bench = _load("search_efficiency")
    study = bench._effnas_cfg("effnas", 0, 1.0, str(tmp_path))
    random = bench._effnas_cfg("random", 0, 1.0, str(tmp_path))
    assert random.sampler.name == "random" and random.fidelity.asha is None
    assert random.constraints == study.constraints and random.constraints.max_macs == 1e7
    assert [s.name for s in random.seeds] == [s.name for s in study.seeds] and len(study.seeds) == 2


def test_ray_tune_script_trains_the_seeds_first_and_refuses_over_limit_networks_untrained():
    import functools

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from search.config import load_study
    from search.proposal import family_spaces

    bench = _load("search_efficiency")
    script = _load("ray_tune_nsga2")
    cfg = load_study(bench.STUDY)
    searcher = OptunaSearch(space=functools.partial(script.define_by_run, spaces=family_spaces(cfg), cfg=cfg,
                                                    data_meta=DATA_META, seeds=tuple(cfg.seeds)),
                            metric=script.METRICS, mode=script.MODES, sampler=optuna.samplers.RandomSampler(seed=0),
                            points_to_evaluate=[{"family": s.family} for s in cfg.seeds])
    refused = []
    priced = script.RefuseOverLimit(searcher, on_refuse=refused.append)
    configs = [priced.suggest(f"t{i}") for i in range(12)]
    assert [c["design"] for c in configs[:2]] == [s.name for s in cfg.seeds]
    assert configs[0]["knobs"] == cfg.seeds[0].knobs_dict
    assert all(c["feasible"] and c["macs"] <= cfg.constraints.max_macs for c in configs)
    assert refused and all(c["macs"] > cfg.constraints.max_macs and not c["feasible"] for c in refused)
    # Optuna heard of every refusal as a finished trial with no accuracy and an infeasible constraint
    told = {t.number: t for t in searcher._ot_study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE}
    assert sorted(told) == sorted(c["number"] for c in refused)
    assert all(t.values[0] == 0.0 and t.user_attrs["constraints"][0] > 0 for t in told.values())
    # Tune's ids map to the trials it actually ran
    priced.on_trial_complete("t5", {"val_acc": 0.5, "macs": configs[5]["macs"], "params": configs[5]["params"]})
    assert searcher._ot_study.trials[configs[5]["number"]].values[0] == 0.5
