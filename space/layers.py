"""Layers shared by the network families: learned group convolution, sparse feature reactivation,
channel shuffle, squeeze-and-excite and an activation factory.

The learned group convolution (LGC) is the one of CondenseNet (Huang et al., CVPR 2018) and the
sparse feature reactivation (SFR) module the one of CondenseNetV2 (Yang et al., CVPR 2021,
/work/shared/papers/002_61930d3504adb05c.txt, Sec. 3.1); both follow the official PyTorch code
(ShichenLiu/CondenseNet, jianghaojun/CondenseNetV2) where the papers leave details open:

- Schedule: with factor F there are F-1 condensing stages spread over the first half of training;
  stage ``i`` is reached once ``2 * progress >= i / (F - 1)``, and every stage removes ``n // F``
  connections (inputs per output group for LGC, outputs per input group for SFR). The official
  code drops one stage's worth per check even if progress jumped several stages; here every stage
  passed is applied, so the result does not depend on how often progress is reported.
- Importance: the L1 norm of the masked weights over the group (LGC: over the group's output
  filters; SFR: over the group's input channels), smallest first among the still-kept ones, ties
  broken by the lower channel index (the official code could re-drop a pruned channel on ties).
- Grouping: LGC group ``g`` owns output filters ``g, g+G, g+2G, ...``; SFR group ``j`` owns input
  channels ``j, j+G, ...``. The interleaving is what makes the training form "shuffled": the
  contiguous groups of the following 3x3 group convolution see every LGC group. CondenseNet wants
  that shuffle; RSNet drops it (its Sec. 3.3.2: of no use with LGCs, slightly worse), so the LGC
  also takes ``grouping="contiguous"``: group ``g`` owns filters ``g*d .. (g+1)*d - 1``
  (``d = out / G``), masks, L1 importance and lasso follow that grouping, and the deploy form needs
  no shuffle (its ``shuffle`` is a ``ChannelShuffle(1)``, the identity).
- Dropout: the masked form draws one dropout mask over its full input (one value per input
  channel and pixel). The condensed form, trained mid-run by the trainer, selects an input once per
  group that keeps it; it draws the same full-input mask (one ``F.dropout`` call of the same
  shape, hence the same random numbers) and gathers it, so an input kept by two groups is dropped
  in both or in neither, as in the masked form. ``deploy()`` itself draws no random numbers (it
  copies every value of the layers it builds, so it skips their random init), so switching forms
  mid-training leaves the stream of dropout masks where the masked form would have it.

Both layers follow the ``set_progress`` / ``deploy`` protocol of :mod:`space.convert`. ``deploy()``
always returns the final condensed shape (the one the papers count): a layer that has not reached
its last stage yet gets the remaining stages applied, by the same L1 rule, to a copy of its mask.
From progress 0.5 on, the deploy form therefore computes exactly what the training form does.

Speed on the meta device: the cost model builds and runs networks on meta, where PyTorch runs
element-wise ops through Python decompositions (BN ~0.8 ms, hard-swish ~1.6 ms per call). The layers
here skip shape-preserving element-wise steps (BN, activations, SE gating) when their input is on
meta, and :class:`Conv2d` / :class:`BatchNorm2d` skip initialising meta parameters; neither changes
shapes, MACs or anything on a real device.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Sequence

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "make_activation",
    "HardSwish",
    "ChannelShuffle",
    "SqueezeExcite",
    "Conv2d",
    "BatchNorm2d",
    "Linear",
    "concat_channels",
    "meta_build",
    "PreActConv",
    "MaskedConv2d",
    "PointwiseGroupConv",
    "GROUPINGS",
    "LearnedGroupConv",
    "CondensedGroupConv",
    "SparseFeatureReactivation",
    "CondensedReactivation",
    "condense_stage",
]

HardSwish = nn.Hardswish

ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (``"relu"``, ``"hswish"``, ...; see ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid activations: {sorted(ACTIVATIONS)}") from None


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, but got {name}={value!r}")


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), but got dropout={dropout!r}")


def _dropout(p: float) -> nn.Module | None:
    return nn.Dropout(p) if p > 0 else None


def _pre_activation(x: torch.Tensor, norm: nn.Module, act: nn.Module, drop: nn.Module | None) -> torch.Tensor:
    """BN -> act -> [dropout]; skipped on the meta device, where the cost model only needs shapes
    (these shape-preserving steps cost no MACs but up to 1.6 ms each through meta decompositions)."""
    if x.is_meta:
        return x
    x = act(norm(x))
    return x if drop is None else drop(x)


# The device effnas layers create their tensors on when none is given: set (to meta) only while
# the cost model builds a network. Passing it explicitly is ~20% cheaper than building inside
# ``torch.device("meta")``, whose mode intercepts every torch call made during construction.
_BUILD_DEVICE: contextvars.ContextVar[torch.device | None] = contextvars.ContextVar("build_device", default=None)


# Set while ``deploy()`` builds a layer whose every value it then copies from the training form:
# the layers of this module skip their (random) initialisation, so a conversion draws no random
# numbers and the dropout masks of condensed training continue the masked form's stream exactly.
_SKIP_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_init", default=False)


@contextlib.contextmanager
def _overwritten() -> Iterator[None]:
    """Within the block, layers of this module are created without initialising their values."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


