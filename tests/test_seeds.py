"""Seeds and warm start on a real local Ray instance and real SQLite studies (stand-in trials).

Seeds are trained first and once (``test_faults.py`` kills drivers of a seeded study), are never
stopped at a rung, and ``status`` says which front member dominates each. Warm start brings another study's
trained trials in without training them again, once, and only those of the same fidelity. The
bad-seed and bad-warm-start cases are in ``test_bad_inputs.py``.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from search.asha import Asha
from search.config import parse_study
from search.pareto import dominates, pareto_front
from search.record import read_record, trial_status
from search.seeds import SEED_ATTR
from search.status import status_dict
from search.storage import load_existing_study
from search.sweep import Sweep
from search import testing
from space.registry import get_preset, knobs_json

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

TINY_SLIM = {"layers.0": 1, "layers.1": 1, "layers.2": 1, "layers.3": 1, "base_width": [8, 16],
             "groups": 1, "width_mult": [1, 2], "stem": "cifar"}
SLIM_SEED = {"family": "slimconv", "name": "slim-8", "knobs": {"layers": [1, 1, 1, 1], "base_width": 8, "stem": "cifar"}}
SEEDS = ["igcv2-c64-d8", SLIM_SEED]


def _raw(tmp_path: Path, name: str = "s", **changes) -> dict:
    raw = {
        "study": name, "run_dir": str(tmp_path / name),
        "data": {"dataset": "digits", "val_size": 200, "image_size": 16},
        "families": {"igcv2": {}, "slimconv": {"knobs": TINY_SLIM}},
        "seeds": copy.deepcopy(SEEDS),
        "budget": {"n_trials": 5}, "fidelity": {"epochs": 1}, "sampler": {"name": "random", "seed": 3},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2},
    }
    raw.update(copy.deepcopy(changes))
    return raw


def _cfg(tmp_path: Path, name: str = "s", **changes):
    return parse_study(_raw(tmp_path, name, **changes), str(tmp_path / f"{name}.yaml"))


@pytest.fixture(scope="module")
def digits():
    from trainers.data import DataConfig, load_data

    return load_data(DataConfig(dataset="digits", val_size=200, image_size=16))


def _seed_trials(study) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in study.get_trials():
        if SEED_ATTR in t.user_attrs:
            out.setdefault(t.user_attrs[SEED_ATTR], []).append(t)
    return out


def test_seeds_are_trained_first_once_and_reported_against_the_front(tmp_path, ray_local, digits, warm_python):
    cfg = _cfg(tmp_path, budget={"n_trials": 8})
    Sweep(cfg, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run()
    study = load_existing_study(cfg.storage_url, cfg.study)
    seeds = _seed_trials(study)
    assert sorted(seeds) == ["igcv2-c64-d8", "slim-8"]
    assert sorted(t.number for ts in seeds.values() for t in ts) == [0, 1]  # asked before the sampler was
    for name, (t,) in seeds.items():
        assert trial_status(t) == "trained"
        assert t.params == {"family": read_record(t).family}  # the sampler sees the family, not the knobs
    preset = read_record(seeds["igcv2-c64-d8"][0])
    assert preset.knobs == yaml.safe_load(yaml.safe_dump(knobs_json(get_preset("igcv2-c64-d8").knobs)))
    assert (preset.num_classes, preset.image_size, preset.in_channels) == (10, 16, 1)  # adapted to the data

    front = pareto_front(study)
    s = status_dict(study)
    assert [e["name"] for e in s["seeds"]] == ["igcv2-c64-d8", "slim-8"]
    for e in s["seeds"]:
        values = list(e["values"].values())
        beaters = [m.number for m in front if dominates(list(m.values.values()), values, [1, -1, -1])]
        assert e["dominated_by"] == (beaters[0] if beaters else None)
        assert e["n_dominating"] == len(beaters)
        if not beaters:
            assert e["trained_in"] in [m.number for m in front]
    hv = s["hypervolume"]
    assert hv["front"] >= hv["seeds"] > 0  # the front holds the seeds' trials too
    out = warm_python.search("status", "--storage", cfg.storage_url, "--study", cfg.study, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})  # forked warm: tests/warm.py
    assert out.returncode == 0, out.stderr
    assert "seeds (2):" in out.stdout and "seeds alone" in out.stdout

    Sweep(cfg, n_more=2, trial_fn=testing.cheap_trial, data=digits, log=lambda _: None).run()
    study = load_existing_study(cfg.storage_url, cfg.study)
    assert {k: len(v) for k, v in _seed_trials(study).items()} == {"igcv2-c64-d8": 1, "slim-8": 1}
    assert sum(trial_status(t) == "trained" for t in study.get_trials()) == 10


ASHA = {"epochs": 4, "asha": {"grace_period": 1, "reduction_factor": 2, "rank": "accuracy"}}


@pytest.fixture(scope="module")
def source_study(tmp_path_factory, ray_local, digits):
    """A finished study to warm-start from: curves of 4 epochs, some trials stopped at rungs."""
    cfg = _cfg(tmp_path_factory.mktemp("source"), "src", seeds=[], fidelity=ASHA, budget={"n_trials": 10})
    Sweep(cfg, trial_fn=testing.curve_trial, data=digits, log=lambda _: None).run()
    return cfg


def test_warm_start_imports_trained_trials_once_and_seeds_are_never_stopped(tmp_path, source_study, digits):
    src = load_existing_study(source_study.storage_url, "src").get_trials()
    src_trained = {read_record(t).arch_key for t in src if trial_status(t) == "trained"}
    n_stopped = sum(trial_status(t) == "stopped" for t in src)
    assert src_trained and n_stopped  # precondition: both kinds to import or skip
    warm = {"storage": source_study.storage_url, "study": "src"}
    lines: list[str] = []
    cfg = _cfg(tmp_path, "dst", fidelity=ASHA, budget={"n_trials": 3}, warm_start=warm)
    summary = Sweep(cfg, trial_fn=testing.curve_trial, data=digits, log=lines.append).run()
    assert (f"imported {len(src_trained)} trained trial(s); skipped {n_stopped}: {n_stopped} not trained to full "
            f"fidelity there") in "\n".join(lines)
    assert summary.trained + summary.stopped == 3
    study = load_existing_study(cfg.storage_url, cfg.study)
    imported = [t for t in study.get_trials() if trial_status(t) == "imported"]
    assert {read_record(t).arch_key for t in imported} == src_trained
    assert all(t.values is not None and t.distributions for t in imported)  # the sampler's history
    mine = [t for t in study.get_trials() if trial_status(t) in ("trained", "stopped")]
    assert not {read_record(t).arch_key for t in mine} & src_trained  # never trained again
    assert {m.number for m in pareto_front(study)} & {t.number for t in imported}  # real results: on the front

    # The seeds met a rung table full of imported results; the rule would stop one, yet both trained to the end.
    rule = Asha(1, 2, 4, rank="accuracy")
    for t in imported:
        rule.record_curve(read_record(t).curve)
    seeds = [ts[0] for ts in _seed_trials(study).values()]
    assert any(not copy.deepcopy(rule).should_continue(1, read_record(t).curve[0]) for t in seeds), \
        "precondition: the rung rule would stop at least one seed"
    assert all(trial_status(t) == "trained" and read_record(t).fidelity_reached == 4 for t in seeds)

    lines.clear()  # a rerun imports nothing again (it imports before it finds the budget met)
    assert Sweep(cfg, trial_fn=testing.curve_trial, data=digits, log=lines.append).run().trained == 0
    assert f"imported 0 trained trial(s), {len(src_trained)} imported by an earlier run" in "\n".join(lines)

    other = _cfg(tmp_path, "far", seeds=[], budget={"n_trials": 1}, fidelity={"epochs": 2}, warm_start=warm)
    lines.clear()
    Sweep(other, trial_fn=testing.cheap_trial, data=digits, log=lines.append).run()
    log = "\n".join(lines)
    assert f"imported 0 trained trial(s); skipped {len(src)}: " in log
    assert f"{len(src_trained)} trained at another fidelity" in log and f"{n_stopped} not trained to full" in log


def test_a_seed_design_gets_the_familys_defaults_for_the_knobs_it_leaves_out():
    """Absent knobs of a *design* are the family's defaults (RSNet: no shuffle, the paper's choice),
    not what an absent knob means in a stored record (the shuffled units of older studies)."""
    from search.config import FamilySection
    from search.seeds import parse_seeds

    (seed,) = parse_seeds([{"family": "rsnet", "knobs": {"groups": 4}}], {"rsnet": FamilySection()}, "s.yaml")
    assert seed.knobs.shuffle is False and seed.knobs_dict["shuffle"] is False


def test_seeds_are_queued_as_chosen_so_pre_screening_never_screens_them_out(tmp_path):
    """Pre-screening keeps a share of each pool by a proxy: a seed, the user's own design, must
    train whatever its proxy score (it used to be pooled like any proposal and could be screened)."""
    import optuna

    from search.lineage import PRESCREEN_KEPT_ATTR
    from search.sweep._start import enqueue_seeds

    cfg = _cfg(tmp_path, prescreen={"proxy": "synflow", "pool": 4, "keep": 0.5})
    study = optuna.create_study(directions=cfg.directions)
    enqueue_seeds(cfg, study, lambda _: None)
    queued = study.get_trials(deepcopy=False)
    assert len(queued) == 2 and all(t.user_attrs[PRESCREEN_KEPT_ATTR] is True for t in queued)
