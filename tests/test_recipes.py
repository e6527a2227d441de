"""Each family's paper recipe (``train: {recipe: paper}``, ``trainers.recipes``): the schedules as
the papers give them, scaled to the study's epochs, sent to the worker per family, and the default
recipe and the keys of existing studies left as they were."""
from __future__ import annotations

import copy

import pytest

from search import testing
from search.config import parse_study
from search.storage import load_existing_study
from search.sweep import Sweep
from trainers.data import DataConfig, load_data
from trainers.recipes import PAPER_RECIPES, paper_recipe
from trainers.train import EpochReport, TrainConfig, cosine_lr, learning_rate, train


def test_step_schedule_decays_at_the_papers_fractions_of_training():
    igcv2 = TrainConfig(epochs=10, **{k: v for k, v in paper_recipe("igcv2").items()})
    total = 400  # IGCV2: x0.1 at 200, 300 and 350 of 400 epochs
    rates = [learning_rate(igcv2, i, total) for i in (0, 199, 200, 299, 300, 349, 350, 399)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])
    rsnet = TrainConfig(epochs=10, **paper_recipe("rsnet"))
    assert [learning_rate(rsnet, i, 100) for i in (0, 50, 99)] == [cosine_lr(i, 100, 0.1) for i in (0, 50, 99)]
    assert not rsnet.nesterov and paper_recipe("condensenet")["nesterov"]  # RSNet: "Nesterov Momentum = False"
    assert paper_recipe("slimconv")["batch_size"] == 128  # ResNet's CIFAR recipe
    assert set(PAPER_RECIPES) == {"condensenet", "rsnet", "igcv2", "slimconv"}
    with pytest.raises(ValueError, match="no paper recipe for family 'resnet'"):
        paper_recipe("resnet")
    with pytest.raises(ValueError, match="increasing milestones in"):
        TrainConfig(schedule="step", milestones=(0.75, 0.5))
    with pytest.raises(ValueError, match="schedule must be 'cosine' or 'step'"):
        TrainConfig(schedule="linear")


def test_the_trainer_steps_the_rate_the_recipe_says():
    """Real training, 4 epochs of the slimconv recipe (x0.1 at 50% and 75%): the rate of each
    epoch's last step, as the loop reports it."""
    from space import get_family

    data = load_data(DataConfig(dataset="digits", val_size=100, train_size=400, image_size=8))
    family = get_family("slimconv")
    knobs = family.knobs_with(family.default_knobs(), {"layers": [1, 1, 1, 1], "base_width": 8, "stem": "cifar"})
    seen: list[float] = []

    def report(r: EpochReport) -> bool:
        seen.append(r.lr)
        return True

    cfg = TrainConfig(epochs=4, augment=False, amp=False, autotune=False, device="cpu", **paper_recipe("slimconv"))
    train("slimconv", knobs, data, cfg, report=report)
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.001])


def _study(tmp_path, recipe: str) -> dict:
    return {
        "study": f"r-{recipe}", "run_dir": str(tmp_path / recipe),
        "data": {"dataset": "digits", "val_size": 100}, "budget": {"n_trials": 8}, "fidelity": {"epochs": 2},
        "families": {"igcv2": {}, "rsnet": {}, "slimconv": {}, "condensenet": {}},
        "sampler": {"name": "random", "seed": 0}, "train": {"recipe": recipe, "batch_size": 32, "lr": 0.05},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2},
    }


def test_a_paper_recipe_study_sends_each_family_its_papers_recipe(tmp_path, ray_local):
    cfg = parse_study(copy.deepcopy(_study(tmp_path, "paper")), str(tmp_path / "p.yaml"))
    Sweep(cfg, trial_fn=testing.recipe_echo_trial, log=lambda _: None).run()
    sent = [(t.user_attrs["family"], t.user_attrs["record"]["train_sent"])
            for t in load_existing_study(cfg.storage_url, cfg.study).get_trials() if "record" in t.user_attrs]
    assert len({family for family, _ in sent}) >= 3
    for family, train_cfg in sent:
        for key, value in paper_recipe(family).items():
            assert train_cfg[key] == (list(value) if isinstance(value, tuple) else value), (family, key)
        assert train_cfg["epochs"] == 2  # scaled to the study's epochs, not the paper's
    assert cfg.fidelity_key()["recipe"] == "paper"

    default = parse_study(copy.deepcopy(_study(tmp_path, "default")), str(tmp_path / "d.yaml"))
    key = default.fidelity_key()
    assert "recipe" not in key and (key["batch_size"], key["lr"]) == (32, 0.05)  # existing studies' keys
