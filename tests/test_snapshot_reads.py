"""`status`, `trials` and `export` read one consistent snapshot while another process keeps adding
trials through Optuna (SQLite, and PostgreSQL at REPEATABLE READ): a trial created between two of
the reader's queries never makes it fail (it is either wholly in the snapshot or not at all), and
what it reads agrees with itself."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from pg_server import postgres_url  # noqa: F401  (the module-scoped server fixture)
from search.export import export_study
from search.status import status_dict, trial_rows
from search.storage import load_existing_study, read_trials
from search.storage._reader import StoredStudy, StoredTrial, open_snapshot

REPO = Path(__file__).resolve().parents[1]
READ_SECONDS = 4.0

# The writer adds trials as the driver does: ask, the pending record, the full record, tell; each a
# commit of its own, so a reader between two queries meets trials and attributes it had not seen.
WRITER = """
import os, sys, optuna
from search.record import TrialRecord, TrialStatus, write_pending, write_record
from search.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
url = sys.argv[1]
study = optuna.load_study(study_name="snap", storage=open_storage(url, create=False),  # as the driver opens it
                          sampler=optuna.samplers.RandomSampler(seed=0))
print("writing", flush=True)
n = 0
while not os.path.exists("stop"):  # until the readers are done
    t = study.ask()
    i = t.number
    t.suggest_int("width", 1, 10**6)
    rec = TrialRecord(family="alpha", knobs={"width": i}, arch_key=f"{i:016x}", macs=1000 + i, params=100 + i,
                      fidelity={"epochs": 1})
    write_pending(t, rec)
    acc = (i % 97) / 100
    write_record(t, TrialStatus.TRAINED, rec.with_outcome(val_acc=acc, epochs=1, fidelity_reached=1,
                                                        train_seconds=0.5, worker_seconds=0.6, curve=[acc]))
    study.tell(t, [acc, 1000.0 + i, 100.0 + i])
    n += 1
print(n, flush=True)
"""


def _create(url: str, n: int) -> None:
    """The study with ``n`` finished trials already: a read of thousands of rows per query leaves the
    writer time to add trials between the queries of a reader that has no snapshot."""
    import datetime as dt

    from optuna.distributions import IntDistribution
    from optuna.trial import FrozenTrial, TrialState

    from search.testing import bulk_add_trials

    study = optuna.create_study(study_name="snap", storage=url, directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("objectives", ["accuracy", "macs", "params"])
    t0 = dt.datetime(2026, 1, 1)
    done = [FrozenTrial(number=i, state=TrialState.COMPLETE, value=None, values=[0.5, 1000.0 + i, 100.0 + i],
                        datetime_start=t0, datetime_complete=t0 + dt.timedelta(seconds=1), params={"width": i + 1},
                        distributions={"width": IntDistribution(1, 10**6)}, system_attrs={}, intermediate_values={},
                        user_attrs={"status": "trained", "family": "alpha",
                                    "record": {"family": "alpha", "knobs": {"width": i}, "macs": 1000 + i,
                                               "params": 100 + i, "val_acc": 0.5}}, trial_id=-1)
            for i in range(n)]
    if url.startswith("sqlite"):
        bulk_add_trials(url, "snap", done)
    else:
        study.add_trials(done)


def _consistent(trials: list) -> None:
    """Every finished trial of a snapshot carries its values and record: nothing half-seen."""
    assert [t.number for t in trials] == list(range(len(trials)))
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert len(t.values) == 3 and t.user_attrs["status"] == "trained"
            assert t.facts["macs"] == 1000 + t.number and t.facts["family"] == "alpha"


def _hammer(url: str, tmp_path: Path, read) -> None:
    """Readers in a loop for a few seconds (and at least 6 reads) while the writer writes."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == "writing", writer.stderr.read()
        reads, seen, deadline = 0, 0, time.monotonic() + READ_SECONDS
        while time.monotonic() < deadline or reads < 6:
            assert writer.poll() is None, writer.stderr.read()
            trials = read(reads)
            _consistent(trials)
            assert len(trials) >= seen  # snapshots only move forward
            seen = len(trials)
            reads += 1
    finally:
        (tmp_path / "stop").touch()
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert int(out.strip().splitlines()[-1]) >= 3  # trials really were added while reading
    assert len(read(reads)) > seen  # ... and are read


def test_sqlite_readers_see_one_snapshot_while_trials_are_added(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _create(url, 1500)
    study = load_existing_study(url, "snap")

    def read(i: int) -> list:
        snap = open_snapshot(url, "snap")  # what the commands open
        assert isinstance(snap, StoredStudy)
        s = status_dict(snap, url)
        rows = trial_rows(snap, url)
        assert s["n_trials"] == len(rows) == len(snap.trials)
        assert len(read_trials(study, url)) >= len(snap.trials)  # an Optuna study, read by SQL
        if i in (1, 4):  # the plots make export slower: twice
            doc = export_study(snap, tmp_path / "export", log=lambda _: None, storage_url=url)
            assert doc["n_trained"] == s["statuses"].get("trained", 0)
        return snap.trials

    _hammer(url, tmp_path, read)
    final = open_snapshot(url, "snap")
    assert all(isinstance(t, StoredTrial) for t in final.trials)
    # the large attributes, fetched when read, are Optuna's own
    assert [t.user_attrs for t in final.trials[:5]] == [t.user_attrs for t in study.get_trials()[:5]]


@pytest.mark.postgres
def test_postgres_readers_see_one_snapshot_while_trials_are_added(postgres_url, tmp_path):  # noqa: F811
    _create(postgres_url, 100)
    study = load_existing_study(postgres_url, "snap")

    def read(i: int) -> list:
        trials = read_trials(study, postgres_url)  # one REPEATABLE READ transaction
        assert all(isinstance(t, StoredTrial) for t in trials)
        s = status_dict(study, postgres_url)
        assert s["n_trials"] >= len(trials)
        assert len(trial_rows(study, postgres_url)) >= s["n_trials"]
        return trials

    _hammer(postgres_url, tmp_path, read)
    trials = read_trials(study, postgres_url)
    assert [t.user_attrs for t in trials[:5]] == [t.user_attrs for t in study.get_trials()[:5]]
