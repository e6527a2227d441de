"""The bad-input catalogue: every mistake a user can make at the command line or in a study file
gives one clear message naming the file or option and the fix, exit status 1, no traceback without
--debug, and writes no file and no database row."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from search.cli import main

GOOD = {
    "study": "cat",
    "data": {"dataset": "digits", "val_size": 100},
    "families": {"rsnet": {}},
    "budget": {"n_trials": 2},
    "fidelity": {"epochs": 1},
}


def _study(**changes) -> dict:
    raw = copy.deepcopy(GOOD)
    for path, value in changes.items():
        node, keys = raw, path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is _DELETE:
            node.pop(keys[-1])
        else:
            node[keys[-1]] = value
    return raw


_DELETE = object()

# (id, study content (dict or raw text), extra CLI args, message fragment)
STUDY_CASES = [
    ("malformed-yaml", "study: x\nfamilies: [rsnet\n", [], "not valid YAML"),
    ("not-a-mapping", "- just\n- a list\n", [], "must be a YAML mapping"),
    ("unknown-top-key", _study(epochs=3), [], "epochs: unknown key"),
    ("unknown-nested-key", _study(budget__trials=3), [], "budget.trials: unknown key"),
    ("wrong-type", _study(budget__n_trials="ten"), [], "budget.n_trials: expected an integer"),
    ("bool-for-int", _study(fidelity__epochs=True), [], "fidelity.epochs: expected an integer"),
    ("missing-families", _study(families=_DELETE), [], "families: required key is missing"),
    ("unknown-family", _study(families={"mobilenetv2": {}}), [], "families.mobilenetv2: unknown family"),
    ("unknown-knob", _study(families={"rsnet": {"knobs": {"depth": 50}}}), [], "unknown knob 'depth'"),
    ("impossible-range", _study(families={"rsnet": {"knobs": {"units.0": [5, 2]}}}), [], "low must be <= high"),
    ("outside-range", _study(families={"rsnet": {"knobs": {"units.0": [1, 500]}}}), [], "outside the family's range"),
    ("bad-choice", _study(families={"rsnet": {"knobs": {"groups": 3}}}), [], "not among the valid choices"),
    ("negative-size", _study(data__val_size=-5), [], "data.val_size: must be > 0"),
    ("unknown-dataset", _study(data__dataset="imagenet"), [], "unknown dataset 'imagenet'"),
    ("unknown-objective", _study(objectives=["accuracy", "flops"]), [], "unknown objective 'flops'"),
    ("unknown-sampler", _study(sampler={"name": "hyperband"}), [], "unknown sampler"),
    ("bad-sampler-option", _study(sampler={"name": "nsga2", "options": {"bogus": 1}}), [], "sampler.options"),
    ("asha-grace", _study(fidelity={"epochs": 2, "asha": {"grace_period": 2}}), [], "below fidelity.epochs"),
    ("gpu-fraction", _study(resources={"gpus_per_trial": 1.5}), [], "whole number"),
    ("ray-address", _study(ray={"address": "http://head"}), [], "ray.address"),
    ("storage-not-url", _study(storage="runs/cat.db"), [], "expected an SQLAlchemy URL"),
    ("budget-unreachable", _study(constraints={"max_params": 10}), [], "no probed architecture meets"),
    ("missing-dataset", _study(data={"dataset": "npz", "root": "no/such/folder", "val_size": 10}), [],
     "train.npz"),
    ("missing-cifar", _study(data={"dataset": "cifar10", "root": "empty", "val_size": 10}), [], "cifar"),
    ("val-too-large", _study(data__val_size=100000), [], "val_size"),
    ("unwritable-storage", _study(storage="sqlite:////proc/effnas/study.db"), [], "cannot create"),
    ("no-such-server-db", _study(storage="postgresql://nobody@127.0.0.1:9/none"), [], "cannot open the study database"),
    ("unknown-proxy", _study(proxies={"names": ["zen"]}), [], "unknown proxy 'zen'"),
    ("prescreen-keep", _study(prescreen={"keep": 2}), [], "prescreen.keep: must lie in (0, 1)"),
    ("prescreen-proxy", _study(prescreen={"proxy": "snip"}, proxies={"names": ["synflow"]}), [],
     "prescreen.proxy: 'snip' is not scored"),
    ("n-trials-zero", _study(), ["--n-trials", "0"], "--n-trials must be >= 1"),
    ("seed-unknown-preset", _study(seeds=["rsnet-999"]), [], "seeds[0]: unknown preset 'rsnet-999'"),
    ("seed-family-not-searched", _study(seeds=["igcv2-c64-d8"]), [], "does not search 'igcv2'"),
    ("seed-unknown-family", _study(seeds=[{"family": "resnet", "knobs": {}}]), [], "seeds[0].family: unknown family"),
    ("seed-unknown-knob", _study(seeds=[{"family": "rsnet", "knobs": {"depth": 3}}]), [],
     "seeds[0].knobs: unknown knob(s) ['depth']"),
    ("seed-invalid-knob", _study(seeds=[{"family": "rsnet", "knobs": {"groups": 0}}]), [], "seeds[0].knobs:"),
    ("seed-outside-range", _study(families={"rsnet": {"knobs": {"stem_channels": [16, 32]}}}, seeds=["rsnet-115"]), [],
     "has stem_channels = 48, outside the study's range families.rsnet.knobs.stem_channels"),
    ("seed-stage-outside-range", _study(families={"rsnet": {"knobs": {"units.0": [1, 4]}}}, seeds=["rsnet-115"]), [],
     "has units.0 = "),
    ("seed-name-twice", _study(seeds=["rsnet-115", {"family": "rsnet", "knobs": {}, "name": "rsnet-115"}]), [],
     "seeds[1]: seed name 'rsnet-115' is used twice"),
    ("seed-unknown-key", _study(seeds=[{"family": "rsnet", "knob": {}}]), [], "seeds[0].knob: unknown key"),
    ("seed-not-a-design", _study(seeds=[3]), [], "seeds[0]: expected a preset name or"),
    ("seeds-over-budget", _study(seeds=["rsnet-115", "rsnet-135", "rsnet-195"]), [],
     "budget.n_trials: is 2, fewer than the 3 seeds"),
    ("seed-over-constraints", _study(constraints={"max_macs": 1.0e6}, seeds=["rsnet-115"]), [],
     "seeds[0]: seed 'rsnet-115' breaks the study's constraints at 8x8 (macs 3,672,272 > 1,000,000)"),
    ("val-over-train", _study(data__train_size=50), [], "data.val_size: is 100, more than data.train_size (50)"),
    ("storage-is-a-folder", _study(storage="sqlite:///empty"), [], "is a folder, not a database file"),
    ("ray-cluster-absent", _study(ray={"address": "127.0.0.1:9", "connect_timeout_s": 2}), [],
     "the Ray cluster at 127.0.0.1:9 (ray.address '127.0.0.1:9') did not answer within 2 s"),
    ("ray-client-absent", _study(ray={"address": "ray://127.0.0.1:9", "connect_timeout_s": 2}, artifacts="shared"), [],
     "the Ray cluster at 127.0.0.1:9 (ray.address 'ray://127.0.0.1:9') did not answer"),
    ("ray-client-without-artifacts", _study(ray={"address": "ray://127.0.0.1:9"}), [],
     "artifacts: a ray:// client driver runs on no Ray node"),
    ("artifacts-unknown-scheme", _study(artifacts="nosuchfs://bucket/x"), [], "artifacts: 'nosuchfs://bucket/x' cannot hold checkpoints"),
    ("artifacts-empty", _study(artifacts=""), [], "artifacts: expected a path or a URI"),
    ("backend-typo", _study(execution={"backend": "tunes"}), [], "execution.backend: unknown backend 'tunes' (did you mean 'tune'?)"),
    ("execution-unknown-key", _study(execution={"backends": "tune"}), [], "execution.backends: unknown key"),
    ("warm-start-missing-study", _study(warm_start={"storage": "sqlite:///other.db", "study": "gone"}), [],
     "warm_start:"),
    ("warm-start-missing-key", _study(warm_start={"storage": "sqlite:///other.db"}), [],
     "warm_start.study: required key is missing"),
    ("latency-runtime", _study(latency={"runtime": "onnxruntim"}), [],
     "latency.runtime: unknown runtime 'onnxruntim' (did you mean 'onnxruntime'?); valid: torch, onnxruntime"),
    ("latency-threads", _study(latency={"threads": 0}), [], "latency.threads: must be > 0, got 0"),
    ("latency-batch", _study(latency={"batch": 0}), [], "latency.batch: must be > 0, got 0"),
    ("latency-repeats", _study(latency={"repeats": 0}), [], "latency.repeats: must be > 0, got 0"),
    ("latency-warmup", _study(latency={"warmup": -1}), [], "latency.warmup: must be >= 0, got -1"),
    ("latency-unknown-key", _study(latency={"device": "gpu"}), [], "latency.device: unknown key"),
    ("tracking-no-uri", _study(tracking={"mlflow": {"experiment": "x"}}), [], "tracking.mlflow.uri: required key is missing"),
    ("tracking-empty-uri", _study(tracking={"mlflow": {"uri": " "}}), [], "tracking.mlflow.uri: is empty"),
    ("tracking-unknown", _study(tracking={"wandb": {}}), [], "tracking.wandb: unknown key; valid keys here: mlflow"),
    ("train-recipe", _study(train={"recipe": "papers"}), [],
     "train.recipe: unknown recipe 'papers' (did you mean 'paper'?); valid: default, paper"),
]


@pytest.mark.parametrize("case_id,content,extra,message", STUDY_CASES, ids=[c[0] for c in STUDY_CASES])
def test_bad_study_files(case_id, content, extra, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    path = tmp_path / "study.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["run", str(path), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "study.yaml" in err or "--n-trials" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_resuming_with_another_latency_setup_is_refused(tmp_path, monkeypatch, capsys):
    """Latencies measured in eager PyTorch and in ONNX Runtime do not compare: a study keeps one setup."""
    from search.config import load_study
    from search.storage import open_study
    from search.storage._sqlite import DriverLock

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(objectives=["accuracy", "latency"])))
    cfg = load_study(path)
    with DriverLock(cfg.storage_url, str(path), cfg.study):  # as the first driver left it
        open_study(cfg, create=True)
    path.write_text(yaml.safe_dump(_study(objectives=["accuracy", "latency"], latency={"runtime": "onnxruntime"})))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "latency {'runtime': 'onnxruntime', 'threads': 1, 'batch': 1, 'device': 'cpu'} differs from how" in err
    assert "start a new study name" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_onnxruntime_latency_without_onnxruntime_installed(tmp_path, monkeypatch, capsys):
    """Asked for where it is not installed (hidden from the import system here), the runtime is
    refused when the file is read, with the install command; nothing is written."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(objectives=["accuracy", "latency"], latency={"runtime": "onnxruntime"})))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "latency.runtime: 'onnxruntime' needs the onnxruntime package" in err
    assert "pip install 'effnas[onnx]'" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
    # Not measured (no latency objective or limit): the runtime is not needed, and the file is fine.
    from search.config import load_study

    path.write_text(yaml.safe_dump(_study(latency={"runtime": "onnxruntime"})))
    assert load_study(path).latency.runtime == "onnxruntime"


