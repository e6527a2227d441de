"""Measured inference latency of the deploy form, in eager PyTorch or in ONNX Runtime.

Every measurement is the median of ``repeats`` timed runs after ``warmup`` untimed ones, at a
stated batch size and thread count; :class:`LatencySetup` says which, and its ``as_record()`` is
what a trial record keeps next to the number, so two latencies are only compared when they were
measured the same way.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = ["RUNTIMES", "LatencySetup", "measure_latency", "measure_onnx_latency", "measure_deploy_latency",
           "time_calls"]

RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class LatencySetup:
    """Where and how latency is measured (``latency:`` of a study file)."""

    runtime: str = "torch"   # "torch": eager PyTorch; "onnxruntime": the exported graph on the CPU
    threads: int = 1         # intra-op threads of the runtime
    batch: int = 1
    repeats: int = 30
    warmup: int = 5
    device: str = "cpu"      # "cuda" only with the torch runtime

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, but got {self.runtime!r}")
        if self.threads < 1 or self.batch < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"need threads, batch, repeats >= 1 and warmup >= 0, but got threads={self.threads}, "
                             f"batch={self.batch}, repeats={self.repeats}, warmup={self.warmup}")
        if self.runtime == "onnxruntime" and self.device != "cpu":
            raise ValueError(f"the onnxruntime runtime measures on the CPU, but got device={self.device!r}")

    def as_record(self) -> dict:
        """The setup with the runtime's version, as stored beside the measured latency."""
        if self.runtime == "onnxruntime":
            from space.onnx import require_onnxruntime

            version = require_onnxruntime().__version__
        else:
            version = torch.__version__
        return {"runtime": self.runtime, "version": version, "threads": self.threads, "batch": self.batch,
                "device": self.device, "repeats": self.repeats, "warmup": self.warmup, "statistic": "median"}


def time_calls(call: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None] = lambda: None) -> float:
    """Median milliseconds of ``call()`` over ``repeats`` timed runs after ``warmup`` untimed ones."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, but got repeats={repeats}, warmup={warmup}")
    times = []
    for i in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        call()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_latency(model: nn.Module, image_size: int, in_channels: int = 3, device: str = "cpu",
                    repeats: int = 30, warmup: int = 5, batch: int = 1, threads: int | None = None) -> float:
    """Median milliseconds of one eager forward pass at ``batch`` in eval mode.

    The model is moved to ``device`` and put in eval mode for the measurement; its training mode is
    restored afterwards (it stays on ``device``). ``threads`` sets PyTorch's intra-op threads for the
    measurement (None: as they are). The median is robust to the odd slow run that other processes
    on a shared machine cause.

    Raises:
        ValueError: if ``repeats`` < 1 or ``warmup`` < 0.
    """
    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    x = torch.randn(batch, in_channels, image_size, image_size, device=dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    try:
        with torch.inference_mode(), _torch_threads(threads):
            return time_calls(lambda: model(x), repeats, warmup, sync)
    finally:
        model.train(was_training)


def measure_onnx_latency(deployed: nn.Module, image_size: int, in_channels: int = 3, threads: int = 1,
                         batch: int = 1, repeats: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of the deploy form's ONNX graph (``space.onnx.to_onnx_form``) in ONNX
    Runtime on the CPU, at a fixed ``batch``.

    Raises:
        space.onnx.OnnxRuntimeMissing: onnxruntime is not installed.
    """
    import numpy as np

    from space.onnx import onnx_bytes, ort_session, require_onnxruntime, to_onnx_form

    require_onnxruntime()
    graph = onnx_bytes(to_onnx_form(deployed, image_size, in_channels), image_size, in_channels, batch=batch)
    session = ort_session(graph, threads)
    feed = {"input": np.random.default_rng(0).standard_normal((batch, in_channels, image_size, image_size),
                                                               dtype=np.float32)}
    return time_calls(lambda: session.run(None, feed), repeats, warmup)


def measure_deploy_latency(deployed: nn.Module, image_size: int, in_channels: int, setup: LatencySetup) -> float:
    """The deploy form's latency as ``setup`` says (runtime, threads, batch, repeats, device)."""
    if setup.runtime == "onnxruntime":
        return measure_onnx_latency(deployed, image_size, in_channels, setup.threads, setup.batch,
                                    setup.repeats, setup.warmup)
    return measure_latency(deployed, image_size, in_channels, setup.device, setup.repeats, setup.warmup,
                           setup.batch, setup.threads)
