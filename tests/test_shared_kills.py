"""Drivers SIGKILLed on a shared PostgreSQL study (tests/pg_server.py starts a private server).

Three drivers run one warm-started, seeded study on the simulated backend (the real driver, policy,
sampler and storage; only training is replayed, each trial held back a little so the drivers
overlap) and are killed at seeded random moments, some started again. The living drivers must
re-queue a dead driver's trials once its heartbeats stop, within the grace period, and finish the
budget exactly, each seed trained once, the source study imported once. A driver killed between
asking for a trial and that trial's first heartbeat must leave a trial the others re-queue too.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from pg_server import postgres_url  # noqa: F401  (the module-scoped server fixture)
from search.record import trial_status
from search.storage import GRACE_BEATS, load_existing_study
from studies import simulated_raw, with_changes

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
REPO = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 1  # the drivers' heartbeat here (5 s in use): a dead driver's trials are stale after 6 s
GRACE_S = GRACE_BEATS * HEARTBEAT_S
ONES = {"family": "nas_bench_macro", "name": "all-k3", "knobs": {"layer": [1] * 8}}
TWOS = {"family": "nas_bench_macro", "name": "all-k5", "knobs": {"layer": [2] * 8}}
SEEDS = [ONES, TWOS]
KILL_SEED = int(os.environ.get("EFFNAS_KILL_SEED", "0"))  # the kill plan's seed (reproducible)
DRIVER_TIMEOUT_S = 90

# A driver whose heartbeat is 1 s. It notes every trial it asks for in `asked_<name>` (so the test
# knows whose trials a kill left), and holds each simulated trial back `delay` seconds before its
# result comes in (the simulated backend never sleeps; this keeps the drivers' trials overlapping).
DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import search.storage
    search.storage.HEARTBEAT_S = int(sys.argv[5])
    from search.config import load_study
    from search.sweep import Sweep, _proposals
    from search.sweep.backends import Finished
    from search.sweep.backends.simulated import SimulatedBackend

    study_file, marks, name, delay = sys.argv[1], Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    ask, next_events = _proposals.Proposals._ask, SimulatedBackend.next_events

    def noted_ask(self):
        trial = ask(self)
        if trial is not None:
            with open(marks / f"asked_{name}", "a") as f:
                f.write(f"{trial.number}\\n")
        return trial

    def held_back(self, timeout=None):
        events = next_events(self, timeout)
        if any(isinstance(e, Finished) for e in events):
            time.sleep(delay)
        return events

    _proposals.Proposals._ask, SimulatedBackend.next_events = noted_ask, held_back
    s = Sweep(load_study(study_file)).run()
    print("SUMMARY", s.trained, flush=True)
""")


# -- the study and its drivers ------------------------------------------------------------------------

def _source_study(tmp_path: Path, n: int) -> str:
    """A small trained simulated study on SQLite to warm-start from; its URL."""
    from search.config import parse_study
    from search.sweep import Sweep

    raw = with_changes(simulated_raw(tmp_path / "src"), {"study": "src", "budget": {"n_trials": n}})
    cfg = parse_study(raw, str(tmp_path / "src.yaml"))
    Sweep(cfg, log=lambda _: None).run()
    return cfg.storage_url


def _study_file(tmp_path: Path, url: str, name: str, n: int, warm_from: str | None = None) -> Path:
    raw = with_changes(simulated_raw(tmp_path), {"study": name, "storage": url, "budget": {"n_trials": n},
                                                 "seeds": SEEDS, "execution__workers": 2})
    if warm_from:
        raw["warm_start"] = {"storage": warm_from, "study": "src"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "marks").mkdir(exist_ok=True)
    return path


