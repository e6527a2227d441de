"""Zero-cost proxies (trainers/proxies.py) on tiny networks of every family: finite, deterministic
for a seed, and invariant to what they should ignore."""
from __future__ import annotations

import math
import random

import pytest
import torch

from space.cost import measure
from space.knobs import draw_random
from space.registry import get_family, list_families
from trainers.data import DataConfig, load_data
from trainers.proxies import PROXIES, proxy_batch, score_architecture, score_network

FAMILIES = list_families()


def _tiny(name: str):
    """The cheapest of a few random members of the family (milliseconds to score)."""
    family = get_family(name)
    samples = [family.sample(draw_random(family.search_space(), random.Random(i))) for i in range(10)]
    return min(samples, key=lambda k: measure(name, k, num_classes=10, image_size=8).train_macs)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_proxy_is_finite_and_deterministic_for_a_seed(name, batch):
    knobs = _tiny(name)
    first = score_architecture(name, knobs, *batch, num_classes=10, seed=3)
    again = score_architecture(name, knobs, *batch, num_classes=10, seed=3)
    assert list(first) == list(PROXIES)
    assert first == again
    assert all(math.isfinite(v) for v in first.values()), first
    assert first["synflow"] > 0 and first["snip"] > 0 and first["grad_norm"] > 0
    other_seed = score_architecture(name, knobs, *batch, num_classes=10, seed=4)
    assert other_seed["snip"] != first["snip"], "the seed sets the initialisation"


@pytest.mark.parametrize("name", FAMILIES)
def test_synflow_ignores_the_data_and_naswot_the_labels(name, batch):
    x, y = batch
    knobs = _tiny(name)
    base = score_architecture(name, knobs, x, y, num_classes=10)
    other_data = score_architecture(name, knobs, 5 * x + 1, (y + 3) % 10, num_classes=10)
    assert other_data["synflow"] == base["synflow"]
    relabelled = score_architecture(name, knobs, x, (y + 3) % 10, num_classes=10)
    assert relabelled["naswot"] == base["naswot"]
    assert relabelled["snip"] != base["snip"], "snip is a gradient of the loss on these labels"


def test_naswot_rewards_distinct_activation_patterns():
    """Two images that activate the same units make the kernel singular; distinct ones do not."""
    torch.manual_seed(0)

    def net():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(16 * 16, 10))

    x = torch.randn(4, 3, 4, 4)
    distinct = score_network(net, x, torch.zeros(4, dtype=torch.long), ["naswot"])["naswot"]
    same = score_network(net, x[:1].repeat(4, 1, 1, 1), torch.zeros(4, dtype=torch.long), ["naswot"])["naswot"]
    assert math.isfinite(distinct) and same == float("-inf")


def test_scoring_leaves_the_thread_count_alone(batch):
    before = torch.get_num_threads()
    score_architecture("rsnet", _tiny("rsnet"), *batch, num_classes=10, threads=1)
    assert torch.get_num_threads() == before


def test_unknown_proxy_is_refused(batch):
    with pytest.raises(ValueError, match=r"unknown proxies \['zen'\]; known: \['synflow'"):
        score_network(lambda: torch.nn.Linear(3, 2), *batch, proxies=["zen"])


def test_the_batch_is_a_seeded_normalised_sample_of_the_training_split():
    data = load_data(DataConfig(dataset="digits", val_size=200, image_size=8))
    x, y = proxy_batch(data, 16, seed=1)
    again, _ = proxy_batch(data, 16, seed=1)
    other, _ = proxy_batch(data, 16, seed=2)
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,) and y.dtype == torch.long
    assert torch.equal(x, again) and not torch.equal(x, other)
    full = (data.train_x.float() / 255 - data.mean[0]) / data.std[0]
    assert abs(float(full.mean())) < 1e-4 and abs(x.mean().item()) < 0.5
