"""The search space: the network families of the four papers, their knobs, presets and costs.

Importing this package registers every family and preset. Each family lives in one module:
``condensenet`` (CondenseNet and CondenseNetV2), ``rsnet``, ``igcv2`` and ``slimconv``; the layers
they share (learned group convolution, SFR, channel shuffle, SE, ...) live in ``space.layers``.
"""
from __future__ import annotations

from space.registry import (
    Family,
    PaperFigures,
    Preset,
    build_model,
    get_family,
    get_preset,
    list_families,
    list_presets,
    register_family,
    register_preset,
)
from space.convert import set_progress, to_deploy

# Family modules register themselves on import.
from space import condensenet, rsnet, igcv2, slimconv  # noqa: E402,F401  isort: skip

__all__ = [
    "Family",
    "PaperFigures",
    "Preset",
    "build_model",
    "get_family",
    "get_preset",
    "list_families",
    "list_presets",
    "register_family",
    "register_preset",
    "set_progress",
    "to_deploy",
]
