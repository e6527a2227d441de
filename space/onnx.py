"""The deploy form as ONNX Runtime runs it fastest: lowering, export and a session.

Why a lowering: the PyTorch deploy form is written for eager PyTorch, where every operation costs
its kernel and the condensed 1x1 convolutions are what condensation saves. ONNX Runtime fuses a
convolution with the BN and activation that follow it and runs dense convolutions in its blocked
(NCHWc) layout, but not grouped ones, and an ``index_add`` becomes a ``ScatterElements`` that costs
more than the dense 1x1 convolution it replaces (profiled on condensenetv2-110 at batch 1: half of
the deploy graph's time). :func:`to_onnx_form` therefore rewrites a deploy-form network, with the
same outputs, into the graph that runtime runs best:

- a condensed LGC and the BN-act-3x3 convolution after it (:class:`CondensedPair`): the channel
  shuffle between them moves behind that BN and activation (both per channel), so the 1x1
  convolution fuses with them; for up to :data:`DENSE_3X3_MAX_GROUPS` groups the 3x3 group
  convolution becomes one dense convolution whose weight holds the shuffle and zero blocks, which
  ONNX Runtime runs faster than the grouped one and the shuffle in front of it (in its profiles,
  the dense convolutions ran in its blocked NCHWc layout and the grouped ones did not);
- the condensed SFR (:class:`DenseReactivation`): one 1x1 convolution whose weight carries the
  index-add (the official CondenseNetV2 conversion folds it into a 0/1 matrix the same way);
- channel shuffles and SlimConv's channel folds with the channel counts fixed at lowering time
  (a constant-index gather, constant slices), so the exported graph holds no shape arithmetic.

The rewrites are by layer type, in this module only: a family whose block holds a condensed LGC as
``conv1`` and its BN-act-conv as ``conv2`` (CondenseNet's dense layer, RSNet's unit) gets the pair. The
MACs and params the study reports stay those of the deploy form: the lowering is a runtime's
rendering of the same network (its dense 3x3 multiplies zeros), not another architecture.
"""
from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import torch
from torch import nn

from space.layers import (BatchNorm2d, ChannelShuffle, CondensedGroupConv, CondensedReactivation, PreActConv,
                          _load_bn, _pre_activation)

__all__ = ["DENSE_3X3_MAX_GROUPS", "CondensedPair", "DenseReactivation", "PermuteChannels", "to_onnx_form",
           "onnx_bytes", "ort_session", "require_onnxruntime", "OnnxRuntimeMissing"]

# `python bench/deploy_latency.py --presets --archs 0 --dense-3x3` (condensenet-86, batch 1, 2 threads):
# the grouped 3x3 behind its gather takes 1.18x the dense one's time at 4 groups, and 1.03x / 1.23x in
# two runs at 8 groups, where the dense weight holds 8x the MACs. Above 4 groups stays grouped until a
# wider measurement (batches, networks) says the dense one wins there too.
DENSE_3X3_MAX_GROUPS = 4


class OnnxRuntimeMissing(ImportError):
    """ONNX Runtime (or the onnx package) was asked for and is not installed."""


