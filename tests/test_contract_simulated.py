"""The backend contract (tests/backend_contract.py) on the simulated backend: NAS-Bench-Macro
replayed on a simulated clock (4-epoch curves for the rung tests), failures from
``execution.failure_rate``."""
from __future__ import annotations

from backend_contract import BackendContract
from search.sweep import Sweep
from studies import curve_table, simulated_raw, with_changes

ONES = {"family": "nas_bench_macro", "name": "all-k3", "knobs": {"layer": [1] * 8}}
TWOS = {"family": "nas_bench_macro", "name": "all-k5", "knobs": {"layer": [2] * 8}}


class TestSimulatedBackend(BackendContract):
    failure_kind = "simulated"

    def study_raw(self, tmp_path, **changes) -> dict:
        return with_changes(simulated_raw(tmp_path), changes)

    def study(self, tmp_path, **changes):
        from search.config import parse_study

        return parse_study(self.study_raw(tmp_path, **changes), str(tmp_path / "t.yaml"))

    def one_architecture(self) -> dict:
        return {"families": {"nas_bench_macro": {"knobs": {f"layer.{i}": 1 for i in range(8)}}}}

    def param_limit(self) -> int:
        return 1_000_000

    def curves(self, tmp_path) -> dict:
        table = curve_table(tmp_path / "curves.json.gz")
        return {**super().curves(tmp_path), "execution__table": str(table)}

    def seeds(self) -> list:
        return [ONES, TWOS]

    def failing(self) -> dict:
        return {"execution__failure_rate": 1.0}

    def flaky(self) -> dict:
        return {"execution__failure_rate": 0.4}

    def sweep(self, cfg, behaviour: str = "cheap", n_more: int | None = None, log=None) -> Sweep:
        return Sweep(cfg, n_more=n_more, log=log or (lambda _: None))