def test_mlflow_tracking_without_mlflow_installed(tmp_path, monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tracking={"mlflow": {"uri": "http://127.0.0.1:5000"}})))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "tracking.mlflow: needs the mlflow package" in err and "pip install 'effnas[mlflow]'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_the_onnx_latency_helpers_say_how_to_install_onnxruntime(monkeypatch):
    import sys

    import torch

    from space.onnx import OnnxRuntimeMissing
    from trainers.latency import measure_onnx_latency

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is absent
    with pytest.raises(OnnxRuntimeMissing, match=r"pip install 'effnas\[onnx\]'"):
        measure_onnx_latency(torch.nn.Conv2d(3, 2, 1), 4)


def test_study_file_naming_another_studys_database(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "other.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    size = db.stat().st_size
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(storage=f"sqlite:///{db}")))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "holds the study/studies ['other'], not 'cat'" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db", "study.yaml"]
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")] == ["other"]
    assert db.stat().st_size == size


def test_broken_npz_arrays(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "arrays"
    data.mkdir()
    np.savez(data / "train.npz", images=np.zeros((20, 8, 8, 3), np.float32), labels=np.zeros(20, np.int64))
    np.savez(data / "test.npz", images=np.zeros((5, 8, 8, 3), np.uint8), labels=np.zeros(5, np.int64))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(data={"dataset": "npz", "root": "arrays", "val_size": 5})))
    assert main(["run", str(path)]) == 1
    assert "must be uint8" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays", "study.yaml"]