@contextlib.contextmanager
def meta_build() -> Iterator[None]:
    """Within the block, the layers of this module (and families built from them) are created on
    the meta device. Anything else that creates tensors must take its device from a layer's."""
    token = _BUILD_DEVICE.set(torch.device("meta"))
    try:
        yield
    finally:
        _BUILD_DEVICE.reset(token)


class _MetaAware:
    """Mixin for PyTorch layers: created on the build device unless told otherwise, and not
    initialised on the meta device, where there are no values to set (the init calls would
    otherwise be most of the time of a meta build of a deep network), nor inside
    :func:`_overwritten`, where every value is copied in afterwards (a random init would draw from
    the random-number stream that training's dropout uses)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("device", _BUILD_DEVICE.get())
        super().__init__(*args, **kwargs)

    def reset_parameters(self) -> None:
        if _SKIP_INIT.get():
            return
        tensors = [t for t in (*self._parameters.values(), *self._buffers.values()) if t is not None]
        if not (tensors and tensors[0].is_meta):
            super().reset_parameters()


class Conv2d(_MetaAware, nn.Conv2d):
    """``nn.Conv2d`` built on the build device, skipping initialisation on meta."""


class BatchNorm2d(_MetaAware, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` built on the build device, skipping initialisation on meta."""


class Linear(_MetaAware, nn.Linear):
    """``nn.Linear`` built on the build device, skipping initialisation on meta."""


class PointwiseGroupConv(Conv2d):
    """A 1x1 group convolution (no bias) that runs as one batched matrix product on the CPU.

    oneDNN's grouped convolution costs ~0.15 ms per call at batch 1 however small the layer, a
    matmul over the (group, channels-of-group, pixels) view a few microseconds; at batch 64 the
    matmul is still the faster one. Other devices, channels-last inputs and the meta device (cost
    model) take the ordinary convolution; the weights, state-dict keys and counts are a Conv2d's.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, device: torch.device | None = None) -> None:
        super().__init__(in_channels, out_channels, 1, groups=groups, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not x.is_contiguous() or torch.onnx.is_in_onnx_export():
            return super().forward(x)
        n, c, h, w = x.shape
        g = self.groups
        y = torch.matmul(self.weight.view(g, self.out_channels // g, c // g), x.view(n, g, c // g, h * w))
        return y.view(n, self.out_channels, h, w)


def concat_channels(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along channels; on meta (cost model) an empty tensor of the joined shape, since
    a meta concatenation runs through a Python decomposition (~0.15 ms, once per dense layer)."""
    if tensors[0].is_meta:
        n, _, h, w = tensors[0].shape
        return tensors[0].new_empty((n, sum(t.shape[1] for t in tensors), h, w))
    return torch.cat(tuple(tensors), 1)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: channel ``g * (C / groups) + k`` moves to ``k * groups + g``."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        _check_positive(groups=groups)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:  # the identity permutation: no copy
            return x
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite: global average -> FC -> activation -> FC -> sigmoid gate.

    The FCs are 1x1 convolutions on the pooled map (the same MACs and weights as the official
    code's bias-free ``nn.Linear`` layers). The hidden width is ``max(channels // reduction,
    min_channels)``; ``min_channels`` is the floor some SE variants use.
    """

    def __init__(self, channels: int, reduction: int = 16, activation: str = "relu", *,
                 min_channels: int = 1, bias: bool = False, gate: str = "sigmoid") -> None:
        super().__init__()
        _check_positive(channels=channels, reduction=reduction, min_channels=min_channels)
        hidden = max(channels // reduction, min_channels)
        self.fc1 = Conv2d(channels, hidden, 1, bias=bias)
        self.act = make_activation(activation)
        self.fc2 = Conv2d(hidden, channels, 1, bias=bias)
        self.gate = make_activation(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_meta:  # shapes only: run the FCs for the cost model's hooks, skip the element-wise work
            self.fc2(self.fc1(x.new_empty(x.shape[0], x.shape[1], 1, 1)))
            return x
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class PreActConv(nn.Module):
    """BN -> activation -> ``kernel_size`` conv (same padding, optional groups, no bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, groups: int = 1,
                 stride: int = 1, activation: str = "relu") -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                        groups=groups, stride=stride)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must be divisible "
                             f"by groups={groups}")
        self.norm = BatchNorm2d(in_channels)
        self.act = make_activation(activation)
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                           padding=kernel_size // 2, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_pre_activation(x, self.norm, self.act, None))


