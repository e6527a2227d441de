"""Pre-screening: from each pool of feasible new proposals, train only those whose zero-cost proxy is
best *for their cost*.

Raw proxy scores mostly measure size (a larger network has a larger synflow or snip score), and
effnas already knows every proposal's exact MACs and parameters, so ranking by the raw score would
just prefer large networks. Instead each score is compared with what proposals of the same cost
score: a least-squares fit of the (log) score on log MACs over every proposal the study scored
before this pool (infeasible and screened ones included; the pool itself too while
fewer than four are known), and a proposal's screening score is its residual above that fit. The
pool's best residuals are trained; the rest are recorded as ``screened``. With fewer than four
scored proposals in all there is no fit yet and the raw score decides.

Pure (numpy only): the driver gathers the pool and writes the outcome.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Candidate", "cost_adjusted", "choose"]

# Proxies whose scores span orders of magnitude are compared in log space; NASWOT is a log already.
_LOG_SCALE = {"synflow": True, "snip": True, "grad_norm": True, "naswot": False}
_MIN_FIT = 4


@dataclass(frozen=True)
class Candidate:
    number: int
    score: float | None   # the proxy's raw score (None: not scored or not finite)
    macs: int
    params: int


def _transformed(proxy: str, score: float | None) -> float | None:
    if score is None or not math.isfinite(score):
        return None
    if _LOG_SCALE.get(proxy, True):
        return math.log(score) if score > 0 else None
    return score


def _features(c: Candidate) -> list[float]:
    return [1.0, math.log(max(c.macs, 1))]


def cost_adjusted(proxy: str, pool: list[Candidate], history: list[Candidate]) -> list[float | None]:
    """Each pool member's screening score: its (log) proxy score minus what the fit over ``history``
    predicts for its MACs (None where it has no usable score).

    MACs alone, not MACs and params: on the recorded CIFAR-10 curves (bench/proxy_correlation.py) the
    NASWOT residual on log MACs correlates 0.29 overall / 0.30 within MAC quartiles with trained
    accuracy, and 0.10 / 0.17 when log params is fitted too (params anti-correlate with accuracy at
    that fidelity)."""
    values = [_transformed(proxy, c.score) for c in pool]
    known = [(c, v) for c in history if (v := _transformed(proxy, c.score)) is not None]
    if len(known) < _MIN_FIT:  # early in a study: the pool itself sets the trend
        known = [(c, v) for c in [*history, *pool] if (v := _transformed(proxy, c.score)) is not None]
    if len(known) < _MIN_FIT:
        return values
    x = np.array([_features(c) for c, _ in known])
    y = np.array([v for _, v in known])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return [None if v is None else v - float(np.dot(_features(c), coef)) for c, v in zip(pool, values)]


def choose(proxy: str, pool: list[Candidate], history: list[Candidate], keep: int) -> set[int]:
    """Trial numbers of the ``keep`` pool members with the best screening scores. Unscored members
    come last; ties go to the cheaper network, then the earlier trial, so the choice is
    deterministic."""
    scores = cost_adjusted(proxy, pool, history)
    order = sorted(range(len(pool)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0),
                                                    pool[i].macs, pool[i].number))
    return {pool[i].number for i in order[:keep]}
