"""`status` and `export` on studies of 1,000, 10,000 and 100,000 trials (one SQLite file each).

Each study is built the way the driver writes one: every trial's user attributes are those of
``search.record.write_record`` (status, family, constraints and the JSON record of a
``TrialRecord`` with knobs, costs, accuracies, a 10-epoch curve, times), its Optuna parameters are
a real draw of the family's knobs, and 80% are trained, the rest infeasible, duplicate, stopped or
failed. The rows go into Optuna's own schema with bulk inserts (the study is created by Optuna
first, and a sample of trials is read back through Optuna's API to check the rows are its own).

Timed per size, warm file cache: the whole command as a user runs it (``python -m search status``
and ``export`` without ``--models``, a fresh process each, start-up included) and the same work in
this process (``status_dict`` and ``export_study``), with the trials read by effnas's SQL reader
and, for comparison, through Optuna's ``get_trials`` (1k and 10k only: it is the slow path).

    python bench/status_scale.py [--sizes 1000 10000 100000] [--repeats 3]

The last line is one JSON object: seconds per size and measure (medians).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OBJECTIVES = ["accuracy", "macs", "params"]
STATUSES = ["trained"] * 16 + ["infeasible", "duplicate", "stopped", "failed"]


def _draws(n: int, rng: random.Random) -> list[tuple[str, dict, dict, dict]]:
    """(family, knobs JSON, Optuna params, their distributions) of ``n`` real draws (64 distinct per
    family, reused: drawing is not what is measured)."""
    import dataclasses

    from optuna.distributions import CategoricalDistribution

    from space.knobs import draw_random
    from space.registry import get_family, list_families

    pool = []
    families = list_families()
    fam_dist = CategoricalDistribution(tuple(families))
    for name in families:
        family = get_family(name)
        space = family.search_space()
        for _ in range(64):
            drawn: dict = {}
            knobs = family.sample(draw_random(space, rng, drawn))
            pool.append((name, json.loads(json.dumps(dataclasses.asdict(knobs))), {"family": name, **drawn},
                         {"family": fam_dist, **{k: space[k] for k in drawn}}))
    return [pool[rng.randrange(len(pool))] for _ in range(n)]


def build_study(path: Path, n: int, seed: int = 0) -> str:
    import optuna
    from optuna.trial import FrozenTrial, TrialState

    from search.record import TrialRecord
    from search.testing import bulk_add_trials

    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name="scale", storage=url, directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("objectives", OBJECTIVES)
    rng = random.Random(seed)
    t0 = dt.datetime(2026, 1, 1)
    fidelity = {"dataset": "cifar10", "train_size": 3000, "val_size": 1000, "image_size": 16, "epochs": 10,
                "batch_size": 64, "lr": 0.1, "seed": 0}
    trials = []
    for i, (family, knobs, params, dists) in enumerate(_draws(n, rng)):
        status = STATUSES[rng.randrange(len(STATUSES))]
        start = t0 + dt.timedelta(seconds=30 * i)
        macs, prm = rng.randrange(10**5, 10**8), rng.randrange(10**3, 10**7)
        acc = min(0.99, max(0.1, 0.2 + 0.6 * (macs / 1e8) ** 0.3 + rng.gauss(0, 0.05)))
        curve = [round(acc * (k + 1) / 10, 4) for k in range(10)]
        rec = TrialRecord(family=family, knobs=knobs, arch_key=f"{i:016x}", fidelity=fidelity, constraints=[-0.5],
                          params=prm, macs=macs, train_params=prm * 2, train_macs=macs * 2, num_classes=10,
                          image_size=16, in_channels=3, mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26],
                          attempt=0, queued_seconds=0.01)
        state, values = TrialState.COMPLETE, [0.0, float(macs), float(prm)]
        if status in ("trained", "stopped"):
            reached = 10 if status == "trained" else 3
            rec = rec.with_outcome(val_acc=acc, val_loss=1 - acc, test_acc=acc - 0.01, epochs=reached,
                                   fidelity_reached=reached, train_seconds=40.0, worker_seconds=41.0,
                                   curve=curve[:reached], node="n0", pid=1,
                                   checkpoint=f"/runs/scale/checkpoints/{i:016x}/checkpoint.pt")
            values[0] = acc
            state = TrialState.COMPLETE if status == "trained" else TrialState.PRUNED
        elif status == "failed":
            rec = rec.with_outcome(failure_reason="RuntimeError: simulated", final=True)
            state = TrialState.FAIL
        user = {"status": status, "family": family, "constraints": rec.constraints, "record": rec.to_dict()}
        trials.append(FrozenTrial(number=i, state=state, value=None,
                                  values=values if state == TrialState.COMPLETE else None,
                                  datetime_start=start, datetime_complete=start + dt.timedelta(seconds=rng.uniform(5, 60)),
                                  params=params, distributions=dists, user_attrs=user, system_attrs={},
                                  intermediate_values={}, trial_id=-1))
    bulk_add_trials(url, "scale", trials)
    check = optuna.load_study(study_name="scale", storage=url).get_trials(deepcopy=False)[: min(n, 200)]
    assert all(t.user_attrs["record"]["arch_key"] for t in check) and check[0].params.get("family")
    return url


def _command_seconds(args: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise SystemExit(f"{args} failed: {out.stderr[-2000:]}")
    return time.perf_counter() - t0


def _in_process(url: str, out: Path, fast: bool) -> tuple[float, float]:
    """Seconds of status_dict and export_study; ``fast=False`` reads through Optuna's get_trials
    (the public-API path the reader falls back to)."""
    import optuna

    from search.export import export_study
    from search.status import status_dict
    from search.storage import _optuna_compat as compat

    study = optuna.load_study(study_name="scale", storage=url)
    compat.FORCE_PUBLIC = not fast
    try:
        t0 = time.perf_counter()
        status_dict(study, url if fast else None)
        t1 = time.perf_counter()
        export_study(study, out, log=lambda _: None, storage_url=url if fast else None)
        return t1 - t0, time.perf_counter() - t1
    finally:
        compat.FORCE_PUBLIC = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in args.sizes:
            t0 = time.perf_counter()
            url = build_study(tmp / f"scale{n}.db", n)
            built = time.perf_counter() - t0
            runs: dict[str, list[float]] = {}
            for r in range(args.repeats):
                runs.setdefault("status_command", []).append(_command_seconds(["status", "--storage", url], tmp))
                runs.setdefault("export_command", []).append(
                    _command_seconds(["export", "--storage", url, "--out", str(tmp / f"out{n}")], tmp))
                s, e = _in_process(url, tmp / f"in{n}", fast=True)
                runs.setdefault("status_in_process", []).append(s)
                runs.setdefault("export_in_process", []).append(e)
                if n <= 10_000:
                    s, e = _in_process(url, tmp / f"slow{n}", fast=False)
                    runs.setdefault("status_via_get_trials", []).append(s)
                    runs.setdefault("export_via_get_trials", []).append(e)
            results[str(n)] = {"build_seconds": round(built, 1),
                               **{k: round(statistics.median(v), 3) for k, v in runs.items()},
                               "runs": {k: [round(x, 3) for x in v] for k, v in runs.items()}}
            print(f"{n:>7} trials: " + ", ".join(f"{k} {v:.2f}s" for k, v in results[str(n)].items()
                                                   if isinstance(v, float) and k != "build_seconds"), flush=True)
    print(json.dumps({"repeats": args.repeats, "seconds": results}))


if __name__ == "__main__":
    main()
