"""Model-wide sparsification schedule and deploy conversion.

Layers with a training-only form (learned group convolution, SFR) follow a small protocol, so the
trainer and the cost model never need to know which family they hold:

- ``set_progress(progress: float) -> bool``: advance the layer's mask schedule to the training
  progress in [0, 1] (epoch + batch fraction over total epochs); returns True if a mask changed.
- ``deploy() -> nn.Module``: the equivalent test-time module (index select + group conv, ...).
  It must also work on the meta device, where only shapes exist (used by the cost model).
"""
from __future__ import annotations

import copy

from torch import nn

__all__ = ["set_progress", "to_deploy", "has_schedule"]


def has_schedule(model: nn.Module) -> bool:
    """True if any layer of ``model`` has a progress-driven mask schedule."""
    return any(hasattr(m, "set_progress") for m in model.modules() if m is not model)


def set_progress(model: nn.Module, progress: float) -> bool:
    """Step every scheduled layer to ``progress``; True if any mask changed."""
    if not 0.0 <= progress <= 1.0 + 1e-9:
        raise ValueError(f"progress must lie in [0, 1], but got {progress!r}")
    changed = False
    for module in model.modules():
        if module is not model and hasattr(module, "set_progress"):
            changed |= bool(module.set_progress(progress))
    return changed


def _replace_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if hasattr(child, "deploy"):
            setattr(module, name, child.deploy())
        else:
            _replace_children(child)


def to_deploy(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A converted copy of ``model`` in eval mode (``inplace``: convert ``model`` itself, which the
    cost model does to skip the copy of a throw-away meta network)."""
    deployed = model if inplace else copy.deepcopy(model)
    deployed.eval()
    if hasattr(deployed, "deploy"):
        return deployed.deploy().eval()
    _replace_children(deployed)
    return deployed.eval()
