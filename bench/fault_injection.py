"""Fault injection, repeated: kill the driver with SIGKILL again and again, then finish the study.

Each round makes a fresh tiny study (stand-in trials; see tests/test_faults.py), then up to
``--kills`` times starts a real driver and kills it, either at a random named point of its loop
(EFFNAS_KILL_AT) or from outside after a random delay, and finally runs it to the end. It counts:
kills delivered, trials trained, trained trials lost or changed between kills, architectures trained
twice, and trials left RUNNING/WAITING. All of the last three must be 0.

    python bench/fault_injection.py --rounds 5 --kills 3
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_faults import N_TRIALS, run_driver, snapshot, write_study  # noqa: E402

from optuna.trial import TrialState  # noqa: E402

from search.faults import POINTS  # noqa: E402
from search.record import trial_status  # noqa: E402
from search.storage import load_existing_study  # noqa: E402


def kill_from_outside(tmp: Path, study: Path, delay: float) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("EFFNAS_KILL_AT", None)
    proc = subprocess.Popen([sys.executable, str(tmp / "driver.py"), str(study)], cwd=tmp, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def one_round(rng: random.Random, kills: int) -> dict:
    counts = {"kills": 0, "trained": 0, "lost": 0, "duplicated": 0, "stuck": 0}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        study = write_study(tmp)
        before: dict = {}
        for _ in range(kills):
            if rng.random() < 0.5:
                point = rng.choice([p for p in POINTS if p not in ("exporting", "screened")])
                rc = run_driver(tmp, study, f"{point}:{rng.randint(1, 4)}").returncode
            else:
                rc = kill_from_outside(tmp, study, rng.uniform(3.0, 15.0))
            counts["kills"] += rc == -signal.SIGKILL
            if (tmp / "run" / "study.db").exists():
                now = snapshot(study, tmp)
                counts["lost"] += sum(1 for n, v in before.items() if now.get(n) != v)
                before = now
        assert run_driver(tmp, study, None).returncode == 0
        trials = load_existing_study(f"sqlite:///{tmp / 'run' / 'study.db'}", "faults").get_trials()
        trained = [t for t in trials if trial_status(t) == "trained"]
        after = {t.number: (tuple(t.values), t.params) for t in trained}
        counts["lost"] += sum(1 for n, v in before.items() if after.get(n) != v)
        keys = [t.user_attrs["record"]["arch_key"] for t in trained]
        counts["duplicated"] = len(keys) - len(set(keys))
        counts["stuck"] = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        counts["trained"] = len(trained)
        counts["wrong_total"] = int(len(trained) != N_TRIALS)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kills", type=int, default=3, help="kills per round before the final run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    total: dict = {}
    for i in range(args.rounds):
        c = one_round(rng, args.kills)
        print(f"round {i + 1}: {c}", flush=True)
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    print(f"total over {args.rounds} rounds: {total}")


if __name__ == "__main__":
    main()