def _start(tmp_path: Path, study_file: Path, name: str, delay: float, kill_at: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("EFFNAS_KILL_AT", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **({"EFFNAS_KILL_AT": kill_at} if kill_at else {}))
    with open(tmp_path / f"{name}.log", "w") as log:
        return subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(study_file), str(tmp_path / "marks"),
                                 name, str(delay), str(HEARTBEAT_S)], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen) -> datetime:
    """SIGKILL a driver's whole process group; the moment it was dead."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return datetime.now()


def _finish(procs: dict[str, subprocess.Popen], timeout: float = DRIVER_TIMEOUT_S) -> dict[str, int | None]:
    """Wait for every driver to exit by itself (None: it did not in time, and was killed)."""
    deadline = time.monotonic() + timeout
    codes = {}
    for name, p in procs.items():
        try:
            codes[name] = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(p)
            codes[name] = None
    return codes


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}:\n{p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("*.log")))


def _asked(tmp_path: Path, name: str) -> set[int]:
    path = tmp_path / "marks" / f"asked_{name}"
    return {int(n) for n in path.read_text().split()} if path.exists() else set()


def _wait_for_marks(tmp_path: Path, names: list[str]) -> None:
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    while not all(_asked(tmp_path, n) for n in names):
        assert time.monotonic() < deadline, f"drivers {names} never asked for a trial:\n{_logs(tmp_path)}"
        time.sleep(0.05)


# -- what must hold -----------------------------------------------------------------------------------

def _requeued_as_stale(trials) -> dict[int, object]:
    """Trial number -> the copy queued because its driver stopped beating."""
    return {t.user_attrs["retry_of"]: t for t in trials
            if "no heartbeat" in str(t.user_attrs.get("retry_reason", ""))}


def _budget_problems(trials, n: int) -> list[str]:
    problems = []
    counts = Counter(trial_status(t) for t in trials)
    if counts["trained"] != n:
        problems.append(f"{counts['trained']} trials trained, budget {n}: {dict(counts)}")
    numbers = sorted(t.number for t in trials)
    if numbers != list(range(len(numbers))):
        problems.append(f"trial numbers not unique and contiguous: {numbers}")
    left = [(t.number, t.state.name, t.user_attrs) for t in trials
            if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    if left:
        problems.append(f"trials left RUNNING/WAITING: {left}")
    keys = Counter(t.user_attrs["record"]["arch_key"] for t in trials if trial_status(t) in ("trained", "imported"))
    if any(c > 1 for c in keys.values()):
        problems.append(f"architectures trained or imported twice: {[k for k, c in keys.items() if c > 1]}")
    return problems


def _seed_problems(trials) -> list[str]:
    problems = []
    for seed in SEEDS:
        runs = [t for t in trials if t.user_attrs.get("seed") == seed["name"] and trial_status(t) == "trained"]
        if len(runs) != 1:
            problems.append(f"seed {seed['name']} trained {len(runs)} times")
        elif runs[0].user_attrs["record"]["knobs"] != seed["knobs"]:
            problems.append(f"seed {seed['name']} trained with knobs {runs[0].user_attrs['record']['knobs']}")
    return problems


def _import_problems(trials, source_url: str) -> list[str]:
    source = [t.number for t in load_existing_study(source_url, "src").get_trials() if trial_status(t) == "trained"]
    imported = sorted(t.user_attrs["imported_from"]["number"] for t in trials if "imported_from" in t.user_attrs)
    return [] if imported == sorted(source) else [f"imported source trials {imported}, the source trained {source}"]


def _reaping_problems(trials, kills: dict[str, datetime], asked: dict[str, set[int]]) -> list[str]:
    """Every trial a dead driver left RUNNING was failed and re-queued by a living driver within the
    grace period (plus a heartbeat and the reaping interval); no living driver's trial ever was."""
    problems, by_number = [], {t.number: t for t in trials}
    owner = {n: name for name, numbers in asked.items() for n in numbers}
    stale = _requeued_as_stale(trials)
    for number, copy in stale.items():
        name = owner.get(number)
        if name not in kills:
            problems.append(f"trial {number} of driver {name}, never killed, was re-queued as stale")
            continue
        waited = (by_number[number].datetime_complete - kills[name]).total_seconds()
        if not GRACE_S - 2 * HEARTBEAT_S <= waited <= GRACE_S + 5 * HEARTBEAT_S:
            problems.append(f"trial {number} of driver {name} re-queued {waited:.1f} s after the kill "
                            f"(grace {GRACE_S} s)")
    for name in kills:
        for n in asked[name]:
            t = by_number[n]
            if trial_status(t) == "interrupted" and n not in stale and (t.params or t.system_attrs.get("fixed_params")):
                problems.append(f"trial {n} of killed driver {name} failed but was not re-queued")
    return problems


# -- three drivers, two killed at random --------------------------------------------------------------

