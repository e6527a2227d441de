"""One deploy-equality check for every family's tests: the reference output is computed before the
conversion, and the caller's model must come out of ``to_deploy`` untouched (a conversion in place
would otherwise compare the deploy form with itself)."""
from __future__ import annotations

import torch
from torch import nn

from space.convert import to_deploy


def deploy_and_check(model: nn.Module, x: torch.Tensor, tol: float = 1e-5) -> nn.Module:
    """``to_deploy(model)``, checked to compute what ``model`` computed on ``x`` (within ``tol``)
    and to leave ``model`` as it was: same modules, same tensors, same outputs."""
    model.eval()
    with torch.no_grad():
        reference = model(x)
    layout = [(name, type(m)) for name, m in model.named_modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = to_deploy(model)
    assert deployed is not model, "to_deploy returned the caller's model"
    assert [(name, type(m)) for name, m in model.named_modules()] == layout, "to_deploy changed the caller's modules"
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items()), \
        "to_deploy changed the caller's weights or buffers"
    with torch.no_grad():
        diff = (deployed(x) - reference).abs().max().item()
        assert diff < tol, f"deploy form differs from the training form by {diff:.2e}"
        assert torch.equal(model(x), reference), "the caller's model computes something else after to_deploy"
    return deployed
