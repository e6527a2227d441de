"""The deploy form as ONNX Runtime runs it (``space.onnx``): same outputs as the PyTorch deploy form
for every family and every lowering path, a graph without the operations the lowering removes, and
latency measured in ONNX Runtime as a study file asks."""
from __future__ import annotations

import collections
import random

import numpy as np
import onnx
import pytest
import torch

from space import get_family, get_preset, list_families, set_progress, to_deploy
from space.convert import has_schedule
from space.knobs import draw_random
from space.layers import CondensedReactivation, SparseFeatureReactivation
from space.onnx import (DENSE_3X3_MAX_GROUPS, CondensedPair, DenseReactivation, onnx_bytes, ort_session,
                        to_onnx_form)
from trainers.latency import LatencySetup, measure_deploy_latency

TOL = 1e-4  # relative to the largest logit


def _trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Masks stepped to the end and non-default values everywhere (BN statistics too)."""
    if has_schedule(model):
        set_progress(model, 1.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5, generator=g)
            elif t.is_floating_point() and not name.endswith("mask"):
                t.normal_(0.0, 0.2, generator=g)
    return model.eval()


def _small(family_name: str, seed: int):
    """A random architecture of the family's default space, kept small enough to run in a blink."""
    from space.cost import measure

    family, rng = get_family(family_name), random.Random(seed)
    space = family.search_space()
    for _ in range(500):  # priced on the meta device (milliseconds), built once
        knobs = family.sample(draw_random(space, rng))
        if measure(family_name, knobs, 10, 16).train_macs < 20e6:
            return family.build(knobs, num_classes=10, image_size=16)
    raise AssertionError(f"no small {family_name} in 500 draws")


def _assert_same(a: torch.Tensor | np.ndarray, b: torch.Tensor) -> None:
    a = torch.as_tensor(a)
    assert (a - b).abs().max().item() <= TOL * max(1.0, b.abs().max().item())


def _op_counts(blob: bytes) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load_from_string(blob).graph.node)


@pytest.mark.parametrize("family_name", list_families())
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_lowered_graph_computes_the_deploy_form_in_pytorch_and_onnx_runtime(family_name, seed):
    deployed = to_deploy(_trained_like(_small(family_name, seed), seed))
    lowered = to_onnx_form(deployed, 16)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = deployed(x)
        _assert_same(lowered(x), want)
    blob = onnx_bytes(lowered, 16)
    _assert_same(ort_session(blob).run(None, {"input": x.numpy()})[0], want)  # dynamic batch: 3 images
    ops = _op_counts(blob)
    assert not {"ScatterElements", "ScatterND", "Shape"} & set(ops), ops  # no scatter, no shape arithmetic


@pytest.mark.parametrize("groups_3x3", [1, 2, DENSE_3X3_MAX_GROUPS, 2 * DENSE_3X3_MAX_GROUPS])
def test_both_paths_of_the_condensed_pair(groups_3x3):
    """Up to DENSE_3X3_MAX_GROUPS the 3x3 group conv becomes a dense one holding the shuffle, above
    it stays grouped behind a constant gather; with dropout and hard-swish as the family allows."""
    family = get_family("condensenet")
    knobs = family.knobs_with(family.default_knobs(), {
        "layers": [2, 2, 2], "growth": [8, 16, 16], "groups_1x1": 4, "groups_3x3": groups_3x3,
        "condense_factor": 4, "hs_start": 1, "se_start": 2, "dropout": 0.1, "bottleneck": 4, "stem_channels": 16})
    deployed = to_deploy(_trained_like(family.build(knobs, num_classes=10, image_size=16), 3))
    lowered = to_onnx_form(deployed, 16)
    pairs = [m for m in lowered.modules() if isinstance(m, CondensedPair)]
    assert len(pairs) == 6
    assert all((p.conv2.groups == 1) == (groups_3x3 <= DENSE_3X3_MAX_GROUPS) for p in pairs)
    assert all((p.reorder is None) == (groups_3x3 <= DENSE_3X3_MAX_GROUPS) for p in pairs)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        _assert_same(lowered(x), deployed(x))
    _assert_same(ort_session(onnx_bytes(lowered, 16)).run(None, {"input": x.numpy()})[0], deployed(x).detach())


def test_dense_reactivation_adds_what_the_index_add_adds():
    """Outputs updated by several groups sum up in the one 1x1 weight, as index_add sums them."""
    torch.manual_seed(0)
    sfr = SparseFeatureReactivation(16, 32, groups=4, sparse_factor=2)
    _trained_like(sfr, 0)
    sfr.set_progress(1.0)  # the layer itself: set_progress(model) steps the layers inside a model
    condensed = sfr.deploy().eval()
    assert isinstance(condensed, CondensedReactivation)
    assert len(set(condensed.index.tolist())) < condensed.index.numel()  # repeated outputs: the hard case
    dense = DenseReactivation(condensed)
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), condensed(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dense(x), sfr.eval()(x), rtol=1e-5, atol=1e-5)


def test_the_lowering_keeps_the_deploy_form_untouched_and_the_counts_of_the_deploy_form():
    from space.cost import count_params

    preset = get_preset("condensenetv2-110")
    model = get_family(preset.family).build(preset.knobs, num_classes=10, image_size=32)
    set_progress(model, 1.0)
    deployed = to_deploy(model)
    before = {k: v.clone() for k, v in deployed.state_dict().items()}
    params = count_params(deployed)
    to_onnx_form(deployed, 32)
    assert all(torch.equal(before[k], v) for k, v in deployed.state_dict().items())
    assert count_params(deployed) == params


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_latency_is_measured_as_the_setup_says(runtime):
    deployed = to_deploy(_trained_like(_small("condensenet", 0), 0))
    setup = LatencySetup(runtime=runtime, threads=1, batch=4, repeats=3, warmup=1)
    assert measure_deploy_latency(deployed, 16, 3, setup) > 0
    record = setup.as_record()
    assert record["runtime"] == runtime and record["batch"] == 4 and record["threads"] == 1
    assert record["device"] == "cpu" and record["statistic"] == "median" and record["version"]
    with pytest.raises(ValueError, match="runtime must be one of"):
        LatencySetup(runtime="tensorrt")
    with pytest.raises(ValueError, match="measures on the CPU"):
        LatencySetup(runtime="onnxruntime", device="cuda")
