"""SlimConv and the Sc-ResNet / Sc-ResNeXt networks built from it.

Paper: J. Qiu, C. Chen, S. Liu, B. Zeng, "SlimConv: Reducing Channel Redundancy in Convolutional
Neural Networks by Weights Flipping" (/work/shared/papers/003_55cacb3f8a68fadd.txt); the authors'
public PyTorch code (JiaxiongQ/SlimConv, ``SC-ResNet.py``) settles what the text leaves open.

SlimConv maps ``C`` channels to ``C / k`` channels in three steps:

- Reconstruct: a modified SE module (Eq. 1, Fig. 2) gives channel weights ``w``: global average
  pool, 1x1 conv ``C -> max(C // r, L)`` without bias, BN, ReLU, 1x1 conv back to ``C`` with bias,
  sigmoid. ``r = 32`` and no floor for the ResNets; the floor ``L`` is the paper's fix for narrow
  layers (Sec. 3.2, used with DLA and MobileNetV2 in Table 3). The top pathway scales the input by
  ``w``, the bottom one by the flipped weights (channel order reversed, ``w[C-1-c]``); with
  ``flip=False`` both use ``w`` (Table 7's "w/o flipping" ablation). Each pathway is then cut into
  ``s`` consecutive channel blocks that are summed (Eq. 2, ``s = 2`` in Fig. 1).
- Transform: top: 3x3 conv ``C/s -> C/s`` + BN; bottom: 1x1 conv ``C/s -> C/b`` + BN + ReLU, then
  3x3 conv ``C/b -> C/b`` + BN. Both 3x3 convs carry the stride and, in ResNeXt, the groups; the
  bottom 1x1 is dense and runs at the input resolution (as in the authors' code).
- Fuse: concatenation, ``C/s + C/b = C/k`` channels; the ReLU after it belongs to the bottleneck.

Reading of ``k`` (the paper only draws ``k = 4/3``): ``(s, b) = (2, 4)`` for ``k = 4/3``, ``(4, 8)``
for ``k = 8/3`` and ``(4, 4)`` for ``k = 2`` -- sum the input in ``s`` pieces, keep that width on
the top, shrink the bottom to ``C/b``. On CIFAR-100 Sc-ResNet-50 (Table 10) this rule gives
14.907M / 10.247M params for k = 4/3 / 8/3 (paper 14.91M / 10.25M), and extended to (8, 8) and
(8, 16) it gives 9.067M and 8.609M for k = 4 and 16/3 (paper 9.08M / 8.61M). For ``k = 2`` it
gives 11.447M params and 0.642 GMACs against the paper's 11.56M and 0.653 G (-1.0% / -1.7%); no
split of the described structure with ``C/2`` outputs that we tried gives 11.56M, so the paper's
k = 2 row is not reproduced exactly. Both rows are presets (``sc-resnet50-cifar-k8-3``, and
``sc-resnet50-cifar-k2`` marked as a reading with its gap). The authors' README also lists an ImageNet Sc-ResNet-50 with
k = 8/3 at 12.10M params and 1.88 GFLOPs: this reading gives 12.098M and 1.880 GMACs.

FLOPs convention: effnas counts multiply-accumulates of nn.Conv2d / nn.Linear only (the SE's
1x1 convs included). The SE scaling ``x * w``, the block sums, the flip and the BN/ReLU/pool work
are elementwise and not counted. Params match the paper to < 0.05% on every preset; the paper's
FLOPs run 0.9-1.4% above our MACs. Its counter also counts BN (2 ops per element), ReLU and
pooling (1 per element), as ptflops does: with those added, the torchvision baselines give 4.122 /
7.850 / 4.273 G (Table 1: ResNet-50 4.12, ResNet-101 7.84, ResNeXt-50 4.27) and our networks
2.687 / 4.874 / 3.869 G (Sc-ResNet-50 2.69, Sc-ResNet-101 4.87, Sc-ResNeXt-50 3.86) and 0.839 G
for the CIFAR Sc-ResNet-50 (Table 9: 0.836). The authors' README, counting with a conv+FC
counter, reports 2.65 G for Sc-ResNet-50: exactly our 2.652 GMACs. Preset tolerances (2%) cover
the gap between the conventions; the tests check params to 0.1% and the paper-convention FLOPs
to 0.5%.

Network (Fig. 3, Sec. 3.2): the torchvision ResNet v1.5 bottleneck -- 1x1 conv ``in -> C`` + BN +
ReLU, SlimConv ``C -> C/k`` (stride here) + ReLU, 1x1 conv ``C/k -> 4 * planes`` + BN, projection
shortcut (1x1 strided conv + BN) when the shape changes, add, ReLU. Stage ``i`` (0-based) has
``planes = base_width * 2**i`` and SlimConv width ``C = groups * width_per_group * 2**i``
(ResNet-50: 64 / 1 / 64; ResNeXt-50 32x4d: 64 / 32 / 4). Stem ``imagenet``: 7x7/2 conv + BN + ReLU +
3x3/2 max-pool; stem ``cifar``: 3x3/1 conv + BN + ReLU, no pool (Table 9 lists 23.71M params and
1.305 GFLOPs for the CIFAR-100 ResNet-50 baseline; a ResNet-50 with this stem and 100 classes has
23.705M params and 1.298 GMACs, 1.308 G in the paper's convention). Both stems have
``base_width`` channels.

Not reproduced here: Table 3's Sc-DLA-46-C, Sc-ShuffleNetV2 and Sc-MobileNetV2 (other backbones;
only their SE settings ``r``/``L`` are taken over as knobs), and Table 1's Sc-ResNeXt-101 (32x3d,
k = 2), whose stage-1 pathways (96/4 = 24 channels) cannot be split into 32 groups as described.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import torch
from torch import nn

from space.knobs import choice, int_range, per_stage, require
from space.layers import BatchNorm2d, Conv2d, Linear, concat_channels
from space.registry import Family, PaperFigures, Preset, register_family, register_preset

__all__ = [
    "K_SPLITS",
    "SlimConvKnobs",
    "Reconstruct",
    "fold",
    "se_hidden",
    "SlimConv",
    "ScBottleneck",
    "ScResNet",
    "build",
    "search_space",
    "sample",
]

FAMILY = "slimconv"
NUM_STAGES = 4
EXPANSION = 4
STEMS = ("cifar", "imagenet")
# k -> (s, b): the pathway input is the sum of s channel blocks (C/s wide), the top keeps C/s
# channels and the bottom shrinks to C/b, so the output has C/s + C/b = C/k channels.
K_SPLITS: dict[str, tuple[int, int]] = {"4/3": (2, 4), "2": (4, 4), "8/3": (4, 8)}


def _canonical_k(k: Any) -> str:
    """The name of ``k`` in ``K_SPLITS``; accepts the name or the exact fraction."""
    if isinstance(k, str) and k in K_SPLITS:
        return k
    if isinstance(k, (int, Fraction)) and not isinstance(k, bool):
        name = str(Fraction(k))
        if name in K_SPLITS:
            return name
    raise ValueError(f"k must be one of {list(K_SPLITS)} (a name or an exact Fraction), but got k={k!r}")


def _check_int(name: str, value: Any, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, but got {name}={value!r}")


def se_hidden(channels: int, reduction: int, min_hidden: int) -> int:
    """Hidden width of the modified SE: ``max(C // r, L)`` (Sec. 3.2)."""
    return max(channels // reduction, min_hidden)


@dataclass(frozen=True)
class SlimConvKnobs:
    """Design knobs of an Sc-ResNet / Sc-ResNeXt.

    Attributes:
        layers: bottleneck blocks per stage (one value or one per stage, 4 stages).
        base_width: ``planes`` of stage 1; stage i has ``base_width * 2**i`` planes and its blocks
            output ``4 * planes`` channels. The stem has ``base_width`` channels.
        groups: cardinality of the two 3x3 convs of every SlimConv (1: ResNet, 32: ResNeXt).
        width_per_group: SlimConv input width per group at stage 1 (ResNeXt's ``d``); the width
            is ``groups * width_per_group * 2**i``. Must be divisible by the ``b`` of ``k`` so that
            every split (C/s, C/b) is whole and divisible by ``groups``.
        k: SlimConv ratio, output = input / k: "4/3" (paper default), "2" or "8/3".
        reduction: r of the modified SE.
        min_hidden: L, the floor of the SE hidden width ``max(C // r, L)``.
        flip: bottom pathway uses the flipped weights (False: Table 7's "w/o flipping").
        stem: "cifar" (3x3 conv, no pool) or "imagenet" (7x7/2 conv + 3x3/2 max-pool).
    """

    layers: int | tuple[int, ...] = (1, 1, 1, 1)  # one block per stage keeps the default CIFAR net small
    base_width: int = 16
    groups: int = 1
    width_per_group: int = 16
    k: str = "4/3"
    reduction: int = 32
    min_hidden: int = 8  # C // 32 is 0 for the default widths; 8 lies between the paper's 6 and 16
    flip: bool = True
    stem: str = "cifar"

    def __post_init__(self) -> None:
        layers = per_stage(self.layers, NUM_STAGES, "layers")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "k", _canonical_k(self.k))
        for i, n in enumerate(layers):
            _check_int(f"layers[{i}]", n)
        for name in ("base_width", "groups", "width_per_group", "reduction", "min_hidden"):
            _check_int(name, getattr(self, name))
        require(isinstance(self.flip, bool), f"flip must be a bool, but got flip={self.flip!r}")
        require(self.stem in STEMS, f"stem must be one of {list(STEMS)}, but got stem={self.stem!r}")
        _, b = K_SPLITS[self.k]
        require(
            self.width_per_group % b == 0,
            f"width_per_group={self.width_per_group} must be divisible by {b} for k={self.k}, so that "
            f"the bottom pathway's C/{b} channels are whole and split into groups={self.groups}",
        )

    @property
    def split(self) -> tuple[int, int]:
        """``(s, b)`` of ``k``: see ``K_SPLITS``."""
        return K_SPLITS[self.k]

    def stage_planes(self, i: int) -> int:
        return self.base_width * 2 ** i

    def stage_width(self, i: int) -> int:
        """SlimConv input width of stage ``i``."""
        return self.groups * self.width_per_group * 2 ** i


# --- layers -------------------------------------------------------------------------------------

def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            BatchNorm2d(cout)]


