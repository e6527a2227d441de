"""pytest plugin: with ``EFFNAS_NO_SKIPS=1`` (set by ``.ci/run``) a skipped test is reported as failed.

Skips exist only for what a user's clone may lack (the ``../shared`` data, a PostgreSQL server); CI
has all of it, so there a skip can only mean something is broken or missing, and must not pass.
"""
from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("EFFNAS_NO_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped, but EFFNAS_NO_SKIPS=1 makes every test mandatory: {reason}"
