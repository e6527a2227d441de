"""NAS-Bench-Macro: the macro search space of a CIFAR-10 benchmark, as an effnas family.

Benchmark: X. Su, T. Huang, Y. Li, S. You, F. Wang, C. Qian, C. Zhang, C. Xu, "Prioritized
Architecture Sampling with Monte-Carlo Tree Search", CVPR 2021; benchmark file and network
description from the authors' repository xiusu/NAS-Bench-Macro (Apache License 2.0, see
``LICENSE`` and ``PROVENANCE.md`` beside this file).

This family lives outside ``space/`` on purpose: it is the worked example of a family registered
from a user's own module. A study names it with::

    family_modules: [../examples/nas_bench_macro/family.py]   # relative to the study file
    families: {nas_bench_macro: {}}

Importing this file registers the family ``nas_bench_macro`` through the same registry contract as
the four paper families: a frozen knob dataclass that validates itself, a search space of Optuna
distributions under stable names, a sampler and the training-form ``nn.Module``. There is no
training-only layer, so the network is its own deploy form and ``space.cost`` counts it in one
shape-only pass.

The space: eight searchable layers, each one of three operations (knob ``layer``, one value per
layer; Optuna parameters ``nas_bench_macro.layer.0`` .. ``nas_bench_macro.layer.7``):

- 0: identity -- a 1x1 convolution with the layer's stride, then BN, where the stride or the width
  changes; otherwise the input itself;
- 1: MobileNetV2 inverted residual, 3x3 depthwise kernel, expansion 3;
- 2: MobileNetV2 inverted residual, 5x5 depthwise kernel, expansion 6.

Network: a 3x3 stem (3 -> 32, BN, ReLU), three stages of 2, 3 and 3 searchable layers whose first
layer has stride 2 and doubles the width (32 -> 64 -> 128 -> 256), a 1x1 head 256 -> 1280 (BN,
ReLU), global average pooling and a linear classifier. No convolution has a bias. The benchmark's
key of an architecture is its eight choices as digits (``"01201200"``: :func:`key_of`,
:func:`knobs_from_key`). With 10 classes at 32x32, the effnas cost model gives exactly the
benchmark's ``params`` and ``flops`` (multiply-accumulates) for all 6,561 keys
(``tests/test_nas_bench_macro.py``).

The recorded results (three trainings of every key) are the table ``table.json.gz`` beside this
file (:data:`TABLE_PATH`, read with ``search.tables.load_table``), made by ``make_table.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from space.knobs import choice, per_stage, require
from space.layers import BatchNorm2d, Conv2d, Linear
from space.registry import Family, register_family

__all__ = [
    "FAMILY",
    "TABLE_PATH",
    "OPERATIONS",
    "NasBenchMacroKnobs",
    "key_of",
    "knobs_from_key",
    "InvertedResidual",
    "NasBenchMacro",
    "build",
    "search_space",
    "sample",
]

FAMILY = "nas_bench_macro"
TABLE_PATH = Path(__file__).resolve().with_name("table.json.gz")
NUM_LAYERS = 8
STAGE_DEPTHS = (2, 3, 3)
STEM_WIDTH = 32
HEAD_WIDTH = 1280
# choice -> (depthwise kernel, expansion); None is the identity.
OPERATIONS: dict[int, tuple[int, int] | None] = {0: None, 1: (3, 3), 2: (5, 6)}


@dataclass(frozen=True)
class NasBenchMacroKnobs:
    """One NAS-Bench-Macro architecture.

    Attributes:
        layer: the operation of each of the 8 searchable layers (one value for all, or 8 values):
            0 identity, 1 MBConv k3 e3, 2 MBConv k5 e6.
    """

    layer: int | tuple[int, ...] = (1,) * NUM_LAYERS

    def __post_init__(self) -> None:
        layers = per_stage(self.layer, NUM_LAYERS, "layer")
        for i, op in enumerate(layers):
            require(isinstance(op, int) and not isinstance(op, bool) and op in OPERATIONS,
                    f"layer[{i}] must be 0 (identity), 1 (MBConv k3 e3) or 2 (MBConv k5 e6), but got {op!r}")
        object.__setattr__(self, "layer", layers)

    @property
    def key(self) -> str:
        """The benchmark's key: the eight choices as digits."""
        return key_of(self)


