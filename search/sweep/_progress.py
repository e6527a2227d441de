"""Progress lines of a running sweep: one per event, with the counts and the best so far."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["SweepSummary", "Progress"]


@dataclass
class SweepSummary:
    """What one ``run`` did (this driver's trials only)."""

    trained: int = 0
    stopped: int = 0
    failed: int = 0
    infeasible: int = 0
    duplicate: int = 0
    screened: int = 0
    wall_seconds: float = 0.0
    loop_seconds: float = 0.0       # the scheduling loop alone (no Ray start, no data loading)
    overhead_ms_per_trial: float = 0.0
    clock_seconds: float = 0.0      # the backend's clock over the loop: simulated seconds on the simulated backend
    # perf_counter stamps of the first and last trained result: the steady-state span that
    # benchmarks compare with other tools' first-to-last-result span.
    first_result_at: float | None = None
    last_result_at: float | None = None
    nodes: set = field(default_factory=set)

    @property
    def proposals(self) -> int:
        return self.trained + self.stopped + self.failed + self.infeasible + self.duplicate + self.screened

    def stamp_result(self) -> None:
        now = time.perf_counter()
        if self.first_result_at is None:
            self.first_result_at = now
        self.last_result_at = now


EPOCH_LINE_EVERY_S = 5.0  # plain output: at most one epoch line per trial this often


class Progress:
    """What a running sweep shows, in one of three modes:

    - ``lines`` (stdout not a terminal, or a ``log`` function given): ``[elapsed] event | counts |
      best acc`` lines to ``log``, plus one line per trial and epoch at most every
      ``EPOCH_LINE_EVERY_S`` seconds;
    - ``live`` (a terminal): a tqdm view, redrawn in place: one bar of trials done out of the budget
      with elapsed and estimated remaining time, the best accuracy and the front size, and one row
      per running trial with its family, epoch, latest validation accuracy and seconds per epoch. Event
      lines are printed above it. tqdm rather than rich: Optuna already depends on it;
    - ``quiet``: nothing (the caller prints the final summary).
    """

    def __init__(self, summary: SweepSummary, log: Callable[[str], None], mode: str = "lines"):
        self.summary, self.log, self.mode = summary, log, mode
        self.started = time.perf_counter()
        self.best: tuple[float, int] | None = None  # (validation accuracy, trial number)
        self.running = 0
        self.front: list[list[float]] = []   # objective values of this run's trained trials
        self.directions: list[str] = []
        self.front_size = 0
        self.target, self.done = 0, 0
        self.epochs = 1
        self._rows: dict[int, dict] = {}     # running trial -> family, epoch, acc, started, bar
        self._last_epoch_line: dict[int, float] = {}
        self._bar = None

    # -- what happened ----------------------------------------------------------------------------
    def start(self, target: int, done: int, epochs: int, directions: list[str]) -> None:
        self.target, self.done, self.epochs, self.directions = target, done, epochs, directions
        if self.mode == "live":
            from tqdm import tqdm

            self._bar = tqdm(total=target, initial=done, desc="trials", unit="trial", dynamic_ncols=True,
                             position=0, leave=True, file=sys.stdout)

    def note_trained(self, val_acc: float | None, number: int, values: list | None = None) -> None:
        """Keep the most accurate fully trained architecture, and the front of this run's results."""
        if val_acc is not None and (self.best is None or val_acc > self.best[0]):
            self.best = (val_acc, number)
        if values is not None and self.directions:
            from search.pareto import non_dominated

            self.front.append(values)
            keep = non_dominated(self.front, self.directions)
            self.front = [self.front[i] for i in keep]
            self.front_size = len(self.front)

    def trial_started(self, number: int, family: str) -> None:
        row = {"family": family, "epoch": 0, "acc": None, "started": time.perf_counter(), "bar": None}
        if self._bar is not None:
            from tqdm import tqdm

            row["bar"] = tqdm(total=self.epochs, desc=f"  #{number} {family}", unit="ep", leave=False, file=sys.stdout,
                              position=1 + len(self._rows), dynamic_ncols=True,
                              bar_format="{desc} epoch {n}/{total}{postfix}")
        self._rows[number] = row

    def epoch(self, number: int, metrics: dict) -> None:
        """A worker finished an epoch of trial ``number``."""
        row = self._rows.get(number)
        if row is None:
            return
        row["epoch"], row["acc"] = int(metrics.get("epoch", row["epoch"] + 1)), metrics.get("val_acc")
        per_epoch = (time.perf_counter() - row["started"]) / max(1, row["epoch"])
        if row["bar"] is not None:
            row["bar"].n = row["epoch"]
            row["bar"].set_postfix_str(f"acc {row['acc']:.4f}, {per_epoch:.1f} s/ep" if row["acc"] is not None else "")
            return
        if self.mode != "lines":
            return
        now = time.perf_counter()
        if now - self._last_epoch_line.get(number, -EPOCH_LINE_EVERY_S) >= EPOCH_LINE_EVERY_S:
            self._last_epoch_line[number] = now
            acc = f" acc {row['acc']:.4f}" if row["acc"] is not None else ""
            self.log(f"[{now - self.started:7.1f}s] trial {number} {row['family']} epoch {row['epoch']}/{self.epochs}"
                     f"{acc} ({per_epoch:.1f} s/epoch)")

    def trial_finished(self, number: int, used_budget: bool) -> None:
        row = self._rows.pop(number, None)
        self._last_epoch_line.pop(number, None)
        if row is not None and row["bar"] is not None:
            row["bar"].close()
        if used_budget:
            self.done += 1
            if self._bar is not None:
                self._bar.update(1)
        self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            best = f"best {self.best[0]:.4f} (#{self.best[1]})" if self.best else "best -"
            self._bar.set_postfix_str(f"{best}, front {self.front_size}, running {self.running}")

    def close(self) -> None:
        for row in self._rows.values():
            if row["bar"] is not None:
                row["bar"].close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- event lines ------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        if self.mode == "quiet":
            return
        s = self.summary
        elapsed = time.perf_counter() - self.started
        best = f" | best acc {self.best[0]:.4f} (trial {self.best[1]})" if self.best else ""
        text = (f"[{elapsed:7.1f}s] {text} | running {self.running} trained {s.trained} "
                f"stopped {s.stopped} failed {s.failed} infeasible {s.infeasible} dup {s.duplicate}"
                + (f" screened {s.screened}" if s.screened else "") + best)
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(text)
            self._refresh()
        else:
            self.log(text)
