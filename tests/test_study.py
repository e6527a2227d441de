"""Study storage helpers: parameters drawn in one write land exactly as drawn, on every storage."""
from __future__ import annotations

import optuna
import pytest

from search.proposal import draw as propose, family_spaces
from search.config import parse_study
from search.storage import open_storage, params_in_one_write

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spaces(tmp_path):
    cfg = parse_study({"study": "s", "run_dir": str(tmp_path), "data": {"dataset": "digits"},
                       "families": {"condensenet": {}, "slimconv": {}}}, "inline")
    return family_spaces(cfg)


def _storages(tmp_path):
    return {"sqlite": open_storage(f"sqlite:///{tmp_path / 'p.db'}", create=True),
            "memory": optuna.storages.InMemoryStorage()}


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_drawn_parameters_are_stored_as_drawn(tmp_path, kind):
    spaces = _spaces(tmp_path)
    study = optuna.create_study(storage=_storages(tmp_path)[kind], directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(6):
        trial = study.ask()
        with params_in_one_write(trial):
            family, _ = propose(trial, spaces)
            seen_inside = dict(trial.params)
        stored = study._storage.get_trial(trial._trial_id)
        assert stored.params == seen_inside and stored.params["family"] == family
        assert len(stored.params) > 5  # a family's knobs, not only the family choice
        study.tell(trial, [0.5, 1.0])


def test_one_transaction_for_all_parameters(tmp_path):
    """The point of the batching: one commit for the whole draw, not one per parameter."""
    import sqlalchemy

    storage = _storages(tmp_path)["sqlite"]
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=2))
    commits = []
    sqlalchemy.event.listen(storage.engine, "commit", lambda _conn: commits.append(1))
    spaces = _spaces(tmp_path)
    trial = study.ask()
    before = len(commits)
    with params_in_one_write(trial):
        propose(trial, spaces)
    assert len(trial.params) > 5
    assert len(commits) - before == 1


def test_incompatible_distribution_is_still_refused(tmp_path):
    """Optuna's own check (same name, other distribution) runs on the batched path too."""
    storage = _storages(tmp_path)["sqlite"]
    study = optuna.create_study(storage=storage)
    first = study.ask()
    with params_in_one_write(first):
        first.suggest_int("width", 1, 4)
        first.suggest_float("ratio", 0.1, 0.9)
    study.tell(first, 1.0)
    second = study.ask()
    with pytest.raises(ValueError):
        with params_in_one_write(second):
            second.suggest_categorical("width", ["a", "b"])
            second.suggest_float("ratio", 0.1, 0.9)
