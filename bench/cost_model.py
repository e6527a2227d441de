"""Cost-model timing: milliseconds to price one architecture (meta build + counting, both forms).

For every CIFAR preset and each family's default configuration, and for 50 random samples of each
family's default search space, prints the median time of ``space.cost.measure`` on one thread.

    python bench/cost_model.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from space.cost import measure  # noqa: E402
from space.knobs import draw_random  # noqa: E402
from space.registry import get_family, get_preset, list_families, list_presets  # noqa: E402


def time_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - t))
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'architecture':28s} {'median ms':>10s}")
    for name in list_presets():
        p = get_preset(name)
        if p.image_size > 64:
            continue  # ImageNet presets are not what a CIFAR sweep prices
        ms = time_ms(lambda: measure(p.family, p.knobs, p.num_classes, p.image_size), args.repeats)
        print(f"{name:28s} {ms:10.1f}")
    for fam in list_families():
        family = get_family(fam)
        ms = time_ms(lambda: measure(fam, family.default_knobs(), 10, 32), args.repeats)
        print(f"{fam + ' (default knobs)':28s} {ms:10.1f}")
        rng, space = random.Random(0), family.search_space()
        samples = [family.sample(draw_random(space, rng)) for _ in range(50)]
        per = [time_ms(lambda k=k: measure(fam, k, 10, 32), 1) for k in samples]
        print(f"{fam + ' (50 random samples)':28s} {statistics.median(per):10.1f}  (max {max(per):.1f})")


if __name__ == "__main__":
    main()