class MaskedConv2d(Conv2d):
    """A 1x1 ``nn.Conv2d`` whose weight is multiplied by a binary ``mask`` buffer.

    Being an ``nn.Conv2d``, its (dense) MACs are seen by the cost model's hooks in training form.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=False)
        self.register_buffer("mask", torch.ones(self.weight.shape, device=self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight.is_meta else self.weight * self.mask
        return self._conv_forward(x, weight, None)


def condense_stage(progress: float, factor: int) -> int:
    """Condensing stage reached at ``progress`` with ``factor - 1`` stages over the first half.

    Stage ``i`` (1 <= i <= factor - 1) is reached once ``2 * progress >= i / (factor - 1)``; this
    is the official ``_check_drop`` rule, evaluated the same way to agree on the boundaries.
    """
    if factor <= 1:
        return 0
    for i in range(factor - 1):
        if progress * 2 < (i + 1) / (factor - 1):
            return i
    return factor - 1


def _drop_smallest(keep: torch.Tensor, score: torch.Tensor, n: int) -> torch.Tensor:
    """Clear, in every row of ``keep``, the ``n`` kept entries of smallest ``score``."""
    score = score.masked_fill(~keep, math.inf)
    order = torch.sort(score, dim=1, stable=True).indices[:, :n]
    return keep.scatter(1, order, False)


def _load_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, index: torch.Tensor | None) -> None:
    """Copy ``src``'s channels picked by ``index`` (all if None) into ``dst``, stats included."""
    dst.eps, dst.momentum = src.eps, src.momentum
    if src.running_mean.is_meta:
        return

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t if index is None else t.index_select(0, index)

    with torch.no_grad():
        dst.weight.copy_(pick(src.weight))
        dst.bias.copy_(pick(src.bias))
        dst.running_mean.copy_(pick(src.running_mean))
        dst.running_var.copy_(pick(src.running_var))
        dst.num_batches_tracked.copy_(src.num_batches_tracked)