def key_of(knobs: NasBenchMacroKnobs) -> str:
    return "".join(str(op) for op in knobs.layer)


def knobs_from_key(key: str) -> NasBenchMacroKnobs:
    """Knobs of a benchmark key such as ``"01201200"``."""
    if not (isinstance(key, str) and len(key) == NUM_LAYERS and set(key) <= set("012")):
        raise ValueError(f"a NAS-Bench-Macro key is {NUM_LAYERS} digits out of 0, 1, 2, but got {key!r}")
    return NasBenchMacroKnobs(layer=tuple(int(c) for c in key))


# --- layers -------------------------------------------------------------------------------------

def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers = [Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
              BatchNorm2d(cout)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion to ``round(expansion * cin)``, k x k depthwise with the
    stride, 1x1 projection without activation; a residual addition when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int, expansion: int) -> None:
        super().__init__()
        hidden = round(expansion * cin)
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(*_conv_bn(cin, hidden, 1), *_conv_bn(hidden, hidden, kernel, stride, groups=hidden),
                                  *_conv_bn(hidden, cout, 1, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        # On the meta device (the cost model) only the shape matters, and the addition keeps it.
        return x + out if self.residual and not x.is_meta else out


def _layer(op: int, cin: int, cout: int, stride: int) -> nn.Module:
    spec = OPERATIONS[op]
    if spec is not None:
        return InvertedResidual(cin, cout, stride, *spec)
    if stride != 1 or cin != cout:
        return nn.Sequential(*_conv_bn(cin, cout, 1, stride, relu=False))
    return nn.Identity()


class NasBenchMacro(nn.Module):
    """Stem, three stages of searchable layers, 1x1 head, global pooling, linear classifier."""

    def __init__(self, knobs: NasBenchMacroKnobs, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"{name} must be a positive integer, but got {name}={value!r}")
        self.knobs = knobs
        self.stem = nn.Sequential(*_conv_bn(in_channels, STEM_WIDTH, 3))
        ops, cin, stages = iter(knobs.layer), STEM_WIDTH, []
        for depth in STAGE_DEPTHS:
            cout, layers = 2 * cin, []
            for j in range(depth):
                layers.append(_layer(next(ops), cin, cout, stride=2 if j == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(*_conv_bn(cin, HEAD_WIDTH, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = Linear(HEAD_WIDTH, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # MobileNetV2's initialisation (torchvision); nothing to set on the meta device.
        if self.classifier.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.stages(self.stem(x))))
        return self.classifier(torch.flatten(x, 1))


def build(knobs: NasBenchMacroKnobs, num_classes: int = 10, image_size: int = 32,
          in_channels: int = 3) -> NasBenchMacro:
    """The network of ``knobs`` (also its deploy form). ``image_size`` is only checked: global
    pooling makes the structure independent of it (the benchmark trained at 32x32)."""
    if not isinstance(knobs, NasBenchMacroKnobs):
        raise TypeError(f"knobs must be NasBenchMacroKnobs, but got {type(knobs).__name__}")
    require(isinstance(image_size, int) and not isinstance(image_size, bool) and image_size >= 1,
            f"image_size must be a positive integer, but got image_size={image_size!r}")
    return NasBenchMacro(knobs, num_classes, in_channels)


# --- search space -------------------------------------------------------------------------------

def search_space() -> dict:
    """The benchmark's whole space: 3^8 = 6,561 keys."""
    return {f"{FAMILY}.layer.{i}": choice(tuple(OPERATIONS)) for i in range(NUM_LAYERS)}


def sample(draw: Callable[[str], Any]) -> NasBenchMacroKnobs:
    return NasBenchMacroKnobs(layer=tuple(draw(f"{FAMILY}.layer.{i}") for i in range(NUM_LAYERS)))


register_family(Family(
    name=FAMILY,
    knobs_cls=NasBenchMacroKnobs,
    build=build,
    search_space=search_space,
    sample=sample,
    summary="NAS-Bench-Macro (Su et al., CVPR 2021): 8 layers of identity / MBConv k3 e3 / MBConv k5 e6 "
            "in 3 stages; recorded CIFAR-10 accuracy of all 6,561 keys",
))
