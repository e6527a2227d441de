"""Each family's own paper recipe for CIFAR, scaled to the study's epochs (``train: {recipe: paper}``).

The default recipe (``TrainConfig``'s defaults) is CondenseNet's for every family. A study that
compares a found network with a paper's design can instead train every family as its paper did:
optimiser, momentum, weight decay, batch size and learning-rate schedule. Step schedules are given
as fractions of training, so a 10-epoch study decays at the same points of its run as the paper's
400-epoch one. The augmentation is the same in all four papers' CIFAR setups (4-pixel pad, random
32x32 crop, horizontal flip, per-channel normalisation): ``train.augment`` as it is.

Sources (the papers in /work/shared/papers):

- ``condensenet``: CondenseNetV2, Sec. 4.3 "Implementation details" (CIFAR): SGD, cosine from 0.1,
  batch 64, 300 epochs, "other settings the same as on ImageNet" (weight decay 1e-4, momentum 0.9),
  nesterov in the official code. The default recipe.
- ``rsnet``: RSNet, Sec. 2.6.2 "Training details": SGD, momentum 0.9, "Nesterov Momentum = False",
  weight decay 1e-4, cosine from 0.1 to 0, batch 64 for CIFAR, 200 epochs (300 for Table 2).
- ``igcv2``: IGCV2, Sec. 4 "Training settings": SGD with Nesterov momentum 0.9, weight decay 1e-4,
  batch 64, learning rate 0.1 multiplied by 0.1 at 200, 300 and 350 of 400 epochs.
- ``slimconv``: SlimConv, Appendix A ("we keep the same training and testing strategy unchanged")
  names no CIFAR recipe of its own; its base networks' is ResNet's CIFAR recipe (He et al. 2016,
  Sec. 4.2): SGD, momentum 0.9 (no nesterov), weight decay 1e-4, batch 128, 0.1 divided by 10 at
  32k and 48k of 64k iterations. A reading: the paper does not say which base recipe its Table 9
  and 10 runs used.
"""
from __future__ import annotations

from typing import Any

__all__ = ["RECIPES", "PAPER_RECIPES", "paper_recipe"]

RECIPES = ("default", "paper")

# TrainConfig fields each paper sets; everything else comes from the study's `train:` section.
PAPER_RECIPES: dict[str, dict[str, Any]] = {
    "condensenet": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": True, "batch_size": 64,
                    "schedule": "cosine", "milestones": ()},
    "rsnet": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False, "batch_size": 64,
              "schedule": "cosine", "milestones": ()},
    "igcv2": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": True, "batch_size": 64,
              "schedule": "step", "milestones": (0.5, 0.75, 0.875)},
    "slimconv": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False, "batch_size": 128,
                 "schedule": "step", "milestones": (0.5, 0.75)},
}


def paper_recipe(family: str) -> dict[str, Any]:
    """The ``TrainConfig`` fields of ``family``'s paper recipe.

    Raises:
        ValueError: no recipe is known for ``family``.
    """
    try:
        return dict(PAPER_RECIPES[family])
    except KeyError:
        raise ValueError(f"no paper recipe for family {family!r}; known: {sorted(PAPER_RECIPES)}") from None
