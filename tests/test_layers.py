"""Shared layers: LGC and SFR schedules, deploy equality, meta deploy, small utility layers."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from space.layers import (
    ChannelShuffle,
    CondensedGroupConv,
    CondensedReactivation,
    LearnedGroupConv,
    SparseFeatureReactivation,
    SqueezeExcite,
    condense_stage,
    make_activation,
)


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so deploy equality tests mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- small layers -------------------------------------------------------------------------------

def test_make_activation_names_and_error():
    assert isinstance(make_activation("relu"), nn.ReLU)
    assert isinstance(make_activation("hswish"), nn.Hardswish)
    assert make_activation("relu") is not make_activation("relu")
    with pytest.raises(ValueError, match="unknown activation 'gelu2'.*valid activations"):
        make_activation("gelu2")


def test_channel_shuffle_permutation():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert ChannelShuffle(3)(x).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert ChannelShuffle(1)(x) is x  # the contiguous LGC's deploy form: no copy
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        ChannelShuffle(0)


def test_squeeze_excite_matches_manual_computation():
    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=4, activation="relu")
    assert se.fc1.out_channels == 2 and se.fc1.bias is None
    assert SqueezeExcite(8, reduction=16, min_channels=3).fc1.out_channels == 3
    x = torch.randn(2, 8, 3, 3)
    pooled = x.mean(dim=(2, 3))
    gate = torch.sigmoid(torch.relu(pooled @ se.fc1.weight[:, :, 0, 0].t()) @ se.fc2.weight[:, :, 0, 0].t())
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])


# --- LGC schedule -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "factor, expected",
    [
        (4, [(0.0, 0), (1 / 6 - 1e-9, 0), (1 / 6, 1), (0.3, 1), (1 / 3, 2), (0.5 - 1e-9, 2), (0.5, 3), (1.0, 3)]),
        (2, [(0.0, 0), (0.49, 0), (0.5, 1), (1.0, 1)]),
        (1, [(0.0, 0), (0.5, 0), (1.0, 0)]),
        (8, [(0.0, 0), (1 / 14, 1), (0.2, 2), (0.34, 4), (0.499, 6), (0.5, 7)]),
    ],
)
def test_condense_stage_boundaries(factor, expected):
    assert [condense_stage(p, factor) for p, _ in expected] == [s for _, s in expected]


def test_lgc_kept_connections_per_group_after_each_stage():
    torch.manual_seed(0)
    lgc = LearnedGroupConv(16, 32, groups=4, condense_factor=4)
    seen = []
    for progress in (0.0, 0.1, 1 / 6, 0.2, 1 / 3, 0.45, 0.5, 0.8, 1.0):
        changed = lgc.set_progress(progress)
        kept = lgc.mask[:, :, 0, 0].sum(1)
        seen.append((progress, lgc.stage, changed, kept.unique().tolist()))
    assert seen == [
        (0.0, 0, False, [16.0]), (0.1, 0, False, [16.0]), (1 / 6, 1, True, [12.0]), (0.2, 1, False, [12.0]),
        (1 / 3, 2, True, [8.0]), (0.45, 2, False, [8.0]), (0.5, 3, True, [4.0]), (0.8, 3, False, [4.0]),
        (1.0, 3, False, [4.0]),
    ]


def test_lgc_groups_are_interleaved_output_filters():
    torch.manual_seed(1)
    lgc = LearnedGroupConv(8, 12, groups=3, condense_factor=2)
    lgc.set_progress(1.0)
    mask = lgc.mask[:, :, 0, 0]
    for g in range(3):
        rows = mask[g::3]
        assert (rows == rows[0]).all(), "filters g, g+G, ... share one input pattern"
        assert rows[0].sum() == 4


def test_lgc_contiguous_groups_are_blocks_of_output_filters():
    torch.manual_seed(1)
    lgc = LearnedGroupConv(8, 12, groups=3, condense_factor=2, grouping="contiguous")
    lgc.set_progress(1.0)
    mask = lgc.mask[:, :, 0, 0]
    for g in range(3):
        rows = mask[4 * g:4 * g + 4]
        assert (rows == rows[0]).all(), "filters g*d .. (g+1)*d-1 share one input pattern"
        assert rows[0].sum() == 4
    assert len({tuple(mask[4 * g].tolist()) for g in range(3)}) > 1, "the groups learned different inputs"


def test_lgc_contiguous_drops_smallest_l1_inputs_of_each_group_and_deploys_without_shuffle():
    lgc = LearnedGroupConv(4, 4, groups=2, condense_factor=2, grouping="contiguous")
    weight = torch.tensor([
        [1.0, 4.0, 0.5, -3.0],
        [4.0, -0.5, 2.0, 0.5],
        [-1.0, 0.5, 4.0, 3.0],
        [0.5, 0.5, -3.0, 5.0],
    ])
    with torch.no_grad():
        # group 0 = filters 0 and 1: L1 [5, 4.5, 2.5, 3.5] -> drop inputs 2 and 3;
        # group 1 = filters 2 and 3: L1 [1.5, 1, 7, 8] -> drop inputs 1 and 0
        lgc.conv.weight.copy_(weight[:, :, None, None])
    assert lgc.set_progress(0.5)
    assert lgc.mask[:, :, 0, 0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    deployed = lgc.deploy()
    assert deployed.index.tolist() == [0, 1, 2, 3]
    assert deployed.conv.weight[:, :, 0, 0].tolist() == [[1.0, 4.0], [4.0, -0.5], [4.0, 3.0], [-3.0, 5.0]]
    assert deployed.shuffle.groups == 1


def test_lgc_drops_smallest_l1_inputs_of_each_group():
    lgc = LearnedGroupConv(4, 4, groups=2, condense_factor=2)
    with torch.no_grad():
        # group 0 = filters 0 and 2, group 1 = filters 1 and 3; per-group L1 over inputs:
        # group 0: [2, 8, 1, 6] -> drop inputs 2 and 0; group 1: [9, 1, 5, 1] -> drop 1 and 3
        lgc.conv.weight.copy_(torch.tensor([
            [1.0, 4.0, 0.5, -3.0],
            [4.0, -0.5, 2.0, 0.5],
            [-1.0, 4.0, 0.5, 3.0],
            [5.0, 0.5, -3.0, 0.5],
        ])[:, :, None, None])
    assert lgc.set_progress(0.5)
    assert lgc.mask[:, :, 0, 0].tolist() == [[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    assert lgc.deploy().index.tolist() == [1, 3, 0, 2]


def test_lgc_progress_jump_equals_stepwise_and_is_idempotent():
    torch.manual_seed(2)
    stepped = LearnedGroupConv(32, 16, groups=4, condense_factor=8)
    jumped = LearnedGroupConv(32, 16, groups=4, condense_factor=8)
    jumped.load_state_dict(stepped.state_dict())
    for p in torch.linspace(0, 1, 41).tolist():
        stepped.set_progress(p)
    assert jumped.set_progress(0.9) and jumped.stage == 7
    assert torch.equal(jumped.mask, stepped.mask)
    before = jumped.mask.clone()
    assert not jumped.set_progress(0.9) and not jumped.set_progress(0.2)
    assert torch.equal(jumped.mask, before)
    assert jumped.mask[:4, :, 0, 0].sum(1).tolist() == [4, 4, 4, 4]


def test_lgc_stage_survives_state_dict_round_trip():
    torch.manual_seed(3)
    lgc = LearnedGroupConv(8, 8, groups=2, condense_factor=4)
    lgc.set_progress(0.2)
    fresh = LearnedGroupConv(8, 8, groups=2, condense_factor=4)
    fresh.load_state_dict(lgc.state_dict())
    assert fresh.stage == 1 and torch.equal(fresh.mask, lgc.mask)
    assert not fresh.set_progress(0.2) and fresh.set_progress(0.4) and fresh.stage == 2


def test_lgc_lasso_loss_matches_group_norms_and_vanishes_at_final_stage():
    torch.manual_seed(4)
    lgc = LearnedGroupConv(6, 4, groups=2, condense_factor=3)
    w = lgc.conv.weight[:, :, 0, 0]
    expected = sum(w[g::2, j].norm() for g in range(2) for j in range(6))
    torch.testing.assert_close(lgc.lasso_loss(), expected)
    lgc.lasso_loss().backward()
    assert lgc.conv.weight.grad is not None
    lgc.set_progress(1.0)
    assert lgc.lasso_loss().item() == 0.0
    contiguous = LearnedGroupConv(6, 4, groups=2, condense_factor=3, grouping="contiguous")
    w = contiguous.conv.weight[:, :, 0, 0]
    expected = sum(w[2 * g:2 * g + 2, j].norm() for g in range(2) for j in range(6))
    torch.testing.assert_close(contiguous.lasso_loss(), expected)


def test_lgc_checkpoint_of_the_other_grouping_is_refused():
    """Same keys and shapes, other meaning: a condensed mask of one grouping must not load into the other."""
    torch.manual_seed(4)
    interleaved = LearnedGroupConv(8, 8, groups=2, condense_factor=2)
    contiguous = LearnedGroupConv(8, 8, groups=2, condense_factor=2, grouping="contiguous")
    assert interleaved.state_dict().keys() == contiguous.state_dict().keys()
    contiguous.load_state_dict(interleaved.state_dict())  # stage 0: all ones, valid for both
    interleaved.set_progress(1.0)
    with pytest.raises(RuntimeError, match=r"conv.mask: the filters of a group do not share one input pattern "
                                           r"under grouping='contiguous'"):
        contiguous.load_state_dict(interleaved.state_dict())


# --- LGC deploy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cin, cout, groups, factor, dropout, grouping", [
    (16, 32, 4, 4, 0.0, "interleaved"), (24, 48, 4, 8, 0.1, "interleaved"), (12, 24, 2, 3, 0.0, "interleaved"),
    (8, 8, 1, 1, 0.0, "interleaved"), (16, 12, 3, 2, 0.0, "interleaved"),
    (16, 32, 4, 4, 0.0, "contiguous"), (24, 48, 4, 8, 0.1, "contiguous"), (16, 12, 3, 2, 0.0, "contiguous"),
])
def test_lgc_deploy_equals_masked_layer(cin, cout, groups, factor, dropout, grouping):
    torch.manual_seed(5)
    lgc = LearnedGroupConv(cin, cout, groups, factor, dropout=dropout, activation="hswish", grouping=grouping)
    _randomise_bn(lgc)
    for p in (0.1, 0.25, 0.4, 0.55):
        lgc.set_progress(p)
    lgc.eval()
    deployed = lgc.deploy().eval()
    assert isinstance(deployed, CondensedGroupConv)
    assert deployed.index.numel() == groups * cin // factor
    assert deployed.conv.groups == groups and deployed.conv.in_channels == groups * cin // factor
    assert _params(deployed) == cout * cin // factor + 2 * groups * cin // factor
    assert deployed.shuffle.groups == (groups if grouping == "interleaved" else 1)
    x = torch.randn(2, cin, 5, 5)
    assert (lgc(x) - deployed(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("grouping", ["interleaved", "contiguous"])
def test_condensed_lgc_in_training_draws_the_masked_layers_dropout(grouping):
    """Training the condensed form mid-run: one dropout mask per input channel and pixel, the same
    random numbers as the masked layer (an input kept by several groups is dropped in all or none)."""
    torch.manual_seed(8)
    lgc = LearnedGroupConv(16, 32, groups=4, condense_factor=2, dropout=0.2, grouping=grouping)
    _randomise_bn(lgc)
    lgc.set_progress(1.0)
    deployed = lgc.deploy().train()
    assert deployed.index.numel() > deployed.index.unique().numel(), "some input is kept by several groups"
    x = torch.randn(3, 16, 4, 4)
    for seed in range(3):
        torch.manual_seed(seed)
        masked = lgc(x)
        after_masked = torch.get_rng_state()
        torch.manual_seed(seed)
        condensed = deployed(x)
        assert torch.equal(torch.get_rng_state(), after_masked), "both forms draw the same random numbers"
        assert (masked - condensed).abs().max().item() < 1e-5
    torch.manual_seed(0)
    first = deployed(x)
    assert not torch.allclose(first, deployed(x)), "dropout is active"
    cl = x.to(memory_format=torch.channels_last)  # the trainer may train channels-last
    torch.manual_seed(3)
    masked = lgc(cl)
    torch.manual_seed(3)
    assert (masked - deployed(cl)).abs().max().item() < 1e-5


def test_deploy_draws_no_random_numbers():
    """Deploy copies every value it creates: no random init, so converting mid-training leaves the
    dropout stream of the condensed form where the masked form would have it."""
    lgc = LearnedGroupConv(16, 16, groups=4, condense_factor=4, dropout=0.1)
    sfr = SparseFeatureReactivation(8, 16, groups=2, sparse_factor=2, dropout=0.1)
    lgc.set_progress(1.0)
    sfr.set_progress(1.0)
    state = torch.get_rng_state()
    deployed = lgc.deploy(), sfr.deploy()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(deployed[0].norm.weight, lgc.norm.weight[deployed[0].index])
    assert torch.equal(deployed[1].norm.running_var, sfr.norm.running_var)


def test_lgc_deploy_before_final_stage_completes_the_schedule():
    torch.manual_seed(6)
    lgc = LearnedGroupConv(16, 16, groups=4, condense_factor=4)
    _randomise_bn(lgc)
    lgc.set_progress(0.2)
    early = lgc.deploy().eval()
    assert early.index.numel() == 16 and lgc.stage == 1, "deploy must not advance the layer itself"
    lgc.set_progress(1.0)
    lgc.eval()
    x = torch.randn(1, 16, 4, 4)
    assert (lgc(x) - early(x)).abs().max().item() < 1e-5


def test_lgc_deploy_on_meta_has_final_shapes():
    with torch.device("meta"):
        lgc = LearnedGroupConv(32, 64, groups=4, condense_factor=8)
    deployed = lgc.deploy()
    assert deployed.index.is_meta and deployed.index.shape == (16,)
    assert deployed(torch.zeros(1, 32, 4, 4, device="meta")).shape == (1, 64, 4, 4)
    assert _params(deployed) == 64 * 4 + 2 * 16


def test_deployed_lgc_is_trainable():
    lgc = LearnedGroupConv(8, 8, groups=2, condense_factor=2)
    lgc.set_progress(1.0)
    deployed = lgc.deploy().train()
    deployed(torch.randn(2, 8, 3, 3)).square().mean().backward()
    assert all(p.grad is not None for p in deployed.parameters())
    assert isinstance(deployed.norm, nn.BatchNorm2d)


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=10, out_channels=8, groups=2, condense_factor=4),
     "in_channels=10 must be divisible by condense_factor=4"),
    (dict(in_channels=8, out_channels=6, groups=4, condense_factor=4), "out_channels=6 must be divisible by groups=4"),
    (dict(in_channels=8, out_channels=8, groups=0, condense_factor=4), "groups must be a positive integer"),
    (dict(in_channels=8, out_channels=8, groups=2, condense_factor=2.0), "condense_factor must be a positive integer"),
    (dict(in_channels=8, out_channels=8, groups=2, condense_factor=2, dropout=1.0), r"dropout must lie in \[0, 1\)"),
    (dict(in_channels=8, out_channels=8, groups=2, condense_factor=2, activation="tanh"), "unknown activation"),
    (dict(in_channels=8, out_channels=8, groups=2, condense_factor=2, grouping="blocks"),
     r"grouping must be one of \('interleaved', 'contiguous'\), but got grouping='blocks'"),
])
def test_lgc_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LearnedGroupConv(**kwargs)


# --- SFR ----------------------------------------------------------------------------------------

def test_sfr_kept_outputs_per_input_group_after_each_stage():
    torch.manual_seed(7)
    sfr = SparseFeatureReactivation(8, 24, groups=4, sparse_factor=3)
    seen = []
    for progress in (0.0, 0.2, 0.25, 0.3, 0.5, 1.0):
        changed = sfr.set_progress(progress)
        kept = sfr.mask[:, :4, 0, 0].sum(0)  # column j is input group j's pattern
        seen.append((sfr.stage, changed, kept.unique().tolist()))
    assert seen == [(0, False, [24.0]), (0, False, [24.0]), (1, True, [16.0]), (1, False, [16.0]),
                    (2, True, [8.0]), (2, False, [8.0])]
    mask = sfr.mask[:, :, 0, 0]
    for j in range(4):
        cols = mask[:, j::4]
        assert (cols == cols[:, :1]).all(), "input channels j, j+G, ... share one output pattern"


def test_sfr_drops_outputs_of_smallest_l1_per_input_group():
    sfr = SparseFeatureReactivation(2, 4, groups=2, sparse_factor=2)
    with torch.no_grad():
        # input group 0 = channel 0, group 1 = channel 1; |w| of outputs 0..3
        sfr.conv.weight.copy_(torch.tensor([[3.0, 0.1], [-0.2, 2.0], [1.0, -0.3], [0.1, 4.0]])[:, :, None, None])
    assert sfr.set_progress(0.5)
    assert sfr.mask[:, :, 0, 0].tolist() == [[1, 0], [0, 1], [1, 0], [0, 1]]
    deployed = sfr.deploy()
    assert deployed.index.tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize("cin, cout, groups, factor", [(8, 16, 4, 4), (16, 24, 2, 3), (8, 8, 1, 1), (6, 12, 3, 2)])
def test_sfr_deploy_equals_masked_layer(cin, cout, groups, factor):
    torch.manual_seed(8)
    sfr = SparseFeatureReactivation(cin, cout, groups, factor, activation="hswish")
    _randomise_bn(sfr)
    for p in (0.1, 0.3, 0.6):
        sfr.set_progress(p)
    sfr.eval()
    deployed = sfr.deploy().eval()
    assert isinstance(deployed, CondensedReactivation)
    kept = groups * cout // factor
    assert deployed.index.numel() == kept and deployed.conv.groups == groups
    assert _params(deployed) == cin // groups * kept + 2 * cin
    x = torch.randn(2, cin, 5, 5)
    assert (sfr(x) - deployed(x)).abs().max().item() < 1e-5


def test_sfr_deploy_sums_outputs_shared_by_several_groups():
    torch.manual_seed(9)
    sfr = SparseFeatureReactivation(4, 4, groups=4, sparse_factor=4)
    with torch.no_grad():
        sfr.conv.weight.fill_(0.01)
        sfr.conv.weight[2] = 1.0  # every group keeps output 2
    sfr.set_progress(1.0)
    deployed = sfr.deploy().eval()
    sfr.eval()
    assert deployed.index.tolist() == [2, 2, 2, 2]
    x = torch.randn(1, 4, 3, 3)
    assert (sfr(x) - deployed(x)).abs().max().item() < 1e-5


def test_sfr_deploy_does_grouped_work_only():
    # The deploy form must do only the kept (group, output) MACs: no dense 0/1 matrix product.
    sfr = SparseFeatureReactivation(32, 64, groups=4, sparse_factor=4)
    sfr.set_progress(1.0)
    deployed = sfr.deploy().eval()
    with FlopCounterMode(display=False) as counter:
        deployed(torch.randn(1, 32, 8, 8))
    assert counter.get_total_flops() == 2 * (32 // 4) * (4 * 64 // 4) * 64


def test_sfr_deploy_on_meta_and_lasso():
    with torch.device("meta"):
        sfr = SparseFeatureReactivation(16, 32, groups=4, sparse_factor=4)
    deployed = sfr.deploy()
    assert deployed.index.shape == (32,) and _params(deployed) == 4 * 32 + 2 * 16
    assert deployed(torch.zeros(1, 16, 4, 4, device="meta")).shape == (1, 32, 4, 4)
    torch.manual_seed(10)
    sfr = SparseFeatureReactivation(4, 6, groups=2, sparse_factor=3)
    w = sfr.conv.weight[:, :, 0, 0]
    expected = sum(w[i, j::2].norm() for i in range(6) for j in range(2))
    torch.testing.assert_close(sfr.lasso_loss(), expected)
    sfr.set_progress(0.5)
    assert sfr.lasso_loss().item() == 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=6, out_channels=8, groups=4, sparse_factor=4), "in_channels=6 must be divisible by groups=4"),
    (dict(in_channels=8, out_channels=10, groups=4, sparse_factor=4),
     "out_channels=10 must be divisible by sparse_factor=4"),
    (dict(in_channels=8, out_channels=8, groups=4, sparse_factor=-1), "sparse_factor must be a positive integer"),
])
def test_sfr_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseFeatureReactivation(**kwargs)


@pytest.mark.parametrize("batch,groups", [(1, 4), (5, 2), (3, 8)])
def test_pointwise_group_conv_equals_grouped_convolution(batch, groups):
    """The matmul path computes the grouped 1x1 convolution, forward and backward; a channels-last
    input takes the convolution itself."""
    from space.layers import PointwiseGroupConv

    torch.manual_seed(0)
    layer = PointwiseGroupConv(16, 4 * groups, groups)
    x = torch.randn(batch, 16, 5, 7, requires_grad=True)
    reference = torch.nn.functional.conv2d(x, layer.weight, groups=groups)
    out = layer(x)
    assert out.shape == reference.shape and out.is_contiguous()
    assert torch.allclose(out, reference, atol=1e-5)
    grad = torch.randn_like(out)
    (gx_ref, gw_ref) = torch.autograd.grad(reference, (x, layer.weight), grad)
    (gx, gw) = torch.autograd.grad(out, (x, layer.weight), grad)
    assert torch.allclose(gx, gx_ref, atol=1e-5) and torch.allclose(gw, gw_ref, atol=1e-4)
    cl = x.detach().to(memory_format=torch.channels_last)
    assert torch.allclose(layer(cl), reference.detach(), atol=1e-5)
