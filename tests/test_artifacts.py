"""Trial artifacts at a configured location (``artifacts:``, read and written through pyarrow.fs),
and the driver's store that keeps them in the run directory for workers on other nodes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.artifacts import DriverStore, _FilesystemArtifacts, read_artifact, to_uri
from search.record import trial_status
from search.storage import load_existing_study

REPO = Path(__file__).resolve().parents[1]


def test_filesystem_artifacts_round_trip(tmp_path):
    location = to_uri(str(tmp_path / "store")) + "/study/arch"
    writer = _FilesystemArtifacts(location)
    (Path(writer.local_dir) / "checkpoint.pt").write_bytes(b"epoch 1")
    kept = writer.store("checkpoint.pt")
    assert kept == f"{location}/checkpoint.pt" and read_artifact(kept) == b"epoch 1"
    assert writer.store("deploy.pt") is None  # nothing written, nothing kept
    reader = _FilesystemArtifacts(location)  # a retry, on another node: starts from the kept file
    reader.fetch("checkpoint.pt")
    assert (Path(reader.local_dir) / "checkpoint.pt").read_bytes() == b"epoch 1"
    for a in (writer, reader):
        a.close()
        assert not Path(a.local_dir).exists()
    assert sorted(p.name for p in (tmp_path / "store" / "study" / "arch").iterdir()) == ["checkpoint.pt"]
    assert read_artifact(f"{location}/absent.pt") is None


def test_driver_store_writes_only_inside_its_run_directory(tmp_path):
    store = DriverStore(str(tmp_path / "run" / "checkpoints"))
    target = tmp_path / "run" / "checkpoints" / "arch" / "deploy.pt"
    store.write(str(target), b"weights")
    assert store.read(str(target)) == b"weights" and store.read(str(target.with_name("x.pt"))) is None
    with pytest.raises(ValueError, match="outside the run directory"):
        store.write(str(tmp_path / "elsewhere.pt"), b"")
    with pytest.raises(ValueError, match="outside the run directory"):
        store.read(str(tmp_path / "run" / "checkpoints" / ".." / "study.db"))


@pytest.mark.slow
def test_sweep_keeps_artifacts_at_the_configured_location_and_export_reads_them(tmp_path):
    study = {
        "study": "art", "run_dir": "run", "artifacts": "store",  # both relative to the study file
        "data": {"dataset": "digits", "val_size": 200, "train_size": 400, "image_size": 16},
        "families": {"condensenet": {"knobs": {"num_stages": 3, "layers.0": 1, "layers.1": 1, "layers.2": 1,
                                               "growth.0": 8, "growth.1": 8, "growth.2": 8, "bottleneck": [1, 4],
                                               "stem_channels": 8, "se_start": -1, "hs_start": -1,
                                               "head_channels": 0, "stem_stride": 1}}},
        "budget": {"n_trials": 2}, "fidelity": {"epochs": 1}, "sampler": {"name": "random", "seed": 1},
        "train": {"eval_test": False}, "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
        "ray": {"num_cpus": 1},
    }
    path = tmp_path / "study" / "art.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "search", "run", str(path)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    trials = load_existing_study(f"sqlite:///{tmp_path / 'study' / 'run' / 'study.db'}", "art").get_trials()
    records = [t.user_attrs["record"] for t in trials if trial_status(t) == "trained"]
    assert len(records) == 2
    store = (tmp_path / "study" / "store" / "art").as_uri()
    for r in records:
        assert r["deploy_path"] == f"{store}/{r['arch_key']}/deploy.pt"
        assert r["checkpoint"] == f"{store}/{r['arch_key']}/checkpoint.pt"
    assert not (tmp_path / "study" / "run" / "checkpoints").exists()  # nothing beside the configured place
    out = tmp_path / "out"
    export = subprocess.run([sys.executable, "-m", "search", "export", str(path), "--models", "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    members = json.loads((out / "pareto.json").read_text())["members"]
    assert members and all((out / m["weights"]).is_file() for m in members)
