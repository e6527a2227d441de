"""Stand-in trial functions for tests and benchmarks of the orchestrator (no training).

They follow the worker's trial-function contract, ``fn(spec, data, report) -> result dict``, and live
in the package (not in tests/) so Ray workers can import them by name.
"""
from __future__ import annotations

import hashlib
import json
import os

__all__ = ["cheap_trial", "recipe_echo_trial", "curve_trial", "slow_curve_trial", "flaky_trial", "failing_trial", "nonfinite_trial", "dying_trial",
           "sleeping_trial", "bulk_add_trials"]


def _pseudo_accuracy(spec: dict) -> float:
    digest = hashlib.sha1(json.dumps(spec["knobs"], sort_keys=True).encode()).hexdigest()
    return int(digest[:6], 16) / 0xFFFFFF


def _result(acc: float, epochs: int) -> dict:
    return {"status": "trained", "val_acc": acc, "val_loss": 1 - acc, "test_acc": acc, "epochs": epochs,
            "train_seconds": 0.0, "latency_ms": None, "deploy_max_abs_diff": 0.0, "checkpoint": None}


def cheap_trial(spec: dict, data, report) -> dict:
    """Returns at once with a deterministic pseudo-accuracy of the architecture."""
    acc = _pseudo_accuracy(spec)
    report({"epoch": 1, "val_acc": acc, "val_loss": 1 - acc})
    return _result(acc, 1)


def recipe_echo_trial(spec: dict, data, report) -> dict:
    """cheap_trial that also returns the training recipe it was sent (kept in the record's extras)."""
    return {**cheap_trial(spec, data, report), "train_sent": dict(spec["train"])}


def curve_trial(spec: dict, data, report) -> dict:
    """Reports a rising curve per epoch and stops when the scheduler says so (ASHA tests)."""
    top = _pseudo_accuracy(spec)
    epochs = spec["train"]["epochs"]
    for epoch in range(1, epochs + 1):
        acc = top * epoch / epochs
        if not report({"epoch": epoch, "val_acc": acc, "val_loss": 1 - acc}) and epoch < epochs:
            return {**_result(acc, epoch), "status": "stopped"}
    return _result(top, epochs)


def slow_curve_trial(spec: dict, data, report) -> dict:
    """curve_trial at 0.6 s per epoch: long enough for the driver to see each epoch (progress tests)."""
    import time

    def paced(metrics: dict) -> bool:
        time.sleep(0.6)
        return report(metrics)

    return curve_trial(spec, data, paced)


def flaky_trial(spec: dict, data, report) -> dict:
    """Fails the first attempt of every third trial (its retry, another trial number, trains)."""
    if spec["number"] % 3 == 0 and spec["number"] < 6:
        raise RuntimeError(f"simulated failure in trial {spec['number']}")
    return cheap_trial(spec, data, report)


def failing_trial(spec: dict, data, report) -> dict:
    raise RuntimeError(f"simulated failure in trial {spec['number']}")


def nonfinite_trial(spec: dict, data, report) -> dict:
    from trainers.train import NonFiniteLossError

    raise NonFiniteLossError(epoch=1, step=3)


def dying_trial(spec: dict, data, report) -> dict:
    """The worker process dies (as under the OOM killer or SIGKILL)."""
    os._exit(1)


def sleeping_trial(spec: dict, data, report) -> dict:
    """Trains "for ever" (a minute): for tests that stop a running trial."""
    import time

    time.sleep(60)
    return cheap_trial(spec, data, report)


def bulk_add_trials(url: str, study_name: str, trials: list) -> None:
    """Write finished trials (``optuna.trial.create_trial`` objects) of an existing SQLite study with
    bulk inserts into Optuna's schema: 100,000 trials in seconds, where ``Study.add_trials`` takes
    about 15 ms each. For tests and benchmarks that need large studies; the rows are the ones Optuna
    writes (numbers follow the trials already there)."""
    import json
    import sqlite3

    import optuna
    from optuna.distributions import distribution_to_json

    from search.storage import sqlite_path

    study = optuna.load_study(study_name=study_name, storage=url)
    with sqlite3.connect(sqlite_path(url)) as con:
        study_id = con.execute("SELECT study_id FROM studies WHERE study_name = ?", (study_name,)).fetchone()[0]
        next_id = con.execute("SELECT COALESCE(MAX(trial_id), 0) FROM trials").fetchone()[0] + 1
        number = len(study.trials)
        rows, values, attrs, params = [], [], [], []
        for i, t in enumerate(trials):
            tid = next_id + i
            rows.append((tid, number + i, study_id, t.state.name,
                         t.datetime_start.isoformat(" ") if t.datetime_start else None,
                         t.datetime_complete.isoformat(" ") if t.datetime_complete else None))
            values += [(tid, k, v, "FINITE") for k, v in enumerate(t.values or [])]
            attrs += [(tid, k, json.dumps(v)) for k, v in t.user_attrs.items()]
            params += [(tid, name, t.distributions[name].to_internal_repr(v), distribution_to_json(t.distributions[name]))
                       for name, v in t.params.items()]
        con.executemany("INSERT INTO trials (trial_id, number, study_id, state, datetime_start, datetime_complete) "
                        "VALUES (?, ?, ?, ?, ?, ?)", rows)
        con.executemany("INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (?, ?, ?, ?)", values)
        con.executemany('INSERT INTO trial_user_attributes (trial_id, "key", value_json) VALUES (?, ?, ?)', attrs)
        con.executemany("INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                        "VALUES (?, ?, ?, ?)", params)
