"""The command line: arch output, validate, and misuse (exit 1, one message, nothing written)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=300)


def test_arch_json_has_the_promised_fields(capsys):
    assert main(["arch", "condensenetv2-110", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("name", "family", "num_classes", "image_size", "params", "macs", "train_params",
                "train_macs", "knobs"):
        assert key in info
    assert info["family"] == "condensenet" and info["image_size"] == 32
    assert info["params"] < info["train_params"]


def test_arch_classes_change_only_the_classifier(capsys):
    main(["arch", "condensenetv2-110", "--json"])
    ten = json.loads(capsys.readouterr().out)
    main(["arch", "condensenetv2-110", "--json", "--classes", "100"])
    hundred = json.loads(capsys.readouterr().out)
    assert hundred["num_classes"] == 100
    assert hundred["params"] > ten["params"] and hundred["macs"] > ten["macs"]


def test_arch_family_default_and_text_output(capsys):
    assert main(["arch", "rsnet"]) == 0
    out = capsys.readouterr().out
    assert "deploy form" in out and "training form" in out


@pytest.mark.parametrize("argv,message", [
    (["arch", "resnet-50"], "unknown architecture 'resnet-50'"),
    (["arch", "rsnet", "--set", "no_such_knob=3"], "unknown knob"),
    (["arch", "rsnet", "--set", "groups"], "expected knob=value"),
    (["arch", "condensenet-86", "--set", "growh=3"], "(did you mean 'growth'?)"),
    (["arch", "condensenet-86", "--set", "growth.5=3"], "growth.5: growth has 3 stages (0-2)"),
    (["run", "does/not/exist.yaml"], "no such file"),
    (["status"], "give a study file"),
    (["status", "--storage", "sqlite:///does/not/exist.db"], "no study database"),
    (["export", "--storage", "sqlite:///does/not/exist.db"], "no study database"),
    (["validate", "nope.yaml"], "no such file"),
])
def test_misuse_is_one_message_and_status_1(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_argparse_misuse_exits_1():
    assert main(["run"]) == 1
    assert main(["frobnicate"]) == 1
    assert main([]) == 1


def test_bad_study_file_via_subprocess_writes_nothing(tmp_path):
    study = tmp_path / "bad.yaml"
    study.write_text("study: x\nfamilies: {rsnet: {}}\nbudget: {n_trials: -3}\n")
    proc = run_cli("run", str(study), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {study}: budget.n_trials: must be > 0, got -3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_debug_shows_traceback(tmp_path):
    proc = run_cli("--debug", "arch", "nope", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_validate_shipped_quickstart(capsys):
    assert main(["validate", str(REPO / "studies" / "quickstart.yaml"), "--samples", "20"]) == 0
    out = capsys.readouterr().out
    assert "family" in out and "cheapest" in out


def test_version_is_printed_and_exits_0(capsys):
    from importlib.metadata import version

    from search.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"effnas {version('effnas')}"


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(tmp_path):
    """`python -m search arch NAME | head -1`: the pipe closes before the output is written."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "search", "arch", "condensenetv2-110", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    proc.stdout.close()  # the reader is gone before anything was printed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


def test_relative_paths_are_relative_to_the_study_file(tmp_path, monkeypatch, capsys):
    """Run directory, storage file and data root resolve against the study file's folder, so every
    command finds the same study from any working directory."""
    import numpy as np
    import yaml

    from search.config import load_study
    from search.storage import open_study

    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 20)):
        np.savez(proj / "data" / f"{split}.npz", images=rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, n))
    study = {"study": "rel", "data": {"dataset": "npz", "root": "data", "val_size": 10},
             "families": {"rsnet": {}}, "budget": {"n_trials": 1}, "fidelity": {"epochs": 1}}
    (proj / "s.yaml").write_text(yaml.safe_dump(study))
    (proj / "t.yaml").write_text(yaml.safe_dump({**study, "study": "rel2", "run_dir": "out/rel2",
                                                 "storage": "sqlite:///dbs/rel2.db"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_study(proj / "s.yaml")
    assert cfg.run_path == proj / "runs" / "rel"
    assert cfg.storage_url == f"sqlite:///{proj / 'runs' / 'rel' / 'study.db'}"
    other = load_study(Path("..") / "proj" / "t.yaml")
    assert other.run_path == proj / "out" / "rel2" and other.storage_url == f"sqlite:///{proj / 'dbs' / 'rel2.db'}"
    open_study(cfg)  # a study exists in the project's runs/ folder ...
    monkeypatch.chdir(tmp_path)
    assert main(["status", str(proj / "s.yaml")]) == 0  # ... and any folder's `status` finds it
    assert "study rel: 0 trials" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists() and not (elsewhere / "runs").exists()


def test_arch_set_takes_study_file_names_for_one_stage(capsys):
    """One knob vocabulary: `growth.1=24` edits one stage, as `growth.1` names it in a study file."""
    assert main(["arch", "condensenet-86", "--set", "growth.1=24", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert main(["arch", "condensenet-86", "--set", "growth=[8, 24, 32]", "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert one["knobs"]["growth"] == [8, 24, 32] and one == whole


def test_arch_help_lists_the_presets(capsys):
    assert main(["arch", "--help"]) == 0
    out = capsys.readouterr().out
    assert "presets: " in out and "condensenetv2-110" in out and "rsnet-115" in out
