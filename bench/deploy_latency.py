"""Batch-1 CPU latency: the deploy form against the masked training form, after full condensation.

The preset is built, its mask schedule is run to the end (``set_progress(model, 1.0)``), and the
masked training form is timed against ``to_deploy`` of it (same function, checked here), each as
the median of ``--runs`` forward passes at batch 1 in eval mode after a warm-up
(``trainers.latency.measure_latency``). The two forms alternate (A B A B ...) ``--repeats``
times and the medians of the medians are compared (goal: deploy / masked <= 0.5 for
condensenetv2-110). Exits 1 without timing anything when the two forms' outputs differ.

    python bench/deploy_latency.py
    python bench/deploy_latency.py --preset condensenet-86 --threads 1 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from space import build_model, get_preset, set_progress, to_deploy  # noqa: E402
from trainers.latency import measure_latency  # noqa: E402

MAX_ABS_DIFF = 1e-4  # the deploy form must compute the masked form's outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="condensenetv2-110")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed forward passes per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per form, alternating")
    parser.add_argument("--channels-last", action="store_true", help="both forms in channels-last memory")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset = get_preset(args.preset)
    masked = build_model(preset.family, preset.knobs, preset.num_classes, preset.image_size).eval()
    set_progress(masked, 1.0)
    deployed = to_deploy(masked)
    x = torch.randn(8, 3, preset.image_size, preset.image_size)
    with torch.no_grad():
        diff = float((masked(x) - deployed(x)).abs().max())
    if not diff < MAX_ABS_DIFF:  # timing a wrong network would report a meaningless ratio
        print(f"{args.preset}: the deploy form computes other outputs than the masked form "
              f"(max |masked - deploy| = {diff:.2e} >= {MAX_ABS_DIFF:.0e}); nothing timed", file=sys.stderr)
        return 1
    if args.channels_last:
        masked.to(memory_format=torch.channels_last)
        deployed.to(memory_format=torch.channels_last)
    print(f"{args.preset}: batch 1, {preset.image_size}x{preset.image_size}, {args.threads} threads, "
          f"{'channels-last' if args.channels_last else 'NCHW'}; max |masked - deploy| = {diff:.2e}")
    times: dict[str, list[float]] = {"masked": [], "deploy": []}
    for r in range(args.repeats):
        for name, model in (("masked", masked), ("deploy", deployed)):
            times[name].append(measure_latency(model, preset.image_size, repeats=args.runs))
        print(f"  run {r}: masked {times['masked'][-1]:.2f} ms, deploy {times['deploy'][-1]:.2f} ms", flush=True)
    a, b = statistics.median(times["masked"]), statistics.median(times["deploy"])
    print(f"median latency: masked {a:.2f} ms, deploy {b:.2f} ms; "
          f"best: masked {min(times['masked']):.2f} ms, deploy {min(times['deploy']):.2f} ms")
    print(f"ratio deploy / masked: {b / a:.2f}x of medians, "
          f"{min(times['deploy']) / min(times['masked']):.2f}x of best (goal <= 0.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
