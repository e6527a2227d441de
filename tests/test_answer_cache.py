"""`arch` and `validate` answered from the cache (search/cache.py): the same answer as computed
afresh, without importing torch; a change of the study file, the data files or the code is a miss;
and what can change behind an unchanged study file (the database) is checked every time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from search import cache
from search.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    where = tmp_path / "cache"
    monkeypatch.setenv("EFFNAS_CACHE", str(where))
    return where


def _fresh(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m search ARGS`` in a fresh process that reports whether it imported torch."""
    code = ("import sys, runpy; sys.argv = ['search', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('search', run_name='__main__')\n"
            "finally:\n    print('TORCH', 'torch' in sys.modules, file=sys.stderr)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": str(REPO)}, timeout=300)


def _npz_study(tmp_path: Path, size: int) -> Path:
    data = tmp_path / "arrays"
    data.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 60), ("test", 10)):
        np.savez(data / f"{name}.npz", images=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
                 labels=np.arange(n) % 4)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": "cached", "data": {"dataset": "npz", "root": "arrays", "val_size": 10},
                                    "families": {"rsnet": {"knobs": {f"units.{i}": 1 for i in range(6)}}},
                                    "budget": {"n_trials": 2}, "fidelity": {"epochs": 1}}))
    return path


def test_arch_from_the_cache_is_the_computed_answer_without_torch(cache_dir, tmp_path, capsys):
    for args in (["condensenetv2-110", "--json"], ["rsnet", "--set", "groups=2", "--classes", "100", "--json"]):
        os.environ["EFFNAS_CACHE"] = "off"
        assert main(["arch", *args]) == 0
        computed = json.loads(capsys.readouterr().out)
        os.environ["EFFNAS_CACHE"] = str(cache_dir)
        assert main(["arch", *args]) == 0  # fills the cache
        capsys.readouterr()
        again = _fresh(["arch", *args], {"EFFNAS_CACHE": str(cache_dir)}, tmp_path)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == computed and "TORCH False" in again.stderr
    # every preset answers from the cache once the first miss's background fill is done
    deadline = time.monotonic() + 300
    while cache.load("arch-presets", "all") != "done":
        assert time.monotonic() < deadline, "the presets were never priced"
        time.sleep(0.5)
    other = _fresh(["arch", "igcv2-c64-d20"], {"EFFNAS_CACHE": str(cache_dir)}, tmp_path)
    assert other.returncode == 0 and "TORCH False" in other.stderr and "igcv2-c64-d20 (igcv2)" in other.stdout


def test_validate_from_the_cache(cache_dir, tmp_path):
    path = _npz_study(tmp_path, 12)
    args, env = ["validate", str(path), "--samples", "20"], {"EFFNAS_CACHE": str(cache_dir)}
    first = _fresh(args, env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "image native" in first.stdout and "TORCH True" in first.stderr
    second = _fresh(args, env, tmp_path)
    assert second.returncode == 0 and second.stdout == first.stdout and "TORCH False" in second.stderr
    assert _fresh(args, {"EFFNAS_CACHE": "off"}, tmp_path).stdout == first.stdout

    # other data files: measured again (16x16 images now), and the answer says so
    _npz_study(tmp_path, 16)
    changed = _fresh(args, env, tmp_path)
    assert changed.returncode == 0 and "TORCH True" in changed.stderr and "at 16x16" in changed.stdout
    assert "at 12x12" in first.stdout

    # an edited study file is a miss
    raw = yaml.safe_load(path.read_text())
    raw["budget"]["n_trials"] = 3
    path.write_text(yaml.safe_dump(raw))
    edited = _fresh(args, env, tmp_path)
    assert edited.returncode == 0 and "budget: 3 trials" in edited.stdout and "TORCH True" in edited.stderr

    # the database is checked every time: one holding another study is refused from the cache too
    assert "TORCH False" in _fresh(args, env, tmp_path).stderr
    db = tmp_path / "runs" / "cached" / "study.db"
    db.parent.mkdir(parents=True)
    optuna.create_study(study_name="another", storage=f"sqlite:///{db}")
    refused = _fresh(args, env, tmp_path)
    assert refused.returncode == 1 and "another" in refused.stderr and refused.stdout == ""


def test_a_damaged_cache_entry_is_answered_afresh(cache_dir, tmp_path, capsys):
    path = _npz_study(tmp_path, 12)
    assert main(["validate", str(path), "--samples", "20"]) == 0
    expected = capsys.readouterr().out
    for entry in cache_dir.glob("validate-*.json"):
        entry.write_text("{not json")
    assert main(["validate", str(path), "--samples", "20"]) == 0
    assert capsys.readouterr().out == expected


def test_the_cached_study_file_builds_only_study_file_classes():
    from search.config import parse_study

    cfg = parse_study({"study": "s", "data": {"dataset": "digits"}, "families": {"rsnet": {}}})
    assert cache.loads_config(cache.dumps_config(cfg)) == cfg
    with pytest.raises(Exception, match="posix.system is not part of a study file"):
        cache.loads_config(cache.dumps_config({"x": os.system}))
