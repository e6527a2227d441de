"""How fast does each command answer? Wall time of the commands a new user types first.

Each command runs as a fresh process (``python -m search ...``), ``--repeats`` times; medians are
reported. Cases: a study-file typo (an unknown family), ``arch`` of a preset, ``status`` and
``trials`` of an existing study (the record-format fixture in tests/fixtures), ``validate`` of the
quick study (50 samples per family, and the default 300), and the time until ``run`` of the quick
study prints its first line (the run is then stopped with SIGTERM). ``--repo`` measures another
checkout (for a before/after comparison; its own code, this machine's Python).

``arch`` and ``validate`` keep answers in a cache (``search/cache.py``, ``$EFFNAS_CACHE``). Their
plain cases run warm (a cache filled by one untimed call first); the ``_first`` cases start from an
empty cache every time (what the first call after installing or changing effnas costs), and
``validate_edited`` changes the study's budget before every call (a miss of the whole answer; the
data's shape and the families' samples are still in the cache).

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


def _timed(cmd: list[str], cwd: Path, env: dict, expect: int = 0) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    if out.returncode != expect:  # a command that failed early would look fast
        raise SystemExit(f"{cmd[3:]} exited {out.returncode}: {out.stderr[-2000:]}")
    return took


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
    py = [sys.executable, "-m", "search"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(repo), "EFFNAS_CACHE": str(tmp / "cache")}
        fresh = iter(range(10**6))

        def first(cmd: list[str]) -> float:  # an empty cache folder of its own
            return _timed(cmd, tmp, {**env, "EFFNAS_CACHE": str(tmp / f"cache-first-{next(fresh)}")})

        edits = iter(range(10**6))

        def edited() -> float:
            (tmp / "edited.yaml").write_text(quick.replace("n_trials: 12", f"n_trials: {13 + next(edits)}")
                                             + f"\nrun_dir: {tmp / 'edited-run'}\n")
            return _timed(py + ["validate", str(tmp / "edited.yaml")], tmp, env)

        db = tmp / "v1.db"
        with sqlite3.connect(db) as con:
            con.executescript((REPO / "tests" / "fixtures" / "study_v1.sql").read_text())
        (tmp / "typo.yaml").write_text("study: typo\nfamilies: {rsnett: {}}\n")
        quick = (repo / "studies" / "quickstart.yaml").read_text()
        quick = "\n".join(line for line in quick.splitlines() if not line.startswith("run_dir:"))
        (tmp / "quick.yaml").write_text(quick + f"\nrun_dir: {tmp / 'quick-run'}\n")
        quick_300 = py + ["validate", str(tmp / "quick.yaml")]
        cases = {
            "study_file_typo": lambda: _timed(py + ["run", str(tmp / "typo.yaml")], tmp, env, expect=1),
            "arch_preset": lambda: _timed(py + ["arch", "condensenetv2-110"], tmp, env),
            "arch_preset_first": lambda: first(py + ["arch", "condensenetv2-110"]),
            "status": lambda: _timed(py + ["status", "--storage", f"sqlite:///{db}"], tmp, env),
            "status_json": lambda: _timed(py + ["status", "--storage", f"sqlite:///{db}", "--json"], tmp, env),
            "validate_quickstart": lambda: _timed(py + ["validate", str(tmp / "quick.yaml"), "--samples", "50"], tmp, env),
            "validate_quickstart_300": lambda: _timed(quick_300, tmp, env),
            "validate_quickstart_300_first": lambda: first(quick_300),
            "validate_edited": edited,
            "run_first_line": lambda: _first_line(py + ["run", str(tmp / "quick.yaml")], tmp, env),
        }
        for warm in (py + ["arch", "condensenetv2-110"], quick_300, py + ["validate", str(tmp / "quick.yaml"), "--samples", "50"]):
            _timed(warm, tmp, env)  # the warm cases' cache
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
