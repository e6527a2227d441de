"""Timed choices between equivalent ways of running the same training step.

Which is faster depends on the network and the machine, and guessing gets it wrong both ways.
Measured on the 2-core CPU these networks are developed on (batch 64, 32x32, 2 threads):
channels-last makes a training step of the dense CondenseNet(V2) / RSNet networks 1.4-1.6x faster,
but IGCV2 and SlimConv-ResNet 1.4-1.7x slower; and the condensed form of CondenseNetV2-110, with
4x fewer multiply-adds in its learned group convolutions, trains 1.1x (NCHW) to 2x (channels-last)
slower than the masked form, because these 1x1 convolutions are memory-bound and the condensed
form adds index_select / index_add / shuffle copies. So the trainer times the candidates.

A probe runs forward + backward of a copy of the model on a small batch (16 images are enough: the
ratios match batch 64 within a few percent), once to warm up and twice timed, keeping the faster
of the two (a busy shared machine only ever adds time). Copies and a forked random state keep the
probe free of side effects: the trained model, its BN statistics and every random stream are
untouched.
"""
from __future__ import annotations

import contextlib
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PROBE_IMAGES", "time_step", "fastest"]

PROBE_IMAGES = 16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, memory_format: torch.memory_format,
              amp_dtype: torch.dtype | None = None, repeats: int = 2) -> float:
    """Seconds of the fastest of ``repeats`` forward + backward passes of a copy of ``model``."""
    device = x.device
    probe = copy.deepcopy(model).train().to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    best = float("inf")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                loss = F.cross_entropy(probe(x), y)
            loss.backward()
            _sync(device)
            if i:
                best = min(best, time.perf_counter() - start)
            probe.zero_grad(set_to_none=True)
    return best


def fastest(times: dict) -> object:
    """Key of the smallest time (the first one listed wins a tie)."""
    return min(times, key=times.get)