class _Scheduled(nn.Module):
    """Bookkeeping shared by LGC and SFR: the stage, kept in a buffer (checkpoints) and mirrored
    in a Python int so that ``set_progress`` per batch costs no device synchronisation."""

    def _init_schedule(self, factor: int) -> None:
        self.factor = factor
        self.register_buffer("_stage", torch.zeros((), dtype=torch.long, device=_BUILD_DEVICE.get()))
        self._stage_int = 0

    @property
    def stage(self) -> int:
        return self._stage_int

    @property
    def final_stage(self) -> int:
        return max(self.factor - 1, 0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "_stage"
        if key in state_dict and not state_dict[key].is_meta:
            self._stage_int = int(state_dict[key])

    def set_progress(self, progress: float) -> bool:
        """Advance to the stage of ``progress``, applying every stage passed; True if it changed."""
        target = condense_stage(progress, self.factor)
        if target <= self._stage_int or self.mask.is_meta:
            return False
        with torch.no_grad():
            self._apply_keep(self._dropped(self._keep(), target - self._stage_int))
        self._stage_int = target
        self._stage.fill_(target)
        return True

    def _final_keep(self) -> torch.Tensor:
        return self._dropped(self._keep(), self.final_stage - self._stage_int)


GROUPINGS = ("interleaved", "contiguous")


class LearnedGroupConv(_Scheduled):
    """CondenseNet's learned group convolution (pre-activation 1x1): BN -> act -> dropout -> conv.

    The ``groups`` output groups each learn which ``in_channels // condense_factor`` inputs to keep.
    With ``grouping="interleaved"`` (the official CondenseNet grouping) group ``g`` owns output
    filters ``g, g + groups, ...``, so a following contiguous group convolution sees every LGC
    group (CondenseNet's shuffle); with ``"contiguous"`` it owns filters ``g * d .. (g + 1) * d - 1``
    (``d = out_channels // groups``), so group ``g`` of a following G-group convolution sees LGC
    group ``g`` only (RSNet, no shuffle).

    Args:
        in_channels: input channels; must be divisible by ``condense_factor``.
        out_channels: output channels; must be divisible by ``groups``.
        groups: number of output groups G (the test-time group convolution has G groups).
        condense_factor: C; each group keeps ``in_channels / C`` inputs after ``C - 1`` stages.
        dropout: dropout probability after the activation (official CondenseNet option).
        activation: activation name for :func:`make_activation`.
        grouping: ``"interleaved"`` or ``"contiguous"`` (see above); not in the state dict, which
            has the same keys for both.

    Raises:
        ValueError: on non-positive sizes, the divisibility conditions above or an unknown grouping.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, condense_factor: int,
                 dropout: float = 0.0, activation: str = "relu", grouping: str = "interleaved") -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels, groups=groups,
                        condense_factor=condense_factor)
        _check_dropout(dropout)
        if in_channels % condense_factor:
            raise ValueError(f"in_channels={in_channels} must be divisible by condense_factor={condense_factor}")
        if out_channels % groups:
            raise ValueError(f"out_channels={out_channels} must be divisible by groups={groups}")
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, but got grouping={grouping!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.condense_factor, self.dropout, self.activation = condense_factor, dropout, activation
        self.grouping = grouping
        self.norm = BatchNorm2d(in_channels)
        self.act = make_activation(activation)
        self.drop = _dropout(dropout)
        self.conv = MaskedConv2d(in_channels, out_channels)
        self._init_schedule(condense_factor)

    @property
    def mask(self) -> torch.Tensor:
        return self.conv.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_pre_activation(x, self.norm, self.act, self.drop))

    def extra_repr(self) -> str:
        return "" if self.grouping == "interleaved" else f"grouping={self.grouping}"

    # --- grouping -----------------------------------------------------------------------------

    def _by_group(self, t: torch.Tensor) -> torch.Tensor:
        """(out, in) -> (G, d, in): the rows of ``t`` (one per output filter) group by group."""
        d = self.out_channels // self.groups
        if self.grouping == "contiguous":
            return t.view(self.groups, d, self.in_channels)
        return t.view(d, self.groups, self.in_channels).transpose(0, 1)

    def _group_order(self) -> torch.Tensor:
        """Output filters group by group: entry ``g * d + k`` is filter k of group g."""
        order = torch.arange(self.out_channels, device=self.conv.weight.device)
        if self.grouping == "contiguous":
            return order
        return order.view(self.out_channels // self.groups, self.groups).t().reshape(-1)

    # --- schedule -----------------------------------------------------------------------------

    def _keep(self) -> torch.Tensor:
        """(G, in) bool: inputs kept by each group (row g is the mask of group g's first filter)."""
        return self._by_group(self.conv.mask[:, :, 0, 0])[:, 0] > 0

    def _group_l1(self) -> torch.Tensor:
        """(G, in): L1 norm of the masked weights of each group's filters, per input channel."""
        w = (self.conv.weight * self.conv.mask).abs()[:, :, 0, 0]
        return self._by_group(w).sum(1)

    def _dropped(self, keep: torch.Tensor, stages: int) -> torch.Tensor:
        if stages <= 0:
            return keep
        return _drop_smallest(keep, self._group_l1(), stages * (self.in_channels // self.condense_factor))

    def _apply_keep(self, keep: torch.Tensor) -> None:
        d = self.out_channels // self.groups
        full = keep.repeat_interleave(d, 0) if self.grouping == "contiguous" else keep.repeat(d, 1)
        self.conv.mask.copy_(full[:, :, None, None].to(self.conv.mask.dtype))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # Runs before the children load theirs: check the incoming mask, not ``self.conv.mask``.
        mask = state_dict.get(prefix + "conv.mask")
        if mask is not None and not mask.is_meta and mask.shape == self.conv.mask.shape:
            grouped = self._by_group(mask[:, :, 0, 0])
            if not bool((grouped == grouped[:, :1]).all()):
                # Same keys and shapes, other meaning: a checkpoint of the other grouping would
                # silently train (and deploy) a different network.
                error_msgs.append(f"{prefix}conv.mask: the filters of a group do not share one input pattern "
                                  f"under grouping={self.grouping!r}; the checkpoint was saved with the other "
                                  f"grouping of {GROUPINGS}")

    def lasso_loss(self) -> torch.Tensor:
        """Group-lasso term of the official code: sum over (group, input) of the L2 norm of the
        group's masked weights from that input; zero once the final stage is reached (the official
        code tests ``groups - 1`` instead of ``condense_factor - 1``, the same when G = C)."""
        if self._stage_int >= self.final_stage:
            return self.conv.weight.new_zeros(())
        w = (self.conv.weight * self.conv.mask)[:, :, 0, 0].pow(2)
        return self._by_group(w).sum(1).clamp(min=1e-6).sqrt().sum()

    # --- deploy -------------------------------------------------------------------------------

    def deploy_counts(self, output: torch.Tensor) -> tuple[int, int]:
        """(params, MACs per image) of :meth:`deploy`'s module, from shapes alone (cost model)."""
        kept = self.in_channels // self.condense_factor
        params = 2 * self.groups * kept + self.out_channels * kept  # BN on kept inputs + grouped 1x1
        return params, self.out_channels * kept * output.shape[-2] * output.shape[-1]

    def deploy(self) -> CondensedGroupConv:
        """Index-select + BN + act + group conv [+ shuffle, interleaved grouping only]; equal to the
        masked layer at the final stage (see the module docstring for layers deployed earlier)."""
        kept = self.in_channels // self.condense_factor
        weight = self.conv.weight
        if weight.is_meta:
            index = torch.zeros(self.groups * kept, dtype=torch.long, device=weight.device)
        else:
            index = self._final_keep().nonzero()[:, 1]
        with _overwritten():  # every value is copied below
            layer = CondensedGroupConv(self.groups * kept, self.out_channels, self.groups, self.dropout,
                                       self.activation, device=weight.device,
                                       shuffle=self.grouping == "interleaved")
        layer.index.copy_(index)
        _load_bn(layer.norm, self.norm, index)
        if not weight.is_meta:
            with torch.no_grad():
                layer.conv.weight.copy_(self._condensed_weight(index.view(self.groups, kept)))
        return layer.to(weight.dtype)

    def _condensed_weight(self, kept: torch.Tensor) -> torch.Tensor:
        """Grouped weight: row ``g * d_out + k`` is filter k of group g (interleaved: filter
        ``g + k * G``; contiguous: filter ``g * d_out + k``) on group g's kept inputs."""
        d_out = self.out_channels // self.groups
        w = self.conv.weight[self._group_order(), :, 0, 0]
        cols = kept.repeat_interleave(d_out, dim=0)
        return w.gather(1, cols)[:, :, None, None]


class CondensedGroupConv(nn.Module):
    """Test-time form of :class:`LearnedGroupConv`.

    ``index`` (buffer) lists the kept input channels group by group (an input kept by several
    groups appears several times). With ``shuffle`` (interleaved LGC grouping) the grouped conv's
    output is shuffled back to the order of the training form, so a later layer sees the same
    channels; without it (contiguous grouping) the grouped order is already the training order and
    ``self.shuffle`` is ``ChannelShuffle(1)``, the identity (kept so that readers of
    ``shuffle.groups`` work for both).

    In training mode with dropout, the dropout mask is drawn over the full input, as the masked
    layer draws it, and gathered like the input (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0,
                 activation: str = "relu", device: torch.device | None = None, shuffle: bool = True) -> None:
        super().__init__()
        self.register_buffer("index", torch.zeros(in_channels, dtype=torch.long, device=device))
        self.norm = BatchNorm2d(in_channels, device=device)
        self.act = make_activation(activation)
        self.drop = _dropout(dropout)
        self.conv = PointwiseGroupConv(in_channels, out_channels, groups, device=device)
        self.shuffle = ChannelShuffle(groups if shuffle else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        picked = x.index_select(1, self.index)
        if self.drop is None or not self.drop.training or x.is_meta:  # eval: dropout is the identity
            y = _pre_activation(picked, self.norm, self.act, None)
        else:
            y = self.act(self.norm(picked))
            # One F.dropout call on a tensor of the full input's shape, dtype and layout: the same
            # random numbers the masked layer draws, one mask value per input channel and pixel.
            keep = nn.functional.dropout(torch.ones_like(x, dtype=y.dtype), self.drop.p, training=True)
            y = y * keep.index_select(1, self.index)
        return self.shuffle(self.conv(y))


class SparseFeatureReactivation(_Scheduled):
    """CondenseNetV2's SFR module: BN -> act -> 1x1 conv from new features to the layer input.

    Input group ``j`` (channels ``j, j + groups, ...`` of the new features) learns which
    ``out_channels // sparse_factor`` outputs to update, over ``sparse_factor - 1`` stages. The
    output is the increment added to the layer's input (the addition lives in the dense layer).

    Args:
        in_channels: new feature channels (the growth rate); divisible by ``groups``.
        out_channels: channels of the layer input to reactivate; divisible by ``sparse_factor``.
        groups: G, input groups (the test-time group convolution has G groups).
        sparse_factor: S; each input group updates ``out_channels / S`` outputs at the end.
        activation: activation name for :func:`make_activation`.
        dropout: dropout probability after the activation.

    Raises:
        ValueError: on non-positive sizes or the divisibility conditions above.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, sparse_factor: int,
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels, groups=groups,
                        sparse_factor=sparse_factor)
        _check_dropout(dropout)
        if in_channels % groups:
            raise ValueError(f"in_channels={in_channels} must be divisible by groups={groups}")
        if out_channels % sparse_factor:
            raise ValueError(f"out_channels={out_channels} must be divisible by sparse_factor={sparse_factor}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.sparse_factor, self.dropout, self.activation = sparse_factor, dropout, activation
        self.norm = BatchNorm2d(in_channels)
        self.act = make_activation(activation)
        self.drop = _dropout(dropout)
        self.conv = MaskedConv2d(in_channels, out_channels)
        self._init_schedule(sparse_factor)

    @property
    def mask(self) -> torch.Tensor:
        return self.conv.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_pre_activation(x, self.norm, self.act, self.drop))

    # --- schedule: rows of the (G, O) tables below are input groups ----------------------------

    def _keep(self) -> torch.Tensor:
        """(G, O) bool: outputs updated by each input group (column j is input channel j's mask)."""
        return self.conv.mask[:, : self.groups, 0, 0].t() > 0

    def _group_l1(self) -> torch.Tensor:
        w = (self.conv.weight * self.conv.mask).abs()[:, :, 0, 0]
        return w.view(self.out_channels, self.in_channels // self.groups, self.groups).sum(1).t()

    def _dropped(self, keep: torch.Tensor, stages: int) -> torch.Tensor:
        if stages <= 0:
            return keep
        return _drop_smallest(keep, self._group_l1(), stages * (self.out_channels // self.sparse_factor))

    def _apply_keep(self, keep: torch.Tensor) -> None:
        full = keep.t().repeat(1, self.in_channels // self.groups)
        self.conv.mask.copy_(full[:, :, None, None].to(self.conv.mask.dtype))

    def lasso_loss(self) -> torch.Tensor:
        """Group-lasso term of the official code (L2 norm per output and input group)."""
        if self._stage_int >= self.final_stage:
            return self.conv.weight.new_zeros(())
        w = (self.conv.weight * self.conv.mask)[:, :, 0, 0].pow(2)
        w = w.view(self.out_channels, self.in_channels // self.groups, self.groups).sum(1)
        return w.clamp(min=1e-6).sqrt().sum()

    # --- deploy -------------------------------------------------------------------------------

    def deploy_counts(self, output: torch.Tensor) -> tuple[int, int]:
        """(params, MACs per image) of :meth:`deploy`'s module, from shapes alone (cost model)."""
        kept = self.out_channels // self.sparse_factor
        params = 2 * self.in_channels + kept * self.in_channels  # BN + grouped 1x1 to the kept outputs
        return params, kept * self.in_channels * output.shape[-2] * output.shape[-1]

    def deploy(self) -> CondensedReactivation:
        """Group conv over the kept outputs + index_add into the input channels."""
        kept = self.out_channels // self.sparse_factor
        weight = self.conv.weight
        if weight.is_meta:
            index = torch.zeros(self.groups * kept, dtype=torch.long, device=weight.device)
        else:
            index = self._final_keep().nonzero()[:, 1]
        with _overwritten():  # every value is copied below
            layer = CondensedReactivation(self.in_channels, self.out_channels, self.groups * kept,
                                          self.groups, self.activation, self.dropout, device=weight.device)
        layer.index.copy_(index)
        _load_bn(layer.norm, self.norm, None)
        if not weight.is_meta:
            with torch.no_grad():
                layer.conv.weight.copy_(self._condensed_weight(index))
        return layer.to(weight.dtype)

    def _condensed_weight(self, index: torch.Tensor) -> torch.Tensor:
        """Row ``j * K + r``: output ``index[j * K + r]`` on group j's inputs ``j, j + G, ...``."""
        kept = index.numel() // self.groups
        w = self.conv.weight[:, :, 0, 0].view(self.out_channels, self.in_channels // self.groups, self.groups)
        group = torch.arange(self.groups, device=index.device).repeat_interleave(kept)
        return w[index, :, group][:, :, None, None]


class CondensedReactivation(nn.Module):
    """Test-time form of :class:`SparseFeatureReactivation`.

    The input channels are first regrouped so group j's channels ``j, j + G, ...`` are contiguous,
    then a G-group conv computes only the kept (group, output) pairs, and ``index_add`` sums them
    into their output channels (``index``, a buffer; outputs updated by several groups add up).
    """

    def __init__(self, in_channels: int, out_channels: int, kept: int, groups: int,
                 activation: str = "relu", dropout: float = 0.0,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.register_buffer("index", torch.zeros(kept, dtype=torch.long, device=device))
        self.norm = BatchNorm2d(in_channels, device=device)
        self.act = make_activation(activation)
        self.drop = _dropout(dropout)
        # Regroup j, j+G, ... together: the inverse of a shuffle with G groups.
        self.regroup = ChannelShuffle(in_channels // groups) if groups > 1 else nn.Identity()
        self.conv = PointwiseGroupConv(in_channels, kept, groups, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.regroup(_pre_activation(x, self.norm, self.act, self.drop)))
        n, _, h, w = y.shape
        out = y.new_zeros(n, self.out_channels, h, w)
        if torch.onnx.is_in_onnx_export():
            # scatter_add with a broadcast index: the same sums, which the ONNX exporter translates
            # faithfully (it turns a repeated-index index_add into an overwrite).
            return out.scatter_add_(1, self.index.view(1, -1, 1, 1).expand_as(y), y)
        return out.index_add_(1, self.index, y)  # twice as fast as scatter_add on the CPU
