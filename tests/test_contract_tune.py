"""The backend contract (tests/backend_contract.py) on the Ray Tune backend.

Every case in which Tune takes part runs here. Three run on the actors backend (Ray) and the
simulated one only, being the driver's own code whatever runs the trials:

- over-budget architectures: the driver refuses them before any worker sees one;
- final failures counted against the budget on resume: the driver's tally of the study (Tune's
  failures coming back as final is ``test_failures_are_retried_then_final``, a resumed sweep on Tune
  ``test_budget_resume_and_extend``);
- a driver SIGKILLed at the kill points before a trial reaches the backend or after its result came
  back (``asked``, ``recorded``, ``retry_queued``). What is Tune's own is a driver killed while
  ``Tuner.fit()`` runs its trials, and a rerun that starts a new Tune experiment beside the dead
  one's: ``submitted:3``, killed right after the third trial was handed to Tune.
"""
from __future__ import annotations

import pytest

from backend_contract import RayBackendContract

pytestmark = pytest.mark.slow


class TestTuneBackend(RayBackendContract):
    backend = "tune"
    kill_points = ("submitted:3",)
    test_over_budget_architectures_are_never_trained = None
    test_final_failures_count_against_the_budget_on_resume = None
    test_a_driver_killed_between_queueing_a_retry_and_telling_the_failure_retries_it_once = None