class Reconstruct(nn.Module):
    """The modified SE of Fig. 2: channel weights ``w`` in (0, 1), shape ``(N, C, 1, 1)``.

    Its BN sees one value per channel and sample (after the global pool), so training needs
    batches of at least 2, as in the paper's code.
    """

    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 1) -> None:
        super().__init__()
        self.hidden = se_hidden(channels, reduction, min_hidden)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = Conv2d(channels, self.hidden, 1, bias=False)
        self.bn = BatchNorm2d(self.hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = Conv2d(self.hidden, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.fc2(self.act(self.bn(self.fc1(self.pool(x))))))


def fold(x: torch.Tensor, pieces: int) -> torch.Tensor:
    """Cut the channels into ``pieces`` consecutive blocks and sum them (Eq. 2 for 2 pieces)."""
    n, c, h, w = x.shape
    if x.is_meta:  # shapes only (cost model): meta reductions run through slow Python decompositions
        return x.new_empty((n, c // pieces, h, w))
    return x.view(n, pieces, c // pieces, h, w).sum(1)


class SlimConv(nn.Module):
    """SlimConv: ``channels -> channels / k``; replaces a 3x3 convolution (stride, groups).

    Args:
        channels: input channels C; ``C / b`` (see ``K_SPLITS``) must be a multiple of ``groups``.
        k: "4/3", "2" or "8/3" (or the exact Fraction).
        stride: stride of both 3x3 convs.
        groups: groups of both 3x3 convs.
        reduction, min_hidden: r and L of the modified SE.
        flip: bottom pathway uses the flipped weights; False uses ``w`` on both pathways.

    Raises:
        ValueError: on non-positive sizes, an unknown ``k`` or channels that do not split evenly.
    """

    def __init__(self, channels: int, k: Any = "4/3", stride: int = 1, groups: int = 1,
                 reduction: int = 32, min_hidden: int = 1, flip: bool = True) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("stride", stride), ("groups", groups),
                            ("reduction", reduction), ("min_hidden", min_hidden)):
            _check_int(name, value)
        self.k = _canonical_k(k)
        self.pieces, bottom = K_SPLITS[self.k]
        if channels % (bottom * groups):
            raise ValueError(f"channels={channels} must be divisible by {bottom} * groups={bottom * groups} "
                             f"for k={self.k} (pathways of C/{self.pieces} and C/{bottom} channels)")
        self.flip = flip
        half, low = channels // self.pieces, channels // bottom
        self.in_channels, self.out_channels = channels, half + low
        self.reconstruct = Reconstruct(channels, reduction, min_hidden)
        self.top = nn.Sequential(*_conv_bn(half, half, 3, stride, groups))
        self.bottom = nn.Sequential(*_conv_bn(half, low, 1), nn.ReLU(inplace=True),
                                    *_conv_bn(low, low, 3, stride, groups))
        self.fold_form: nn.Module | None = None  # space.onnx sets a fold with constant slice bounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.reconstruct(x)
        if x.is_meta:  # shapes only (cost model): the weighting keeps shapes, skip its meta ops
            top_in = bottom_in = fold(x, self.pieces)
        else:
            folded = self.fold_form if self.fold_form is not None else (lambda t: fold(t, self.pieces))
            top_in = folded(x * w)
            bottom_in = folded(x * (w.flip(1) if self.flip else w))
        return concat_channels((self.top(top_in), self.bottom(bottom_in)))

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, k={self.k}, flip={self.flip}"


class ScBottleneck(nn.Module):
    """ResNet bottleneck with SlimConv in place of the 3x3 conv (Fig. 3)."""

    def __init__(self, cin: int, planes: int, width: int, stride: int, knobs: SlimConvKnobs) -> None:
        super().__init__()
        cout = EXPANSION * planes
        self.reduce = nn.Sequential(*_conv_bn(cin, width, 1), nn.ReLU(inplace=True))
        self.slim = SlimConv(width, knobs.k, stride, knobs.groups, knobs.reduction, knobs.min_hidden,
                             knobs.flip)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Sequential(*_conv_bn(self.slim.out_channels, cout, 1))
        self.shortcut = (nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())
        self.out_act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.act(self.slim(self.reduce(x))))
        if x.is_meta:  # shapes only (cost model): the sum keeps the shape, skip its meta op
            self.shortcut(x)
            return self.out_act(y)
        return self.out_act(y + self.shortcut(x))


def _stem(kind: str, in_channels: int, width: int) -> nn.Sequential:
    if kind == "imagenet":
        return nn.Sequential(*_conv_bn(in_channels, width, 7, 2), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(*_conv_bn(in_channels, width, 3), nn.ReLU(inplace=True))


class ScResNet(nn.Module):
    """Sc-ResNet / Sc-ResNeXt: stem, 4 stages of SlimConv bottlenecks, global pool, FC."""

    def __init__(self, knobs: SlimConvKnobs, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        _check_int("num_classes", num_classes)
        _check_int("in_channels", in_channels)
        self.knobs = knobs
        self.stem = _stem(knobs.stem, in_channels, knobs.base_width)
        cin, stages = knobs.base_width, []
        for i, depth in enumerate(knobs.layers):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(ScBottleneck(cin, knobs.stage_planes(i), knobs.stage_width(i), stride, knobs))
                cin = EXPANSION * knobs.stage_planes(i)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = Linear(cin, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation. Skipped on the meta device, where there are no values
        # and the init functions still cost ~1 ms per conv.
        if self.fc.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def build(knobs: SlimConvKnobs, num_classes: int = 100, image_size: int = 32,
          in_channels: int = 3) -> ScResNet:
    """The network of ``knobs`` (SlimConv has no training-only form: this is also the deploy form).

    ``image_size`` does not change the structure (global pooling); it is checked only.
    """
    if not isinstance(knobs, SlimConvKnobs):
        raise TypeError(f"knobs must be SlimConvKnobs, but got {type(knobs).__name__}")
    _check_int("image_size", image_size)
    return ScResNet(knobs, num_classes, in_channels)


# --- search space -------------------------------------------------------------------------------

_GROUPS = (1, 2, 4, 8, 16, 32)


def search_space() -> dict:
    """Wide default space. Width is drawn as ``width_mult`` and multiplied by the ``b`` of the
    drawn ``k`` (``width_per_group = b * width_mult``), so every split is whole by construction."""
    space = {f"{FAMILY}.layers.{i}": int_range(1, 8) for i in range(NUM_STAGES)}
    space.update({
        f"{FAMILY}.base_width": int_range(8, 128, step=8),
        f"{FAMILY}.groups": choice(_GROUPS),
        f"{FAMILY}.width_mult": int_range(1, 16),
        f"{FAMILY}.k": choice(tuple(K_SPLITS)),
        f"{FAMILY}.reduction": int_range(4, 64, step=4),
        f"{FAMILY}.min_hidden": int_range(1, 32),
        f"{FAMILY}.flip": choice((True, False)),
        f"{FAMILY}.stem": choice(STEMS),
    })
    return space


def sample(draw: Callable[[str], Any]) -> SlimConvKnobs:
    k = draw(f"{FAMILY}.k")
    _, b = K_SPLITS[_canonical_k(k)]
    return SlimConvKnobs(
        layers=tuple(draw(f"{FAMILY}.layers.{i}") for i in range(NUM_STAGES)),
        base_width=draw(f"{FAMILY}.base_width"),
        groups=draw(f"{FAMILY}.groups"),
        width_per_group=b * draw(f"{FAMILY}.width_mult"),
        k=k,
        reduction=draw(f"{FAMILY}.reduction"),
        min_hidden=draw(f"{FAMILY}.min_hidden"),
        flip=draw(f"{FAMILY}.flip"),
        stem=draw(f"{FAMILY}.stem"),
    )


register_family(Family(
    name=FAMILY,
    knobs_cls=SlimConvKnobs,
    build=build,
    search_space=search_space,
    sample=sample,
    summary="Sc-ResNet/ResNeXt: bottlenecks whose 3x3 conv is a SlimConv (SE weights + flipped "
            "weights, split-and-sum, C -> C/k; Qiu et al.)",
))

# --- presets ------------------------------------------------------------------------------------

_FLOPS_NOTE = ("paper FLOPs include BN/ReLU/pool elementwise ops (~1-1.4% above conv+FC MACs, as "
               "for its baselines); params agree to <0.05%")
_IMAGENET = dict(base_width=64, k="4/3", reduction=32, min_hidden=1, flip=True, stem="imagenet")

register_preset(Preset(
    name="sc-resnet50", family=FAMILY, num_classes=1000, image_size=224,
    knobs=SlimConvKnobs(layers=(3, 4, 6, 3), groups=1, width_per_group=64, **_IMAGENET),
    paper=PaperFigures(params=16.76e6, macs=2.69e9, source="Table 1 (and Table 7)", rel_tol=0.02,
                       note=f"ours 16.759M / 2.652 GMACs; {_FLOPS_NOTE}; authors' README: 2.65 G"),
))
register_preset(Preset(
    name="sc-resnet101", family=FAMILY, num_classes=1000, image_size=224,
    knobs=SlimConvKnobs(layers=(3, 4, 23, 3), groups=1, width_per_group=64, **_IMAGENET),
    paper=PaperFigures(params=27.96e6, macs=4.87e9, source="Table 1", rel_tol=0.02,
                       note=f"ours 27.957M / 4.822 GMACs; {_FLOPS_NOTE}"),
))
register_preset(Preset(
    name="sc-resnext50", family=FAMILY, num_classes=1000, image_size=224,
    knobs=SlimConvKnobs(layers=(3, 4, 6, 3), groups=32, width_per_group=4, **_IMAGENET),
    paper=PaperFigures(params=22.49e6, macs=3.86e9, source="Table 1 (32x4d)", rel_tol=0.02,
                       note=f"ours 22.493M / 3.821 GMACs; {_FLOPS_NOTE}"),
))
register_preset(Preset(
    name="sc-resnet50-cifar", family=FAMILY, num_classes=100, image_size=32,
    knobs=SlimConvKnobs(layers=(3, 4, 6, 3), groups=1, width_per_group=64,
                        **{**_IMAGENET, "stem": "cifar"}),
    paper=PaperFigures(params=14.91e6, macs=0.836e9, source="Table 9 / Table 10 (CIFAR-100, k=4/3)",
                       rel_tol=0.02, note=f"ours 14.907M / 0.829 GMACs; {_FLOPS_NOTE}"),
))
# Table 10's other rows that the described structure builds (k = 4 and 16/3 need splits beyond K_SPLITS).
_CIFAR_R50 = dict(layers=(3, 4, 6, 3), groups=1, width_per_group=64, **{**_IMAGENET, "stem": "cifar"})
register_preset(Preset(
    name="sc-resnet50-cifar-k8-3", family=FAMILY, num_classes=100, image_size=32,
    knobs=SlimConvKnobs(**{**_CIFAR_R50, "k": "8/3"}),
    paper=PaperFigures(params=10.25e6, macs=0.584e9, source="Table 10 (CIFAR-100, k=8/3)", rel_tol=0.02,
                       note=f"ours 10.247M / 0.577 GMACs; {_FLOPS_NOTE}"),
))
register_preset(Preset(
    name="sc-resnet50-cifar-k2", family=FAMILY, num_classes=100, image_size=32,
    knobs=SlimConvKnobs(**{**_CIFAR_R50, "k": "2"}),
    paper=PaperFigures(params=11.56e6, macs=0.653e9, source="Table 10 (CIFAR-100, k=2)", rel_tol=0.02,
                       note="a reading, not a reproduction: ours 11.447M params (-1.0%) and 0.642 GMACs "
                            "(-1.7%); no split of the described structure with C/2 outputs gives 11.56M"),
))
