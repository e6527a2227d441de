"""What is specific to the simulated backend (its contract is tests/test_contract_simulated.py): a
sweep is a function of its seed, the clock orders events by simulated time and continues across a
resume, records say they were simulated, bad tables and proposals the table lacks are one error
each, and ``budget.max_trials`` ends a sweep whose space is smaller than its budget."""
from __future__ import annotations

import gzip
import json

import pytest

from search.exceptions import StudyFileError, TableError
from search.record import read_record, trial_status
from search.sweep import Sweep
from search.sweep.backends import EpochReport, Finished, TrialSpec
from search.sweep.backends.simulated import SimulatedBackend
from search.tables import TableEntry, load_table, write_table
from studies import NBM_TABLE, simulated_study, trials_of


def _run(cfg, n_more=None):
    return Sweep(cfg, n_more=n_more, log=lambda _: None).run()


def _values(cfg) -> list:
    return [(t.number, trial_status(t), t.params, t.values) for t in trials_of(cfg)]


def test_a_sweep_is_a_function_of_its_seeds(tmp_path):
    changes = {"budget": {"n_trials": 40, "max_stalls": 500}, "sampler": {"name": "tpe", "seed": 3},
               "execution__workers": 3, "execution__seed": 5}
    a = simulated_study(tmp_path / "a", **changes)
    b = simulated_study(tmp_path / "b", **changes)
    _run(a)
    _run(b)
    assert _values(a) == _values(b)
    c = simulated_study(tmp_path / "c", **{**changes, "execution__seed": 6})
    _run(c)
    assert [v[3] for v in _values(c)] != [v[3] for v in _values(a)]  # other recorded runs drawn


def test_records_carry_simulated_time_and_the_clock_goes_on_after_a_resume(tmp_path):
    cfg = simulated_study(tmp_path, budget={"n_trials": 8}, execution__workers=2)
    first = _run(cfg)
    recs = [read_record(t) for t in trials_of(cfg) if trial_status(t) == "trained"]
    assert all(r.extra["simulated"] is True and r.extra["sim_end"] > r.extra["sim_start"] for r in recs)
    # Two workers: at most two trials overlap at any simulated moment.
    for r in recs:  # at each start, r and at most one other are running
        at = r.extra["sim_start"]
        assert sum(1 for o in recs if o.extra["sim_start"] <= at < o.extra["sim_end"]) <= 2
    end = max(r.extra["sim_end"] for r in recs)
    assert first.clock_seconds == pytest.approx(end)
    _run(cfg, n_more=2)
    later = [read_record(t) for t in trials_of(cfg)[len(recs):] if trial_status(t) == "trained"]
    assert later and min(r.extra["sim_start"] for r in later) >= end


def test_the_clock_orders_events_by_simulated_time(tmp_path):
    table = load_table(NBM_TABLE)
    fast, slow = sorted(table.entries[:50], key=lambda e: e.seconds)[::49]
    backend = SimulatedBackend(table, workers=2, seed=0, cost_constraints=lambda c: {}, epochs=1)
    backend.start(None, None)
    for token, entry in ((1, slow), (2, fast)):
        backend.submit(token, TrialSpec(number=token, family=entry.family, knobs=entry.knobs, train={},
                                        checkpoint_dir=""))
    order = [e for _ in range(2) for e in backend.next_events() if isinstance(e, Finished)]
    assert [e.token for e in order] == [2, 1]
    assert backend.clock() == pytest.approx(slow.seconds)
    assert order[0].outcome.busy_seconds == pytest.approx(fast.seconds)


def test_max_trials_ends_a_sweep_whose_space_is_smaller_than_its_budget(tmp_path):
    one = {"families": {"nas_bench_macro": {"knobs": {f"layer.{i}": 1 for i in range(8)}}}}
    cfg = simulated_study(tmp_path, budget={"n_trials": 5, "max_trials": 4, "max_stalls": 100}, **one)
    summary = _run(cfg)
    assert summary.trained == 1 and summary.duplicate == 3 and len(trials_of(cfg)) == 4


