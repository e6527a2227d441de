from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch

pytest_plugins = ["strict_skips"]  # EFFNAS_NO_SKIPS=1 (CI): a skip fails

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EFFNAS_SHARED", REPO.parent / "shared"))
CIFAR10_DIR = SHARED / "data" / "cifar10"

# Tests run on 2 cores next to each other: one thread per process keeps them from thrashing.
torch.set_num_threads(1)


# The suite runs on two xdist workers, a whole module per worker at a time (pyproject.toml's addopts:
# `-n 2 --dist loadfile --no-loadscope-reorder`, since modules share a Ray instance, a PostgreSQL
# server or a warm interpreter). Modules are handed out in this order, longest first (seconds of a
# whole run on this 2-core machine), so that neither worker is left finishing a long module alone;
# modules not listed (each a few seconds) follow in their usual order.
LONGEST_MODULES_FIRST = (
    "test_contract_actors.py", "test_contract_tune.py", "test_cluster_isolated.py", "test_postgres.py",
    "test_faults.py", "test_signals.py", "test_run_output.py", "test_sweep.py", "test_export.py",
    "test_seeds.py", "test_tracking.py", "test_families.py", "test_readers.py", "test_progress.py",
    "test_prescreen.py", "test_cluster.py", "test_artifacts.py", "test_shared_kills.py", "test_trainer.py",
    "test_tune_backend.py", "test_bench.py", "test_nas_bench_macro.py", "test_asha.py",
    "test_answer_cache.py", "test_node_loss.py", "test_contract_simulated.py", "test_snapshot_reads.py",
    "test_onnx.py", "test_dashboard.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module keeps its order


def require_shared_cifar10() -> Path:
    """Path of the real CIFAR-10 arrays, or skip (mandatory in CI: EFFNAS_REQUIRE_SHARED=1)."""
    if (CIFAR10_DIR / "train.npz").exists():
        return CIFAR10_DIR
    reason = f"real CIFAR-10 not found at {CIFAR10_DIR} (set EFFNAS_SHARED to the folder holding data/cifar10)"
    if os.environ.get("EFFNAS_REQUIRE_SHARED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def cifar10_dir() -> Path:
    return require_shared_cifar10()


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray instance (2 CPUs) for one test module, never a cluster that RAY_ADDRESS
    or a stale address file names."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _release_ray_actors(request):
    """After a test on the module's Ray instance, the actors its sweeps left (a backend holds its
    pricer, epoch log and driver store in a reference cycle) end now, not when the garbage collector
    gets to them: otherwise a module's sweeps pile up idle worker processes (about 130 MB each)."""
    yield
    if "ray_local" in request.fixturenames:
        gc.collect()


@pytest.fixture(scope="session")
def warm_python(tmp_path_factory):
    """Processes forked from warm interpreters (tests/warm.py), for the whole run."""
    from warm import WarmPython

    warm = WarmPython(tmp_path_factory.mktemp("warm"))
    yield warm
    warm.close()


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits at 16x16 (600 training, 200 validation images): the sweep tests' data."""
    from studies import load_digits

    return load_digits()
