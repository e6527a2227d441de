"""Atomic, ``weights_only``-loadable training checkpoints and the random states they carry.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)`` (no pickled objects, nothing executed on load). Random
states are stored in that vocabulary too: numpy's and Python's as lists, torch's as tensors.
Writes are atomic (``trainers.atomic``), so a crash mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.atomic import write_atomic

__all__ = ["CHECKPOINT_NAME", "DEPLOY_NAME", "save_atomic", "load_checkpoint", "capture_rng", "restore_rng"]

CHECKPOINT_NAME = "checkpoint.pt"
DEPLOY_NAME = "deploy.pt"


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` of ``obj``, written atomically (:func:`trainers.atomic.write_atomic`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict | None:
    """The checkpoint at ``path`` loaded on CPU with ``weights_only=True``, or None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def capture_rng(augment_state: torch.Tensor) -> dict:
    """Random states of torch (CPU and CUDA), numpy, Python and the augmentation generator."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [str(np_state[0]), np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_version, list(py_internal), py_gauss],
        "augment": augment_state,
    }


def restore_rng(state: dict) -> torch.Tensor:
    """Restore what :func:`capture_rng` saved; returns the augmentation generator's state."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    return state["augment"]