def _bad_table(tmp_path, mutate) -> str:
    raw = json.loads(gzip.decompress(NBM_TABLE.read_bytes()))
    raw["architectures"] = raw["architectures"][:20]
    mutate(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return str(path)


@pytest.mark.parametrize("mutate,message", [
    (lambda raw: raw.pop("epochs"), "epochs"),
    (lambda raw: raw["architectures"][3].update(val_acc=[[1.5]]), "[0, 1]"),
    (lambda raw: raw["architectures"][3].update(epoch_seconds=[0]), "positive"),
    (lambda raw: raw["provenance"].pop("data"), "provenance.data"),
])
def test_a_bad_table_is_one_error_naming_the_file(tmp_path, mutate, message):
    path = _bad_table(tmp_path, mutate)
    with pytest.raises((StudyFileError, TableError), match="bad.json") as info:
        cfg = simulated_study(tmp_path, execution__table=path)
        Sweep(cfg, log=lambda _: None).preflight()
    assert message in str(info.value)
    assert not (tmp_path / "run").exists()


def test_a_missing_table_and_missing_families_are_refused_when_the_study_is_read(tmp_path):
    with pytest.raises(StudyFileError, match="execution.table.*no such table"):
        simulated_study(tmp_path, execution__table=str(tmp_path / "absent.json.gz"))
    with pytest.raises(StudyFileError, match="execution.table.*name its file"):
        simulated_study(tmp_path, execution__table=None)
    with pytest.raises(StudyFileError, match="fidelity.epochs.*1 epoch"):
        simulated_study(tmp_path, fidelity={"epochs": 4})


def test_a_space_beyond_the_table_is_refused_before_anything_is_written(tmp_path):
    table = load_table(NBM_TABLE)
    kept = [e for e in table.entries if e.knobs["layer"][0] != 2]  # architectures with layer 0 = 2 are absent
    small = write_table(tmp_path / "small.json.gz", name="part", epochs=1, provenance=dict(table.provenance),
                        entries=[TableEntry(e.family, e.knobs, e.params, e.macs, e.runs, e.epoch_seconds) for e in kept])
    cfg = simulated_study(tmp_path, execution__table=str(small), budget={"n_trials": 30})
    with pytest.raises(TableError, match="families.nas_bench_macro: the space reaches .* does not hold"):
        Sweep(cfg, log=lambda _: None).preflight()  # what `validate` runs: refused before anything is written
    assert not (tmp_path / "run").exists()
    # A space the probes cannot tell from the table (it lacks one corner they never drew) still stops
    # the sweep with one error naming the architecture, at the proposal that reaches it.
    backend = SimulatedBackend(load_table(small), workers=1, seed=0, cost_constraints=lambda c: {}, epochs=1)
    with pytest.raises(TableError, match="holds no nas_bench_macro architecture"):
        backend.price(0, "nas_bench_macro", {"layer": [2, 0, 0, 0, 0, 0, 0, 0]})


def _without_layer0_2(tmp_path) -> Path:
    table = load_table(NBM_TABLE)
    kept = [e for e in table.entries if e.knobs["layer"][0] != 2]
    return write_table(tmp_path / "part.json.gz", name="part", epochs=1, provenance=dict(table.provenance),
                       entries=[TableEntry(e.family, e.knobs, e.params, e.macs, e.runs, e.epoch_seconds) for e in kept])


def test_match_nearest_serves_a_proposal_the_table_lacks_by_its_nearest_architecture(tmp_path):
    table = load_table(NBM_TABLE)  # six architectures: layers 2-7 at 0, layer 0 never 2
    kept = [e for e in table.entries if e.knobs["layer"][0] != 2 and not any(e.knobs["layer"][2:])]
    small = load_table(write_table(tmp_path / "six.json.gz", name="six", epochs=1, provenance=dict(table.provenance),
                                   entries=[TableEntry(e.family, e.knobs, e.params, e.macs, e.runs, e.epoch_seconds)
                                            for e in kept]))
    cfg = simulated_study(tmp_path, execution__table=small.path, execution__match="nearest",
                          budget={"n_trials": 5, "max_stalls": 500}, sampler={"name": "random", "seed": 1})
    Sweep(cfg, log=lambda _: None).preflight()  # the space reaches beyond the table: allowed now
    _run(cfg)
    trials = trials_of(cfg)
    for t in trials:
        rec, proposed = read_record(t), _proposed_layer(t)
        entry = small.lookup("nas_bench_macro", rec.knobs)
        assert entry is not None  # every record is a recorded architecture, priced as recorded
        assert (rec.params, rec.macs) == (entry.params, entry.macs)
        # the nearest: layer 0 at 2 is nearer 1 than 0; layer 1 as proposed; layers 2-7 are 0 in
        # every entry, so they do not tell entries apart
        assert rec.knobs["layer"] == [min(proposed[0], 1), proposed[1]] + [0] * 6
    trained = [str(read_record(t).knobs["layer"]) for t in trials if trial_status(t) == "trained"]
    assert len(trained) == 5 and len(set(trained)) == 5  # proposals served by one architecture train it once
    assert "duplicate" in [trial_status(t) for t in trials]


def _proposed_layer(trial) -> list[int]:
    """What the sampler proposed (the trial's parameters), whatever the table served."""
    return [int(trial.params[f"nas_bench_macro.layer.{i}"]) for i in range(8)]


def test_match_must_be_a_known_rule_on_the_simulated_backend(tmp_path):
    with pytest.raises(StudyFileError, match="execution.match.*'closest'.*valid: exact, nearest"):
        simulated_study(tmp_path, execution__match="closest")
    from studies import digits_raw, with_changes
    from search.config import parse_study

    raw = with_changes(digits_raw(tmp_path), {"execution__match": "nearest"})
    with pytest.raises(StudyFileError, match="execution.match.*simulated only"):
        parse_study(raw, str(tmp_path / "t.yaml"))


def test_the_plateau_watch_measures_growth_over_its_window():
    from search.sweep._plateau import Plateau

    watch = Plateau(window=2, min_gain=0.05, directions=["maximize", "minimize"], objectives=["accuracy", "macs"])
    watch.note([0.5, 1e6])
    watch.note([0.6, 1e7])  # reference fixed here: accuracy 0.5 - 0.01, log10 MACs 7 + 0.1
    assert watch.history == [pytest.approx(0.1 * 0.1 + 0.01 * 1.1)]
    watch.note([0.7, 1e5])  # a new corner: the front grows
    assert watch.history[-1] > watch.history[0] * 2
    watch.note([0.55, 1e5])  # dominated: nothing
    assert not watch.flat  # it grew within the last two
    watch.note([0.56, 1e6])  # dominated too: two trained trials without growth
    assert watch.history[-1] == watch.history[-3] and watch.flat


def test_stop_when_flat_ends_a_sweep_whose_front_stopped_improving(tmp_path):
    changes = {"budget": {"n_trials": 300, "max_stalls": 500, "stop_when_flat": {"window": 20, "min_gain": 0.01}},
               "sampler": {"name": "tpe", "seed": 0}}
    cfg = simulated_study(tmp_path, **changes)
    lines: list[str] = []
    summary = Sweep(cfg, log=lines.append).run()
    assert 40 <= summary.trained < 300
    assert any("stopped early (budget.stop_when_flat)" in ln for ln in lines)
    # Run again: the watch is rebuilt from the study and the sweep stays stopped.
    assert Sweep(cfg, log=lambda _: None).run().trained == 0


def test_status_and_export_report_the_simulated_clock(tmp_path):
    from search.export import export_study
    from search.status import status_dict
    from search.storage import load_existing_study

    cfg = simulated_study(tmp_path, budget={"n_trials": 6})
    summary = _run(cfg)
    study = load_existing_study(cfg.storage_url, cfg.study)
    s = status_dict(study, cfg.storage_url)
    assert s["simulated_seconds"] == pytest.approx(summary.clock_seconds)
    assert s["hypervolume_over_time"]["clock"].startswith("simulated")
    assert s["hypervolume_over_time"]["seconds"][-1] == pytest.approx(summary.clock_seconds, abs=0.1)
    doc = export_study(study, tmp_path / "out", log=lambda _: None)
    assert doc["simulated_seconds"] == pytest.approx(summary.clock_seconds)
