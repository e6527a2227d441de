"""What a SIGKILLed driver or worker leaves behind is cleaned once the sweep goes on, and what a live
one is writing never is: ``.tmp`` files of ``trainers.atomic.write_atomic``, ``.partial`` uploads to
an artifact location, and trial scratch folders in a worker's temporary folder (``search.artifacts``).

The leftovers here are real: a helper process starts the write and is SIGKILLed at the moment the
temporary file exists (where a kill would leave it), so its name and its dead writer are genuine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from search.artifacts import trial_artifacts
from trainers.atomic import remove_stale_temp_files, writer_tag

REPO = Path(__file__).resolve().parents[1]

# Starts a write and SIGKILLs itself where the temporary file (or scratch folder) exists.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
mode, target = sys.argv[1], sys.argv[2]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

class DyingMove:  # the upload's file system, killed between writing the upload and publishing it
    def __init__(self, fs):
        self.fs = fs
    def __getattr__(self, name):
        return die if name in ("move", "copy_file") else getattr(self.fs, name)

if mode == "tmp":
    from trainers import atomic
    atomic.os.replace = die
    atomic.write_atomic(target, b"half a checkpoint")
from search import artifacts
trial = artifacts.trial_artifacts(target)  # a URI: the worker's scratch folder is made here
if mode == "partial":
    (Path(trial.local_dir) / "epoch.pt").write_bytes(b"a checkpoint")
    trial.fs = DyingMove(trial.fs)
    trial.store("epoch.pt")
die()
"""


def _killed_writer(tmp_path: Path, mode: str, target: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path / "worker_tmp")}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, mode, target], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr[-2000:]


def _hidden(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob(".*") if p.is_file()}


def _live_temp_file(folder: Path, name: str) -> Path:
    """A temporary file of this (live) process, named as write_atomic names it."""
    fd, path = tempfile.mkstemp(prefix=f".{name}.{writer_tag()}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return Path(path)


def test_temporary_files_of_dead_writers_and_old_ones_go_a_live_writers_stay(tmp_path):
    folder = tmp_path / "checkpoints" / "k"
    folder.mkdir(parents=True)
    _killed_writer(tmp_path, "tmp", str(folder / "epoch.pt"))
    (dead,) = _hidden(folder)
    live = _live_temp_file(folder, "epoch.pt")
    old, fresh = folder / ".epoch.pt.abcd1234.tmp", folder / ".epoch.pt.efgh5678.tmp"  # no writer named
    for p in (old, fresh):
        p.write_bytes(b"")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (folder / "epoch.pt").write_bytes(b"whole")
    assert remove_stale_temp_files(tmp_path) == 2
    assert _hidden(folder) == {live.name, fresh.name} and dead not in _hidden(folder)
    assert (folder / "epoch.pt").read_bytes() == b"whole"


def test_a_dead_workers_scratch_folder_goes_when_its_node_starts_a_trial(tmp_path, monkeypatch):
    uri = (tmp_path / "store").as_uri()
    scratch = tmp_path / "worker_tmp"
    scratch.mkdir()
    _killed_writer(tmp_path, "scratch", uri)
    (dead,) = [p.name for p in scratch.iterdir()]
    live = tempfile.mkdtemp(prefix=f"effnas-trial-{writer_tag()}-", dir=scratch)
    foreign = scratch / "effnas-trial-12345678"  # an older name without its writer: not ours to judge
    foreign.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    trial = trial_artifacts(uri)
    left = {p.name for p in scratch.iterdir()}
    assert dead not in left and {Path(live).name, foreign.name, Path(trial.local_dir).name} <= left
    trial.close()


@pytest.mark.parametrize("artifacts", [False, True], ids=["run-dir", "artifact-location"])
def test_a_resumed_sweep_removes_what_its_killed_driver_and_workers_left(tmp_path, artifacts):
    """A driver killed while writing into its run directory, a worker killed while uploading to the
    artifact location: the next run of the study removes both, and leaves a live writer's file."""
    from search.sweep import Sweep
    from studies import simulated_study

    changes = {"artifacts": str(tmp_path / "store")} if artifacts else {}
    cfg = simulated_study(tmp_path, **changes)
    folder = cfg.run_path / "checkpoints" / "k"
    folder.mkdir(parents=True)
    _killed_writer(tmp_path, "tmp", str(folder / "epoch.pt"))
    live = _live_temp_file(folder, "epoch.pt")
    upload = tmp_path / "store" / cfg.study / "k"
    if artifacts:
        (tmp_path / "worker_tmp").mkdir()
        _killed_writer(tmp_path, "partial", upload.as_uri())
        assert [n for n in _hidden(upload) if n.endswith(".partial")]
    lines: list[str] = []
    Sweep(cfg, log=lines.append).run()
    assert _hidden(folder) == {live.name}
    assert not artifacts or not _hidden(upload)
    assert f"removed {1 + artifacts} temporary file(s) that a killed driver or worker left" in lines


def test_export_removes_what_a_killed_export_left(tmp_path):
    from search.export import export_study
    from search.storage import load_existing_study
    from search.sweep import Sweep
    from studies import simulated_study

    cfg = simulated_study(tmp_path)
    Sweep(cfg, log=lambda _: None).run()
    out = tmp_path / "export"
    out.mkdir()
    _killed_writer(tmp_path, "tmp", str(out / "pareto.json"))
    assert _hidden(out)
    export_study(load_existing_study(cfg.storage_url, cfg.study), out, log=lambda _: None)
    assert not _hidden(out) and (out / "pareto.json").is_file()