def _kill_plan(rng: random.Random, n: int) -> list[tuple[int, float, str, bool]]:
    """(trials trained by then, seconds more, victim, started again?): d1 and d2 once each, in a
    random order, one while the study is young and one near its end (when the living drivers have
    nothing left to do but wait for the dead one's trials); d0 always lives."""
    victims = rng.sample(["d1", "d2"], 2)
    when = [rng.randint(2, n // 2), rng.randint(n - 6, n - 3)]
    return [(k, rng.uniform(0.0, 0.5), v, rng.random() < 0.5) for k, v in zip(when, victims)]


def _trained(url: str, study: str) -> int:
    """Trials of ``study`` trained by the drivers so far (COMPLETE, imported ones left out)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.connect() as con:
        n = con.execute(sqlalchemy.text(
            "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :name "
            "AND t.state = 'COMPLETE' AND NOT EXISTS (SELECT 1 FROM trial_user_attributes a "
            "WHERE a.trial_id = t.trial_id AND a.key = 'imported_from')"), {"name": study}).scalar()
    engine.dispose()
    return n


def _wait_until_trained(url: str, study: str, k: int) -> None:
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    while _trained(url, study) < k and time.monotonic() < deadline:
        time.sleep(0.05)


def _run_with_kills(tmp_path, url, study_file, plan) -> tuple[dict, dict, dict]:
    procs = {name: _start(tmp_path, study_file, name, delay=0.3) for name in ("d0", "d1", "d2")}
    kills, codes = {}, {}
    try:
        _wait_for_marks(tmp_path, ["d0", "d1", "d2"])
        for k, wait, victim, again in plan:
            _wait_until_trained(url, "three", k)
            time.sleep(wait)
            kills[victim] = _kill(procs.pop(victim))
            if again:
                procs[victim + "r"] = _start(tmp_path, study_file, victim + "r", delay=0.3)
    finally:
        codes = _finish(procs)
    asked = {name: _asked(tmp_path, name) for name in ("d0", "d1", "d2", "d1r", "d2r")}
    return kills, codes, asked


def test_three_drivers_killed_at_random_lose_nothing(tmp_path, postgres_url):  # noqa: F811
    n = 24
    source_url = _source_study(tmp_path, 6)
    study_file = _study_file(tmp_path, postgres_url, "three", n, warm_from=source_url)
    plan = _kill_plan(random.Random(KILL_SEED), n)
    kills, codes, asked = _run_with_kills(tmp_path, postgres_url, study_file, plan)
    context = f"\nkill plan {plan} (EFFNAS_KILL_SEED={KILL_SEED}), exit codes {codes}\n{_logs(tmp_path)}"
    assert all(c == 0 for c in codes.values()), context
    trials = load_existing_study(postgres_url, "three").get_trials()
    problems = (_budget_problems(trials, n) + _seed_problems(trials) + _import_problems(trials, source_url)
                + _reaping_problems(trials, kills, asked))
    assert not problems, "\n".join(problems) + context
    assert _requeued_as_stale(trials), "no kill left a trial running: the test proved nothing" + context


# -- killed between ask and the first heartbeat -------------------------------------------------------

def _never_beaten(url: str, trial) -> bool:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.connect() as con:
        rows = con.execute(sqlalchemy.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :id"),
                           {"id": trial._trial_id}).scalar()
    engine.dispose()
    return rows == 0


def test_a_driver_killed_before_its_trials_first_heartbeat_leaves_it_to_others(tmp_path, postgres_url):  # noqa: F811
    """Killed right after asking for the second seed: that trial is RUNNING and never beat, which
    Optuna's stale check never finds; a living driver fails it once its grace period has passed
    since it started, and trains the seed it carried."""
    n = 6
    study_file = _study_file(tmp_path, postgres_url, "unbeaten", n)
    killed = _start(tmp_path, study_file, "a", delay=0.0, kill_at="unbeaten:2")
    assert killed.wait(timeout=DRIVER_TIMEOUT_S) == -signal.SIGKILL, _logs(tmp_path)
    orphan = load_existing_study(postgres_url, "unbeaten").get_trials()[1]
    assert orphan.state == TrialState.RUNNING and _never_beaten(postgres_url, orphan), _logs(tmp_path)
    codes = _finish({"b": _start(tmp_path, study_file, "b", delay=0.05)}, timeout=40)
    assert codes == {"b": 0}, _logs(tmp_path)
    trials = load_existing_study(postgres_url, "unbeaten").get_trials()
    problems = _budget_problems(trials, n) + _seed_problems(trials)
    copy = _requeued_as_stale(trials).get(1)
    if copy is None or copy.user_attrs.get("seed") != TWOS["name"] or trial_status(copy) != "trained":
        problems.append(f"trial 1 (seed {TWOS['name']}) not re-queued as itself and trained: {copy}")
    assert not problems, "\n".join(problems) + "\n" + _logs(tmp_path)


# -- the reaper itself --------------------------------------------------------------------------------

def _aged(url: str, sql: str, trial) -> None:
    """Move a trial's heartbeat or start an hour back (``sql`` names the table and column)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as con:
        con.execute(sqlalchemy.text(sql), {"id": trial._trial_id})
    engine.dispose()


def _advisory_locks_held(url: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.connect() as con:
        held = con.execute(sqlalchemy.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"))
        n = held.scalar()
    engine.dispose()
    return n


def _asked_and_beating(study, n: int) -> list:
    from optuna.distributions import CategoricalDistribution

    from search.storage import _optuna_compat as compat

    trials = [study.ask({"family": CategoricalDistribution(["nas_bench_macro"])}) for _ in range(n)]
    for trial in trials:
        compat.record_heartbeat(study, trial)
    return trials


def _reaper_study(tmp_path, url):
    """Trials 0-3 RUNNING: 0 stopped beating an hour ago, 1 never beat and started an hour ago, 2
    stopped beating and its copy is queued already (trial 4), 3 beats."""
    from search.config import parse_study
    from search.storage import open_study

    raw = with_changes(simulated_raw(tmp_path), {"study": "reaped", "storage": url})
    study = open_study(parse_study(raw, str(tmp_path / "r.yaml")))
    stopped, unbeaten, copied, _ = _asked_and_beating(study, 4)
    study.enqueue_trial({"family": "nas_bench_macro"}, user_attrs={"retry_of": copied.number})
    an_hour_ago = "{column} = {column} - interval '1 hour' WHERE trial_id = :id"
    _aged(url, "UPDATE trial_heartbeats SET " + an_hour_ago.format(column="heartbeat"), stopped)
    _aged(url, "DELETE FROM trial_heartbeats WHERE trial_id = :id", unbeaten)
    _aged(url, "UPDATE trials SET " + an_hour_ago.format(column="datetime_start"), unbeaten)
    _aged(url, "UPDATE trial_heartbeats SET " + an_hour_ago.format(column="heartbeat"), copied)
    return study


def test_stale_trials_are_queued_again_under_the_budget_lock_then_failed(tmp_path, monkeypatch,
                                                                        postgres_url):  # noqa: F811
    """A trial whose heartbeat stopped and one that never beat are each queued once, under the budget
    lock and while still RUNNING (a driver counting the budget meanwhile would take the copy's slot),
    then failed as interrupted; one whose copy is queued already (its reaper died) is only failed;
    a beating trial is left alone."""
    import search.storage._shared as shared
    from search.sweep._start import recover

    study = _reaper_study(tmp_path, postgres_url)
    seen = []

    def watched(study_, trial, attempt, **kw):
        state = study_.get_trials(deepcopy=False)[trial.number].state
        seen.append((trial.number, state.name, _advisory_locks_held(postgres_url)))
        return requeue(study_, trial, attempt, **kw)

    requeue = shared.requeue
    monkeypatch.setattr(shared, "requeue", watched)
    assert recover(study, shared_db=True) == 2
    assert seen == [(0, "RUNNING", 1), (1, "RUNNING", 1)], seen
    trials = study.get_trials(deepcopy=False)
    assert [trial_status(t) for t in trials] == ["interrupted"] * 3 + ["running"] + ["waiting"] * 3
    assert [t.user_attrs.get("retry_of") for t in trials[3:]] == [None, 2, 0, 1]
    assert recover(study, shared_db=True) == 0  # nothing stale is left


def test_a_driver_beats_for_every_trial_it_holds_not_only_training_ones():
    """A trial being priced or waiting in the pre-screening pool is as much this driver's as one that
    trains: without its beats another driver would re-queue it once the grace period passed."""
    from types import SimpleNamespace

    from search.sweep._state import SweepState

    def held(n: int):
        return SimpleNamespace(trial=f"trial {n}")

    state = SweepState(*[None] * 10, pending={0: held(0)}, pool=[(held(1), None)], ready=[(held(2), None)],
                       inflight={3: (held(3), None)})
    assert sorted(state.held_trials()) == [f"trial {n}" for n in range(4)]
