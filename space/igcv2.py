"""IGCV2: interleaved structured sparse convolutions, and the CIFAR networks built from them.

Paper: G. Xie, J. Wang, T. Zhang, J. Lai, R. Hong, G.-J. Qi, "IGCV2: Interleaved Structured Sparse
Convolutional Neural Networks", CVPR 2018 (/work/shared/papers/004_1f6765446a3f67b9.txt). The
transition and shortcut details the text leaves open were read against the IGC (IGCV1) authors'
public MXNet code (hellozting/InterleavedGroupConvolutions), whose CIFAR settings IGCV2 adopts.

Block (Eq. 4): ``y = P_L W_L ... P_1 W_1 x``, a product of ``L`` group convolutions ``W_l`` with
``K_l`` channels per branch, each followed by the interleaving permutation ``P_l``: the output of a
group conv with ``G`` branches is viewed as ``(G, C/G)`` and transposed (``space.layers.
ChannelShuffle``), so the channels of one branch land in different branches of the next group conv.
``W_1`` is the only spatial (3x3) conv; ``K_1 = 1`` makes it channel-wise (the paper's IGCV2, Sec.
3.2 "Examples"), ``K_1 = 2`` with ``L = 2`` gives IGCV1, ``K_1 = 1, L = 2, K_2 = C`` gives Xception.
Permutations that are identities (after a channel-wise or a dense conv) are left out.

Conditions (Sec. 3.2). Complementary: exactly one path joins every input to every output, which
with the interleaving permutation holds iff ``K_1 * prod(K_l) == C_in``. Dense: every output sees
every input, iff ``K_1 * prod(K_l) >= C_in``: with the transposing permutation the inputs reached
by a branch of layer ``l`` form a cyclic interval of length ``K_1 K_2 .. K_l`` starting at a
multiple of that length, so consecutive branches tile the channel circle. Balance (Eq. 11):
``S K_1 = K_2 = .. = K_L``; with a channel-wise first conv the paper applies it to the 1x1 convs
only, ``K_2 = .. = K_L = C^(1/(L-1))``. ``check_conditions`` verifies all three on a *built* block
by composing its path-count matrix from the convs' groups and the permutations' actual indices.
The knob ``condition`` selects what the knobs must satisfy, from the strictest:

- ``exact``: complementary and balanced in every block, transitions included;
- ``dense``: every output sees every input (``K_1 * prod(K_l) >= C_in``), channel-wise 3x3 (``K_1 = 1``);
- ``loose``: dense too, with any ``K_1`` and neither complementarity nor balance required: what the
  paper's "loose" ImageNet models are (dense, not complementary);
- ``sparse``: any whole grouping, so an output may see as few as 2 of 64 inputs (no path from the
  rest). Named for what it admits, accepted as a knob (``arch --set condition=sparse``, seeds) but
  not among the searched conditions: a search region of disconnected blocks wastes trials. (Before
  this reading, ``loose`` admitted these blocks; it was the condition the paper did not mean.)

The searched choices stay ``exact``, ``dense``, ``loose`` (the database keys of existing studies).

Networks (Table 1): a 3x3 stem conv, three stages at 32/16/8 pixels of widths ``C_s`` (``x, 2x,
4x`` in the paper) with ``B`` blocks each, depth ``3B + 2``, a skip connection every two blocks,
global average pool and FC. Readings chosen, with the numbers they give:

- Transition (first block of a stage, ``C_in -> C_out``, stride 2; ``transition="next"``): the
  channel-wise conv (stride 2) and all but the last 1x1 group conv run at ``C_in`` with the new
  stage's ``K``; the last 1x1 group conv has ``C_in / K`` branches and widens to ``C_out``. A
  channel-wise conv with ``C_out`` outputs, or widening in the first 1x1 conv, give 2-9% more
  params than Tables 3/4/6 (e.g. +8.7% for IGCV2 (C64) D=8); this reading stays within 3.0%
  (table below). ``transition="prev"`` builds the transition with the previous stage's ``K`` and
  ``L`` instead; it is what makes ``exact`` possible when stage widths differ, because then the
  transition's product of branch sizes is ``C_in``.
- Shortcuts where the width changes (knob ``shortcut``): ``projection``, the IGCV1 authors' code
  (``get_zero`` in ``resnet_igc.py``): a 1x1 stride-2 conv with the primary (spatial) conv's groups,
  then BN; or ``pad``, parameter-free (ResNet option A: subsample, zero-pad the new channels). A
  residual unit of two blocks ends with the ReLU after the addition (IGCV1 code).
- Where a transition widens (knob ``widen``): ``last`` (the last 1x1 conv, above) or ``spatial``,
  the IGCV1 code's reading (its primary 3x3 group conv maps ``C_in -> C_out``; here the channel-wise
  3x3 gets ``C_out / C_in`` outputs per channel and the 1x1 convs run at ``C_out``).
  Conv params / MACs of the four readings against the paper (``python -m search arch`` with
  ``--set shortcut=... widen=...``):

  ============== =============== =============== ================ =================
  preset         pad, last       projection,     pad, spatial     projection,
                                 last (presets)                   spatial
  ============== =============== =============== ================ =================
  igcv2-c64-d8   -2.2% / -1.0%   -1.4% / -0.5%   +12.3% / +6.9%   +13.2% / +7.4%
  igcv2-c64-d20  -0.6% / -0.3%   -0.3% / -0.1%   +4.0% / +2.5%    +4.2% / +2.7%
  igcv2-c64-d26  -0.4% / -0.4%   -0.2% / -0.2%   +3.0% / +1.8%    +3.2% / +1.9%
  igcv2-c80-d8   -3.0% / -2.1%   -1.9% / -1.6%   +11.5% / +4.8%   +12.5% / +5.3%
  igcv2-c80-d20  -0.8% / -0.7%   -0.4% / -0.5%   +3.8% / +1.9%    +4.2% / +2.1%
  igcv2-c80-d26  -0.5% / -0.5%   -0.3% / -0.3%   +2.9% / +1.5%    +3.2% / +1.6%
  igcv2star-c216 -0.3% / -1.4%   +0.7% / +1.2%   (64 -> 216 cannot widen channel-wise)
  igcv2star-c304 -1.1% / -0.9%   -0.5% / +0.4%
  igcv2star-c416 -0.3% / -0.9%   +0.2% / -0.2%
  ============== =============== =============== ================ =================

  The projection shortcut with widening in the last 1x1 conv fits every Table 1 preset better
  than the parameter-free shortcut and is what the presets use (sum of absolute gaps over the nine
  presets, params and MACs: 10.9 points against 17.4); widening in the spatial conv, as the IGCV1 code does, adds
  3-13% params. The search space keeps the defaults (``pad``, ``last``) and does not draw either.
- ``bn_layout="linear"`` (Table 1 presets): the convs compose the kernel with no BN between them,
  one BN (+ ReLU) after the block, as in the IGCV1 code; ``"nonlinear"`` is Fig. 5: BN after every
  conv, ReLU after the spatial and the last conv, permutation after the BN.
- IGCV2* (``K = 8, L* = ceil(log_K(x)) + 1``): Table 1 is ambiguous whether ``x`` is the stage-1
  width or each stage's width. Per stage (``L* = 4, 4, 5`` for C216; ``4, 5, 5`` for C304 and
  C416) gives 0.319M / 0.475M / 0.648M conv params against 0.32 / 0.48 / 0.65M; one ``L*`` from
  ``x`` for all stages gives 0.281M / 0.394M / 0.538M (-12% to -18%), so ``L*`` is per stage. The
  stem has 64 channels (Table 1) and stage 1's first block is a transition ``64 -> x``.

Params: the paper counts convolution weights only (no BN, no classifier: adding the FC would put
IGCV2 (C64) D=8 at 0.072M, not 0.047M); FLOPs are multiply-adds. Our MACs (cost model: convs and
the FC) against the paper (Tables 3, 4, 6; CIFAR-100):

    preset            conv params (paper)        MACs (paper)
    igcv2-c64-d8       46,336 (0.047M) -1.4%     9.45M (9.5M)  -0.5%
    igcv2-c64-d20     148,480 (0.149M) -0.3%    26.17M (26.2M) -0.1%
    igcv2-c64-d26     199,552 (0.200M) -0.2%    34.52M (34.6M) -0.2%
    igcv2-c80-d8       45,120 (0.046M) -1.9%    11.61M (11.8M) -1.6%
    igcv2-c80-d20     143,360 (0.144M) -0.4%    31.85M (32.0M) -0.5%
    igcv2-c80-d26     192,480 (0.193M) -0.3%    41.96M (42.1M) -0.3%
    igcv2star-c216    322,144 (0.32M)  +0.7%    76.90M (76M)   +1.2%
    igcv2star-c304    477,568 (0.48M)  -0.5%   112.44M (112M)  +0.4%
    igcv2star-c416    651,456 (0.65M)  +0.2%   151.76M (152M)  -0.2%

The per-block increments match the paper to its rounding (e.g. (0.149 - 0.047)M / 4 = 25.5k per
block triple for C64, ours 25,536); of the constant shortfall (about 1k params, 0.1-0.25M MACs
with parameter-free shortcuts), the IGCV1 code's projection shortcuts close about a third; the
rest must sit in transitions the paper does not describe. Preset tolerance:
3.5% on both. Not reproduced, but built and pinned as tested configurations (``xception_knobs``,
``igcv1_knobs``, parameter-free shortcuts; conv params / MACs against Tables 3 and 4):

    Xception C35 D8     43,610 (0.056M) -22.1%    8.26M (9.5M)   -13.0%
    Xception C35 D20   155,330 (0.168M)  -7.5%   25.57M (26.8M)   -4.6%
    Xception C35 D26   211,190 (0.223M)  -5.3%   34.23M (35.5M)   -3.6%
    Xception C58 D20   412,148 (0.44M)   -6.3%   65.60M (67M)     -2.1%
    Xception C71 D20   611,594 (0.66M)   -7.3%   96.37M (98M)     -1.7%
    Xception C83 D20   830,498 (0.89M)   -6.7%  130.00M (131M)    -0.8%
    IGCV1 C96 D20      650,592 (0.40M)  +62.6%  105.54M (82M)    +28.7%
    IGCV1 C126 D20   1,092,042 (0.60M)  +82.0%  173.36M (128M)   +35.4%
    IGCV1 C150 D20   1,526,850 (0.79M)  +93.3%  239.56M (172M)   +39.3%

Projection shortcuts change these by under 0.4 points. Xception (C35)'s
per-triple increment matches ``xception_knobs`` (27,930 vs (0.223 - 0.168)M / 2 = 27.5k) but its
constant implies transitions that keep the full 1x1 (0.056M at D=8, ours 43,610); IGCV1 (C48)'s
increment (26.1k) fits the IGC code's fixed 24 primary branches, not Table 1's 2-channel branches
that ``igcv1_knobs`` follows (30,240). Nor the ImageNet IGCV2-1.0 of Table 8, built as
:func:`imagenet_igcv2` from Sec. 5.1's description: its MobileNetV1 layout with ``g1 = g2 = 8``
gives 4.41M conv params before the classifier and 5.19M with the IGCV2* classifier, 830.5M MACs,
against 4.1M / 564M in Table 9 (+27% / +47%); 8 channels per branch instead (the other reading of
"8 branches") falls far below both (about 0.2M params).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from space.knobs import choice, float_range, int_range, per_stage, require
from space.layers import BatchNorm2d, ChannelShuffle, Conv2d, Linear
from space.registry import Family, PaperFigures, Preset, register_family, register_preset

__all__ = [
    "IGCV2Knobs",
    "BlockSpec",
    "IGCV2Block",
    "ResidualUnit",
    "IGCV2Net",
    "build",
    "search_space",
    "sample",
    "check_conditions",
    "block_specs",
    "conv_weight_count",
    "star_layers",
    "xception_knobs",
    "igcv1_knobs",
    "imagenet_igcv2",
    "IMAGENET_LAYOUT",
]

FAMILY = "igcv2"
NUM_STAGES = 3
KERNEL_AREA = 9  # the spatial conv is 3x3 (S in the paper)
STAGE_STRIDES = (1, 2, 2)  # Table 1: 32 -> 16 -> 8 pixels on CIFAR
CONDITIONS = ("exact", "dense", "loose", "sparse")  # knob values, strictest first (module docstring)
SEARCHED_CONDITIONS = ("exact", "dense", "loose")  # every block dense; the search space's choices
TRANSITIONS = ("next", "prev")
BN_LAYOUTS = ("linear", "nonlinear")
SHORTCUTS = ("pad", "projection")
WIDENINGS = ("last", "spatial")
SPATIAL_BRANCHES = (1, 2, 4)
EXACT_MAX_WIDTH = 1024  # exact widths are perfect powers K^(L-1); the cap keeps networks sane


# --- knobs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockSpec:
    """Structure of one IGCV2 block: a spatial conv with ``spatial_branch`` channels per branch,
    then one 1x1 group conv per entry of ``branches`` (channels per input branch). ``widen``
    ``"last"``: all convs run at ``cin`` except the last, which widens to ``cout``; ``"spatial"``
    (the IGCV1 authors' code): the spatial conv widens to ``cout`` and the 1x1 convs run at ``cout``."""

    cin: int
    cout: int
    stride: int
    spatial_branch: int
    branches: tuple[int, ...]
    widen: str = "last"

    @property
    def inner(self) -> int:
        """Channels the 1x1 convs take: ``cin``, or ``cout`` when the spatial conv widens."""
        return self.cout if self.widen == "spatial" else self.cin

    @property
    def reach(self) -> int:
        """Paths from each output back to the inputs: ``K_1 * prod(K_l)``."""
        return self.spatial_branch * math.prod(self.branches)

    @property
    def dense_reach(self) -> int:
        """The reach a dense block needs: ``C_in``; a widening spatial conv repeats each of its
        groups' inputs ``C_out / C_in`` times, so then ``C_out``."""
        return self.inner

    @property
    def balanced(self) -> bool:
        uniform = len(set(self.branches)) == 1
        return uniform and (self.spatial_branch == 1 or KERNEL_AREA * self.spatial_branch == self.branches[0])

    def describe(self) -> str:
        return (f"C_in={self.cin}, C_out={self.cout}, K_1={self.spatial_branch}, "
                f"K_2..K_L={list(self.branches)}" + (", widened in the spatial conv" if self.widen == "spatial" else ""))


@dataclass(frozen=True)
class IGCV2Knobs:
    """Design knobs of a Table-1 style IGCV2 network (per-stage knobs: one value or three).

    Attributes:
        widths: channels ``C`` of each stage (Table 1: ``x, 2x, 4x``).
        blocks: IGCV2 blocks per stage (``B``; depth ``3B + 2``).
        layers: group convs per block, ``L >= 2`` (the spatial conv included).
        branch: channels per branch ``K`` of the 1x1 group convs (``K = C``: one dense 1x1 conv).
        spatial_branch: channels per branch ``K_1`` of the 3x3 conv (1: channel-wise).
        stem_channels: channels of the 3x3 stem conv; 0 means ``widths[0]`` (IGCV2* uses 64).
        stem_stride: 2 for 64-pixel inputs, as the paper does for Tiny ImageNet.
        transition: grouping of a stage's first block: ``next`` (this stage's ``K``, ``L``) or
            ``prev`` (the previous stage's, which keeps ``exact`` blocks complementary).
        condition: what every block must satisfy: ``exact``, ``dense``, ``loose`` or ``sparse``
            (see the module docstring; every one but ``sparse`` makes every block dense).
        skip_every: blocks per residual unit (2 in the paper); 0 builds a plain network.
        bn_layout: ``linear`` (one BN per block) or ``nonlinear`` (Fig. 5).
        shortcut: ``pad`` (parameter-free: subsample, zero-pad the new channels) or ``projection``
            (the IGCV1 authors' code: a grouped 1x1 stride-2 conv + BN where the width changes).
        widen: where a transition widens: ``last`` (the last 1x1 conv) or ``spatial`` (the 3x3,
            as the IGCV1 authors' code widens in its primary group conv).
    """

    widths: Any = (64, 128, 256)
    blocks: Any = 2
    layers: Any = 3
    branch: Any = (8, 16, 32)
    spatial_branch: Any = 1
    stem_channels: int = 0
    stem_stride: int = 1
    transition: str = "next"
    condition: str = "dense"
    skip_every: int = 2
    bn_layout: str = "linear"
    # Added after studies were recorded: left out of the JSON form at their defaults (knobs_json).
    shortcut: str = field(default="pad", metadata={"omit_default": True})
    widen: str = field(default="last", metadata={"omit_default": True})

    def __post_init__(self) -> None:
        for name in ("widths", "blocks", "layers", "branch", "spatial_branch"):
            values = per_stage(getattr(self, name), NUM_STAGES, name)
            _check_ints(name, values)
            object.__setattr__(self, name, values)
        _check_ints("stem_channels", (self.stem_channels,), low=0)
        _check_ints("stem_stride", (self.stem_stride,))
        _check_ints("skip_every", (self.skip_every,), low=0)
        _check_choice("transition", self.transition, TRANSITIONS)
        _check_choice("condition", self.condition, CONDITIONS)
        _check_choice("bn_layout", self.bn_layout, BN_LAYOUTS)
        _check_choice("shortcut", self.shortcut, SHORTCUTS)
        _check_choice("widen", self.widen, WIDENINGS)
        for s, (L, K) in enumerate(zip(self.layers, self.branch)):
            require(L >= 2, f"layers must be >= 2 (a spatial conv and at least one 1x1 group conv), "
                            f"but stage {s} has layers={L}")
            require(K >= 2, f"branch K must be >= 2 (K = 1 makes a 1x1 conv a per-channel scale), "
                            f"but stage {s} has branch={K}")
            require(self.widths[s] % K == 0, f"branch K must divide the stage width, but stage {s} "
                                             f"has branch={K}, width={self.widths[s]}")
        self._check_residual()
        for s, specs in enumerate(block_specs(self)):
            for spec in dict.fromkeys(specs):  # distinct specs, in order
                _check_spec(spec, s, self.condition)

    @property
    def stem(self) -> int:
        return self.stem_channels or self.widths[0]

    def _check_residual(self) -> None:
        if not self.skip_every:
            return
        bad = [b for b in self.blocks if b % self.skip_every]
        require(not bad, f"with skip_every={self.skip_every} every stage's blocks must be a multiple "
                         f"of it, but got blocks={self.blocks}")
        chain = (self.stem,) + self.widths
        require(self.shortcut == "projection" or all(a <= b for a, b in zip(chain, chain[1:])),
                f"zero-padded shortcuts need non-decreasing widths, but got stem={self.stem}, "
                f"widths={self.widths}")


def _check_ints(name: str, values: Iterable[Any], low: int = 1) -> None:
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name} must be integer(s) >= {low}, but got {name}={v!r}")


