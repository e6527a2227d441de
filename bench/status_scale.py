"""`status`, `trials` and `export` on studies of 1,000, 10,000 and 100,000 trials (one SQLite file each).

Each study is built the way the driver writes one: every trial's user attributes are written by
``search.record.write_pending`` and ``write_record`` themselves (status, family, constraints, final,
the proposal record and the full ``TrialRecord``: knobs, costs, data shape and normalisation,
accuracies, a 10-epoch curve, times, checkpoint and deploy paths, node and pid, as a real run's
trials carry them, 1.5-2 kB each), its system attributes are those the NSGA-II sampler and the
constraints write, its Optuna parameters are a real draw of the family's knobs, and 80% are trained,
the rest infeasible, duplicate, stopped or failed; two are seeds and some are retries. The rows go
into Optuna's own schema with bulk inserts (the study is created by Optuna first, and a sample of
trials is read back through Optuna's API to check the rows are its own).

Timed per size, warm file cache: each command as a user runs it (``python -m search status``,
``trials`` and ``export`` without ``--models``, a fresh process each, start-up included; wall
seconds, and CPU seconds of the process and its children, which a busy machine disturbs less) and the
same work in this process (``status_dict``, ``trial_rows`` and ``export_study``), with the trials
read by effnas's SQL reader and, for comparison, through Optuna's ``get_trials`` (1k and 10k only:
it is the slow path).

    python bench/status_scale.py [--sizes 1000 10000 100000] [--repeats 3] [--keep DIR] [--compare OLD]

``--keep DIR`` keeps the built studies in DIR and reuses them; ``--compare OTHER_CHECKOUT`` times
that checkout's commands too (before and after a change), alternating with this one's on the same
files (in-process timings are of this checkout only). The last line is one JSON object: seconds
per size and measure (medians).
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


class _Writer:
    """Stands in for a live ``optuna.Trial`` under the driver's record writers: keeps what they set."""

    def __init__(self) -> None:
        self.user_attrs: dict = {}

    def set_user_attr(self, key: str, value) -> None:
        self.user_attrs[key] = value


def _user_attrs(i: int, status: str, family: str, knobs: dict, rng: random.Random, fidelity: dict,
                macs: int, prm: int, acc: float) -> dict:
    """A trial's user attributes exactly as the driver writes them (``write_pending``, then
    ``write_record`` with the worker's outcome), with the fields a real run fills in."""
    from search.record import TrialRecord, TrialStatus, write_pending, write_record

    key = f"{i:016x}"
    rec = TrialRecord(family=family, knobs=knobs, arch_key=key, fidelity=fidelity,
                      constraints=[macs / 1e8 - 1.0], params=prm, macs=macs, train_params=prm * 2,
                      train_macs=macs * 2, num_classes=10, image_size=16, in_channels=3,
                      mean=[0.4913996756076813, 0.48215851187705994, 0.44653093814849854],
                      std=[0.24703224003314972, 0.24348513782024384, 0.26158785820007324], attempt=0)
    out = _Writer()
    if i in (0, 1):  # the study's seeds are its first trials
        out.set_user_attr("seed", ["condensenet-86", "rsnet-115"][i])
    if status == "failed" or (status == "trained" and i % 50 == 7):
        out.set_user_attr("retry_of", max(0, i - 3))
        out.set_user_attr("attempt", 1)
    if status not in ("trained", "stopped", "failed"):  # decided without a worker
        if status == "duplicate":
            rec = rec.with_outcome(duplicate_of=max(0, i - 11))
        write_record(out, TrialStatus(status), rec)
        return out.user_attrs
    rec = rec.with_outcome(queued_seconds=round(rng.uniform(0, 3), 6))
    write_pending(out, rec)
    root = f"/home/user/effnas/runs/scale/checkpoints/{key}"
    busy = rng.uniform(35, 320)
    worker = dict(node="f9ca46755dfe5961e9efc3581c73fcd519768cca34e6df62f917d28f", pid=rng.randrange(2000, 60000),
                  artifacts_via="direct", train_seconds=busy - rng.uniform(2, 5), worker_seconds=busy)
    if status == "failed":
        rec = rec.with_outcome(failure_kind="error", final=True, **worker,
                               failure_reason="RuntimeError: CUDA error: an illegal memory access was encountered "
                                              "(simulated) in trainers/train.py line 412")
        write_record(out, TrialStatus.FAILED, rec)
        return out.user_attrs
    reached = 10 if status == "trained" else 3
    curve = [min(0.99, acc * (k + 1) / 10 + rng.uniform(-0.02, 0.02)) for k in range(reached)]
    rec = rec.with_outcome(val_acc=curve[-1], val_loss=rng.uniform(0.3, 2.0),
                           test_acc=curve[-1] - rng.uniform(0, 0.02) if status == "trained" else None,
                           epochs=reached, fidelity_reached=reached, latency_ms=None, latency_setup=None,
                           deploy_max_abs_diff=rng.uniform(1e-7, 3e-6), checkpoint=f"{root}/checkpoint.pt",
                           resumed_from_epoch=None, deploy_path=f"{root}/deploy.pt" if status == "trained" else None,
                           curve=curve, **worker)
    write_record(out, TrialStatus(status), rec)
    return out.user_attrs


