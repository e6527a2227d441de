"""The orchestrator on a real PostgreSQL server (tests/pg_server.py starts a private one).

Two driver processes share one study: together they train exactly the budget, every trial ends in a
final state, and no architecture is trained twice. An unreachable database is one clear error.
(That SQLite refuses a second driver is tested in test_sweep.py.)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from pg_server import postgres_url  # noqa: F401  (the module-scoped server fixture)
from search.config import parse_study
from search.exceptions import StorageError
from search.record import trial_status
from search.storage import load_existing_study, open_study
from studies import TINY_CONDENSENET, TINY_SLIMCONV  # spaces of about 10^3 architectures: proposals rarely collide

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
REPO = Path(__file__).resolve().parents[1]
N_TRIALS = 8

# Each driver runs the stand-in trial function on its own local Ray instance. Its trials announce
# themselves (a file per driver) and wait for the test to open the gate once both drivers have a trial
# running, so their proposals overlap for certain even when one Ray instance starts seconds before
# the other.
DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from search.config import load_study
    from search.sweep import Sweep
    from search.testing import cheap_trial

    study_file, gate, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

    def overlapping_trial(spec, data, report):
        (gate / me).touch()
        deadline = time.time() + 120
        while not (gate / "open").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        return cheap_trial(spec, data, report)

    s = Sweep(load_study(study_file), trial_fn=overlapping_trial).run()
    print("SUMMARY", s.trained, s.stopped, s.failed, s.infeasible, s.duplicate, flush=True)
""")
DRIVER_TIMEOUT_S = 180


def _study(tmp_path: Path, url: str, name: str) -> dict:
    return {
        "study": name, "storage": url, "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "digits", "val_size": 200, "train_size": 400, "image_size": 16},
        "families": {"condensenet": {"knobs": TINY_CONDENSENET}, "slimconv": {"knobs": TINY_SLIMCONV}},
        "budget": {"n_trials": N_TRIALS}, "fidelity": {"epochs": 1},
        "sampler": {"name": "random", "seed": 0},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1}, "ray": {"num_cpus": 1},
    }


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each driver starts its own Ray
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _summary(stdout: str) -> list[int]:
    line = next((ln for ln in stdout.splitlines() if ln.startswith("SUMMARY")), None)
    return [int(x) for x in line.split()[1:]] if line else []


def _problems(trials, summaries: list[list[int]]) -> list[str]:
    """Everything wrong with the shared study, so one failure reports all of it."""
    problems = []
    statuses = Counter(trial_status(t) for t in trials)
    if statuses["trained"] != N_TRIALS:
        problems.append(f"{statuses['trained']} trials trained, budget {N_TRIALS}; statuses {dict(statuses)}")
    numbers = [t.number for t in trials]
    if len(set(numbers)) != len(numbers) or sorted(numbers) != list(range(len(numbers))):
        problems.append(f"trial numbers not unique and contiguous: {sorted(numbers)}")
    unfinished = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    if unfinished:
        problems.append(f"trials left RUNNING/WAITING: {unfinished}")
    unrecorded = [t.number for t in trials if t.state.is_finished() and "status" not in t.user_attrs]
    if unrecorded:
        problems.append(f"finished trials without a `status` record: {unrecorded}")
    keys = Counter(t.user_attrs["record"]["arch_key"] for t in trials if trial_status(t) == "trained")
    twice = {k: n for k, n in keys.items() if n > 1}
    if twice:
        problems.append(f"architectures trained more than once (arch_key: times): {twice}")
    trained_by_driver = [s[0] if s else None for s in summaries]
    if sum(n or 0 for n in trained_by_driver) != statuses["trained"]:
        problems.append(f"drivers report {trained_by_driver} trained, the study holds {statuses['trained']}")
    return problems


def _open_gate_when_both_run(procs: list[subprocess.Popen], gate: Path) -> None:
    """Open once both drivers have a trial running, or once one has exited (nothing to wait for)."""
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if {"d0", "d1"} <= {p.name for p in gate.iterdir()} or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    (gate / "open").touch()


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt a driver that is still running (so it shuts its Ray instance down), then kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _run_two_drivers(tmp_path: Path, study_file: Path) -> list[tuple[int, str, str]]:
    """Both drivers' exit status, stdout and stderr."""
    (tmp_path / "driver.py").write_text(DRIVER)
    gate = tmp_path / "gate"
    gate.mkdir()
    logs = [(open(tmp_path / f"d{i}.out", "w+"), open(tmp_path / f"d{i}.err", "w+")) for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(study_file), str(gate), f"d{i}"],
                              cwd=tmp_path, env=_env(), stdout=out, stderr=err, start_new_session=True)
             for i, (out, err) in enumerate(logs)]
    try:
        _open_gate_when_both_run(procs, gate)
        deadline = time.monotonic() + DRIVER_TIMEOUT_S
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass  # reported below as a non-zero status
    finally:
        for p in procs:
            _stop(p)
    results = []
    for p, (out, err) in zip(procs, logs):
        out.seek(0), err.seek(0)
        results.append((p.returncode, out.read(), err.read()))
        out.close(), err.close()
    return results


