"""Warm start (``search.warm_start``) on hand-made source studies, without Ray: every reason a
source trial cannot be imported is a counted skip, and the source file is only ever read.

The end-to-end cases (a real source sweep, imports once, seeds never stopped) are in ``test_seeds.py``.
"""
from __future__ import annotations

import math
import sqlite3

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from search.config import parse_study
from search.proposal import family_spaces
from search.record import arch_key
from search.warm_start import IMPORTED_FROM, import_trials

DATA_META = {"num_classes": 10, "image_size": 16, "in_channels": 1}


def _cfg(tmp_path, source_url: str):
    return parse_study({"study": "dst", "run_dir": str(tmp_path / "dst"),
                        "data": {"dataset": "digits", "val_size": 200, "image_size": 16},
                        "families": {"slimconv": {"knobs": {"groups": [1, 2], "base_width": [8, 16]}}},
                        "warm_start": {"storage": source_url, "study": "src"}}, str(tmp_path / "dst.yaml"))


def _source_trial(cfg, groups: int, width: int = 8, val_acc: float = 0.5, record=None):
    fidelity = cfg.fidelity_key()
    knobs = {"groups": groups, "base_width": width}
    rec = {"family": "slimconv", "knobs": knobs, "arch_key": arch_key("slimconv", knobs, fidelity),
           "fidelity": fidelity, **DATA_META, "val_acc": val_acc, "macs": 1000 * width, "params": 100 * width}
    return optuna.trial.create_trial(
        params={"family": "slimconv", "slimconv.groups": groups, "slimconv.base_width": width},
        distributions={"family": CategoricalDistribution(("slimconv",)),
                       "slimconv.groups": CategoricalDistribution((1, 2, 4)),  # the source searched wider
                       "slimconv.base_width": IntDistribution(8, 64, step=8)},
        values=[0.5, 1000.0 * width, 100.0 * width],
        user_attrs={"status": "trained", "family": "slimconv", "record": rec if record is None else record})


def _source(tmp_path, *kinds):
    """A plain Optuna SQLite study (rollback journal, as Optuna leaves it) holding ``kinds``."""
    path = tmp_path / "src.db"
    url = f"sqlite:///{path}"
    cfg = _cfg(tmp_path, url)
    study = optuna.create_study(study_name="src", storage=url, directions=["maximize", "minimize", "minimize"])
    study.add_trials([_source_trial(cfg, **kind) for kind in kinds])
    return cfg, path


def test_every_trial_that_cannot_be_imported_is_a_counted_skip(tmp_path):
    cfg, _ = _source(tmp_path,
                     {"groups": 2},                                  # importable
                     {"groups": 4},                                  # a choice this study left out: '4' not in (1, 2)
                     {"groups": 1, "width": 16, "val_acc": math.nan},  # no usable accuracy
                     {"groups": 1, "record": "not a record"})        # a record this version cannot read
    study = optuna.create_study(study_name="dst", directions=cfg.directions)
    report = import_trials(cfg, study, family_spaces(cfg), cfg.fidelity_key(), DATA_META)
    assert report.imported == 1 and sum(report.skipped.values()) == 3
    assert report.skipped == {"outside this study's knob ranges": 1, "missing accuracy or costs": 1,
                              "with a record this study cannot read": 1}
    assert "skipped 3: " in report.message() and "1 outside this study's knob ranges" in report.message()
    (imported,) = study.get_trials()
    assert imported.params["slimconv.groups"] == 2 and imported.user_attrs[IMPORTED_FROM]["number"] == 0


def test_the_source_database_is_only_read(tmp_path):
    """Another study's SQLite file: never switched to WAL, no side files, not one byte changed."""
    cfg, path = _source(tmp_path, {"groups": 2})
    before = path.read_bytes()
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # precondition
    study = optuna.create_study(study_name="dst", directions=cfg.directions)
    assert import_trials(cfg, study, family_spaces(cfg), cfg.fidelity_key(), DATA_META).imported == 1
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith("src.db")) == ["src.db"]