def require_onnxruntime(what: str = "ONNX Runtime latency") -> Any:
    """The ``onnxruntime`` module, or :class:`OnnxRuntimeMissing` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeMissing(f"{what} needs the onnxruntime package, which is not installed here; "
                                 f"install it with: pip install 'effnas[onnx]'") from None
    return onnxruntime


def _shuffle_order(channels: int, groups: int) -> torch.Tensor:
    """``order[s]``: the input channel a :class:`ChannelShuffle` puts at position ``s``."""
    return torch.arange(channels).view(groups, channels // groups).t().reshape(-1)


class PermuteChannels(nn.Module):
    """``x[:, order]`` with a constant ``order``: one gather in the graph, no shape arithmetic."""

    def __init__(self, order: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("order", order.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.order)


class CondensedPair(nn.Module):
    """A condensed LGC and the BN-act-conv after it, as ONNX Runtime runs them best.

    gather(kept inputs) -> BN -> act -> grouped 1x1 -> BN' -> act -> [shuffle] -> 3x3: BN' is the
    next layer's BN with its channels permuted to the 1x1 output's order, so the runtime fuses it
    (and the activation) into the 1x1 convolution. The shuffle then lives in the 3x3 weight (dense
    form) or in a constant gather in front of the grouped 3x3.
    """

    def __init__(self, lgc: CondensedGroupConv, following: PreActConv) -> None:
        super().__init__()
        conv1, conv2 = lgc.conv, following.conv
        order = _shuffle_order(conv1.out_channels, lgc.shuffle.groups)
        unshuffle = torch.argsort(order)  # position of each 1x1 output channel after the shuffle
        self.register_buffer("index", lgc.index.clone())
        self.norm1, self.act1, self.drop = lgc.norm, lgc.act, lgc.drop
        self.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 1, groups=conv1.groups, bias=False)
        self.conv1.weight.data.copy_(conv1.weight.data)
        self.norm2 = BatchNorm2d(conv1.out_channels)
        _load_bn(self.norm2, following.norm, unshuffle)
        self.act2 = following.act
        dense = conv2.groups <= DENSE_3X3_MAX_GROUPS
        self.reorder = None if dense or lgc.shuffle.groups == 1 else PermuteChannels(order)
        self.conv2 = nn.Conv2d(conv2.in_channels, conv2.out_channels, conv2.kernel_size, stride=conv2.stride,
                               padding=conv2.padding, groups=1 if dense else conv2.groups, bias=False)
        with torch.no_grad():
            self.conv2.weight.copy_(self._dense_weight(conv2, unshuffle) if dense else conv2.weight)
        self.eval()

    @staticmethod
    def _dense_weight(conv: nn.Conv2d, unshuffle: torch.Tensor) -> torch.Tensor:
        """The grouped weight as a dense one over the shuffled channels (zero blocks elsewhere),
        then indexed by the unshuffled channel order, so it reads the 1x1 output as it comes."""
        out, per_in = conv.out_channels, conv.in_channels // conv.groups
        w = conv.weight.new_zeros(out, conv.in_channels, *conv.kernel_size)
        per_out = out // conv.groups
        for g in range(conv.groups):
            w[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = conv.weight[g * per_out:(g + 1) * per_out]
        return w[:, unshuffle]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pre_activation(x.index_select(1, self.index), self.norm1, self.act1, self.drop)
        y = self.act2(self.norm2(self.conv1(x)))
        return self.conv2(y if self.reorder is None else self.reorder(y))


class DenseReactivation(nn.Module):
    """A condensed SFR as BN -> act -> one 1x1 convolution whose weight carries the index-add."""

    def __init__(self, sfr: CondensedReactivation) -> None:
        super().__init__()
        conv = sfr.conv
        groups, cin, kept = conv.groups, conv.in_channels, conv.out_channels
        self.norm, self.act, self.drop = sfr.norm, sfr.act, sfr.drop
        # Row r of the grouped weight belongs to group j = r // (kept / groups); after the regroup,
        # its t-th input is channel j + groups * t of the new features.
        j = torch.arange(kept).div(kept // groups, rounding_mode="floor")
        cols = j[:, None] + groups * torch.arange(cin // groups)[None, :]
        weight = conv.weight.new_zeros(sfr.out_channels, cin)
        rows = sfr.index[:, None].expand_as(cols)
        weight.index_put_((rows, cols), conv.weight.detach()[:, :, 0, 0], accumulate=True)
        self.conv = nn.Conv2d(cin, sfr.out_channels, 1, bias=False)
        self.conv.weight.data.copy_(weight[:, :, None, None])
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_pre_activation(x, self.norm, self.act, self.drop))


class _StaticFold(nn.Module):
    """SlimConv's channel fold (sum of ``pieces`` consecutive blocks) with constant slice bounds."""

    def __init__(self, pieces: int, channels: int) -> None:
        super().__init__()
        self.pieces, self.width = pieces, channels // pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x[:, :self.width]
        for i in range(1, self.pieces):
            out = out + x[:, i * self.width:(i + 1) * self.width]
        return out


def _channels_seen(model: nn.Module, example: torch.Tensor, kinds: tuple) -> dict[nn.Module, int]:
    """Input channels of every module of ``kinds``, from one forward pass on ``example``."""
    seen: dict[nn.Module, int] = {}

    def record(module: nn.Module, args: tuple) -> None:  # returns None: the input passes unchanged
        seen.setdefault(module, args[0].shape[1])

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _replace(module: nn.Module, swap) -> None:
    for name, child in module.named_children():
        new = swap(child)
        if new is not None:
            setattr(module, name, new)
        else:
            _replace(child, swap)


def to_onnx_form(deployed: nn.Module, image_size: int, in_channels: int = 3) -> nn.Module:
    """A copy of the deploy-form ``deployed`` rewritten for ONNX Runtime (same outputs, eval mode)."""
    from space.slimconv import SlimConv

    model = copy.deepcopy(deployed).cpu().eval()
    for m in model.modules():
        if isinstance(getattr(m, "conv1", None), CondensedGroupConv) and isinstance(getattr(m, "conv2", None), PreActConv):
            m.conv1, m.conv2 = CondensedPair(m.conv1, m.conv2), nn.Identity()
    _replace(model, lambda m: DenseReactivation(m) if isinstance(m, CondensedReactivation) else None)
    example = torch.zeros(1, in_channels, image_size, image_size)
    seen = _channels_seen(model, example, (ChannelShuffle, SlimConv))
    for m in model.modules():
        if isinstance(m, SlimConv) and m in seen:
            m.fold_form = _StaticFold(m.pieces, seen[m])
    _replace(model, lambda m: PermuteChannels(_shuffle_order(seen[m], m.groups))
             if isinstance(m, ChannelShuffle) and m in seen else None)
    return model.eval()


def onnx_bytes(model: nn.Module, image_size: int, in_channels: int = 3, batch: int | None = None) -> bytes:
    """The ONNX graph of ``model`` (TorchScript exporter, opset of this torch).

    ``batch`` fixes the batch size (what a latency measurement runs); None leaves it dynamic.
    """
    x = torch.zeros(batch or 1, in_channels, image_size, image_size)
    buf = io.BytesIO()
    dynamic = None if batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes=dynamic)
    return buf.getvalue()


def ort_session(blob: bytes, threads: int = 1):
    """A CPU ONNX Runtime session with ``threads`` intra-op threads and full graph optimisation.

    Idle threads do not spin: on a node shared with other trials (or another session being timed)
    a spinning pool takes CPU from them, and the measured times grow erratic (seen on condensenet-86,
    three sessions alternating at batch 1: median 2.7x the minimum with spinning, 1.4x without).
    """
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about the layout it chose are not the user's concern
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
