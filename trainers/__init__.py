"""Training of one architecture: data, batch augmentation, the training loop, checkpoints, latency.

``trainers.data`` loads datasets into uint8 tensors (seeded validation split, fidelity knobs);
``trainers.train`` trains a registered family with the papers' recipe, switches to the condensed
form once its masks are final, checkpoints every epoch and resumes, converts to the deploy form
and measures the final metrics on it. Names are imported on first use, so loading data or reading
a config does not import the search space and the training loop.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataConfig": "trainers.data",
    "DataSplits": "trainers.data",
    "DatasetNotFoundError": "trainers.data",
    "load_data": "trainers.data",
    "TrainConfig": "trainers.train",
    "EpochReport": "trainers.train",
    "TrainResult": "trainers.train",
    "NonFiniteLossError": "trainers.train",
    "train": "trainers.train",
    "train_model": "trainers.train",
    "evaluate": "trainers.train",
    "DeployMismatchError": "trainers.condense",
    "measure_latency": "trainers.latency",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
