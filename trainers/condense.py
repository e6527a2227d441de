"""Switching a network from its masked training form to the condensed (deploy) form.

Once every mask is final, the masked training form and the condensed form compute the same
function, and the condensed one has a fraction of the multiply-adds (CondenseNet's learned group
convolutions keep 1/C of their inputs). Whether that makes it faster to train depends on the
machine (see :mod:`trainers.tune`); where it does, the trainer continues on the condensed form.

To continue SGD exactly, each condensed parameter's momentum must be the momentum of the training
weights it was copied from. Which element came from where is read off the conversion itself, so
nothing here knows any family: a copy of the model whose parameters hold their own element ids
(1, 2, 3, ...) is converted, and every id that comes out names its source element (0: no source,
e.g. a masked weight). The map is accepted for a parameter only if it also reproduces that
parameter's real converted values exactly; a conversion that mixes values (BN folding, sums) gets
its momentum reset to zero for that parameter instead, which is what a fresh optimizer would do.

The same map shows where the conversion duplicated an element: a condensed learned group
convolution applies its BN to the selected inputs, so an input kept by two groups gets two copies
of its BN scale and shift. In the masked network they are one parameter; trained separately they
would drift apart. :func:`tie_gradients` keeps such copies tied (each gets the sum of their
gradients, as the single masked parameter would), so training the condensed form follows the masked
one exactly. That holds with dropout too: the conversion draws no random numbers, and the condensed
layer draws the masked layer's dropout mask over its full input and gathers it, so an input kept by
two groups is dropped in both or neither (``space.layers``).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from space.convert import set_progress, to_deploy

__all__ = ["DeployMismatchError", "masks_final", "deploy_max_abs_diff", "check_deploy",
           "element_sources", "carry_momentum", "find_ties", "tie_gradients"]


class DeployMismatchError(RuntimeError):
    """The deploy form does not compute what the training form computes."""


def masks_final(model: nn.Module) -> bool:
    """True if no later ``set_progress`` can change a mask (probed on a copy at progress 1)."""
    return not set_progress(copy.deepcopy(model), 1.0)


@torch.no_grad()
def deploy_max_abs_diff(model: nn.Module, deployed: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Max abs difference of the two models' eval-mode outputs on ``x``, and the output scale."""
    was_training = model.training
    model.eval()
    deployed.eval()
    try:
        ref = model(x).float()
        out = deployed(x).float()
    finally:
        model.train(was_training)
    return float((out - ref).abs().max()), float(ref.abs().max())


def check_deploy(model: nn.Module, deployed: nn.Module, x: torch.Tensor, rel_tol: float = 1e-3) -> float:
    """Max abs output difference; raises if it exceeds ``rel_tol`` times max(output scale, 1).

    Raises:
        DeployMismatchError: naming the difference and the tolerance.
    """
    diff, scale = deploy_max_abs_diff(model, deployed, x)
    tol = rel_tol * max(scale, 1.0)
    if not diff <= tol:  # also catches NaN
        raise DeployMismatchError(
            f"deploy form differs from the training form: max abs output difference {diff:.3g} on a "
            f"validation batch, above {rel_tol:g} x max(|logit| = {scale:.3g}, 1) = {tol:.3g}")
    return diff


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors]) if tensors else torch.zeros(0)


@torch.no_grad()
def element_sources(model: nn.Module, deployed: nn.Module) -> list[torch.Tensor | None]:
    """For each parameter of ``deployed`` (= ``to_deploy(model)``): the flat index, into the
    concatenated parameters of ``model``, of the element each value was copied from (-1: none),
    or None where the conversion is not a pure copy of elements."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    dtype = torch.float32 if total < 2**24 else torch.float64  # ids must be exact
    probe = copy.deepcopy(model).to(dtype)
    start = 1
    for p in probe.parameters():
        p.copy_(torch.arange(start, start + p.numel(), dtype=dtype, device=p.device).view_as(p))
        start += p.numel()
    targets = list(deployed.parameters())
    try:
        ids = list(to_deploy(probe).parameters())
    except Exception:  # a conversion that cannot run on id-valued weights: no map at all
        return [None] * len(targets)
    if len(ids) != len(targets):
        return [None] * len(targets)
    source = _flat(params).cpu()
    return [_checked_map(q_ids, q, source, total) for q_ids, q in zip(ids, targets)]


def _checked_map(q_ids: torch.Tensor, q: torch.Tensor, source: torch.Tensor, total: int) -> torch.Tensor | None:
    if q_ids.shape != q.shape:
        return None
    ids = q_ids.detach().reshape(-1).to(torch.float64).cpu()
    if not (torch.equal(ids, ids.round()) and bool(((ids >= 0) & (ids <= total)).all())):
        return None
    index = ids.long() - 1
    copied = torch.where(index >= 0, source[index.clamp_min(0)], torch.zeros(()))
    if not torch.equal(copied, q.detach().reshape(-1).float().cpu()):
        return None
    return index.to(q.device)


@torch.no_grad()
def carry_momentum(optimizer: torch.optim.Optimizer, model: nn.Module, new_optimizer: torch.optim.Optimizer,
                   deployed: nn.Module, sources: list[torch.Tensor | None]) -> int:
    """Give ``deployed``'s parameters in ``new_optimizer`` the momentum of their source elements.

    Returns the number of parameters whose momentum was carried (the others start from zero).
    """
    buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in model.parameters()]
    if all(b is None for b in buffers):
        return 0
    flat = torch.cat([(torch.zeros_like(p) if b is None else b).reshape(-1)
                      for p, b in zip(model.parameters(), buffers)])
    carried = 0
    for q, index in zip(deployed.parameters(), sources):
        if index is None:
            continue
        values = torch.where(index >= 0, flat[index.clamp_min(0)], torch.zeros((), device=flat.device))
        new_optimizer.state[q]["momentum_buffer"] = values.view_as(q).to(q.dtype).clone()
        carried += 1
    return carried


def find_ties(deployed: nn.Module, sources: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """Parameters of ``deployed`` holding several copies of one training element: name -> for each
    element, the index of its group of copies (``torch.unique``'s inverse)."""
    ties = {}
    for (name, _), index in zip(deployed.named_parameters(), sources):
        if index is None:
            continue
        unique, inverse = torch.unique(index, return_inverse=True)
        if len(unique) < index.numel() and not bool((unique < 0).any()):
            ties[name] = inverse
    return ties


def tie_gradients(model: nn.Module, ties: dict[str, torch.Tensor]) -> None:
    """Make every copy in a tie group receive the group's summed gradient (a hook per parameter)."""
    params = dict(model.named_parameters())
    for name, inverse in ties.items():
        param = params[name]
        groups = int(inverse.max()) + 1
        inverse = inverse.to(param.device)

        def hook(grad: torch.Tensor, inverse: torch.Tensor = inverse, groups: int = groups) -> torch.Tensor:
            flat = grad.reshape(-1)
            summed = flat.new_zeros(groups).index_add_(0, inverse, flat)
            return summed[inverse].view_as(grad)

        param.register_hook(hook)
