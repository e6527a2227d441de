"""The suite's own rules: CI turns every skip into a failure, and no test hides a broken import or a
missing test dependency behind a skip."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SKIPPING_TEST = """
import pytest

def test_needs_something_absent():
    pytest.skip("the thing is absent")

def test_fine():
    assert True
"""


def _run(tmp_path: Path, no_skips: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_x.py").write_text(SKIPPING_TEST)
    env = {k: v for k, v in os.environ.items() if k != "EFFNAS_NO_SKIPS"}
    env["PYTHONPATH"] = str(TESTS)
    if no_skips is not None:
        env["EFFNAS_NO_SKIPS"] = no_skips
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "strict_skips",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_x.py")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def test_a_skip_fails_when_every_test_is_mandatory(tmp_path):
    proc = _run(tmp_path, "1")
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed" in proc.stdout
    assert "EFFNAS_NO_SKIPS=1 makes every test mandatory: the thing is absent" in proc.stdout


def test_a_skip_stays_a_skip_in_a_users_clone(tmp_path):
    proc = _run(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout


def test_no_test_skips_on_a_missing_import():
    """`importorskip` or `except ImportError: skip` would let a broken package or a missing test
    dependency pass as a skip."""
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        if "importorskip" in text or re.search(r"except[^\n]*(Import|Exception)[^\n]*:\s*\n\s*pytest\.skip", text):
            offenders.append(path.name)
    assert not offenders, f"tests that turn an import error into a skip: {offenders}"
