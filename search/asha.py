"""Asynchronous successive halving (ASHA, Li et al. 2020) on validation accuracy.

Rungs sit at ``grace_period * reduction_factor**k`` epochs below the full budget. A trial that reaches
a rung continues only if its accuracy is within the top ``1/reduction_factor`` of all results recorded
at that rung so far (the same rule as Ray Tune's ASHAScheduler). Stopping on accuracy alone is
consistent with the multi-objective front because the cost objectives are known before training.

The rung tables are rebuilt from the accuracy curves stored in the study, so a resumed sweep makes
the same decisions without any pickled scheduler state.
"""
from __future__ import annotations

import math

__all__ = ["Asha", "rung_epochs"]


def rung_epochs(grace_period: int, reduction_factor: int, max_epochs: int) -> list[int]:
    rungs, r = [], grace_period
    while r < max_epochs:
        rungs.append(r)
        r *= reduction_factor
    return rungs


class Asha:
    def __init__(self, grace_period: int, reduction_factor: int, max_epochs: int):
        self.reduction_factor = reduction_factor
        self.rungs = {r: [] for r in rung_epochs(grace_period, reduction_factor, max_epochs)}

    def record_curve(self, curve: list[float]) -> None:
        """Add a finished trial's per-epoch accuracies (from the database) to the rung tables."""
        for epoch, values in self.rungs.items():
            if len(curve) >= epoch:
                values.append(float(curve[epoch - 1]))

    def should_continue(self, epoch: int, accuracy: float) -> bool:
        """Record ``accuracy`` at ``epoch`` if it is a rung and decide whether the trial goes on."""
        values = self.rungs.get(epoch)
        if values is None:
            return True
        values.append(float(accuracy))
        if len(values) < self.reduction_factor:
            return True  # too few results at this rung to rank against
        ranked = sorted(values, reverse=True)
        keep = max(1, math.floor(len(ranked) / self.reduction_factor))
        return accuracy >= ranked[keep - 1]
