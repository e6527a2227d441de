"""Ending a sweep when its front stops improving (``budget.stop_when_flat``).

The front is measured as the hypervolume of the trained architectures in the study's objectives,
accuracy as it is and every cost in log10, against a reference point fixed from the first
``window`` trained trials (the worst value of each objective among them, a tenth of their range
beyond: later points worse than that add nothing). The sweep stops proposing once the last ``window`` trained trials grew that
hypervolume by less than ``min_gain`` of itself. Scale-free (relative gain, log costs), and the
same rule on a resumed study: the watch is rebuilt from the trained trials in the order they
finished.
"""
from __future__ import annotations

import math

from search.pareto import hypervolume, non_dominated

__all__ = ["Plateau", "watch_plateau"]


def watch_plateau(cfg, trials: list) -> "Plateau | None":
    """The study's watch (``budget.stop_when_flat``), fed with its trained trials in the order they
    finished; None when the study file does not ask for one."""
    from optuna.trial import TrialState

    from search.record import TrialStatus, trial_status

    flat = cfg.budget.stop_when_flat
    if flat is None:
        return None
    watch = Plateau(flat.window, flat.min_gain, cfg.directions, list(cfg.objectives))
    trained = [t for t in trials if t.state == TrialState.COMPLETE and trial_status(t) == TrialStatus.TRAINED]
    for t in sorted(trained, key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number)):
        watch.note(list(t.values))
    return watch


class Plateau:
    """Watches the front of trained results, one objective vector at a time.

    Args:
        window: trained trials over which the front must grow.
        min_gain: the relative growth (0.01 = 1%) below which the front is flat.
        directions: the objectives' directions (``maximize`` / ``minimize``).
        objectives: their names; costs (anything but ``accuracy``) are taken in log10.
    """

    def __init__(self, window: int, min_gain: float, directions: list[str], objectives: list[str]):
        self.window, self.min_gain = window, min_gain
        self.directions, self.objectives = list(directions), list(objectives)
        self.front: list[list[float]] = []
        self.first: list[list[float]] = []
        self.reference: list[float] | None = None
        self.history: list[float] = []  # hypervolume after each trained trial (from the window on)

    def _point(self, values: list[float]) -> list[float]:
        return [v if name == "accuracy" else math.log10(max(v, 1.0)) for name, v in zip(self.objectives, values)]

    def note(self, values: list[float]) -> None:
        """A trained trial's objective values."""
        point = self._point(values)
        if self.reference is None:
            self.first.append(point)
            if len(self.first) < self.window:
                return
            self.reference = self._reference()
            self.front = [self.first[i] for i in non_dominated(self.first, self.directions)]
        else:
            both = self.front + [point]
            self.front = [both[i] for i in non_dominated(both, self.directions)]
        self.history.append(hypervolume(self.front, self.directions, self.reference))

    def _reference(self) -> list[float]:
        """The first window's worst value of each objective, a tenth of its range beyond (so its
        own points count)."""
        ref = []
        for i, d in enumerate(self.directions):
            values = [p[i] for p in self.first]
            margin = 0.1 * (max(values) - min(values)) or 0.1
            ref.append(min(values) - margin if d == "maximize" else max(values) + margin)
        return ref

    @property
    def flat(self) -> bool:
        if len(self.history) <= self.window:
            return False
        before, now = self.history[-1 - self.window], self.history[-1]
        return now - before < self.min_gain * max(before, 1e-12)
