"""Deploy latency where networks run: eager PyTorch and ONNX Runtime, masked and deploy forms.

Part 1, presets (``--presets``; default the five below): each is built, its mask schedule run to the
end (``set_progress(model, 1.0)``), converted (``to_deploy``), and checked to compute the masked
form's outputs. Five forms are timed at batch 1 and at batch 32, alternating form by form within
every round (``--rounds``), each measurement the median of ``--runs`` calls after a warm-up:

- masked PyTorch, deploy PyTorch (eager, ``torch.inference_mode``);
- masked ORT: the masked form exported to ONNX and run in ONNX Runtime;
- deploy ORT: ``space.onnx.to_onnx_form`` of the deploy form (what ``export --models`` writes and
  the ``onnxruntime`` latency runtime measures);
- deploy ORT as is: the deploy form exported without the lowering (for reference).

Reported: the median over rounds and its spread (min-max of the round medians). Goals, for
condensenetv2-110 and condensenet-86 at batch 1: deploy ORT <= 0.5 x masked ORT and <= 0.25 x
masked PyTorch.

Part 2, rank agreement (``--archs`` random architectures of the four families' default spaces,
CIFAR-sized, at most ``--max-macs``): deploy PyTorch and deploy ORT latency at batch 1, and the
Spearman correlations between them and with MACs.

    python bench/deploy_latency.py                        # both parts, about 10 minutes on 2 cores
    python bench/deploy_latency.py --presets condensenet-86 --archs 0 --rounds 3
    python bench/deploy_latency.py --presets --archs 0 --profile   # where ONNX Runtime spends the time
    python bench/deploy_latency.py --presets --archs 0 --dense-3x3 # the lowering's 3x3 choice
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scipy.stats import spearmanr  # noqa: E402

from space import build_model, get_family, get_preset, list_families, set_progress, to_deploy  # noqa: E402
from space.convert import has_schedule  # noqa: E402
from space.cost import measure_module  # noqa: E402
from space.knobs import draw_random  # noqa: E402
from space.onnx import onnx_bytes, ort_session, to_onnx_form  # noqa: E402
from trainers.latency import time_calls  # noqa: E402

PRESETS = ("condensenetv2-110", "condensenet-86", "rsnet-115", "igcv2-c64-d20", "sc-resnet50-cifar")
GOAL_PRESETS = ("condensenetv2-110", "condensenet-86")
ORT_FORMS = ("masked ORT", "deploy ORT", "deploy ORT as is")
FORMS = ("masked PyTorch", "deploy PyTorch", *ORT_FORMS)
MAX_ABS_DIFF = 1e-4  # relative to the largest logit


def _randomise_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, so the output checks compare more than a fresh network's zeros."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)


def _forms(family: str, knobs, num_classes: int, size: int, threads: int, seed: int = 0,
           ort_forms: tuple = ORT_FORMS) -> tuple[dict, float]:
    """Both PyTorch forms and the ``ort_forms`` sessions, and the largest output difference between them."""
    torch.manual_seed(seed)
    masked = build_model(family, knobs, num_classes, size).eval()
    if has_schedule(masked):
        set_progress(masked, 1.0)
    _randomise_bn(masked, seed)
    deployed = to_deploy(masked)
    graphs = {"masked ORT": lambda: masked, "deploy ORT": lambda: to_onnx_form(deployed, size),
              "deploy ORT as is": lambda: deployed}
    sessions = {name: ort_session(onnx_bytes(graphs[name](), size), threads) for name in ort_forms}
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        want = masked(x)
        diffs = [(deployed(x) - want).abs().max().item()]
    diffs += [float(np.abs(s.run(None, {"input": x.numpy()})[0] - want.numpy()).max()) for s in sessions.values()]
    # Relative to the largest logit: float32 sums in another order, not another function.
    return {"masked PyTorch": masked, "deploy PyTorch": deployed, **sessions}, max(diffs) / max(1.0, want.abs().max().item())


def _caller(form, batch: int, size: int):
    x = torch.randn(batch, 3, size, size)
    if isinstance(form, torch.nn.Module):
        return lambda: form(x)
    feed = {"input": x.numpy()}
    return lambda: form.run(None, feed)


def _time_forms(forms: dict, size: int, batch: int, rounds: int, runs: int) -> dict[str, list[float]]:
    callers = {name: _caller(f, batch, size) for name, f in forms.items()}
    times: dict[str, list[float]] = {name: [] for name in forms}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, call in callers.items():
                # Idle OpenMP / ORT worker threads spin for a while after a call; a pause lets the
                # previous form's threads sleep before this form is timed on the same cores.
                time.sleep(0.2)
                times[name].append(time_calls(call, runs, warmup=3))
    return times


def presets_part(args) -> dict:
    results = {}
    for name in args.presets:
        p = get_preset(name)
        forms, diff = _forms(p.family, p.knobs, p.num_classes, p.image_size, args.threads)
        if not diff < MAX_ABS_DIFF:  # timing a wrong network would report a meaningless ratio
            print(f"{name}: a form computes other outputs than the masked form (max |difference| / max "
                  f"|logit| = {diff:.2e} >= {MAX_ABS_DIFF:.0e}); nothing timed", file=sys.stderr)
            return None
        results[name] = {"max_abs_diff": diff}
        for batch, runs in ((1, args.runs), (32, max(3, args.runs // 6))):
            times = _time_forms(forms, p.image_size, batch, args.rounds, runs)
            row = {f: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t)} for f, t in times.items()}
            results[name][f"batch{batch}"] = row
            cells = "  ".join(f"{f} {r['median_ms']:7.2f} ({r['min_ms']:.2f}-{r['max_ms']:.2f})" for f, r in row.items())
            print(f"{name:20s} batch {batch:2d}: {cells}", flush=True)
    return results


def _table(results: dict) -> None:
    print("\nmedian ms over rounds (round-median spread in brackets); ratios of medians")
    print(f"| preset | batch | {' | '.join(FORMS)} | deploy ORT / masked ORT | deploy ORT / masked PyTorch |")
    print("|---|---|" + "---|" * (len(FORMS) + 2))
    for name, res in results.items():
        for batch in (1, 32):
            row = res[f"batch{batch}"]
            cells = " | ".join(f"{row[f]['median_ms']:.2f} ({row[f]['min_ms']:.2f}-{row[f]['max_ms']:.2f})" for f in FORMS)
            r1 = row["deploy ORT"]["median_ms"] / row["masked ORT"]["median_ms"]
            r2 = row["deploy ORT"]["median_ms"] / row["masked PyTorch"]["median_ms"]
            print(f"| {name} | {batch} | {cells} | {r1:.2f} | {r2:.2f} |")


def _goals(results: dict) -> list[str]:
    lines = []
    for name in GOAL_PRESETS:
        if name not in results:
            continue
        row = results[name]["batch1"]
        r1 = row["deploy ORT"]["median_ms"] / row["masked ORT"]["median_ms"]
        r2 = row["deploy ORT"]["median_ms"] / row["masked PyTorch"]["median_ms"]
        lines.append(f"{name}: deploy ORT / masked ORT = {r1:.2f} (goal <= 0.5: {'met' if r1 <= 0.5 else 'MISSED'}); "
                     f"deploy ORT / masked PyTorch = {r2:.2f} (goal <= 0.25: {'met' if r2 <= 0.25 else 'MISSED'})")
    return lines


def _random_archs(n: int, max_macs: float, seed: int) -> list[tuple[str, object, int]]:
    """``n`` random CIFAR-sized architectures, families in turn, each at most ``max_macs``."""
    rng, archs = random.Random(seed), []
    families = list_families()
    while len(archs) < n:
        family = get_family(families[len(archs) % len(families)])
        knobs = family.sample(draw_random(family.search_space(), rng))
        macs = measure_module(family.build(knobs, num_classes=10, image_size=32), 32).macs
        if macs <= max_macs:
            archs.append((family.name, knobs, macs))
    return archs


def ranks_part(args) -> dict:
    rows = []
    for i, (family, knobs, macs) in enumerate(_random_archs(args.archs, args.max_macs, args.seed)):
        forms, diff = _forms(family, knobs, 10, 32, args.threads, seed=i, ort_forms=("deploy ORT",))
        forms = {k: forms[k] for k in ("deploy PyTorch", "deploy ORT")}
        times = _time_forms(forms, 32, 1, 1, args.rank_runs)
        row = {"family": family, "macs": macs, "torch_ms": times["deploy PyTorch"][0],
               "ort_ms": times["deploy ORT"][0], "max_abs_diff": diff}
        rows.append(row)
        print(f"arch {i:2d} {family:12s} {macs / 1e6:7.1f}M MACs: PyTorch {row['torch_ms']:6.2f} ms, "
              f"ORT {row['ort_ms']:6.2f} ms (max |diff| / max |logit| {diff:.1e})", flush=True)
    rho = lambda a, b: float(spearmanr([r[a] for r in rows], [r[b] for r in rows]).statistic)  # noqa: E731
    out = {"n": len(rows), "rows": rows, "spearman_torch_ort": rho("torch_ms", "ort_ms"),
           "spearman_macs_torch": rho("macs", "torch_ms"), "spearman_macs_ort": rho("macs", "ort_ms")}
    print(f"\nrank agreement over {len(rows)} random architectures (batch 1, {args.threads} threads): "
          f"Spearman PyTorch vs ORT latency {out['spearman_torch_ort']:.2f}; MACs vs PyTorch "
          f"{out['spearman_macs_torch']:.2f}; MACs vs ORT {out['spearman_macs_ort']:.2f}")
    return out


def _op_times(blob: bytes, size: int, threads: int, runs: int) -> dict[str, float]:
    """Milliseconds per run spent in each ONNX Runtime kernel type (its own profiler), batch 1."""
    import tempfile

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling, options.log_severity_level = threads, True, 3
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    feed = {"input": np.zeros((1, 3, size, size), dtype=np.float32)}
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            if op in ("Conv", "FusedConv"):  # which convolutions: by kernel size
                op += f" {e['args']['input_type_shape'][1]['float'][-1]}x{e['args']['input_type_shape'][1]['float'][-1]}"
            totals[op] = totals.get(op, 0.0) + e["dur"] / 1000.0 / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def profile_part(args) -> dict:
    """Where ONNX Runtime spends the time of the goal presets, masked against deploy form."""
    out = {}
    for name in GOAL_PRESETS:
        p = get_preset(name)
        forms, _ = _forms(p.family, p.knobs, p.num_classes, p.image_size, args.threads, ort_forms=())
        masked, lowered = forms["masked PyTorch"], to_onnx_form(forms["deploy PyTorch"], p.image_size)
        out[name] = {form: _op_times(onnx_bytes(m, p.image_size), p.image_size, args.threads, 50)
                     for form, m in (("masked ORT", masked), ("deploy ORT", lowered))}
        for form, ops in out[name].items():
            total = sum(ops.values())
            cells = ", ".join(f"{op} {ms:.2f} ({100 * ms / total:.0f}%)" for op, ms in list(ops.items())[:8])
            print(f"{name} {form}: {total:.2f} ms in kernels: {cells}", flush=True)
    return out


def dense_3x3_part(args) -> dict:
    """The lowering's choice for the 3x3 group conv, measured: condensenet-86 with 4 and 8 groups
    there, lowered with the dense 3x3 and with the grouped one behind a gather, alternating."""
    import space.onnx as lowering

    family, out = get_family("condensenet"), {}
    default = lowering.DENSE_3X3_MAX_GROUPS
    for groups in (4, 8):
        knobs = family.knobs_with(get_preset("condensenet-86").knobs, {"groups_3x3": groups})
        sessions = {}
        for path, limit in (("dense", groups), ("grouped", groups - 1)):
            lowering.DENSE_3X3_MAX_GROUPS = limit
            forms, _ = _forms("condensenet", knobs, 100, 32, args.threads, ort_forms=("deploy ORT",))
            sessions[path] = forms["deploy ORT"]
        lowering.DENSE_3X3_MAX_GROUPS = default
        times = _time_forms(sessions, 32, 1, args.rounds, args.runs)
        out[groups] = {k: statistics.median(v) for k, v in times.items()}
        print(f"groups_3x3={groups}: dense 3x3 {out[groups]['dense']:.2f} ms, grouped 3x3 {out[groups]['grouped']:.2f} ms "
              f"(grouped / dense {out[groups]['grouped'] / out[groups]['dense']:.2f})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=list(PRESETS))
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both runtimes")
    parser.add_argument("--runs", type=int, default=30, help="timed calls per measurement at batch 1 (1/6 at 32)")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per form, alternating")
    parser.add_argument("--archs", type=int, default=32, help="random architectures for the rank agreement")
    parser.add_argument("--rank-runs", type=int, default=15)
    parser.add_argument("--max-macs", type=float, default=3e8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime's per-operator time for the goal presets")
    parser.add_argument("--dense-3x3", action="store_true", help="time the lowering's dense against grouped 3x3")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
          f"{args.threads} threads for both", flush=True)
    presets = presets_part(args) if args.presets else {}
    if presets is None:
        return 1
    results = {"threads": args.threads, "presets": presets}
    if results["presets"]:
        _table(results["presets"])
        results["goals"] = _goals(results["presets"])
        print("\n" + "\n".join(results["goals"]))
    if args.dense_3x3:
        print()
        results["dense_3x3"] = dense_3x3_part(args)
    if args.profile:
        print()
        results["profile"] = profile_part(args)
    if args.archs:
        results["ranks"] = ranks_part(args)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
