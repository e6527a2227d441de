"""Training throughput: the effnas trainer against a loop written the way the official code trains.

Both sides train the same network (a registered preset, same initial weights) on the same real
CIFAR-10 images for the same short schedule, which covers both halves of the sparsification
schedule (the learned group convolutions condense during the first half):

- reference: the official CondenseNet recipe: masked layers all through training,
  ``set_progress`` and the cosine learning rate every iteration, and torchvision transforms
  (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) on PIL images in a
  DataLoader;
- effnas: ``trainers.train.train`` with its defaults (batch augmentation as tensor ops, timed
  choice of memory format and of training the condensed form); its time includes everything the
  call does: model build, autotuning, per-epoch validation on 32 images, the final deploy
  conversion with its equality check and the final evaluation. Both sides are timed from the
  model build on.

Each run prints its whole-run images/s and that of each epoch's training loop alone (for
effnas the epoch figures include the autotune steps but not validation). The sides alternate
(A B A B ...) in one process, so drift of a shared machine hits both alike;
the script prints every run, the medians and their ratio (goal: >= 1.5x for condensenetv2-110 on
2 CPU threads).

    python bench/train_throughput.py                       # a few minutes
    python bench/train_throughput.py --iters 100 --repeats 3
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from space import build_model, get_preset, set_progress  # noqa: E402
from trainers.data import DataConfig, DataSplits, load_data  # noqa: E402
from trainers.train import TrainConfig, cosine_lr, train  # noqa: E402

EPOCHS = 2  # the short schedule: two epochs of iters / 2 batches each


class _ArrayImages(torch.utils.data.Dataset):
    """uint8 NCHW arrays served as PIL images, as torchvision's CIFAR10 class serves them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
        self.x = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
        self.y = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.fromarray(self.x[i] if self.x.shape[-1] == 3 else self.x[i, :, :, 0])
        return self.transform(image), self.y[i]


def reference_run(preset, data: DataSplits, batch: int, seed: int, workers: int) -> tuple[float, list[float]]:
    """Seconds for the official-style run (build, loader, EPOCHS epochs over ``data.train_x``),
    and images/s of each epoch's training loop."""
    import torchvision.transforms as T

    start = time.perf_counter()  # from model build on, as the effnas side is timed
    torch.manual_seed(seed)
    model = build_model(preset.family, preset.knobs, data.num_classes, data.image_size, data.in_channels)
    transform = T.Compose([T.RandomCrop(data.image_size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.mean, data.std)])
    loader = torch.utils.data.DataLoader(_ArrayImages(data.train_x, data.train_y, transform), batch_size=batch,
                                         shuffle=True, num_workers=workers, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    total = EPOCHS * len(loader)
    model.train()
    per_epoch = []
    for epoch in range(EPOCHS):
        epoch_start = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            iteration = epoch * len(loader) + i
            set_progress(model, iteration / total)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(iteration, total, 0.1)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        per_epoch.append(len(loader) * batch / (time.perf_counter() - epoch_start))
    return time.perf_counter() - start, per_epoch


def effnas_run(preset, data: DataSplits, batch: int, seed: int, threads: int) -> tuple[float, object]:
    """Seconds for one ``train`` call over the same schedule, and its result."""
    cfg = TrainConfig(epochs=EPOCHS, batch_size=batch, threads=threads, seed=seed, device="cpu")
    start = time.perf_counter()
    result = train(preset.family, preset.knobs, data, cfg)
    return time.perf_counter() - start, result


def _describe(result) -> str:
    form = f"condensed at progress {result.condensed_at:.2f}" if result.condensed_at is not None else "masked throughout"
    probes = ", ".join(f"{k}: " + " ".join(f"{o}={t * 1000:.0f}ms" for o, t in v.items())
                       for k, v in result.tuning.items())
    return f"{result.memory_format}, {form} [{probes}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="condensenetv2-110")
    parser.add_argument("--iters", type=int, default=24, help="training iterations per run (both halves)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="reference DataLoader workers")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10"),
                        help="folder with train.npz / test.npz (real CIFAR-10)")
    args = parser.parse_args(argv)
    if args.iters < 2 * EPOCHS or args.iters % EPOCHS:
        parser.error(f"--iters must be a multiple of {EPOCHS}, at least {2 * EPOCHS}")

    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    images = args.iters // EPOCHS * args.batch
    data = load_data(DataConfig("npz", root=args.data, train_size=images, val_size=32, test_size=0,
                                image_size=preset.image_size))
    print(f"{args.preset}: {args.iters} iterations of {args.batch} images ({EPOCHS} epochs of {images}), "
          f"{args.threads} threads, {args.repeats} runs per side alternating")
    ref, ours = [], []
    for r in range(args.repeats):
        seconds, per_epoch = reference_run(preset, data, args.batch, r, args.workers)
        ref.append(args.iters * args.batch / seconds)
        epochs = " / ".join(f"{v:.1f}" for v in per_epoch)
        print(f"  reference run {r}: {ref[-1]:6.1f} images/s ({seconds:.1f} s; epochs {epochs})", flush=True)
        seconds, result = effnas_run(preset, data, args.batch, r, args.threads)
        ours.append(args.iters * args.batch / seconds)
        epochs = " / ".join(f"{h['images_per_s']:.1f}" for h in result.history)
        print(f"  effnas    run {r}: {ours[-1]:6.1f} images/s ({seconds:.1f} s; epochs {epochs}; "
              f"{_describe(result)})", flush=True)
    ratio = statistics.median(ours) / statistics.median(ref)
    print(f"median images/s: reference {statistics.median(ref):.1f}, effnas {statistics.median(ours):.1f}")
    print(f"best run images/s: reference {max(ref):.1f}, effnas {max(ours):.1f} "
          f"(other processes only ever slow a run down: the best runs are the least disturbed)")
    print(f"ratio effnas / reference: {ratio:.2f}x of medians, {max(ours) / max(ref):.2f}x of best runs "
          f"(goal >= 1.5x)")
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