def test_two_drivers_share_one_study(tmp_path, postgres_url, capsys):  # noqa: F811
    from search.cli import main

    study_file = tmp_path / "shared.yaml"
    study_file.write_text(yaml.safe_dump(_study(tmp_path, postgres_url, "shared")))
    results = _run_two_drivers(tmp_path, study_file)
    for i, (rc, out, err) in enumerate(results):
        assert rc == 0, f"driver d{i} exited {rc}:\n{out[-2000:]}\n{err[-3000:]}"
    ran = {p.name for p in (tmp_path / "gate").iterdir()}
    assert {"d0", "d1"} <= ran, f"only {sorted(ran - {'open'})} ran a trial: the drivers never overlapped"
    trials = load_existing_study(postgres_url, "shared").get_trials()
    problems = _problems(trials, [_summary(out) for _, out, _ in results])
    assert not problems, "\n".join(problems)
    assert main(["status", "--storage", postgres_url, "--study-name", "shared", "--json"]) == 0
    statuses = json.loads(capsys.readouterr().out)["statuses"]
    # Two drivers may by chance propose one architecture twice: the second is a `duplicate`, free.
    assert statuses["trained"] == N_TRIALS and set(statuses) <= {"trained", "duplicate"}, statuses


def _missing_db_url(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/no_such_db"


def test_missing_database_is_a_storage_error(tmp_path, postgres_url):  # noqa: F811
    raw = _study(tmp_path, _missing_db_url(postgres_url), "nodb")
    cfg = parse_study(raw, str(tmp_path / "nodb.yaml"))
    t0 = time.perf_counter()
    with pytest.raises(StorageError, match=r"cannot open the study database .*no_such_db.*does not exist"):
        open_study(cfg)
    assert time.perf_counter() - t0 < 10  # a clear refusal, not a retry loop


def test_missing_database_via_cli_is_one_line_status_1(tmp_path, postgres_url):  # noqa: F811
    study_file = tmp_path / "nodb.yaml"
    study_file.write_text(yaml.safe_dump(_study(tmp_path, _missing_db_url(postgres_url), "nodb")))
    proc = subprocess.run([sys.executable, "-m", "search", "run", str(study_file)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "no_such_db" in lines[0] and "does not exist" in lines[0] and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nodb.yaml"]  # nothing created


def _fresh_database(url: str, name: str) -> str:
    """A new empty database on the test server; its URL."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as con:
        con.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


def test_drivers_starting_together_on_an_empty_database_both_open_it(postgres_url):  # noqa: F811
    """Drivers that start at the same moment all create Optuna's tables; none may fail for it."""
    import threading

    from search.storage import open_storage

    for round_ in range(3):
        url = _fresh_database(postgres_url, f"race{round_}")
        start, errors, storages = threading.Barrier(4), [], []

        def open_at_once():
            start.wait()
            try:
                storages.append(open_storage(url, create=True))
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=open_at_once) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, f"round {round_}: {errors}"
        assert len(storages) == 4
        for storage in storages:
            storage.engine.dispose()


def test_budget_lock_lets_one_driver_at_a_time_count_and_ask(tmp_path, postgres_url):  # noqa: F811
    """Two holders of the study's budget lock never overlap (it is what keeps two drivers from both
    taking the last slot); another study's lock is independent."""
    import threading

    from search.storage import budget_lock

    cfg = parse_study(_study(tmp_path, postgres_url, "locked"), str(tmp_path / "locked.yaml"))
    other_cfg = parse_study(_study(tmp_path, postgres_url, "unlocked"), str(tmp_path / "unlocked.yaml"))
    study, other = open_study(cfg), open_study(other_cfg)
    spans: dict[str, tuple[float, float]] = {}
    start = threading.Barrier(2)

    def hold(name: str, s) -> None:
        start.wait()
        if name == "second":
            time.sleep(0.1)  # let the first one in
        with budget_lock(s):
            entered = time.monotonic()
            time.sleep(0.5)
            spans[name] = (entered, time.monotonic())  # taken inside: the release comes after

    threads = [threading.Thread(target=hold, args=(name, study)) for name in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert spans["second"][0] >= spans["first"][1], spans  # the second waited for the first

    with budget_lock(study):  # held here: another study's lock is still free at once
        t0 = time.monotonic()
        with budget_lock(other):
            assert time.monotonic() - t0 < 0.5


# A driver whose heartbeat is 1 s (grace period 6 s), set before anything opens the storage. With
# `block`, its trials announce themselves (`running_<trial number>` in the gate folder) and then never
# return, so the test can SIGKILL the driver mid-trial; without it they are the stand-in trial.
KILLABLE_DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import search.storage
    search.storage.HEARTBEAT_S = 1
    from search.config import load_study
    from search.sweep import Sweep
    from search.testing import cheap_trial

    study_file, gate, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

    def blocking_trial(spec, data, report):
        (gate / f"running_{spec['number']}").touch()
        time.sleep(600)  # killed long before; the limit only keeps a leaked worker from living on
        raise RuntimeError("the test should have killed this driver")

    s = Sweep(load_study(study_file), trial_fn=blocking_trial if mode == "block" else cheap_trial).run()
    print("SUMMARY", s.trained, s.stopped, s.failed, s.infeasible, s.duplicate, flush=True)
""")


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group, then anything else left in its session (Ray's processes)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == proc.pid:  # fields after the name: state, ppid, pgrp, session
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_killed_drivers_trials_are_failed_and_requeued_by_the_next(tmp_path, postgres_url):  # noqa: F811
    """Shared-database recovery: a driver SIGKILLed mid-trial leaves its trials RUNNING with no more
    heartbeats; a second driver started after the grace period fails them (Optuna's stale-trial check)
    and re-queues each one's parameters as a retry, which it trains. Afterwards the study holds exactly
    the budget of trained trials, each interrupted trial is FAIL with one trained retry of the same
    parameters, nothing is left RUNNING or WAITING, and no architecture is trained twice."""
    study_file = tmp_path / "killed.yaml"
    study_file.write_text(yaml.safe_dump(_study(tmp_path, postgres_url, "killed")))
    (tmp_path / "driver.py").write_text(KILLABLE_DRIVER)
    gate = tmp_path / "gate"
    gate.mkdir()

    def start(mode: str) -> subprocess.Popen:
        out, err = open(tmp_path / f"{mode}.out", "w"), open(tmp_path / f"{mode}.err", "w")
        with out, err:
            return subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(study_file), str(gate), mode],
                                    cwd=tmp_path, env=_env(), stdout=out, stderr=err, start_new_session=True)

    def logs(mode: str) -> str:
        return (tmp_path / f"{mode}.out").read_text()[-2000:] + "\n" + (tmp_path / f"{mode}.err").read_text()[-3000:]

    a = start("block")
    try:
        deadline = time.monotonic() + DRIVER_TIMEOUT_S
        while not list(gate.glob("running_*")) and a.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        running = sorted(int(p.name.split("_")[1]) for p in gate.glob("running_*"))
        assert running, f"driver A never started a trial (exit status {a.poll()}):\n{logs('block')}"
        time.sleep(1)  # let A finish proposing its look-ahead trial, so it dies waiting on its worker
    finally:
        _kill_session(a)
    left_by_a = load_existing_study(postgres_url, "killed").get_trials()
    assert left_by_a and all(t.state == TrialState.RUNNING for t in left_by_a), \
        [(t.number, t.state.name) for t in left_by_a]
    killed_at = time.monotonic()

    time.sleep(max(0.0, killed_at + 8 - time.monotonic()))  # past the 6 s grace period: A's trials are stale
    b = start("run")
    try:
        rc = b.wait(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        _stop(b)
    assert rc == 0, f"driver B exited {rc}:\n{logs('run')}"

    trials = load_existing_study(postgres_url, "killed").get_trials()
    by_number = {t.number: t for t in trials}
    problems = []
    for n in running:
        if by_number[n].state != TrialState.FAIL:
            problems.append(f"trial {n}, running when its driver was killed, is {by_number[n].state.name}, not FAIL")
    for t in trials:
        if t.state != TrialState.FAIL or not t.params:
            continue
        retries = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        if len(retries) != 1:
            problems.append(f"failed trial {t.number} has {len(retries)} retries {[r.number for r in retries]}, not 1")
            continue
        r = retries[0]
        if r.number <= t.number or r.params != t.params or trial_status(r) != "trained":
            problems.append(f"retry {r.number} of failed trial {t.number}: {trial_status(r)}, "
                            f"params {'equal' if r.params == t.params else 'differ'}")
    # Optuna fails a stale trial without this driver's `status` record (its state says it): only
    # the dead driver's trials may lack one.
    for p in _problems(trials, [_summary((tmp_path / "run.out").read_text())]):
        if p.startswith("finished trials without a `status` record: "):
            numbers = set(json.loads(p.split(": ", 1)[1]))
            if numbers <= {t.number for t in left_by_a}:
                continue
        problems.append(p)
    assert not problems, "\n".join(problems) + f"\ndriver B:\n{logs('run')}"
