"""Each use of Optuna's private API (search/storage/_optuna_compat.py) against its public fallback:
the same rows, states and objects either way, on a real SQLite study."""
from __future__ import annotations

import pytest
import optuna
import sqlalchemy
from optuna.trial import TrialState

from search.config import parse_study
from search.proposal import draw, family_spaces
from search.storage import _optuna_compat as compat
from search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(params=[False, True], ids=["private", "public"])
def force_public(request, monkeypatch):
    monkeypatch.setattr(compat, "FORCE_PUBLIC", request.param)
    return request.param


def _study(tmp_path, name: str = "s") -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path / f'{name}.db'}"
    study = optuna.create_study(storage=open_storage(url, create=True), directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=5), study_name=name)
    return study, url


def _param_rows(url: str) -> list[tuple]:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as con:
        rows = con.execute(sqlalchemy.text(
            "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params ORDER BY trial_id, param_name")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_parameters_in_one_write_store_the_same_rows_either_way(tmp_path, monkeypatch):
    spaces = family_spaces(parse_study({"study": "s", "run_dir": str(tmp_path), "data": {"dataset": "digits"},
                                        "families": {"condensenet": {}, "rsnet": {}}}, "inline"))
    rows = {}
    for public in (False, True):
        monkeypatch.setattr(compat, "FORCE_PUBLIC", public)
        study, url = _study(tmp_path, f"p{int(public)}")
        for _ in range(4):
            trial = study.ask()
            with compat.params_in_one_write(trial):
                draw(trial, spaces)
            study.tell(trial, [0.5, 1.0])
        rows[public] = _param_rows(url)
    assert len(rows[False]) > 20 and rows[False] == rows[True]


def test_engine_is_found_either_way(tmp_path, force_public):
    study, url = _study(tmp_path)
    engine = compat.rdb_engine(study, url)
    assert engine is not None and engine.url.database.endswith("s.db")
    private = compat.FORCE_PUBLIC
    compat.FORCE_PUBLIC = not private
    try:
        assert compat.rdb_engine(study, url) is engine
    finally:
        compat.FORCE_PUBLIC = private


def test_failing_a_trial_left_running_gives_the_same_record(tmp_path, force_public):
    study, _ = _study(tmp_path)
    study.ask()
    left = study.get_trials(states=(TrialState.RUNNING,))[0]
    compat.fail_trial(study, left, {"status": "failed", "failure_reason": "interrupted"})
    after = study.trials[0]
    assert after.state == TrialState.FAIL and after.datetime_complete is not None
    assert after.user_attrs == {"status": "failed", "failure_reason": "interrupted"}


def test_trial_ids_and_storage_are_the_studys_own(tmp_path):
    study, _ = _study(tmp_path)
    trial = study.ask()
    assert compat.trial_id(trial) == study.get_trials()[0]._trial_id
    assert compat.storage_of(study).get_trial(compat.trial_id(trial)).number == trial.number


def test_stale_trial_callback_argument_is_one_rdb_storage_takes(tmp_path):
    import inspect

    (name,) = compat.stale_trial_callback_kwargs(lambda s, t: None)
    assert name in inspect.signature(optuna.storages.RDBStorage).parameters


def test_constraints_reach_the_sampler(tmp_path):
    study, _ = _study(tmp_path)
    trial = study.ask()
    compat.set_constraints(trial, {"max_macs": 0.5, "max_params": -0.2})
    stored = study.get_trials()[0]
    if compat.NATIVE_CONSTRAINTS:
        from optuna.samplers._base import _CONSTRAINTS_KEY

        assert {k: v for k, v in stored.system_attrs.items() if k.startswith(_CONSTRAINTS_KEY)} == {
            f"{_CONSTRAINTS_KEY}:max_macs": 0.5, f"{_CONSTRAINTS_KEY}:max_params": -0.2}
    else:  # older Optuna: samplers read the record's `constraints` attribute through constraints_func
        assert stored.system_attrs == {}


def test_the_single_writer_cache_reads_what_a_fresh_reader_reads(tmp_path, force_public):
    """Trials written in every way the driver writes them (asked, queued, parameters in one write,
    attributes, constraints, told, failed), read back through the driver's cache after each step,
    equal a fresh reader's view, and a trial is read again only after it was written."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    cached = compat.single_writer_cache(open_storage(url, create=True))
    import inspect

    supported = "trial_id_greater_than" in inspect.signature(optuna.storages.RDBStorage._get_trials).parameters
    assert isinstance(cached, compat.SingleWriterCache) == (supported and not force_public)
    study = optuna.create_study(storage=cached, directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=5), study_name="s")
    cfg = parse_study({"study": "s", "families": {"igcv2": {}}}, "t")

    def same_as_fresh():
        fresh = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)
        mine = study.get_trials(deepcopy=False)
        assert [(t.number, t.state, t.params, t.user_attrs, t.system_attrs, t.values) for t in mine] == \
               [(t.number, t.state, t.params, t.user_attrs, t.system_attrs, t.values) for t in fresh]

    running = [study.ask() for _ in range(3)]
    for t in running:
        with compat.params_in_one_write(t):
            draw(t, family_spaces(cfg))
        same_as_fresh()
    running[0].set_user_attr("record_pending", {"arch_key": "a"})
    compat.set_user_attrs(running[2], {"status": "trained", "family": "igcv2", "record": {"val_acc": 0.5}})
    assert running[2].user_attrs == {"status": "trained", "family": "igcv2", "record": {"val_acc": 0.5}}
    compat.set_constraints(running[0], {"max_macs": -0.5})
    same_as_fresh()
    study.tell(running[0], [0.5, 3.0])
    study.enqueue_trial(running[1].params, user_attrs={"retry_of": running[1].number})
    compat.fail_trial(study, study.get_trials(deepcopy=False)[1], {"status": "interrupted"})
    same_as_fresh()
    queued = study.ask()
    assert study.get_trials(deepcopy=False)[queued.number].state == TrialState.RUNNING
    same_as_fresh()
    if isinstance(cached, compat.SingleWriterCache):  # nothing written since: the next read asks the database nothing
        backend_reads = []
        original = cached._backend._get_trials
        cached._backend._get_trials = lambda *a, **k: backend_reads.append(k) or original(*a, **k)
        study.get_trials(deepcopy=False)
        assert backend_reads == []
        queued.set_user_attr("record_pending", {"arch_key": "b"})  # written: read again, that trial alone
        assert study.get_trials(deepcopy=False)[queued.number].user_attrs["record_pending"] == {"arch_key": "b"}
        assert [r["included_trial_ids"] for r in backend_reads] == [{compat.trial_id(queued)}]
