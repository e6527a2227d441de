"""Measured inference latency: batch 1, median of repeated timed runs after a warm-up."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

__all__ = ["measure_latency"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, image_size: int, in_channels: int = 3, device: str = "cpu",
                    repeats: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of one forward pass at batch 1 in eval mode.

    The model is moved to ``device`` and put in eval mode for the measurement; its training mode is
    restored afterwards (it stays on ``device``). The median is robust to the odd slow run that
    other processes on a shared machine cause.

    Raises:
        ValueError: if ``repeats`` < 1 or ``warmup`` < 0.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, but got repeats={repeats}, warmup={warmup}")
    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    x = torch.randn(1, in_channels, image_size, image_size, device=dev)
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                _sync(dev)
                start = time.perf_counter()
                model(x)
                _sync(dev)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times) * 1000.0
