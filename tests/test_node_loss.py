"""A Ray worker node lost for good in the middle of a sweep, on both Ray backends (a real cluster on
this machine): the trial it ran fails as its worker died and is retried, and the sweep finishes on
the node left; when no node left has room for a trial, the sweep ends with one clear error instead
of waiting for a place that never comes.

One cluster serves the module: a head of no CPU (the drivers' node, which is never lost, so no
trial runs there) and worker nodes of one CPU each, added and removed test by test. Trials hold
after their first epoch until the node is gone, so the node killed always has a trial training."""
from __future__ import annotations

import functools
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from search import testing
from search.config import parse_study
from search.exceptions import ResourcesError
from search.record import read_record, trial_status
from search.sweep import Sweep
from studies import digits_raw, trials_of, with_changes

pytestmark = pytest.mark.slow
BACKENDS = ["actors", "tune"]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    with pytest.MonkeyPatch.context() as env:
        # A lost node is noticed within about a second (Ray's default is about 15 s).
        env.setenv("RAY_health_check_period_ms", "500")
        env.setenv("RAY_health_check_failure_threshold", "2")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def _with_workers(cluster, n: int) -> None:
    """Exactly ``n`` live worker nodes of one CPU each."""
    for node in list(cluster.worker_nodes)[n:]:
        cluster.remove_node(node)
    while len(cluster.worker_nodes) < n:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()


def _held_trial(spec: dict, data, report, go: str) -> dict:
    """``curve_trial``, each epoch held until the file ``go`` exists (the test's nodes share this
    machine's files), 30 s at most."""
    def held(metrics: dict) -> bool:
        goes_on = report(metrics)
        deadline = time.monotonic() + 30
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.05)
        return goes_on

    return testing.curve_trial(spec, data, held)


def _study(tmp_path, cluster, backend: str, n_trials: int, epochs: int):
    raw = with_changes(digits_raw(tmp_path, backend), {
        "budget": {"n_trials": n_trials}, "fidelity": {"epochs": epochs}, "ray": {"address": cluster.address},
        "retry": {"max_retries": 1}})
    return parse_study(raw, str(tmp_path / "t.yaml"))


class _LoseANode:
    """The sweep's log: once ``trials`` distinct trials reported an epoch (so that many nodes train,
    one trial each, held), a worker node is killed, as a machine that goes away would be, and then
    the trials are let go on."""

    def __init__(self, cluster, trials: int, go: Path):
        self.cluster, self.trials, self.go, self.seen = cluster, trials, go, set()
        self.lost = threading.Event()
        self.at = None

    def __call__(self, line: str) -> None:
        found = re.search(r"trial (\d+) \S+ epoch \d+/", line)
        if found:
            self.seen.add(found.group(1))
        if len(self.seen) >= self.trials and not self.lost.is_set():
            self.lost.set()
            self.at = time.monotonic()
            threading.Thread(target=self._lose, args=(next(iter(self.cluster.worker_nodes)),), daemon=True).start()

    def _lose(self, node) -> None:
        _kill_node(self.cluster, node)
        self.go.touch()


def _kill_node(cluster, node) -> None:
    """Kills a worker node as a machine that goes away: its Ray processes and its trials' worker
    processes at once (``remove_node`` kills the node's own processes only, and a worker left to
    notice its raylet is gone could still finish its trial meanwhile)."""
    import psutil

    workers = psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True)
    cluster.remove_node(node, False)
    for process in workers:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _run(cfg, log: _LoseANode, timeout_s: float):
    """The sweep in a thread: (its summary or None, the error it raised or None)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    trial_fn = functools.partial(_held_trial, go=str(log.go))
    done, errors = [], []

    def run() -> None:
        try:
            done.append(Sweep(cfg, trial_fn=trial_fn, log=log).run())
        except Exception as e:
            errors.append(e)

    sweep = threading.Thread(target=run, daemon=True)
    sweep.start()
    sweep.join(timeout=timeout_s)
    assert log.lost.is_set(), "no trial reported an epoch"
    assert not sweep.is_alive(), f"the sweep still waited {time.monotonic() - log.at:.0f} s after its node was lost"
    return (done or [None])[0], (errors or [None])[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_worker_node_leaves_the_sweep_to_finish_on_the_node_left(tmp_path, cluster, backend):
    _with_workers(cluster, 2)
    cfg = _study(tmp_path, cluster, backend, n_trials=2, epochs=2)
    summary, error = _run(cfg, _LoseANode(cluster, trials=2, go=tmp_path / "go"), timeout_s=60)
    assert error is None and summary is not None, error
    trials = trials_of(cfg)
    died = [t for t in trials if read_record(t).failure_kind == "worker_died"]
    assert died and [trial_status(t) for t in trials].count("trained") == 2
    assert all(any(r.user_attrs.get("retry_of") == t.number and trial_status(r) == "trained" for r in trials)
               for t in died)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_node_that_leaves_no_room_for_a_trial_ends_the_sweep_with_one_clear_error(tmp_path, cluster, backend):
    _with_workers(cluster, 1)
    cfg = _study(tmp_path, cluster, backend, n_trials=2, epochs=2)
    log = _LoseANode(cluster, trials=1, go=tmp_path / "go")
    summary, error = _run(cfg, log, timeout_s=60)
    waited = time.monotonic() - log.at
    # The CLI prints an effnas error as its one line and exits 1 (search.cli.main).
    assert isinstance(error, ResourcesError), error
    message = str(error)
    assert "\n" not in message and message.startswith(cfg.path) and "(0 CPU)" in message
    assert "1 CPU, 0 GPU each" in message and "add a node and `run` again" in message
    assert waited < 20, f"the error came {waited:.0f} s after the node was lost"
