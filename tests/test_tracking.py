"""Experiment tracking against a real MLflow tracking server, started here with a SQLite backend
store: one run per trained trial with its knobs, costs, per-epoch metrics, final numbers and record;
a server that does not answer is an error before anything is written."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from search import testing
from search.config import parse_study
from search.sweep import Sweep
from net import free_port  # tests/net.py: pytest puts tests/ on sys.path

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a free port, SQLite backend store, artifacts served by the server."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    server = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--artifacts-destination", str(root / "artifacts")],
                              stdout=subprocess.DEVNULL, stderr=(root / "server.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    else:
        server.kill()
        raise RuntimeError("mlflow server did not start within 90 s")
    yield url
    server.terminate()
    server.wait(timeout=30)


def _study(tmp_path, url: str, backend: str = "actors") -> dict:
    return {
        "execution": {"backend": backend},
        "study": "tracked", "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "digits", "val_size": 100}, "budget": {"n_trials": 3}, "fidelity": {"epochs": 3},
        "families": {"igcv2": {}, "rsnet": {}}, "sampler": {"name": "random", "seed": 0},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2},
        "tracking": {"mlflow": {"uri": url, "experiment": f"effnas-test-{backend}"}},
    }


@pytest.mark.parametrize("backend", ["actors", "tune"])  # tracking runs on the driver, whatever runs the trials
def test_every_trained_trial_is_an_mlflow_run(tmp_path, ray_local, mlflow_server, backend):
    from mlflow.tracking import MlflowClient

    cfg = parse_study(copy.deepcopy(_study(tmp_path, mlflow_server, backend)), str(tmp_path / "s.yaml"))
    summary = Sweep(cfg, trial_fn=testing.curve_trial, log=lambda _: None).run()
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(f"effnas-test-{backend}")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == summary.trained == 3
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags["effnas.study"] == "tracked" and tags["effnas.status"] == "trained"
        assert run.info.status == "FINISHED" and params["family"] == tags["effnas.family"]
        assert any(k.startswith("knobs.") for k in params) and params["train.epochs"] == "3"
        assert metrics["macs"] > 0 and metrics["params"] > 0
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]  # one point per epoch
        assert metrics["final_val_acc"] == pytest.approx(sorted(history, key=lambda m: m.step)[-1].value)
        record = client.download_artifacts(run.info.run_id, "record.json", str(tmp_path))
        assert json.loads(Path(record).read_text())["family"] == params["family"]


def test_a_tracking_server_that_does_not_answer_is_an_error_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from search.cli import main

    monkeypatch.chdir(tmp_path)
    raw = _study(tmp_path, f"http://127.0.0.1:{free_port()}")
    raw.pop("run_dir")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    assert main(["run", str(tmp_path / "s.yaml")]) == 1
    err = capsys.readouterr().err
    assert "tracking.mlflow.uri" in err and "cannot reach the MLflow tracking server" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
