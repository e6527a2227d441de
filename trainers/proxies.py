"""Zero-cost proxies: scores of an untrained network from one minibatch, before any training.

Each proxy scores the **training form at initialisation** (the masked network, every mask still
full, freshly initialised with the given seed): that is the network the trainer will start from,
and what the proxies were defined on; the deploy form exists only once training has chosen the
condensation masks, so scoring it at initialisation would score an arbitrary mask choice.

- ``synflow`` (Tanaka et al., NeurIPS 2020; as a NAS proxy Abdelfattah et al., ICLR 2021): the
  parameters are replaced by their absolute values, an all-ones input of the batch's shape is passed
  in double precision with BN in eval mode, and the score is ``sum |theta * d(sum out)/d theta|``
  over convolution and linear weights. It never looks at the data values.
- ``naswot`` (Mellor et al., ICML 2021): the binary code of which units each image activates (every
  ReLU / ReLU6 / hard-swish output > 0, BN on batch statistics); the kernel ``K = C C^T + (1 - C)(1 - C)^T`` counts agreeing
  units per pair of images, and the score is ``log |det K|``.
- ``snip`` (Lee et al., ICLR 2019): ``sum |theta * dL/d theta|`` of the cross-entropy on the batch.
- ``grad_norm`` (Abdelfattah et al., 2021): ``sum_layers ||dL/d theta||_2`` of the same gradients.

Scores are deterministic for a seed (the network is built after ``torch.manual_seed(seed)``; the
batch is fixed by the caller) and are computed on one CPU thread by default.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["PROXIES", "proxy_batch", "score_network", "score_architecture", "finite_or_none"]

PROXIES = ("synflow", "naswot", "snip", "grad_norm")
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.LeakyReLU, nn.SiLU)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """Convolution and linear weights: what the proxies were defined over (no BN, no biases)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad]


def _synflow(model: nn.Module, x: torch.Tensor) -> float:
    """Changes ``model`` (absolute values, double precision): call it last, on a throw-away network."""
    model = model.double().eval()
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.abs_()
    model.zero_grad(set_to_none=True)
    model(torch.ones((1, *x.shape[1:]), dtype=torch.float64)).sum().backward()
    with torch.no_grad():
        return sum(float((w * w.grad).abs().sum()) for w in _weights(model) if w.grad is not None)


def _naswot(model: nn.Module, x: torch.Tensor) -> float:
    n = x.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def add(_module, _inputs, output):
        # K += C C^T + (1 - C)(1 - C)^T = 2 C C^T + units - s_i - s_j (s: active units per image):
        # one matmul per layer, exact in float32 (integer counts far below 2^24).
        c = (output.detach() > 0).flatten(1).to(torch.float32)
        s = c.sum(1)
        kernel.add_((2 * (c @ c.T) + c.shape[1] - s[:, None] - s[None, :]).to(torch.float64))

    hooks = [m.register_forward_hook(add) for m in model.modules() if isinstance(m, _ACTIVATIONS)]
    try:
        with torch.no_grad():  # BN in training mode: batch statistics, as for an untrained network
            model.train()(x)
    finally:
        for h in hooks:
            h.remove()
    if not hooks:
        raise ValueError("the network has no ReLU / hard-swish activation for NASWOT to read")
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else float("-inf")


def _gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.train().zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return [w for w in _weights(model) if w.grad is not None]


def _snip(weights: Iterable[torch.Tensor]) -> float:
    with torch.no_grad():
        return sum(float((w * w.grad).abs().sum()) for w in weights)


def _grad_norm(weights: Iterable[torch.Tensor]) -> float:
    with torch.no_grad():
        return sum(float(w.grad.norm()) for w in weights)


def proxy_batch(data, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded sample of ``size`` training images of ``data`` (a ``DataSplits``), normalised as for
    training (no augmentation), and their labels: the one batch every proposal is scored on."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_y), generator=g)[:size]
    mean = torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (data.train_x[idx].float() / 255 - mean) / std, data.train_y[idx].long()


def score_network(build: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor,
                  proxies: Iterable[str] = PROXIES, seed: int = 0) -> dict[str, float]:
    """Proxy scores of the network that ``build()`` returns, on the normalised batch ``x`` / ``y``.

    Args:
        build: makes the training form at initialisation; called after ``torch.manual_seed(seed)``.
        x: float images, N x C x H x W, normalised as for training; y: their labels.
        proxies: names out of :data:`PROXIES`.
        seed: the initialisation seed.

    Returns:
        ``{name: score}``; a score that overflows or is undefined is ``-inf`` / ``nan`` as computed.
    """
    names = list(proxies)
    unknown = sorted(set(names) - set(PROXIES))
    if unknown:
        raise ValueError(f"unknown proxies {unknown}; known: {list(PROXIES)}")
    torch.manual_seed(seed)
    model = build()
    scores: dict[str, float] = {}
    if "naswot" in names:
        scores["naswot"] = _naswot(model, x)
    if "snip" in names or "grad_norm" in names:
        weights = _gradients(model, x, y)
        if "snip" in names:
            scores["snip"] = _snip(weights)
        if "grad_norm" in names:
            scores["grad_norm"] = _grad_norm(weights)
    if "synflow" in names:  # on its own fresh copy: the passes above moved BN's running statistics
        torch.manual_seed(seed)
        scores["synflow"] = _synflow(build(), x)
    return {n: scores[n] for n in names}


def score_architecture(family: str, knobs, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                       proxies: Iterable[str] = PROXIES, seed: int = 0, threads: int | None = 1) -> dict[str, float]:
    """Proxy scores of one architecture of a registered family (``knobs``: its knob dataclass)."""
    from space.registry import get_family

    fam = get_family(family)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return score_network(lambda: fam.build(knobs, num_classes=num_classes, image_size=x.shape[-1],
                                               in_channels=x.shape[1]), x, y, proxies, seed)
    finally:
        torch.set_num_threads(before)


def finite_or_none(value: float) -> float | None:
    """JSON-safe: a non-finite score is stored as null."""
    return value if math.isfinite(value) else None