def build_study(path: Path, n: int, seed: int = 0) -> str:
    import sqlite3

    import optuna
    from optuna.trial import FrozenTrial, TrialState

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
        start = t0 + dt.timedelta(seconds=60 * i)
        macs, prm = rng.randrange(10**5, 10**8), rng.randrange(10**3, 10**7)
        acc = min(0.99, max(0.1, 0.2 + 0.6 * (macs / 1e8) ** 0.3 + rng.gauss(0, 0.05)))
        user = _user_attrs(i, status, family, knobs, rng, fidelity, macs, prm, acc)
        record = user["record"]
        # ask to tell: the wait for a worker, the worker's time and the driver's share (0.05-0.5 s)
        span = (record.get("queued_seconds") or 0.0) + (record.get("worker_seconds") or 0.0) + rng.uniform(0.05, 0.5)
        state, values = TrialState.COMPLETE, [0.0, float(macs), float(prm)]
        if status in ("trained", "stopped"):
            values[0] = user["record"]["val_acc"]
            state = TrialState.COMPLETE if status == "trained" else TrialState.PRUNED
        elif status == "failed":
            state = TrialState.FAIL
        system = {"NSGAIISampler:generation": i // 50, "constraints:max_macs": macs / 1e8 - 1.0}
        trials.append(FrozenTrial(number=i, state=state, value=None,
                                  values=values if state == TrialState.COMPLETE else None,
                                  datetime_start=start, datetime_complete=start + dt.timedelta(seconds=span),
                                  params=params, distributions=dists, user_attrs=user, system_attrs=system,
                                  intermediate_values={}, trial_id=-1))
    bulk_add_trials(url, "scale", trials)
    with sqlite3.connect(path) as con:  # bulk_add_trials writes user attributes only
        ids = [r[0] for r in con.execute("SELECT trial_id FROM trials ORDER BY number")]
        con.executemany('INSERT INTO trial_system_attributes (trial_id, "key", value_json) VALUES (?, ?, ?)',
                        [(tid, k, json.dumps(v)) for tid, t in zip(ids, trials) for k, v in t.system_attrs.items()])
    # The first 200 trials read back through Optuna's storage API (get_trials would load all of them).
    storage = optuna.storages.RDBStorage(url)
    check = [storage.get_trial(tid) for tid in ids[:200]]
    assert all(t.user_attrs["record"]["arch_key"] for t in check) and check[0].params.get("family")
    assert check[0].system_attrs.get("NSGAIISampler:generation") == 0
    return url


def _command_seconds(args: list[str], cwd: Path, repo: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, its child processes included) of one command."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{args} failed: {out.stderr[-2000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _in_process(url: str, out: Path, fast: bool) -> tuple[float, float, float]:
    """Seconds of status_dict, trial_rows and export_study; ``fast=False`` reads through Optuna's
    get_trials (the public-API path the reader falls back to)."""
    import optuna

    from search.export import export_study
    from search.status import status_dict, trial_rows
    from search.storage import _optuna_compat as compat

    study = optuna.load_study(study_name="scale", storage=url)
    compat.FORCE_PUBLIC = not fast
    try:
        t0 = time.perf_counter()
        status_dict(study, url if fast else None)
        t1 = time.perf_counter()
        trial_rows(study, url if fast else None)
        t2 = time.perf_counter()
        export_study(study, out, log=lambda _: None, storage_url=url if fast else None)
        return t1 - t0, t2 - t1, time.perf_counter() - t2
    finally:
        compat.FORCE_PUBLIC = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the built studies here and reuse them")
    ap.add_argument("--no-in-process", action="store_true", help="time the commands only")
    ap.add_argument("--compare", type=Path, metavar="OTHER_CHECKOUT",
                    help="also time that checkout's commands (e.g. the previous release), alternating with this "
                         "one's on the same files; reported as <command>_command_other")
    args = ap.parse_args()
    sides = [(REPO, "")] + ([(args.compare.resolve(), "_other")] if args.compare else [])
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        where = args.keep or tmp
        where.mkdir(parents=True, exist_ok=True)
        for n in args.sizes:
            t0 = time.perf_counter()
            db = where / f"scale{n}.db"
            url = f"sqlite:///{db.resolve()}"
            if not db.exists():
                build_study(db.resolve(), n)
            built = time.perf_counter() - t0
            runs: dict[str, list[float]] = {}
            for r in range(args.repeats):
                for command in ("status", "trials", "export"):
                    extra = ["--out", str(tmp / f"out{n}")] if command == "export" else []
                    for repo, suffix in (sides if r % 2 == 0 else sides[::-1]):  # alternate who goes first
                        wall, cpu = _command_seconds([command, "--storage", url, *extra], tmp, repo)
                        runs.setdefault(f"{command}_command{suffix}", []).append(wall)
                        runs.setdefault(f"{command}_cpu{suffix}", []).append(cpu)
                if args.no_in_process:
                    continue
                s, t, e = _in_process(url, tmp / f"in{n}", fast=True)
                runs.setdefault("status_in_process", []).append(s)
                runs.setdefault("trials_in_process", []).append(t)
                runs.setdefault("export_in_process", []).append(e)
                if n <= 10_000:
                    s, t, e = _in_process(url, tmp / f"slow{n}", fast=False)
                    runs.setdefault("status_via_get_trials", []).append(s)
                    runs.setdefault("trials_via_get_trials", []).append(t)
                    runs.setdefault("export_via_get_trials", []).append(e)
            results[str(n)] = {"build_seconds": round(built, 1), "db_mb": round(db.stat().st_size / 2**20, 1),
                               **{k: round(statistics.median(v), 3) for k, v in runs.items()},
                               "runs": {k: [round(x, 3) for x in v] for k, v in runs.items()}}
            print(f"{n:>7} trials ({results[str(n)]['db_mb']} MB): " + ", ".join(
                f"{k} {v:.2f}s" for k, v in results[str(n)].items()
                if isinstance(v, float) and k not in ("build_seconds", "db_mb")), flush=True)
    print(json.dumps({"repeats": args.repeats, "seconds": results}))


if __name__ == "__main__":
    main()
