"""Batch augmentation as tensor ops: the CIFAR recipe of the papers, on whole uint8 batches.

The papers (and the official CondenseNet code) train with a 4-pixel zero pad + random 32x32 crop,
a random horizontal flip and per-channel normalisation, applied image by image with PIL in a
DataLoader. Here one gather does crop and flip for the whole batch on the training device, and
the normalisation is fused into the uint8 -> float conversion.

Random numbers come from one seeded CPU ``torch.Generator`` whatever the device, so a run is
reproducible across devices and its state fits in a checkpoint (``get_state`` / ``set_state``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["Augmenter", "default_pad", "normalize", "crop_flip"]


def default_pad(image_size: int) -> int:
    """The papers' 4 pixels at 32x32, scaled with the image (1 pixel at 8x8, 4 at 28x28)."""
    return max(1, round(image_size / 8))


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 NCHW -> float32 ``(x / 255 - mean) / std`` (mean, std: float tensors of shape (C,))."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=memory_format)
    return torch.mul(x, scale, out=out).sub_(shift)


def crop_flip(x: torch.Tensor, pad: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad``, crop back to the input size at a random offset, flip half the images.

    One gather per batch. Same order as torchvision's ``RandomCrop(padding)`` followed by
    ``RandomHorizontalFlip``: the flip mirrors the crop.
    """
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    cols = torch.arange(w).expand(n, w)
    if hflip:
        flip = torch.rand(n, 1, generator=generator) < 0.5
        cols = torch.where(flip, (w - 1) - cols, cols)
    rows = (dy + torch.arange(h)).to(x.device)
    cols = (dx + cols).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # Advanced indices around a slice put the indexed dims first: (n, h, w, c) -> NCHW view.
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class Augmenter:
    """Training and evaluation transforms of one dataset, on one device.

    Args:
        mean, std: per-channel statistics in [0, 1] units (``DataSplits.mean`` / ``.std``).
        device: where batches live and are transformed.
        seed: seeds the augmentation generator.
        pad: crop padding; ``None``: :func:`default_pad` of the image size at the first batch.
        hflip: random horizontal flips (off for digits).
        channels_last: produce channels-last float batches (CUDA convolutions prefer them).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str,
                 seed: int = 0, pad: int | None = None, hflip: bool = True,
                 channels_last: bool = False) -> None:
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.pad, self.hflip = pad, hflip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator().manual_seed(seed)

    def permutation(self, n: int) -> torch.Tensor:
        """Shuffled order of ``n`` training images for one epoch (drawn from the same generator)."""
        return torch.randperm(n, generator=self.generator)

    def train(self, x: torch.Tensor) -> torch.Tensor:
        pad = default_pad(x.shape[-1]) if self.pad is None else self.pad
        x = crop_flip(x.to(self.device, non_blocking=True), pad, self.hflip, self.generator)
        return normalize(x, self.mean, self.std, self.memory_format)

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x.to(self.device, non_blocking=True), self.mean, self.std, self.memory_format)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
