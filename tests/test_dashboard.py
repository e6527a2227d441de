"""`python -m search dashboard`: optuna-dashboard on a study's storage, as a real server process.

It starts, its HTTP API lists the study with its trials, and it stops cleanly on SIGTERM and Ctrl-C.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from net import free_port  # tests/net.py: pytest puts tests/ on sys.path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "study_v1.sql"



def _get(url: str, deadline: float):
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dashboard_serves_the_study_and_stops_cleanly(tmp_path, sig):
    db = tmp_path / "study.db"
    with sqlite3.connect(db) as con:
        con.executescript(FIXTURE.read_text())
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "search", "dashboard", "--storage", f"sqlite:///{db}",
                             "--port", str(port)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        studies = _get(f"http://127.0.0.1:{port}/api/studies", time.monotonic() + 60)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["v1"]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", time.monotonic() + 30)
        assert len(detail["trials"]) == 17
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "dashboard stopped" in out


def test_dashboard_of_a_missing_database_is_one_clear_error(tmp_path, capsys):
    from search.cli import main

    assert main(["dashboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}"]) == 1
    assert "no study database" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_dashboard_on_a_port_in_use_is_one_clear_error(tmp_path, capsys):
    from search.cli import main

    db = tmp_path / "study.db"
    with sqlite3.connect(db) as con:
        con.executescript(FIXTURE.read_text())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", "--storage", f"sqlite:///{db}", "--port", str(port)]) == 1
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