def _check_choice(name: str, value: Any, options: tuple) -> None:
    require(value in options, f"{name} must be one of {list(options)}, but got {name}={value!r}")


def _check_spec(spec: BlockSpec, stage: int, condition: str) -> None:
    where = f"stage {stage} block ({spec.describe()})"
    require(spec.cin % spec.spatial_branch == 0,
            f"spatial_branch K_1 must divide the channels, but {where}")
    if spec.widen == "spatial":
        g1 = spec.cin // spec.spatial_branch
        require(spec.cout % g1 == 0, f"a widening spatial conv's {g1} groups must divide C_out, but {where}")
    for k in spec.branches:
        require(spec.inner % k == 0, f"branch K must divide the channels of the block's 1x1 convs, but {where}")
    groups = spec.inner // spec.branches[-1]
    require(spec.cout % groups == 0,
            f"the last 1x1 conv's {groups} branches must divide C_out, but {where}")
    need, name = spec.dense_reach, "C_out" if spec.widen == "spatial" else "C_in"
    if condition in ("dense", "loose"):
        require(spec.reach >= need, f"condition={condition!r} needs every output to see every input, "
                                    f"K_1*prod(K) >= {name} ({spec.reach} < {need}) in {where}; "
                                    f"condition='sparse' admits partly connected blocks")
    elif condition == "exact":
        require(spec.reach == need, f"condition='exact' needs the complementary condition "
                                    f"K_1*prod(K) == {name} ({spec.reach} != {need}) in {where}")
        require(spec.balanced, f"condition='exact' needs the balance condition (K_2 = .. = K_L, and "
                               f"S*K_1 = K_2 unless K_1 = 1) in {where}")


