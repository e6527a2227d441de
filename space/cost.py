"""Cost model: parameters and multiply-accumulates of a configuration, without real weights.

The network is built on the meta device (no memory, no initialisation cost) and pushed through one
meta forward pass at batch 1 while hooks on convolutions and linear layers add up MACs. Layers with
a test-time form (learned group convolution, SFR) state their deploy-form params and MACs from
shapes (``deploy_counts``), so one pass over the training form gives both forms' counts; a layer
without that method makes the model go through the real conversion and a second pass instead. The
tests check both ways against the built deploy model. FLOPs in effnas are always MACs (multiply-accumulates), as the papers
count them; BN, activations, pooling and index layers are not counted (they are not in the papers'
figures either, and ``torch.utils.flop_counter`` does not count them).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from space.convert import to_deploy
from space.registry import get_family

__all__ = ["Cost", "count_params", "count_macs", "measure", "measure_module"]


@dataclass(frozen=True)
class Cost:
    """Deploy-form and training-form parameter and MAC counts of one architecture."""

    params: int
    macs: int
    train_params: int
    train_macs: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
    return output[0].numel() * per_output


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    return (output.numel() // output.shape[0]) * module.in_features


def count_macs(model: nn.Module, image_size: int | tuple[int, int], in_channels: int = 3) -> int:
    """MACs of one forward pass of ``model`` at batch 1 (model may live on the meta device)."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += _conv_macs(module, output)
        else:
            total += _linear_macs(module, output)

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modules = list(model.modules())
    handles = [m.register_forward_hook(hook) for m in modules if isinstance(m, (nn.Conv2d, nn.Linear))]
    # BN keeps shapes and adds no MACs, but is the slowest op on the meta device (Python-side
    # checks): an instance-level identity forward makes counting about 4x faster.
    norms = [m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.forward = _identity
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, device=device))
    finally:
        model.train(was_training)
        for m in norms:
            del m.forward
        for handle in handles:
            handle.remove()
    return total


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _shortcut_counts(model: nn.Module, image_size, in_channels: int) -> Cost | None:
    """Both forms' counts from one pass over the training form, when every layer with a deploy
    form can state its deploy params/MACs from shapes (``deploy_counts``); else None."""
    modules = list(model.modules())
    deployable = [m for m in modules if m is not model and hasattr(m, "deploy")]
    if not deployable or not all(hasattr(m, "deploy_counts") for m in deployable):
        return None
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    inside = {id(c) for m in deployable for c in m.modules() if c is not m}
    totals = {"train": 0, "deploy": 0, "param_delta": 0}

    def plain(module, _inputs, output):
        macs = _conv_macs(module, output) if isinstance(module, nn.Conv2d) else _linear_macs(module, output)
        totals["train"] += macs
        if id(module) not in inside:
            totals["deploy"] += macs

    def condensed(module, _inputs, output):
        params, macs = module.deploy_counts(output)
        totals["deploy"] += macs
        totals["param_delta"] += params - sum(p.numel() for p in module.parameters())

    handles = [m.register_forward_hook(plain) for m in modules if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles += [m.register_forward_hook(condensed) for m in deployable]
    norms = [m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.forward = _identity
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, device=device))
    finally:
        for m in norms:
            del m.forward
        for handle in handles:
            handle.remove()
    train_params = count_params(model)
    return Cost(params=train_params + totals["param_delta"], macs=totals["deploy"],
                train_params=train_params, train_macs=totals["train"])


def measure_module(model: nn.Module, image_size: int, in_channels: int = 3, inplace: bool = False) -> Cost:
    """Cost of a training-form network; ``inplace`` converts ``model`` itself for the deploy counts."""
    train_params = count_params(model)
    train_macs = count_macs(model, image_size, in_channels)
    deployed = to_deploy(model, inplace=inplace)
    return Cost(params=count_params(deployed), macs=count_macs(deployed, image_size, in_channels),
                train_params=train_params, train_macs=train_macs)


def measure(family: str, knobs: Any, num_classes: int, image_size: int, in_channels: int = 3) -> Cost:
    """Cost of a configuration, built on the meta device so no weights are allocated."""
    fam = get_family(family)
    with torch.device("meta"):
        model = fam.build(knobs, num_classes=num_classes, image_size=image_size, in_channels=in_channels)
    model.eval()  # counting runs in eval mode (dropout, masks as they are)
    return _shortcut_counts(model, image_size, in_channels) or measure_module(
        model, image_size, in_channels, inplace=True)
