"""A sweep on a real two-node Ray cluster on this machine: trials run on both nodes, the driver
(a separate `python -m search run` process) alone writes the database, and the workers get the
dataset through Ray's object store rather than loading or downloading it themselves."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.record import trial_status
from search.storage import load_existing_study

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_node_cluster():
    """Two nodes of one CPU each, for both backends' sweeps (each driver's actors go with it)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.mark.parametrize("backend", ["actors", "tune"])  # every execution backend
def test_sweep_spreads_trials_over_two_nodes(tmp_path, two_node_cluster, backend):
    study = {
        "study": "cluster", "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "digits", "val_size": 200, "train_size": 400, "image_size": 16},
        "families": {"condensenet": {"knobs": {"num_stages": 3, "layers.0": 1, "layers.1": 1, "layers.2": 1,
                                               "growth.0": [8, 16], "growth.1": 8, "growth.2": 8,
                                               "bottleneck": [1, 4], "stem_channels": 8, "se_start": -1,
                                               "hs_start": -1, "head_channels": 0, "stem_stride": 1}}},
        "budget": {"n_trials": 4}, "fidelity": {"epochs": 1}, "sampler": {"name": "random", "seed": 3},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "ray": {"address": two_node_cluster.address}, "execution": {"backend": backend},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "search", "run", str(path)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load_existing_study(f"sqlite:///{tmp_path / 'run' / 'study.db'}", "cluster").get_trials()
    trained = [t for t in trials if trial_status(t) == "trained"]
    assert len(trained) == 4
    nodes = {t.user_attrs["record"]["node"] for t in trained}
    cluster_nodes = {n.node_id for n in two_node_cluster.list_all_nodes()}
    assert nodes == cluster_nodes and len(nodes) == 2
