"""Cost model: parameters and multiply-accumulates of a configuration, without real weights.

The network is built on the meta device (no memory, no initialisation cost) and pushed through one
forward pass at batch 1 in which convolutions, linear layers and shape-keeping layers (BN,
activations) are replaced by shape arithmetic that adds up MACs; only the remaining tensor
operations (concatenation, pooling, ...) run as meta ops. Layers with
a test-time form (learned group convolution, SFR) state their deploy-form params and MACs from
shapes (``deploy_counts``), so one pass over the training form gives both forms' counts; a layer
without that method makes the model go through the real conversion and a second pass instead. The
tests check both ways against the built deploy model. FLOPs in effnas are always MACs (multiply-accumulates), as the papers
count them; BN, activations, pooling and index layers are not counted (they are not in the papers'
figures either, and ``torch.utils.flop_counter`` does not count them).
"""
from __future__ import annotations

import gc
import itertools
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from space.convert import to_deploy
from space.layers import meta_build
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


# Layers that keep the shape of their input: during a counting pass they simply return it.
_SHAPE_KEEPING = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardswish,
                  nn.Hardsigmoid, nn.SiLU, nn.Identity, nn.Dropout)


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _fast_forwards(module: nn.Module, add_macs) -> Any:
    """A shape-only forward for ``module`` that reports its MACs, or None to run the real one.

    The meta device computes every output shape in Python (a conv ~0.4 ms, an element-wise op
    ~0.2 ms); the arithmetic here is a few microseconds. Only plain cases are handled: anything
    unusual (string padding, a subclass with extra inputs) runs its real meta forward."""
    if isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple) and module.padding_mode == "zeros":
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (module.kernel_size, module.stride, module.padding,
                                                  module.dilation)

        def conv(x: torch.Tensor) -> torch.Tensor:
            n, _, h, w = x.shape
            out = x.new_empty((n, module.out_channels, _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)))
            add_macs(module, _conv_macs(module, out))
            return out
        return conv
    if isinstance(module, nn.Linear):
        def linear(x: torch.Tensor) -> torch.Tensor:
            out = x.new_empty((*x.shape[:-1], module.out_features))
            add_macs(module, _linear_macs(module, out))
            return out
        return linear
    if isinstance(module, _SHAPE_KEEPING):
        return _identity
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return lambda x: x.new_empty((*x.shape[:2], 1, 1))
    return None


def _shortcut_counts(model: nn.Module, image_size, in_channels: int) -> Cost | None:
    """Both forms' counts from one shape-only pass over the training form, when every layer with
    a deploy form can state its deploy params/MACs from shapes (``deploy_counts``); else None."""
    if hasattr(model, "deploy"):  # a whole-network conversion: only the real one can tell
        return None
    modules = list(model.modules())  # one traversal serves everything below
    # A network without convertible layers is its own deploy form: one pass counts both.
    deployable = [m for m in modules if m is not model and hasattr(m, "deploy")]
    if not all(hasattr(m, "deploy_counts") for m in deployable):
        return None
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    inside = {id(c) for m in deployable for c in m.modules() if c is not m}
    totals = {"train": 0, "deploy": 0, "param_delta": 0}

    def add_macs(module, macs: int) -> None:
        totals["train"] += macs
        if id(module) not in inside:
            totals["deploy"] += macs

    def condensed(module, _inputs, output):
        params, macs = module.deploy_counts(output)
        totals["deploy"] += macs
        totals["param_delta"] += params - _numel(module.parameters())

    def counted(module, _inputs, output):  # an unusual conv or linear: counted from its real pass
        add_macs(module, _conv_macs(module, output) if isinstance(module, nn.Conv2d) else _linear_macs(module, output))

    patched, handles = [], [m.register_forward_hook(condensed) for m in deployable]
    for m in modules:
        forward = _fast_forwards(m, add_macs) if m is not model else None
        if forward is not None:
            m.__dict__["forward"] = forward  # an instance attribute shadows the class's forward
            patched.append(m)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(counted))
    params = [p for m in modules for p in m._parameters.values() if p is not None]
    device = params[0].device if params else torch.device("cpu")
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, device=device))
    finally:
        for m in patched:
            del m.__dict__["forward"]
        for handle in handles:
            handle.remove()
    train_params = _numel(params)
    return Cost(params=train_params + totals["param_delta"], macs=totals["deploy"],
                train_params=train_params, train_macs=totals["train"])


def _numel(tensors) -> int:
    unique = {id(t): t for t in tensors}  # a shared parameter counts once, as in parameters()
    return sum(t.numel() for t in unique.values())


def measure_module(model: nn.Module, image_size: int, in_channels: int = 3, inplace: bool = False) -> Cost:
    """Cost of a training-form network; ``inplace`` converts ``model`` itself for the deploy counts."""
    train_params = count_params(model)
    train_macs = count_macs(model, image_size, in_channels)
    deployed = to_deploy(model, inplace=inplace)
    return Cost(params=count_params(deployed), macs=count_macs(deployed, image_size, in_channels),
                train_params=train_params, train_macs=train_macs)


def _build_on_meta(fam, knobs: Any, num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    """The network on the meta device: built with the layers' explicit meta device (fast); if some
    module still made a real tensor (a layer that takes no device from ``space.layers``), built
    again inside ``torch.device("meta")``, which catches every tensor."""
    with meta_build():
        model = fam.build(knobs, num_classes=num_classes, image_size=image_size, in_channels=in_channels)
    tensors = (t for m in model.modules() for t in itertools.chain(m._parameters.values(), m._buffers.values()))
    if all(t is None or t.is_meta for t in tensors):
        return model
    with torch.device("meta"):
        return fam.build(knobs, num_classes=num_classes, image_size=image_size, in_channels=in_channels)


def measure(family: str, knobs: Any, num_classes: int, image_size: int, in_channels: int = 3) -> Cost:
    """Cost of a configuration, built on the meta device so no weights are allocated."""
    fam = get_family(family)
    # A meta network is thousands of short-lived objects; a cyclic-GC pass in the middle of one
    # scans the whole heap (torch's included) and can cost more than the build itself.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        # No eval(): no layer's shapes or counts depend on the mode, and it walks every module.
        model = _build_on_meta(fam, knobs, num_classes, image_size, in_channels)
        return _shortcut_counts(model, image_size, in_channels) or measure_module(
            model, image_size, in_channels, inplace=True)
    finally:
        if gc_was_enabled:
            gc.enable()
