"""Study-file parsing: the valid files load, and each bad input is one clear error naming the key."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from search.config import load_study, parse_study
from search.exceptions import StudyFileError

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "studies").glob("*.yaml"))

BASE = {
    "study": "t",
    "data": {"dataset": "digits", "val_size": 100},
    "families": {"rsnet": {}, "condensenet": {"knobs": {}}},
    "budget": {"n_trials": 3},
    "fidelity": {"epochs": 2},
}


def _with(path: str, value):
    raw = copy.deepcopy(BASE)
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return raw


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_shipped_studies_load(path):
    cfg = load_study(path)
    assert cfg.families and cfg.budget.n_trials > 0


def test_defaults_and_types():
    cfg = parse_study(copy.deepcopy(BASE), "s.yaml")
    assert cfg.objectives == ("accuracy", "macs", "params")
    assert cfg.directions == ["maximize", "minimize", "minimize"]
    assert cfg.storage_url == "sqlite:///runs/t/study.db"
    assert cfg.sampler.name == "tpe" and cfg.fidelity.asha is None
    assert isinstance(cfg.train.lr, float)


BAD = [
    (_with("studdy", "x"), "studdy", "unknown key"),
    (_with("data.datset", "x"), "data.datset", "unknown key"),
    (_with("data.dataset", "imagenet"), "data.dataset", "unknown dataset"),
    (_with("data.val_size", "many"), "data.val_size", "expected an integer"),
    (_with("data.val_size", 0), "data.val_size", "must be > 0"),
    (_with("data.image_size", -8), "data.image_size", "must be > 0"),
    (_with("data.dataset", "npz"), "data.root", "needs the folder"),
    (_with("budget.n_trials", 0), "budget.n_trials", "must be > 0"),
    (_with("budget.n_trials", 2.5), "budget.n_trials", "expected an integer"),
    (_with("budget.n_trials", True), "budget.n_trials", "expected an integer"),
    (_with("fidelity.epochs", "ten"), "fidelity.epochs", "expected an integer"),
    (_with("fidelity.asha", {"grace_period": 5}), "fidelity.asha.grace_period", "below fidelity.epochs"),
    (_with("fidelity.asha", {"reduction_factor": 1}), "fidelity.asha.reduction_factor", ">= 2"),
    (_with("fidelity.asha", {"grace": 1}), "fidelity.asha.grace", "unknown key"),
    (_with("fidelity.asha", {"rank": "hypervolume"}), "fidelity.asha.rank", "expected 'pareto' or 'accuracy'"),
    (_with("objectives", ["accuracy", "flops"]), "objectives[1]", "unknown objective"),
    (_with("objectives", ["macs", "params"]), "objectives", "must include 'accuracy'"),
    (_with("objectives", ["accuracy", "macs", "macs"]), "objectives", "twice"),
    (_with("objectives", "accuracy"), "objectives", "expected a list"),
    (_with("constraints.max_macs", -1), "constraints.max_macs", "must be > 0"),
    (_with("constraints.max_flops", 1e6), "constraints.max_flops", "unknown key"),
    (_with("sampler.name", "cmaes-mo"), "sampler.name", "unknown sampler"),
    (_with("resources.gpus_per_trial", 1.5), "resources.gpus_per_trial", "whole number"),
    (_with("resources.cpus_per_trial", 0), "resources.cpus_per_trial", "must be > 0"),
    (_with("ray.address", "not an address"), "ray.address", "ray://"),
    (_with("storage", "runs/x/study.db"), "storage", "SQLAlchemy URL"),
    (_with("study", "../escape"), "study", "folder name"),
    (_with("families", {}), "families", "at least one family"),
    (_with("families", {"mobilenet": {}}), "families.mobilenet", "unknown family"),
    (_with("families", {"rsnet": {"knobz": {}}}), "families.rsnet.knobz", "unknown key"),
    (_with("families", {"rsnet": {"knobs": {"no_such_knob": 3}}}), "families.rsnet.knobs", "unknown knob"),
    (_with("train.momentum", 1.5), "train.momentum", r"\[0, 1\)"),
    (_with("retry.max_retries", -1), "retry.max_retries", ">= 0"),
    (_with("proxies.names", ["synflow", "zen"]), "proxies.names[1]", "unknown proxy 'zen'"),
    (_with("proxies.batch_size", 1), "proxies.batch_size", ">= 2"),
    (_with("proxies.names", "synflow"), "proxies.names", "expected a list"),
    (_with("proxies.names", ["snip"]) | {"prescreen": {"proxy": "synflow"}}, "prescreen.proxy", "or add it there"),
    (_with("prescreen", {"proxy": "jacob_cov"}), "prescreen.proxy", "unknown proxy 'jacob_cov'"),
    (_with("prescreen", {"pool": 1}), "prescreen.pool", ">= 2"),
    (_with("prescreen", {"keep": 1.0}), "prescreen.keep", r"\(0, 1\)"),
    (_with("prescreen", {"keep": 0}), "prescreen.keep", r"\(0, 1\)"),
    (_with("prescreen", {"pool": 3, "keep": 0.9}), "prescreen.keep", "keeps all of a pool of 3"),
    (_with("prescreen", {"pool": 4, "bogus": 1}), "prescreen.bogus", "unknown key"),
    (_with("prescreen", {}) | {"storage": "postgresql://u@h/db"}, "prescreen", "one driver per study"),
    ({k: v for k, v in BASE.items() if k != "families"}, "families", "required key is missing"),
    ([1, 2], "", "must be a YAML mapping"),
]


@pytest.mark.parametrize("raw,key,message", BAD, ids=[b[1] or "top" for b in BAD])
def test_bad_inputs_name_the_key(raw, key, message):
    with pytest.raises(StudyFileError, match=message) as info:
        parse_study(raw, "bad.yaml")
    assert str(info.value).startswith(f"bad.yaml: {key}")


def test_proxies_are_off_by_default_and_prescreen_scores_its_own():
    assert parse_study(BASE, "s.yaml").proxies.names == ()
    cfg = parse_study(_with("prescreen", {"proxy": "naswot"}), "s.yaml")
    assert cfg.proxies.names == ("naswot",)
    both = parse_study(_with("proxies.names", ["synflow", "naswot"]) | {"prescreen": {"proxy": "naswot"}}, "s.yaml")
    assert both.proxies.names == ("synflow", "naswot")


def test_knob_override_outside_range_is_rejected():
    from space.registry import get_family

    space = get_family("rsnet").search_space()
    name, dist = next((k, d) for k, d in space.items() if hasattr(d, "high") and not isinstance(d.high, bool))
    raw = _with("families", {"rsnet": {"knobs": {name.split(".", 1)[1]: dist.high * 10 + 1}}})
    with pytest.raises(StudyFileError, match="outside the family's range"):
        parse_study(raw, "bad.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("study: x\nfamilies: {rsnet: {}\n")
    with pytest.raises(StudyFileError, match=r"s.yaml: line \d+, column \d+: not valid YAML"):
        load_study(p)


def test_missing_file(tmp_path):
    with pytest.raises(StudyFileError, match="no such file"):
        load_study(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("study: !!python/object/apply:os.system ['echo hacked']\nfamilies: {rsnet: {}}\n")
    with pytest.raises(StudyFileError, match="not valid YAML"):
        load_study(p)


def test_relative_data_root_is_relative_to_study_file(tmp_path):
    p = tmp_path / "sub" / "s.yaml"
    p.parent.mkdir()
    raw = _with("data", {"dataset": "npz", "root": "../data", "val_size": 10})
    p.write_text(yaml.safe_dump(raw))
    assert load_study(p).data.root == str((tmp_path / "data").resolve())


def test_the_family_names_known_without_torch_are_the_registered_ones():
    from search.config import FAMILIES
    from space.registry import get_family, list_families

    # Families from outside space/ (a shipped study's family_modules) may be registered by now.
    builtin = [n for n in list_families() if get_family(n).build.__module__.startswith("space.")]
    assert list(FAMILIES) == builtin
