"""The backend contract (tests/backend_contract.py) on the Ray Tune backend."""
from __future__ import annotations

import pytest

from backend_contract import RayBackendContract

pytestmark = pytest.mark.slow


class TestTuneBackend(RayBackendContract):
    backend = "tune"
