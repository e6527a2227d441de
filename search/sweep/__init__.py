"""Running a sweep: the driver loop (``_driver``), the pure policy it follows (``_policy``), its
progress lines (``_progress``), what runs on a worker (``trial``) and the execution backends
(``backends``)."""
from __future__ import annotations

from search.sweep._driver import Sweep, load_study_data
from search.sweep._policy import SweepPolicy, budget_used
from search.sweep._progress import SweepSummary

__all__ = ["Sweep", "SweepSummary", "SweepPolicy", "budget_used", "load_study_data"]
