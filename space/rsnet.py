"""RSNet: dense blocks with the Relative-Squeezing bottleneck, learned group convolutions and
multiple compression layers.

Paper: Q. Zhao, J. Liu, B. Zhang et al., "RSNet: Relative-Squeezing bottleneck design",
Image and Vision Computing 89 (2019) 276-288 (/work/shared/papers/000_7d39c22cfcd92131.txt).
No official code is public; the learned group convolution (LGC) is CondenseNet's
(``space.layers.LearnedGroupConv``, official code github.com/ShichenLiu/CondenseNet).

Structure for CIFAR (Sec. 2.1, Figs. 2-4):

- stem: 3x3 conv, G = 1, ``stem_channels`` outputs (48 in the paper);
- six RS blocks; between them compression (C) and transition (T) layers alternate C, T, C, T, C,
  so the blocks run at 32, 32, 16, 16, 8, 8 pixels on CIFAR. A compression layer is BN-ReLU-1x1
  group conv (G groups) with ``Yc = Dg(C * Yl)`` outputs (Eq. 4); a transition layer is the same
  followed by a 2x2 average pool. They use plain group convolutions, not LGCs, and no channel
  shuffle is added anywhere, as the ablation (Sec. 3.3.2, Fig. 7) concludes;
- RS unit with ``Y`` input channels (Eqs. 1-2): BN-ReLU-1x1 LGC to ``Dg(Y * S1)`` channels ->
  BN-ReLU-3x3 group conv (G groups) to ``y = Dg(Dg(Y * S1) * S3)`` channels, concatenated onto the
  input: the next unit sees ``Y + y``. S1 and S3 are set per block (constant or descending);
- head: BN-ReLU, global average pool, linear classifier.

``Dg`` rounds up to a multiple of G (``space.knobs.divisible_up``). The LGC's condense factor is
G ("condensation factor used in [25] is reduced to number of groups", Sec. 2.6.1; CondenseNet [25]
itself uses C = G = 4 on CIFAR), so each of its G groups keeps 1/G of the inputs and its deploy
form is a G-group 1x1 conv over all of them. The condense factor is also a knob of its own; the
LGC needs its input width divisible by it, so the 3x3 outputs and the compression outputs are
rounded up to a multiple of ``lcm(G, condense_factor)``, which is exactly ``Dg`` whenever the
condense factor divides G (the paper's setting).

No shuffle between the LGC and the 3x3 group conv (Sec. 3.3.2, Fig. 7: "of no use when LGCs are
used", and not shuffling "slightly improves accuracy"). CondenseNet's LGC has one built in: its
group g owns the interleaved filters g, g+G, ..., so every contiguous group of the 3x3 conv sees
all LGC groups. RSNet's units therefore use ``LearnedGroupConv(grouping="contiguous")``: LGC group
g owns filters ``g*d .. (g+1)*d - 1`` and 3x3 group g sees LGC group g only, in the training
(masked) form and in the deploy form alike (which then has no shuffle). The ``shuffle`` knob
(default False, the paper's choice) restores the interleaved grouping, the shuffled arm of the
ablation; it changes which connections exist, not their number, so params and MACs are the same.

Check against Fig. 3 (48 units, 8 per block, S1 = 0.2, S3 = 0.5, G = 4, C = 0.5): the 47th unit
receives 252 channels, as the paper states (``tests/test_rsnet.py``).

Reading of the depth (the paper never states the units per block of its CIFAR models; Fig. 2,
which may have, is lost in the text): RSNet-N counts every weighted layer as DenseNet does: the
stem, two convs per RS unit, the five compression/transition convs and the classifier, so
``N = 2 * units + 7``: RSNet-115, -135, -195 have 54, 64 and 94 units. The split over the six
blocks is then not determined by the text: the unit splits of all three presets are fitted, our
readings, not given by the paper. Each preset uses the monotone split (the paper trades
params against FLOPs by "gradually increasing or decreasing the number of basic blocks B") with the
smallest larger-of-the-two relative error in params and FLOPs, FLOPs counted as CondenseNet's
``measure_model`` does: conv and linear MACs plus one op per element of every ReLU and pooling
window. That convention reproduces CondenseNet's own tables (see ``space.condensenet``), and RSNet
follows CondenseNet's setup throughout, so we assume it counted the same way.

Squeezing ratios as the captions give them. Table 1: RSNet-195 has S1 = 0.25, 0.25, 0.2, 0.2,
0.15, 0.15 and S3 = 0.35; RSNet-135 "constant squeezing ratios (S1 = 0.2 and S3 = 0.5)". Table 2:
"RSNet-135 uses S1 = 0.2. And S3 is set under the descending strategy and using [0.6, 0.6, 0.5,
0.5, 0.4, 0.4]", though the only RSNet in Table 2 is RSNet-115. The two captions contradict each
other on RSNet-135, and RSNet-135's figures (1.4M, 203M) are in Table 1 only, so both readings were
fitted (best monotone split of 64 units each, figures of ``python -m search arch rsnet-135``):

- constant S3 = 0.5 (Table 1's caption): 11-11-11-11-10-10 gives 1.450M params (+3.6 %), 211.12M
  MACs (+4.0 %), 218.99M official (+7.9 %); the next best, 12-11-11-10-10-10, gives 1.330M (-5.0 %)
  and 219.63M official (+8.2 %);
- descending S3 (Table 2's caption read literally): 8-10-11-11-12-12 gives 1.404M params (+0.3 %),
  193.90M MACs (-4.5 %), 200.94M official (-1.0 %).

The preset takes the descending reading, about eight times closer in official FLOPs (the same
S1 = 0.2 / S3 = 0.6 .. 0.4 pattern is Table 4's caption for ImageNet RSNet-197). RSNet-115, the
model Table 2 shows, takes Table 2's ratios too. C = 0.5 everywhere (Sec. 2.6.1), 10 classes. Results (deploy form; params = sum of numel, BN included;
MACs = conv + linear; "official" = CondenseNet's measure_model convention):

=========  ======================  =  ====================  =====================  =====================
preset     units per block         G  params (paper)        MACs (paper)           official (paper)
=========  ======================  =  ====================  =====================  =====================
rsnet-115  7, 8, 8, 10, 10, 11     4  0.320M (0.32M) -0.1%  59.57M (63M) -5.4%     63.45M (63M) +0.7%
rsnet-135  8, 10, 11, 11, 12, 12   4  1.404M (1.4M) +0.3%   193.90M (203M) -4.5%   200.94M (203M) -1.0%
rsnet-195  13, 14, 14, 14, 14, 25  8  3.034M (3.0M) +1.1%   436.29M (455M) -4.1%   454.94M (455M) -0.0%
=========  ======================  =  ====================  =====================  =====================

Tests hold params and MACs to 6 % of the paper, and the official-convention FLOPs to 1 %
(RSNet-115, -195) and 2 % (RSNet-135). Uniform splits fit one table at most: 9 units in every
block (RSNet-115's 54) with constant S3 = 0.5 gives 0.338M / 64.82M MACs (69.16M official), while
no even split comes near RSNet-195 (14 per block: 2.10M / 430.54M; 15 per block: 3.71M / 694.44M).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch
from torch import nn

from space.knobs import choice, divisible_up, float_range, int_range, per_stage
from space.layers import BatchNorm2d, Conv2d, LearnedGroupConv, Linear, PreActConv, concat_channels
from space.registry import Family, PaperFigures, Preset, register_family, register_preset

__all__ = [
    "RSNetKnobs",
    "ChannelPlan",
    "channel_plan",
    "descending_ratios",
    "RSUnit",
    "RSBlock",
    "CompressionLayer",
    "RSNet",
    "build",
    "search_space",
    "sample",
    "NUM_BLOCKS",
    "LAYOUT",
]

FAMILY = "rsnet"
NUM_BLOCKS = 6
# Layers between consecutive blocks: "C" compression, "T" transition (compression + 2x2 avg pool).
LAYOUT = ("C", "T", "C", "T", "C")
MAX_UNITS = 64
# Channels grow geometrically with the units of a block, about (1 + S1*S3) per unit. Knob sets
# wider than this are rejected: far beyond any budget, and it keeps weight sizes of meta builds
# far from integer overflow.
MAX_WIDTH = 1 << 16
# Sampled architectures stop adding units to a block once it would exceed this width.
SAMPLE_MAX_WIDTH = 4096


# --- knobs --------------------------------------------------------------------------------------

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_int(name: str, value: object, low: int, high: int | None = None) -> None:
    bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
    if not _is_int(value) or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {bounds}, but got {name}={value!r}")


def _require_ratio(name: str, value: object) -> None:
    if not _is_number(value) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), but got {name}={value!r}")


def descending_ratios(start: float, step: float, floor: float = 0.05, n: int = NUM_BLOCKS) -> tuple[float, ...]:
    """The paper's descending schedule: pairs of blocks share a ratio that drops by ``step`` per
    pair (S1 = 0.25, 0.25, 0.2, 0.2, 0.15, 0.15 is ``descending_ratios(0.25, 0.05)``); never below
    ``floor``. Rounded to 6 decimals so the values are exact in JSON."""
    return tuple(round(max(floor, start - step * (b // 2)), 6) for b in range(n))


@dataclass(frozen=True)
class RSNetKnobs:
    """Design knobs of the RSNet family (defaults: the paper's Fig. 3 network, 0.155M params).

    Per-block knobs (``units``, ``s1``, ``s3``) take one value or six; ``compression`` takes one
    value or five (one per compression/transition layer, in the order of ``LAYOUT``).
    """

    units: int | tuple[int, ...] = 8             # B: RS units per block
    s1: float | tuple[float, ...] = 0.2          # S1: 1x1 LGC outputs = Dg(Y * S1)
    s3: float | tuple[float, ...] = 0.5          # S3: 3x3 outputs y = Dg(Dg(Y * S1) * S3)
    groups: int = 4                              # G: groups of every conv but the stem
    condense_factor: int = 4                     # LGC: each group keeps 1/condense_factor inputs
    compression: float | tuple[float, ...] = 0.5  # C: compression/transition outputs = Dg(C * Y)
    stem_channels: int = 48                      # 3x3 stem conv outputs (paper: 48)
    dropout: float = 0.0                         # dropout before every LGC conv (CondenseNet option)
    # CondenseNet's interleaved LGC groups (paper: none). Records written before this knob trained
    # the shuffled units, so a knobs dict without it means True (Family.knobs_from_dict).
    shuffle: bool = field(default=False, metadata={"absent_means": True})

    def __post_init__(self) -> None:
        for name, n in (("units", NUM_BLOCKS), ("s1", NUM_BLOCKS), ("s3", NUM_BLOCKS),
                        ("compression", len(LAYOUT))):
            object.__setattr__(self, name, per_stage(getattr(self, name), n, name))
        for b, v in enumerate(self.units):
            _require_int(f"units[{b}]", v, 1, MAX_UNITS)
        for name in ("s1", "s3", "compression"):
            for i, v in enumerate(getattr(self, name)):
                _require_ratio(f"{name}[{i}]", v)
        _require_int("groups", self.groups, 1)
        _require_int("condense_factor", self.condense_factor, 1)
        _require_int("stem_channels", self.stem_channels, 1)
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), but got dropout={self.dropout!r}")
        if not isinstance(self.shuffle, bool):
            raise ValueError(f"shuffle must be a bool, but got shuffle={self.shuffle!r}")
        if self.stem_channels % self.multiple:
            raise ValueError(
                f"stem_channels={self.stem_channels} must be divisible by lcm(groups, condense_factor)="
                f"{self.multiple} (groups={self.groups}, condense_factor={self.condense_factor})")
        widest = channel_plan(self).widest
        if widest > MAX_WIDTH:
            raise ValueError(f"the network grows to {widest} channels, more than {MAX_WIDTH}: lower units, "
                             f"s1, s3 or compression (units={self.units}, s1={self.s1}, s3={self.s3}, "
                             f"compression={self.compression})")

    @property
    def multiple(self) -> int:
        """Every unit's input width is a multiple of this: the 3x3 group conv needs G | y, the LGC
        needs condense_factor | Y."""
        return math.lcm(self.groups, self.condense_factor)

    @property
    def depth(self) -> int:
        """RSNet-N's N: stem + 2 per unit + compression/transition convs + classifier."""
        return 2 * sum(self.units) + len(LAYOUT) + 2

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ChannelPlan:
    """Channel widths of a configuration.

    ``units[b][i] = (Y, mid, y)``: input, LGC output and 3x3 output of unit ``i`` of block ``b``;
    ``compressions[j] = (Yl, Yc)``: input and output of the layer after block ``j``; ``out`` is
    the width the classifier sees.
    """

    units: tuple[tuple[tuple[int, int, int], ...], ...]
    compressions: tuple[tuple[int, int], ...]
    out: int

    @property
    def unit_inputs(self) -> list[int]:
        """Input width of every unit in network order (the paper's Fig. 3 counts these)."""
        return [u[0] for block in self.units for u in block]

    @property
    def widest(self) -> int:
        return max([self.out, *(c[0] for c in self.compressions)])


def _block_plan(width: int, n: int, s1: float, s3: float, groups: int, multiple: int
                ) -> tuple[tuple[tuple[int, int, int], ...], int]:
    units = []
    for _ in range(n):
        mid = divisible_up(width * s1, groups)
        grow = divisible_up(mid * s3, multiple)
        units.append((width, mid, grow))
        width += grow
    return tuple(units), width


def channel_plan(knobs: RSNetKnobs) -> ChannelPlan:
    """Eqs. 1, 2 and 4 of the paper, block by block."""
    width, blocks, compressions = knobs.stem_channels, [], []
    for b in range(NUM_BLOCKS):
        units, width = _block_plan(width, knobs.units[b], knobs.s1[b], knobs.s3[b], knobs.groups,
                                   knobs.multiple)
        blocks.append(units)
        if b < len(LAYOUT):
            out = divisible_up(knobs.compression[b] * width, knobs.multiple)
            compressions.append((width, out))
            width = out
    return ChannelPlan(tuple(blocks), tuple(compressions), width)


# --- blocks -------------------------------------------------------------------------------------

class RSUnit(nn.Module):
    """BN-ReLU-1x1 LGC (``mid`` outputs) -> BN-ReLU-3x3 group conv (``grow`` outputs), whose
    output is concatenated onto the input.

    The LGC's groups are contiguous unless ``knobs.shuffle``, so 3x3 group g sees LGC group g only
    (no shuffle, Sec. 3.3.2)."""

    def __init__(self, in_channels: int, mid: int, grow: int, knobs: RSNetKnobs) -> None:
        super().__init__()
        self.conv1 = LearnedGroupConv(in_channels, mid, knobs.groups, knobs.condense_factor,
                                      dropout=knobs.dropout,
                                      grouping="interleaved" if knobs.shuffle else "contiguous")
        self.conv2 = PreActConv(mid, grow, 3, groups=knobs.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv2(self.conv1(x))
        if x.is_meta:  # shapes only (cost model): a meta cat runs through slow Python decompositions
            return x.new_empty(x.shape[0], x.shape[1] + new.shape[1], *x.shape[2:])
        return concat_channels((x, new))


class RSBlock(nn.Sequential):
    """RS units with shortcut connections from every earlier unit (dense concatenation)."""

    def __init__(self, units: tuple[tuple[int, int, int], ...], knobs: RSNetKnobs) -> None:
        super().__init__(*[RSUnit(y_in, mid, grow, knobs) for y_in, mid, grow in units])


class CompressionLayer(nn.Module):
    """BN-ReLU-1x1 group conv (no LGC, no shortcut); a transition layer adds a 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, downsample: bool) -> None:
        super().__init__()
        self.conv = PreActConv(in_channels, out_channels, 1, groups=groups)
        # ceil_mode keeps odd resolutions valid; identical to the plain pool on even sizes.
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x if self.pool is None else self.pool(x)


class RSNet(nn.Module):
    """Stem -> RS blocks separated by compression / transition layers -> BN-ReLU-pool -> FC."""

    def __init__(self, knobs: RSNetKnobs, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.knobs = knobs
        plan = channel_plan(knobs)
        self.stem = Conv2d(in_channels, knobs.stem_channels, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        for b in range(NUM_BLOCKS):
            layers.append(RSBlock(plan.units[b], knobs))
            if b < len(LAYOUT):
                y_in, y_out = plan.compressions[b]
                layers.append(CompressionLayer(y_in, y_out, knobs.groups, LAYOUT[b] == "T"))
        self.features = nn.Sequential(*layers)
        self.final_norm = BatchNorm2d(plan.out)
        self.final_act = nn.ReLU(inplace=True)
        self.classifier = Linear(plan.out, num_classes)
        self._initialise()

    def _initialise(self) -> None:
        # CondenseNet's init: He-normal (fan_out) convolutions, zero linear biases; nothing on meta.
        if self.stem.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))
        if x.is_meta:  # the cost model needs shapes only: skip the element-wise head
            x = x.new_empty(x.shape[:2])
        else:
            x = self.final_act(self.final_norm(x)).mean(dim=(2, 3))
        return self.classifier(x)


def build(knobs: RSNetKnobs, num_classes: int = 10, image_size: int = 32, in_channels: int = 3) -> RSNet:
    """Training-form network (LGCs carry masks; ``space.convert.to_deploy`` condenses it).

    ``image_size`` only has to be positive: pooling uses ``ceil_mode`` and the head pools globally.
    """
    if not isinstance(knobs, RSNetKnobs):
        raise TypeError(f"knobs must be RSNetKnobs, but got {type(knobs).__name__}")
    for name, value in (("num_classes", num_classes), ("image_size", image_size), ("in_channels", in_channels)):
        _require_int(name, value, 1)
    return RSNet(knobs, num_classes, in_channels)


# --- search space -------------------------------------------------------------------------------

S1_RANGE = (0.05, 0.5)
S3_RANGE = (0.1, 0.9)
# Groups, condense factors and stem widths (multiples of 8) make lcm(G, condense_factor) | stem
# for every draw, and Dg / ratios in (0, 1) make every other width valid: samples always build.
_POW2 = (1, 2, 4, 8)


def search_space() -> dict:
    """Wide default space over CIFAR RSNets (names are database keys: keep them).

    ``ratio_schedule`` picks how S1 and S3 are drawn: ``constant`` (``s1.0`` / ``s3.0`` for every
    block), ``descending`` (``s1.0`` / ``s3.0`` dropping by ``s1_step`` / ``s3_step`` every two
    blocks, the paper's schedule) or ``per_block`` (``s1.b`` / ``s3.b`` for block b).
    """
    space = {
        f"{FAMILY}.ratio_schedule": choice(("constant", "descending", "per_block")),
        f"{FAMILY}.s1_step": float_range(0.0, 0.1, step=0.025),
        f"{FAMILY}.s3_step": float_range(0.0, 0.2, step=0.05),
        f"{FAMILY}.groups": choice(_POW2),
        f"{FAMILY}.condense_factor": choice(_POW2),
        f"{FAMILY}.stem_channels": int_range(16, 64, step=8),
    }
    for b in range(NUM_BLOCKS):
        space[f"{FAMILY}.units.{b}"] = int_range(1, 24, log=True)
        space[f"{FAMILY}.s1.{b}"] = float_range(*S1_RANGE, step=0.025)
        space[f"{FAMILY}.s3.{b}"] = float_range(*S3_RANGE, step=0.05)
    for j in range(len(LAYOUT)):
        space[f"{FAMILY}.compression.{j}"] = float_range(0.25, 0.9, step=0.05)
    return space


def _ratios(draw: Callable[[str], Any], name: str, schedule: str, floor: float) -> tuple[float, ...]:
    if schedule == "per_block":
        return tuple(round(float(draw(f"{FAMILY}.{name}.{b}")), 6) for b in range(NUM_BLOCKS))
    start = round(float(draw(f"{FAMILY}.{name}.0")), 6)
    if schedule == "constant":
        return (start,) * NUM_BLOCKS
    return descending_ratios(start, float(draw(f"{FAMILY}.{name}_step")), floor)


def _fit_units(wanted: tuple[int, ...], knobs: RSNetKnobs) -> tuple[int, ...]:
    """Per block, the drawn units up to the last one that keeps the block within SAMPLE_MAX_WIDTH
    (at least one), so the geometric growth never yields an unbuildable network."""
    units, width = [], knobs.stem_channels
    for b, n in enumerate(wanted):
        block, _ = _block_plan(width, n, knobs.s1[b], knobs.s3[b], knobs.groups, knobs.multiple)
        kept = max(1, sum(1 for y_in, _, grow in block if y_in + grow <= SAMPLE_MAX_WIDTH))
        units.append(kept)
        width = block[kept - 1][0] + block[kept - 1][2]
        if b < len(LAYOUT):
            width = divisible_up(knobs.compression[b] * width, knobs.multiple)
    return tuple(units)


def sample(draw: Callable[[str], Any]) -> RSNetKnobs:
    """Knobs from ``draw(name)``; ratios are drawn according to ``ratio_schedule``."""
    schedule = draw(f"{FAMILY}.ratio_schedule")
    knobs = RSNetKnobs(
        units=1,
        s1=_ratios(draw, "s1", schedule, S1_RANGE[0]),
        s3=_ratios(draw, "s3", schedule, S3_RANGE[0]),
        groups=draw(f"{FAMILY}.groups"),
        condense_factor=draw(f"{FAMILY}.condense_factor"),
        compression=tuple(round(float(draw(f"{FAMILY}.compression.{j}")), 6) for j in range(len(LAYOUT))),
        stem_channels=draw(f"{FAMILY}.stem_channels"),
    )
    wanted = tuple(draw(f"{FAMILY}.units.{b}") for b in range(NUM_BLOCKS))
    return RSNetKnobs(**{**knobs.as_dict(), "units": _fit_units(wanted, knobs)})


register_family(Family(
    name=FAMILY,
    knobs_cls=RSNetKnobs,
    build=build,
    search_space=search_space,
    sample=sample,
    summary="RSNet: relative-squeezing dense units (1x1 LGC -> 3x3 group conv) with compression layers",
))


# --- presets ------------------------------------------------------------------------------------

_CONVENTION = ("the paper counts FLOPs with CondenseNet's measure_model (adds ReLU and pooling element "
               "ops); effnas counts conv+linear MACs")
_DEPTH = ("units per block are not in the paper's text: depth N = 2*units + 7 fixes the total, the "
          "split is fitted (a reading, not the paper's): the monotone one closest to the paper's params "
          "and official-convention FLOPs")

PRESETS = (
    Preset("rsnet-115", FAMILY,
           RSNetKnobs(units=(7, 8, 8, 10, 10, 11), s1=0.2, s3=descending_ratios(0.6, 0.1), groups=4,
                      condense_factor=4, compression=0.5, stem_channels=48),
           num_classes=10, image_size=32,
           paper=PaperFigures(params=0.32e6, macs=63e6, source="Table 2 (S3 from its caption)", rel_tol=0.06,
                              note=f"ours: 0.320M params, 59.57M MACs (63.45M official); {_CONVENTION}; {_DEPTH}"),
           extra={"depth": 115}),
    Preset("rsnet-135", FAMILY,
           RSNetKnobs(units=(8, 10, 11, 11, 12, 12), s1=0.2, s3=descending_ratios(0.6, 0.1), groups=4,
                      condense_factor=4, compression=0.5, stem_channels=48),
           num_classes=10, image_size=32,
           paper=PaperFigures(params=1.4e6, macs=203e6, source="Table 1 (S3 from Table 2's caption)",
                              rel_tol=0.06,
                              note=f"ours: 1.404M params (+0.3%), 193.90M MACs (-4.5%; 200.94M official, "
                                   f"-1.0%) with Table 2's caption's descending S3; Table 1's caption's "
                                   f"constant S3 = 0.5 fits no better than 1.450M (+3.6%), 211.12M MACs "
                                   f"(+4.0%; 218.99M official, +7.9%) with 11-11-11-11-10-10; "
                                   f"{_CONVENTION}; {_DEPTH}"),
           extra={"depth": 135}),
    Preset("rsnet-195", FAMILY,
           RSNetKnobs(units=(13, 14, 14, 14, 14, 25), s1=descending_ratios(0.25, 0.05), s3=0.35, groups=8,
                      condense_factor=8, compression=0.5, stem_channels=48),
           num_classes=10, image_size=32,
           paper=PaperFigures(params=3.0e6, macs=455e6, source="Table 1", rel_tol=0.06,
                              note=f"ours: 3.034M params, 436.29M MACs (454.94M official); {_CONVENTION}; {_DEPTH}"),
           extra={"depth": 195}),
)

for _preset in PRESETS:
    register_preset(_preset)
