"""The fidelity key (``StudyConfig.fidelity_key``): every setting that changes a trial's result is
in it, listed once (``search.config.RESULT_SETTINGS``), and the keys of studies written before a
setting was listed stay as they were (the ``study_v1`` fixture's records)."""
from __future__ import annotations

import copy
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from search.config import DataSection, FidelitySection, TrainSection, parse_study
from search.record import arch_key, read_record

FIXTURE = Path(__file__).parent / "fixtures" / "study_v1.sql"
SECTIONS = {"data": DataSection, "train": TrainSection, "fidelity": FidelitySection}

# Another value of every result setting (a new entry of RESULT_SETTINGS needs one here).
OTHER = {"data.dataset": "cifar100", "data.train_size": 20000, "data.val_size": 100, "data.image_size": 16,
         "fidelity.epochs": 3, "train.batch_size": 32, "train.lr": 0.05, "train.seed": 1, "train.recipe": "paper",
         "train.momentum": 0.8, "train.weight_decay": 5e-4, "train.nesterov": False, "train.augment": False,
         "train.amp": False, "data.root": "elsewhere"}


def _study(path: str = "<memory>", **sections) -> dict:
    raw = {"study": "s", "families": {"igcv2": {}}, "data": {"dataset": "cifar10"}}
    for dotted, value in sections.items():
        section, name = dotted.split("__")
        raw.setdefault(section, {})[name] = value
    return raw


def _key(path: str = "<memory>", **sections) -> dict:
    return parse_study(_study(**sections), path).fidelity_key()


def _old_key(cfg) -> dict:
    """``fidelity_key`` as it was before momentum, weight decay, nesterov, augment, amp and the
    data folder entered it (what every stored record's ``fidelity`` and ``arch_key`` were made of)."""
    d = cfg.data
    key = {"dataset": d.dataset, "train_size": d.train_size, "val_size": d.val_size,
           "image_size": d.image_size, "epochs": cfg.fidelity.epochs,
           "batch_size": cfg.train.batch_size, "lr": cfg.train.lr, "seed": cfg.train.seed}
    if cfg.train.recipe != "default":
        key = {**key, "recipe": cfg.train.recipe, "batch_size": None, "lr": None}
    return key


def test_every_data_train_and_fidelity_setting_is_result_changing_or_declared_neutral():
    from search.config import IN_EVERY_KEY, RESULT_NEUTRAL, RESULT_SETTINGS

    listed = [setting for setting, _ in RESULT_SETTINGS.values()]
    assert len(listed) == len(set(listed)), "a setting listed twice"
    assert not set(listed) & set(RESULT_NEUTRAL), "a setting both result-changing and neutral"
    assert all(isinstance(why, str) and len(why) > 20 for why in RESULT_NEUTRAL.values()), "a neutral setting needs its reason"
    schema = {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    forgotten = schema - set(listed) - set(RESULT_NEUTRAL)
    assert not forgotten, (f"{sorted(forgotten)}: add each to search.config.RESULT_SETTINGS (it changes a trial's "
                           f"result) or to RESULT_NEUTRAL with the reason it does not")
    assert not (set(listed) | set(RESULT_NEUTRAL)) - schema, "a listed setting that the schema no longer has"
    for name, (setting, implicit) in RESULT_SETTINGS.items():
        section, field = setting.split(".")
        default = {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}[field]
        assert implicit is IN_EVERY_KEY or implicit == default, f"{name}: implicit value is not the default"
    assert set(listed) == set(OTHER), "give every result setting another value in OTHER (and no other)"


@pytest.mark.parametrize("setting", sorted(OTHER))
def test_every_result_setting_changes_the_key(setting):
    section, name = setting.split(".")
    assert _key(**{f"{section}__{name}": OTHER[setting]}) != _key()


@pytest.mark.parametrize("sections", [
    {},
    {"train__batch_size": 32, "train__lr": 0.05, "train__seed": 3, "fidelity__epochs": 2},
    {"train__recipe": "paper"},
    {"train__recipe": "paper", "train__momentum": 0.5},  # the recipe sets momentum: not the study's to change
    {"data__dataset": "digits", "data__root": "anywhere"},  # digits read no folder
    {"train__eval_test": False, "train__condensed_training": False, "data__test_size": 10, "data__download": True},
])
def test_settings_at_their_implicit_values_keep_the_old_keys(sections):
    cfg = parse_study(_study(**sections))
    assert cfg.fidelity_key() == _old_key(cfg)


def test_the_data_folder_is_keyed_relative_to_the_study_file(tmp_path):
    """A project moved or cloned elsewhere keeps its keys; another folder is another key."""
    def at(project: str, root: str):
        folder = tmp_path / project / "studies"
        return parse_study(_study(data__root=root), str(folder / "s.yaml"), base_dir=folder)

    here, moved, other = at("a", "../data"), at("b", "../data"), at("a", "../other")
    assert Path(here.data.root).is_absolute() and here.data.root != moved.data.root  # resolved paths differ
    assert here.fidelity_key()["data_root"] == "../data"
    assert here.fidelity_key() == moved.fidelity_key() != other.fidelity_key()


V1 = {"study": "v1", "data": {"dataset": "digits", "val_size": 200, "train_size": 400, "image_size": 8},
      "families": {"condensenet": {}}, "fidelity": {"epochs": 4, "asha": {"grace_period": 1, "reduction_factor": 2}},
      "constraints": {"max_params": 5000}, "sampler": {"name": "random", "seed": 3}, "retry": {"max_retries": 0}}


def test_the_v1_fixtures_records_keep_their_keys(tmp_path):
    """The study the previous record format wrote: today's key of its study file is the one its
    records carry, and it gives the same arch_key for each of them."""
    from search.storage import load_existing_study

    with sqlite3.connect(tmp_path / "study.db") as con:
        con.executescript(FIXTURE.read_text())
    trials = load_existing_study(f"sqlite:///{tmp_path / 'study.db'}", "v1").get_trials()
    cfg4 = parse_study(copy.deepcopy(V1))
    cfg1 = parse_study({**copy.deepcopy(V1), "fidelity": {"epochs": 1}})  # its last run, at one epoch
    records = [read_record(t) for t in trials if "record" in t.user_attrs]
    assert len(records) == 17
    for rec in records:
        cfg = cfg4 if rec.fidelity["epochs"] == 4 else cfg1
        assert rec.fidelity == cfg.fidelity_key()
        assert arch_key(rec.family, rec.knobs, cfg.fidelity_key()) == rec.arch_key
