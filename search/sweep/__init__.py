"""Running a sweep, in small parts around one typed trial outcome:

- ``_driver``: the loop (``Sweep``): set-up, proposing while slots are free, handing events on;
- ``_start``: a sweep started or resumed from the study (interrupted trials re-queued, seeds queued,
  the policy's tallies and the rung tables rebuilt);
- ``_proposals``: ask, price, decide, pre-screen, submit;
- ``_apply``: the one place an outcome is applied (record, ``tell``, tracker, progress, retry);
- ``_policy``: the pure rules (infeasible / duplicate / train, the budget, retries, surplus);
- ``_spec``: what a worker is sent (the one mapping of ``train:`` to the trainer's settings);
- ``_pricing``, ``_plateau``, ``_state``, ``_progress``: pricing, the flat-front stop, the shared
  state, progress lines;
- ``outcome``: the typed trial outcome; ``trial``: what runs on a worker;
- ``backends``: the backend interface, ``make_backend`` and the actors, Tune and simulated backends.
"""
from __future__ import annotations

from search.sweep._driver import Sweep, load_study_data
from search.sweep._policy import SweepPolicy, budget_used
from search.sweep._progress import SweepSummary

__all__ = ["Sweep", "SweepSummary", "SweepPolicy", "budget_used", "load_study_data"]