def block_specs(knobs: IGCV2Knobs) -> list[list[BlockSpec]]:
    """The structure of every block, stage by stage (transitions first)."""
    stages, cin = [], knobs.stem
    for s in range(NUM_STAGES):
        regular = _own_spec(knobs, s, knobs.widths[s], knobs.widths[s], 1)
        if cin == knobs.widths[s] and STAGE_STRIDES[s] == 1:
            first = regular
        elif knobs.transition == "prev" and s > 0:
            L, K = knobs.layers[s - 1], knobs.branch[s - 1]
            first = _widened(knobs, BlockSpec(cin, knobs.widths[s], STAGE_STRIDES[s], knobs.spatial_branch[s - 1],
                                              (K,) * (L - 1)))
        else:
            first = _widened(knobs, _own_spec(knobs, s, cin, knobs.widths[s], STAGE_STRIDES[s]))
        stages.append([first] + [regular] * (knobs.blocks[s] - 1))
        cin = knobs.widths[s]
    return stages


def _widened(knobs: IGCV2Knobs, spec: BlockSpec) -> BlockSpec:
    """A transition that widens in its spatial conv (``widen="spatial"``): the 1x1 convs then run
    at ``C_out``, with this stage's ``K`` (a dense 1x1 shrinks to ``C_out``, not ``C_in``)."""
    if knobs.widen != "spatial" or spec.cin == spec.cout:
        return spec
    return dataclasses.replace(spec, widen="spatial", branches=tuple(min(k, spec.cout) for k in spec.branches))


