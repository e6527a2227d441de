"""How fast does each command answer? Wall time of the commands a new user types first.

Each command runs as a fresh process (``python -m search ...``), ``--repeats`` times; medians are
reported. Cases: a study-file typo (an unknown family), ``arch`` of a preset, ``status`` and
``trials`` of an existing study (the record-format fixture in tests/fixtures), ``validate`` of the
quick study (50 samples per family), and the time until ``run`` of the quick study prints its first
line (the run is then stopped with SIGTERM). ``--repo`` measures another checkout (for a
before/after comparison; its own code, this machine's Python).

    python bench/startup_times.py [--repeats 3] [--repo PATH]

The last line is one JSON object: per case, the median and every run in seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t0


def _first_line(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()
    took = time.perf_counter() - t0
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repo", default=str(REPO), help="checkout whose commands are timed")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    env = {**os.environ, "PYTHONPATH": str(repo)}
    py = [sys.executable, "-m", "search"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db = tmp / "v1.db"
        with sqlite3.connect(db) as con:
            con.executescript((REPO / "tests" / "fixtures" / "study_v1.sql").read_text())
        (tmp / "typo.yaml").write_text("study: typo\nfamilies: {rsnett: {}}\n")
        quick = (repo / "studies" / "quickstart.yaml").read_text()
        quick = "\n".join(line for line in quick.splitlines() if not line.startswith("run_dir:"))
        (tmp / "quick.yaml").write_text(quick + f"\nrun_dir: {tmp / 'quick-run'}\n")
        cases = {
            "study_file_typo": lambda: _timed(py + ["run", str(tmp / "typo.yaml")], tmp, env),
            "arch_preset": lambda: _timed(py + ["arch", "condensenetv2-110"], tmp, env),
            "status": lambda: _timed(py + ["status", "--storage", f"sqlite:///{db}"], tmp, env),
            "status_json": lambda: _timed(py + ["status", "--storage", f"sqlite:///{db}", "--json"], tmp, env),
            "validate_quickstart": lambda: _timed(py + ["validate", str(tmp / "quick.yaml"), "--samples", "50"], tmp, env),
            "run_first_line": lambda: _first_line(py + ["run", str(tmp / "quick.yaml")], tmp, env),
        }
        runs: dict[str, list[float]] = {k: [] for k in cases}
        for r in range(args.repeats):
            for name, case in cases.items():  # round-robin: drift spreads over every case
                runs[name].append(round(case(), 3))
            print(f"run {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items()), flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\nmedian seconds over {args.repeats} runs ({repo}):")
    for k, v in med.items():
        print(f"  {k:<22} {v:6.2f}")
    print(json.dumps({"repo": str(repo), "repeats": args.repeats, "median_s": med, "runs": runs}))


if __name__ == "__main__":
    main()
