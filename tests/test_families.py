"""Tests every registered family the same way (timm's test_models style).

- 2,000 random samples of the default search space build on the meta device and validate.
- A small sample trains one step on CPU: finite loss, every parameter receives a gradient.
- After real sparsification steps, the deploy form gives the training form's outputs.
- The cost model's params equal sum(numel) of the built deploy model and its MACs equal half of
  torch.utils.flop_counter's FLOPs (the counter is right for our deploy forms, which reorder
  channels with index layers rather than 0/1 matrix products).
- Every preset builds and its registration is consistent.
"""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from deploy_check import deploy_and_check
from space import convert
from space.cost import count_macs, count_params, measure
from space.knobs import apply_overrides, draw_random
from space.registry import get_family, get_preset, list_families, list_presets

FAMILIES = list_families()
N_SAMPLES = 2000
BUILD_EVERY = 5  # of the 2,000 valid samples per family, 400 are also built (on the meta device)


def _sample(name: str, seed: int, overrides: dict | None = None):
    family = get_family(name)
    space = apply_overrides(family.search_space(), overrides or {})
    return family.sample(draw_random(space, random.Random(seed)))


def _small_knobs(name: str, seed: int = 0):
    """The cheapest of a few samples, so CPU tests stay fast whatever the family's ranges."""
    candidates = [_sample(name, seed * 100 + i) for i in range(12)]
    return min(candidates, key=lambda k: measure(name, k, num_classes=7, image_size=16).train_macs)


def test_all_four_families_registered():
    assert set(FAMILIES) >= {"condensenet", "rsnet", "igcv2", "slimconv"}


@pytest.mark.parametrize("name", FAMILIES)
def test_search_space_names_are_stable_and_prefixed(name):
    space = get_family(name).search_space()
    assert space and all(k.startswith(f"{name}.") for k in space)
    assert space == get_family(name).search_space()


@pytest.mark.parametrize("name", FAMILIES)
def test_random_samples_build_and_validate(name):
    family = get_family(name)
    space = family.search_space()
    rng = random.Random(1234)
    for i in range(N_SAMPLES):
        drawn: dict = {}
        knobs = family.sample(draw_random(space, rng, record=drawn))
        assert set(drawn) <= set(space)
        # Validation runs in __post_init__: rebuilding from the dict must accept the same values.
        again = family.knobs_from_dict(dataclasses.asdict(knobs))
        assert again == knobs
        if i % BUILD_EVERY == 0:  # building is ~50x the cost of drawing and validating
            with torch.device("meta"):
                family.build(knobs, num_classes=10, image_size=32)


@pytest.mark.parametrize("name", FAMILIES)
def test_one_training_step_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = get_family(name).build(_small_knobs(name), num_classes=7, image_size=16)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 7, (4,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("name", FAMILIES)
def test_deploy_form_matches_after_sparsification(name):
    torch.manual_seed(1)
    model = get_family(name).build(_small_knobs(name, seed=1), num_classes=7, image_size=16)
    # Random weights and BN statistics, so masks picked by weight norms differ between groups.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    for progress in (0.0, 0.2, 0.4, 0.6, 1.0):
        convert.set_progress(model, progress)
    deploy_and_check(model, torch.randn(3, 3, 16, 16))


@pytest.mark.parametrize("name", FAMILIES)
def test_cost_model_matches_built_model_and_flop_counter(name):
    knobs = _small_knobs(name, seed=2)
    cost = measure(name, knobs, num_classes=7, image_size=16)
    model = get_family(name).build(knobs, num_classes=7, image_size=16).eval()
    # The training form (masked, before condensation) against an independent count.
    with FlopCounterMode(display=False) as train_counter, torch.no_grad():
        model(torch.zeros(1, 3, 16, 16))
    assert cost.train_macs == train_counter.get_total_flops() // 2
    convert.set_progress(model, 1.0)
    deployed = convert.to_deploy(model)
    assert cost.params == sum(p.numel() for p in deployed.parameters())
    assert cost.train_params == sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        deployed(torch.zeros(1, 3, 16, 16))
    assert cost.macs == counter.get_total_flops() // 2
    assert cost.macs == count_macs(deployed, 16)


@pytest.mark.parametrize("preset", list_presets())
def test_presets_build_on_meta_with_registered_family(preset):
    p = get_preset(preset)
    cost = measure(p.family, p.knobs, num_classes=p.num_classes, image_size=p.image_size)
    assert cost.params > 0 and cost.macs > 0
    assert cost.params <= cost.train_params


def test_count_params_and_macs_on_plain_layers():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, groups=1), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 4 * 4, 5))
    assert count_params(model) == 3 * 8 * 9 + 8 + 128 * 5 + 5
    assert count_macs(model, 4) == 8 * 16 * 27 + 128 * 5


def test_meta_build_falls_back_when_a_module_makes_a_real_tensor():
    """A module that creates a tensor without taking its device from ``space.layers`` (here a plain
    buffer) would leave a CPU tensor in the fast meta build: the cost model must notice and rebuild
    the network under ``torch.device("meta")``, with the same counts."""
    from space.cost import _build_on_meta

    family = get_family("igcv2")
    knobs = family.default_knobs()

    class WithStrayBuffer:
        def build(self, knobs, **kw):
            model = family.build(knobs, **kw)
            model.register_buffer("stray", torch.zeros(3))
            return model

    model = _build_on_meta(WithStrayBuffer(), knobs, 10, 32, 3)
    assert all(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    fast = _build_on_meta(family, knobs, 10, 32, 3)
    assert count_params(model) == count_params(fast)