def test_study_file_is_a_directory(tmp_path, capsys):
    assert main(["run", str(tmp_path)]) == 1
    assert "cannot read the study file" in capsys.readouterr().err


def test_cli_misuse(capsys):
    assert main(["run"]) == 1            # missing argument
    assert main(["launch", "x.yaml"]) == 1  # unknown command
    assert main(["status", "--json"]) == 1  # neither a study file nor --storage
    assert "give a study file" in capsys.readouterr().err


def test_debug_flag_shows_the_traceback(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(budget__n_trials=0)))
    with pytest.raises(Exception, match="budget.n_trials"):
        main(["--debug", "run", str(path)])


VALIDATE_CASES = [c for c in STUDY_CASES if not c[2]]  # validate takes no --n-trials


@pytest.mark.parametrize("case_id,content,extra,message", VALIDATE_CASES, ids=[c[0] for c in VALIDATE_CASES])
def test_validate_refuses_what_run_refuses(case_id, content, extra, message, tmp_path, monkeypatch, capsys):
    """`validate` runs every check `run` makes before writing: same message, status 1, nothing written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    path = tmp_path / "study.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["validate", str(path), "--samples", "5"]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_auto_address_of_a_cluster_that_is_gone_fails_fast(tmp_path, monkeypatch, capsys):
    """`ray.address: auto` where RAY_ADDRESS names a cluster that no longer runs: one line, no hang."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(ray={"address": "auto", "connect_timeout_s": 2})))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "the Ray cluster at 127.0.0.1:9 (ray.address 'auto') did not answer within 2 s" in err
    assert "ray.address: null for a local instance" in err
    assert not (tmp_path / "runs").exists()
