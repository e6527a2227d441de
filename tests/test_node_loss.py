"""A Ray worker node lost for good in the middle of a sweep (actors backend, a real two-node cluster
on this machine): the trial it ran fails as its worker died and is retried, and the sweep finishes
on the node left, never waiting for a worker that has nowhere to start."""
from __future__ import annotations

import threading

import pytest

from search import testing
from search.config import parse_study
from search.record import read_record, trial_status
from search.sweep import Sweep
from studies import digits_raw, trials_of, with_changes

pytestmark = pytest.mark.slow


@pytest.fixture()
def cluster_with_a_worker_node(monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # A lost node is noticed within about a second (Ray's default is about 15 s).
    monkeypatch.setenv("RAY_health_check_period_ms", "500")
    monkeypatch.setenv("RAY_health_check_failure_threshold", "2")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def test_a_lost_worker_node_leaves_the_sweep_to_finish_on_the_node_left(tmp_path, cluster_with_a_worker_node):
    cluster, worker = cluster_with_a_worker_node
    raw = with_changes(digits_raw(tmp_path), {"budget": {"n_trials": 3}, "fidelity": {"epochs": 3},
                                              "ray": {"address": cluster.address}, "retry": {"max_retries": 1}})
    cfg = parse_study(raw, str(tmp_path / "t.yaml"))
    lost = threading.Event()

    def log(line: str) -> None:  # both slots train (one on each node) once an epoch is reported
        if "epoch 1/" in line and not lost.is_set():
            lost.set()
            threading.Thread(target=cluster.remove_node, args=(worker, False), daemon=True).start()

    done = []
    sweep = threading.Thread(target=lambda: done.append(Sweep(cfg, trial_fn=testing.slow_curve_trial, log=log).run()),
                             daemon=True)
    sweep.start()
    sweep.join(timeout=120)
    assert lost.is_set() and done, "the sweep did not finish after its worker node was lost"
    trials = trials_of(cfg)
    died = [t for t in trials if read_record(t).failure_kind == "worker_died"]
    assert died and [trial_status(t) for t in trials].count("trained") == 3
    assert all(any(r.user_attrs.get("retry_of") == t.number and trial_status(r) == "trained" for r in trials)
               for t in died)
