"""A two-node Ray cluster whose worker node cannot see the driver's files.

The worker node runs in its own mount namespace with a tmpfs over the run directory, so whatever a
trial writes at a driver's path lands in that tmpfs and is lost. The head node (the driver's) has no
CPU for trials, so every trial trains on the isolated node. Then:

- `export --models` on the driver writes every front member's weights (they reached the driver's
  run directory through Ray's object store, ``search.artifacts``);
- a trial interrupted on the isolated node (its driver killed after an epoch) resumes from its last
  epoch checkpoint on another node, once the isolated node is gone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from search.record import trial_status
from search.storage import load_existing_study
from tests.net import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
BACKENDS = ("actors", "tune")
# Drivers and nodes of this private cluster talk without Ray's token authentication (a `ray start`
# cluster turns it on, and this test is not about it).
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}


def _namespace_prefix() -> list[str]:
    """The command prefix that gives a process its own mount namespace, or skip with the reason."""
    prefix = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix = ["unshare", "--user", "--map-root-user", "--mount"]
    probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs tmpfs /mnt && umount /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot give a Ray node its own mount namespace here ({' '.join(prefix)}: "
                    f"{probe.stderr.strip()[:200]}); the test needs unshare and tmpfs mounts")
    return prefix


class _Node:
    """One `ray start --block` process group (a head or a worker node)."""

    def __init__(self, args: list[str], prefix: list[str] | None = None, shell_before: str = ""):
        command = [RAY, "start", "--block", "--disable-usage-stats", *args]
        if prefix:
            line = " ".join(f"'{a}'" for a in command)
            command = [*prefix, "sh", "-c", f"{shell_before}exec {line}"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                                     start_new_session=True)

    def stop(self, grace_s: float = 10) -> None:
        """SIGTERM (the node leaves the cluster at once), SIGKILL after ``grace_s``."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _alive_nodes(address: str) -> dict[str, float]:
    """Node id -> CPUs of the cluster's live nodes, as its GCS lists them ({} while it does not answer)."""
    import socket

    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            pass  # the GCS listens (a client made before that waits for it for 40 s)
        nodes = GcsClient(address=address).get_all_node_info(timeout=10)
    except Exception:  # not up yet
        return {}
    return {info.node_id.hex(): info.resources_total.get("CPU", 0) for info in nodes.values()
            if info.state == GcsNodeInfo.ALIVE}


def _wait_for(address: str, want, what: str, timeout: float = 120) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = _alive_nodes(address)
        if want(nodes):
            return nodes
        time.sleep(0.25)
    raise AssertionError(f"the cluster at {address} never had {what}")


@pytest.fixture(scope="module")
def head():
    """(address, node): a head node without CPUs, shared by the module's tests (each test starts
    and stops its own worker nodes)."""
    port = free_port()
    # The head's own IP: a driver joins the raylet whose IP it connects from (127.0.0.1 matches none).
    from ray.util import get_node_ip_address

    address = f"{get_node_ip_address()}:{port}"
    node = _Node(["--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false"])
    try:
        _wait_for(address, lambda n: len(n) == 1, "its head node")
        yield address, node
    finally:
        node.stop(grace_s=2)  # nothing to leave cleanly: the cluster goes with it


@pytest.fixture()
def isolated_cluster(tmp_path, head):
    """(address, run_dir, head, isolated worker, nodes started): head without CPUs, one worker node
    with 1 CPU whose view of ``run_dir`` is an empty tmpfs."""
    prefix = _namespace_prefix()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    address, head_node = head
    started = [head_node]
    try:
        # Its own IP, as another machine would have: a driver joins the raylet of its own IP.
        started.append(_Node([f"--address={address}", "--num-cpus=1", "--node-ip-address=127.0.0.2"], prefix,
                             shell_before=f"mount -t tmpfs tmpfs '{run_dir}' && "))
        # Exactly the head and this node: the worker nodes of the module's earlier tests have left.
        nodes = _wait_for(address, lambda n: len(n) == 2, "its isolated worker node")
        yield address, run_dir, started, nodes
    finally:
        for node in reversed(started[1:]):  # the head stays for the next test
            node.stop()


def _study(tmp_path: Path, address: str, backend: str, name: str, epochs: int, n_trials: int) -> Path:
    study = {
        "study": name, "run_dir": str(tmp_path / "run" / name),
        "data": {"dataset": "digits", "val_size": 200, "train_size": 400, "image_size": 16},
        "families": {"condensenet": {"knobs": {"num_stages": 3, "layers.0": 1, "layers.1": 1, "layers.2": 1,
                                               "growth.0": [8, 16], "growth.1": 8, "growth.2": 8,
                                               "bottleneck": [1, 4], "stem_channels": 8, "se_start": -1,
                                               "hs_start": -1, "head_channels": 0, "stem_stride": 1}}},
        "budget": {"n_trials": n_trials}, "fidelity": {"epochs": epochs}, "sampler": {"name": "random", "seed": 3},
        "train": {"eval_test": False},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
        "ray": {"address": address}, "execution": {"backend": backend},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _cli(warm_python, tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 600):
    """``python -m search *args`` in a process of its own (forked warm: tests/warm.py)."""
    return warm_python.search(*args, env={**ENV, **(env or {})}, cwd=tmp_path, timeout=timeout)


def _records(tmp_path: Path, name: str) -> list[dict]:
    study = load_existing_study(f"sqlite:///{tmp_path / 'run' / name / 'study.db'}", name)
    return [t.user_attrs["record"] for t in study.get_trials() if trial_status(t) == "trained"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_artifacts_reach_the_driver_from_a_node_that_cannot_see_its_files(tmp_path, isolated_cluster, backend,
                                                                           warm_python):
    address, run_dir, started, nodes = isolated_cluster
    isolated = next(n for n, cpus in nodes.items() if cpus >= 1)

    # 1. Every trial trains on the isolated node; export finds every front member's weights.
    path = _study(tmp_path, address, backend, "export", epochs=2, n_trials=2)
    proc = _cli(warm_python, tmp_path, "run", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(tmp_path, "export")
    assert len(records) == 2 and {r["node"] for r in records} == {isolated}
    for r in records:
        assert Path(r["deploy_path"]).is_file() and Path(r["checkpoint"]).is_file(), r
    out = tmp_path / "exported"
    proc = _cli(warm_python, tmp_path, "export", str(path), "--models", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    front = json.loads((out / "pareto.json").read_text())["members"]
    assert front and all((out / m["weights"]).is_file() for m in front), front

    # 2. A trial interrupted there (its driver killed once it heard of an epoch) resumes from that
    #    epoch's checkpoint on a node of the driver's own namespace, the isolated node being gone.
    path = _study(tmp_path, address, backend, "resume", epochs=3, n_trials=1)
    proc = _cli(warm_python, tmp_path, "run", str(path), env={"EFFNAS_KILL_AT": "epoch:1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    checkpoints = list((tmp_path / "run" / "resume" / "checkpoints").glob("*/checkpoint.pt"))
    assert len(checkpoints) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # kept on the driver's machine before the driver heard of the epoch
    started[1].stop()
    started.append(_Node([f"--address={address}", "--num-cpus=1", "--node-ip-address=127.0.0.3"]))
    after = _wait_for(address, lambda n: any(c >= 1 and i != isolated for i, c in n.items()), "a second worker node")
    other = next(n for n, cpus in after.items() if cpus >= 1 and n != isolated)
    proc = _cli(warm_python, tmp_path, "run", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = _records(tmp_path, "resume")
    assert record["node"] == other
    assert record["resumed_from_epoch"] >= 1 and record["epochs"] == 3
