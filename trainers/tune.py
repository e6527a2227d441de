"""Timed choices between equivalent ways of running the same training step.

Which is faster depends on the network and the machine, and guessing gets it wrong both ways.
Measured on the 2-core CPU these networks are developed on (batch 64, 32x32, 2 threads):
channels-last makes a training step of the dense CondenseNet(V2) / RSNet networks 1.4-1.6x faster,
but IGCV2 and SlimConv-ResNet 1.4-1.7x slower; and the condensed form of CondenseNetV2-110, with
4x fewer multiply-adds in its learned group convolutions, takes 1.7x (NCHW) to 1.9x
(channels-last) the time of a masked step in channels-last, and 1.1x that of a masked step in
NCHW: the 1x1 convolutions are a small part of the step, BN / ReLU / concatenation over the full
input width stay, and the condensed form adds index_select / index_add / shuffle copies. So the
trainer times the candidates, wasting as little work as it can:

- memory format (:class:`FormatTrial`): the first real training steps alternate between the
  formats (one warm-up round, then ``rounds`` timed rounds) and training goes on in the faster
  one; no step is thrown away, the cost is only the steps run in the slower format.
- condensed form (:func:`time_step`): a probe runs forward + backward of a copy of each candidate
  on 8 images. That is enough to rank them: for CondenseNetV2-110 the condensed form's time over
  the masked form's (channels-last) is 1.3-1.5 / 1.3-1.4 (NCHW / channels-last) at 8 images and
  1.69 / 1.87 at 64 (with the condensed form's 1x1 group convolutions as batched matmuls). Copies
  and a forked random state keep the probe free of side effects: the trained model, its BN
  statistics and every random stream are untouched.

Timings keep the fastest of repeated runs: a busy shared machine only ever adds time.

The options compute the same function but not the same float rounding (another kernel, another
summation order), so which one was taken shows in the last digits of every later step. The
choices are therefore recorded (``TrainResult.choices``, and in every checkpoint) and can be
replayed (``TrainConfig.choices``): a rerun given an earlier run's choices takes them without
timing anything and computes the same numbers, however loaded the machine is. A replayed format
trial still alternates the formats over the same first steps (so those steps are computed as
before) but keeps the given format instead of the faster one.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PROBE_IMAGES", "FormatTrial", "time_step", "fastest"]

PROBE_IMAGES = 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, memory_format: torch.memory_format,
              amp_dtype: torch.dtype | None = None, repeats: int = 2, warmup: int = 1) -> float:
    """Seconds of the fastest of ``repeats`` forward + backward passes of a copy of ``model``,
    after ``warmup`` untimed ones (0 for a model that has just been running in this format)."""
    device = x.device
    probe = copy.deepcopy(model).train().to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    best = float("inf")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                loss = F.cross_entropy(probe(x), y)
            loss.backward()
            _sync(device)
            if i >= warmup:
                best = min(best, time.perf_counter() - start)
            probe.zero_grad(set_to_none=True)
    return best


def fastest(times: dict) -> object:
    """Key of the smallest time (the first one listed wins a tie)."""
    return min(times, key=times.get)


@dataclass
class FormatTrial:
    """Alternate memory formats over the first training steps; keep the fastest.

    ``current()`` names the format for the next step, ``record(seconds)`` its time; the first
    round warms each format up (new kernels, first allocations) and is not counted. Plain data, so
    a checkpoint can hold it (:meth:`state`, ``FormatTrial(**state)``).
    """

    options: list
    rounds: int = 2
    step: int = 0
    times: dict = field(default_factory=dict)
    chosen: str | None = None  # replayed: kept whatever the timings say

    def current(self) -> str | None:
        schedule = self.options * (self.rounds + 1)
        return schedule[self.step] if self.step < len(schedule) else None

    def record(self, seconds: float) -> None:
        name = self.current()
        if self.step >= len(self.options):
            self.times[name] = min(self.times.get(name, float("inf")), seconds)
        self.step += 1

    @property
    def done(self) -> bool:
        return self.current() is None

    def best(self) -> str:
        if self.chosen is not None:
            return self.chosen
        return fastest(self.times) if self.times else self.options[0]

    def state(self) -> dict:
        return asdict(self)