def _own_spec(knobs: IGCV2Knobs, s: int, cin: int, cout: int, stride: int) -> BlockSpec:
    # A branch wider than the block's input (a dense 1x1, K = C_out) shrinks to one branch of C_in.
    k = min(knobs.branch[s], cin)
    return BlockSpec(cin, cout, stride, knobs.spatial_branch[s], (k,) * (knobs.layers[s] - 1))


# --- modules -------------------------------------------------------------------------------------

def _conv(cin: int, cout: int, kernel: int, stride: int, groups: int) -> Conv2d:
    return Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


def _interleave(groups: int, per_group: int) -> list[nn.Module]:
    # Transposing (groups, per_group) is the identity when either side is 1.
    return [ChannelShuffle(groups)] if groups > 1 and per_group > 1 else []


class IGCV2Block(nn.Module):
    """``P_L W_L ... P_1 W_1`` with BN/ReLU per ``bn_layout``; ``relu`` adds the final ReLU."""

    def __init__(self, spec: BlockSpec, bn_layout: str = "linear", relu: bool = True) -> None:
        super().__init__()
        self.spec = spec
        nonlinear = bn_layout == "nonlinear"
        g1, inner = spec.cin // spec.spatial_branch, spec.inner
        ops: list[nn.Module] = [_conv(spec.cin, inner, 3, spec.stride, g1)]
        if nonlinear:
            ops += [BatchNorm2d(inner), nn.ReLU(inplace=True)]
        ops += _interleave(g1, inner // g1)
        for i, k in enumerate(spec.branches):
            last = i == len(spec.branches) - 1
            out, groups = (spec.cout if last else inner), inner // k
            ops.append(_conv(inner, out, 1, 1, groups))
            if nonlinear or last:
                ops.append(BatchNorm2d(out))
            if last and relu:
                ops.append(nn.ReLU(inplace=True))
            ops += _interleave(groups, out // groups)
        self.ops = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x)


class _PadShortcut(nn.Module):
    """Parameter-free shortcut: subsample by the stride, zero-pad the new channels (option A)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = cout - cin, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class ResidualUnit(nn.Module):
    """Blocks with one skip connection around them; ReLU after the addition."""

    def __init__(self, specs: list[BlockSpec], bn_layout: str, shortcut: str = "pad") -> None:
        super().__init__()
        n = len(specs)
        self.blocks = nn.Sequential(*(IGCV2Block(sp, bn_layout, relu=i < n - 1) for i, sp in enumerate(specs)))
        first, last = specs[0], specs[-1]
        changes = first.cin != last.cout or first.stride > 1
        if shortcut == "projection" and changes:
            # The IGCV1 authors' code: 1x1 conv with the primary (spatial) conv's groups, stride, BN.
            groups = math.gcd(first.cin // first.spatial_branch, last.cout)
            self.shortcut = nn.Sequential(_conv(first.cin, last.cout, 1, first.stride, groups), BatchNorm2d(last.cout))
        else:
            self.shortcut = _PadShortcut(first.cin, last.cout, first.stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.blocks(x) + self.shortcut(x))


class IGCV2Net(nn.Module):
    """Table 1's network: stem, three stages of IGCV2 blocks, global average pool, FC."""

    def __init__(self, knobs: IGCV2Knobs, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.knobs = knobs
        self.stem = nn.Sequential(_conv(in_channels, knobs.stem, 3, knobs.stem_stride, 1),
                                  BatchNorm2d(knobs.stem), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*(self._stage(specs) for specs in block_specs(knobs)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = Linear(knobs.widths[-1], num_classes)

    def _stage(self, specs: list[BlockSpec]) -> nn.Sequential:
        k = self.knobs
        if not k.skip_every:
            return nn.Sequential(*(IGCV2Block(sp, k.bn_layout) for sp in specs))
        units = [specs[i:i + k.skip_every] for i in range(0, len(specs), k.skip_every)]
        return nn.Sequential(*(ResidualUnit(u, k.bn_layout, k.shortcut) for u in units))

    def igcv2_blocks(self) -> Iterator[IGCV2Block]:
        return (m for m in self.modules() if isinstance(m, IGCV2Block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def build(knobs: IGCV2Knobs, num_classes: int = 100, image_size: int = 32, in_channels: int = 3) -> IGCV2Net:
    """Training (and deploy) form; IGCV2 has no training-only layers. Any ``image_size`` works."""
    if not isinstance(knobs, IGCV2Knobs):
        raise TypeError(f"knobs must be IGCV2Knobs, but got {type(knobs).__name__}")
    require(image_size >= 1, f"image_size must be >= 1, but got {image_size}")
    return IGCV2Net(knobs, num_classes=num_classes, in_channels=in_channels)


# --- verifying the conditions on built blocks ----------------------------------------------------

_ELEMENTWISE = (nn.BatchNorm2d, nn.ReLU, nn.Identity)
PATH_CAP = 2 ** 16  # path counts are exact up to here, reported as PATH_CAP beyond


def _ops_of(block: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
    return list(block.ops) if isinstance(block, IGCV2Block) else list(block)


def _permutation_index(op: nn.Module, channels: int) -> torch.Tensor:
    """The permutation ``op`` applies, read off by pushing channel numbers through it."""
    probe = torch.arange(channels, dtype=torch.float32).view(1, channels, 1, 1)
    index = op(probe).reshape(-1).round().long()
    if not torch.equal(index.sort().values, torch.arange(channels)):
        raise ValueError(f"{type(op).__name__} does not permute its {channels} channels")
    return index


def _path_counts(ops: list[nn.Module]) -> tuple[torch.Tensor, list[nn.Conv2d]]:
    convs = [op for op in ops if isinstance(op, nn.Conv2d)]
    if not convs:
        raise ValueError("a block needs at least one convolution")
    # counts[out, in] = number of paths; int32 (5x faster than int64 here) saturating at
    # PATH_CAP keeps every sum exact for up to 32767 input channels per branch.
    counts = torch.eye(convs[0].in_channels, dtype=torch.int32)
    for op in ops:
        if isinstance(op, nn.Conv2d):
            g = op.groups
            grouped = counts.view(g, op.in_channels // g, -1).sum(1, dtype=torch.int32).clamp_(max=PATH_CAP)
            counts = grouped.repeat_interleave(op.out_channels // g, dim=0)
        elif isinstance(op, ChannelShuffle):
            counts = counts[_permutation_index(op, counts.shape[0])]
        elif not isinstance(op, _ELEMENTWISE):
            raise TypeError(f"cannot compose {type(op).__name__}: only convs, channel permutations "
                            f"and channel-wise BN/ReLU are understood")
    return counts, convs


def check_conditions(block: nn.Module | Iterable[nn.Module]) -> dict:
    """Check the complementary, balance and dense conditions of a built block.

    The path-count matrix of the block (outputs x inputs) is composed from the actual modules:
    each conv's ``groups``/channels and each permutation's index, as read off its forward.
    Works on meta-device blocks (only structure is used).

    Args:
        block: an ``IGCV2Block``, an ``nn.Sequential`` or a list of its ops in order.

    Returns:
        dict with ``dense`` (every output reaches every input), ``complementary`` (exactly one
        path for every pair), ``balance`` (``K_2 = .. = K_L`` after a channel-wise conv, else
        ``S*K_1 = K_2 = .. = K_L``), ``branch_sizes`` (``K_l``: input channels per branch),
        ``kernel_area`` (``S``), ``in_channels``, ``out_channels``, ``min_paths``, ``max_paths``
        (path counts, capped at ``PATH_CAP``).
    """
    counts, convs = _path_counts(_ops_of(block))
    ks = [c.in_channels // c.groups for c in convs]
    area = convs[0].kernel_size[0] * convs[0].kernel_size[1]
    rest = ks[1:]
    if ks[0] == 1:
        balance = len(set(rest)) <= 1
    else:
        balance = all(k == area * ks[0] for k in rest)
    lo, hi = int(counts.min()), int(counts.max())
    return {
        "dense": lo >= 1,
        "complementary": lo == 1 and hi == 1,
        "balance": balance,
        "branch_sizes": tuple(ks),
        "kernel_area": area,
        "in_channels": convs[0].in_channels,
        "out_channels": convs[-1].out_channels,
        "min_paths": lo,
        "max_paths": hi,
    }


def conv_weight_count(model: nn.Module) -> int:
    """Convolution weights only: the paper's parameter convention (no BN, no classifier)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


# --- search space --------------------------------------------------------------------------------

def search_space() -> dict:
    """Wide default space. Stage ``s`` aims at ``width * 2**s`` channels; ``branch.s`` in [0, 1]
    picks among the ``K`` valid for the drawn condition (reparameterised, so the distributions
    are static); ``exact`` derives ``K`` and ``C = K^(L-1)`` from the target width and ``L``."""
    space = {
        f"{FAMILY}.condition": choice(SEARCHED_CONDITIONS),
        f"{FAMILY}.width": int_range(16, 256, log=True),
        f"{FAMILY}.spatial_branch": choice(SPATIAL_BRANCHES),
        f"{FAMILY}.bn_layout": choice(BN_LAYOUTS),
    }
    for s in range(NUM_STAGES):
        space[f"{FAMILY}.units.{s}"] = int_range(1, 5)
        space[f"{FAMILY}.layers.{s}"] = int_range(2, 5)
        space[f"{FAMILY}.branch.{s}"] = float_range(0.0, 1.0)
    return space


def sample(draw: Callable[[str], Any]) -> IGCV2Knobs:
    condition = draw(f"{FAMILY}.condition")
    width = draw(f"{FAMILY}.width")
    blocks = tuple(2 * draw(f"{FAMILY}.units.{s}") for s in range(NUM_STAGES))
    layers = [draw(f"{FAMILY}.layers.{s}") for s in range(NUM_STAGES)]
    common = dict(blocks=blocks, condition=condition, bn_layout=draw(f"{FAMILY}.bn_layout"))
    if condition == "exact":
        widths, branch, layers = _exact_stages(width, layers)
        return IGCV2Knobs(widths=widths, layers=layers, branch=branch, transition="prev", **common)
    base = 8 * max(2, round(width / 8))
    widths = tuple(base * 2 ** s for s in range(NUM_STAGES))
    spatial = draw(f"{FAMILY}.spatial_branch") if condition in ("loose", "sparse") else 1
    branch = []
    for s in range(NUM_STAGES):
        options = _branch_options(condition, widths, s, layers[s], spatial)
        u = draw(f"{FAMILY}.branch.{s}")
        branch.append(options[min(len(options) - 1, int(u * len(options)))])
    return IGCV2Knobs(widths=widths, layers=tuple(layers), branch=tuple(branch),
                      spatial_branch=spatial, **common)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _branch_options(condition: str, widths: tuple, s: int, L: int, spatial: int) -> list[int]:
    """Valid ``K`` for stage ``s`` with doubling widths: ``K`` divides the transition's input
    width (or is ``C``, a dense 1x1); every condition but ``sparse`` also needs ``K_1 * K^(L-1) >= C``
    (then the transition, at half the width, is dense too)."""
    c, cin = widths[s], widths[max(s - 1, 0)]
    options = sorted({k for k in _divisors(cin) if k >= 2} | {c})
    if condition != "sparse":
        options = [k for k in options if spatial * k ** (L - 1) >= c]
    return options


def _exact_stages(width: int, layers: list[int]) -> tuple[tuple, tuple, tuple]:
    """Widths ``C_s = K_s^(L_s-1)`` nearest to ``width * 2**s`` (log scale), non-decreasing, and
    divisible by the previous stage's branch count ``C/K`` so the ``prev`` transition widens whole
    branches; when no such power exists below the cap, the stage repeats the previous one."""
    widths, branch, out_layers, prev = [], [], [], None
    for s, L in enumerate(layers):
        target = width * 2 ** s
        pick = _exact_pick(target, L, prev)
        if pick is None:
            pick = prev
        c, k, L = pick
        widths.append(c), branch.append(k), out_layers.append(L)
        prev = pick
    return tuple(widths), tuple(branch), tuple(out_layers)


def _exact_pick(target: float, L: int, prev: tuple | None) -> tuple[int, int, int] | None:
    groups = prev[0] // prev[1] if prev else 1
    low = prev[0] if prev else 1
    if L == 2:  # one dense 1x1: any width that is a whole number of the previous branches
        c = max(low, groups * max(1, round(target / groups)))
        if c > EXACT_MAX_WIDTH:
            c = max(low, EXACT_MAX_WIDTH // groups * groups)
        return c, c, 2
    best = None
    for k in range(2, EXACT_MAX_WIDTH + 1):
        c = k ** (L - 1)
        if c > EXACT_MAX_WIDTH:
            break
        if c >= low and c % groups == 0:
            gap = abs(math.log(c / target))
            if best is None or gap < best[0]:
                best = (gap, c, k)
    return None if best is None else (best[1], best[2], L)


# --- special cases and presets -------------------------------------------------------------------

def star_layers(width: int, k: int = 8) -> int:
    """IGCV2*'s ``L* = ceil(log_k(width)) + 1``, in integers (smallest ``n`` with ``k^n >= width``)."""
    n = 0
    while k ** n < width:
        n += 1
    return n + 1


def _blocks_for_depth(depth: int) -> int:
    require(depth >= 5 and (depth - 2) % 3 == 0, f"depth must be 3B + 2, but got depth={depth}")
    return (depth - 2) // 3


def xception_knobs(width: int, depth: int = 20) -> IGCV2Knobs:
    """Table 1's Xception (Cx): channel-wise 3x3 then one dense 1x1 (``L = 2, K = C``)."""
    widths = tuple(width * 2 ** s for s in range(NUM_STAGES))
    return IGCV2Knobs(widths=widths, blocks=_blocks_for_depth(depth), layers=2, branch=widths,
                      condition="exact")


# Table 8's IGCV2-1.0 (MobileNetV1's layout, no skip connections): (stride, c_in, c_out, repeats).
IMAGENET_LAYOUT = ((1, 64, 128, 1), (2, 128, 256, 1), (1, 256, 256, 1), (2, 256, 512, 1), (1, 512, 512, 1),
                   (2, 512, 1024, 1), (1, 1024, 1024, 10), (2, 1024, 2048, 1), (1, 2048, 2048, 1))


def imagenet_igcv2(num_classes: int = 1000, groups: int = 8) -> nn.Sequential:
    """Table 8's ImageNet IGCV2-1.0, as its text describes it (Sec. 5.1): a 3x3 stride-2 stem to 64
    channels, nonlinear IGCV2 blocks (channel-wise 3x3, then two 1x1 group convs of ``groups``
    branches each, widening in the last; Fig. 5's BN/ReLU/permutation order), global pooling, and
    IGCV2* (the two 1x1 group convs without the 3x3) as the classifier.

    A tested configuration, not a preset: it does not reproduce Table 9. It has 5,193,088 conv
    params (4.41M before the classifier) and 830.5M MACs at 224x224 against the paper's 4.1M and
    564M (+27% / +47%), so ``g1 = g2 = 8`` cannot mean 8 branches of every 1x1 conv throughout,
    and no reading of the table that we tried reaches both numbers (see the module docstring).
    """
    require(num_classes % groups == 0, f"the IGCV2* classifier's {groups} branches must divide num_classes, "
                                       f"but got num_classes={num_classes}")
    layers: list[nn.Module] = [_conv(3, 64, 3, 2, 1), BatchNorm2d(64), nn.ReLU(inplace=True)]
    for stride, cin, cout, repeats in IMAGENET_LAYOUT:
        for r in range(repeats):
            k = cin // groups
            spec = BlockSpec(cin, cout, stride if r == 0 else 1, 1, (k, k))
            layers.append(IGCV2Block(spec, "nonlinear"))
    width = IMAGENET_LAYOUT[-1][2]
    head = [_conv(width, width, 1, 1, groups), BatchNorm2d(width), *_interleave(groups, width // groups),
            _conv(width, num_classes, 1, 1, groups)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), *head, nn.Flatten())


def igcv1_knobs(width: int, depth: int = 20) -> IGCV2Knobs:
    """Table 1's IGC-V1 (Cx): primary group 3x3 with 2 channels per branch, secondary 1x1 with
    2 branches (``K_1 = 2, L = 2, K_2 = C/2``): complementary, not balanced."""
    widths = tuple(width * 2 ** s for s in range(NUM_STAGES))
    return IGCV2Knobs(widths=widths, blocks=_blocks_for_depth(depth), layers=2,
                      branch=tuple(c // 2 for c in widths), spatial_branch=2, condition="dense")


def _table1_knobs(width: int, depth: int, branch: tuple) -> IGCV2Knobs:
    return IGCV2Knobs(widths=(width, 2 * width, 4 * width), blocks=_blocks_for_depth(depth),
                      layers=3, branch=branch, shortcut="projection")


def _star_knobs(width: int, depth: int = 20) -> IGCV2Knobs:
    widths = (width, 2 * width, 4 * width)
    return IGCV2Knobs(widths=widths, blocks=_blocks_for_depth(depth), layers=tuple(map(star_layers, widths)),
                      branch=8, stem_channels=64, shortcut="projection")


register_family(Family(
    name=FAMILY, knobs_cls=IGCV2Knobs, build=build, search_space=search_space, sample=sample,
    summary="IGCV2: products of interleaved group convs (channel-wise 3x3 + L-1 group 1x1s), Table 1 CIFAR nets",
))

_TOL = 0.035
_NOTE = "conv weights only (no BN, no FC); MACs include the FC"

# (name, knobs, params, MACs, source, our conv params / MACs)
_PRESETS = [
    ("igcv2-c64-d8", _table1_knobs(64, 8, (8, 16, 32)), 0.047e6, 0.095e8, "Table 4", "46,336 / 9.45M"),
    ("igcv2-c64-d20", _table1_knobs(64, 20, (8, 16, 32)), 0.149e6, 0.262e8, "Table 4", "148,480 / 26.17M"),
    ("igcv2-c64-d26", _table1_knobs(64, 26, (8, 16, 32)), 0.200e6, 0.346e8, "Table 4", "199,552 / 34.52M"),
    ("igcv2-c80-d8", _table1_knobs(80, 8, (10, 16, 20)), 0.046e6, 1.18e7, "Table 6", "45,120 / 11.61M"),
    ("igcv2-c80-d20", _table1_knobs(80, 20, (10, 16, 20)), 0.144e6, 3.20e7, "Table 6", "143,360 / 31.85M"),
    ("igcv2-c80-d26", _table1_knobs(80, 26, (10, 16, 20)), 0.193e6, 4.21e7, "Table 6", "192,480 / 41.96M"),
    ("igcv2star-c216", _star_knobs(216), 0.32e6, 0.76e8, "Table 3", "322,144 / 76.90M"),
    ("igcv2star-c304", _star_knobs(304), 0.48e6, 1.12e8, "Table 3", "477,568 / 112.44M"),
    ("igcv2star-c416", _star_knobs(416), 0.65e6, 1.52e8, "Table 3", "651,456 / 151.76M"),
]

for _name, _knobs, _params, _macs, _source, _ours in _PRESETS:
    register_preset(Preset(
        name=_name, family=FAMILY, knobs=_knobs, num_classes=100, image_size=32,
        paper=PaperFigures(params=_params, macs=_macs, source=f"{_source} (CIFAR-100)",
                           params_convention="conv", rel_tol=_TOL, note=f"ours {_ours}; {_NOTE}"),
    ))
