"""The execution-backend contract: what the real sweep driver must do on any backend.

A backend's test module subclasses :class:`BackendContract` (as Optuna's storage tests are
parametrised over storages) and says how to build its study and how a trial behaves there; every
test below then runs on it: the budget trained exactly and resumed, duplicates and over-budget
architectures never trained, failures retried and counted, the rung rule's decisions, seeds trained
once and never stopped, and a SIGKILLed driver whose rerun loses nothing.

Trial behaviours a subclass maps to its own means: ``cheap`` (one result at once), ``curve`` (a
rising curve over the study's epochs, stoppable at a rung), ``failing`` (every attempt fails).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from search.exceptions import SearchSpaceExhausted
from search.pareto import non_dominated, pareto_front
from search.proposal import draw as propose, family_spaces
from search.record import read_record, trial_status
from search.storage import open_study
from search.sweep import Sweep
from search.sweep._start import rung_rule
from studies import statuses, trials_of

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import sys
from search import testing
from search.config import load_study
from search.sweep import Sweep
cfg = load_study(sys.argv[1])
trial_fn = getattr(testing, sys.argv[2] if len(sys.argv) > 2 else "cheap_trial")
Sweep(cfg, trial_fn=None if cfg.execution.backend == "simulated" else trial_fn).run()
"""


class BackendContract:
    """Subclass with the hooks below; pytest collects the tests in each subclass."""

    failure_kind = "exception"  # what a ``failing`` trial's record says
    # Where ``test_a_driver_killed_then_rerun_loses_nothing`` kills the driver (``EFFNAS_KILL_AT``).
    kill_points = ("asked:3", "submitted:3", "recorded:2")

    def pytest_generate_tests(self, metafunc):
        if "kill_at" in metafunc.fixturenames:
            metafunc.parametrize("kill_at", self.kill_points)

    # -- hooks ----------------------------------------------------------------------------------
    def study(self, tmp_path, **changes):
        """The backend's small study (``a__b=value`` changes nested keys)."""
        raise NotImplementedError

    def one_architecture(self) -> dict:
        """Changes to ``study`` that leave a space of exactly one architecture."""
        raise NotImplementedError

    def param_limit(self) -> int:
        """A ``max_params`` some of the space's architectures exceed and some meet."""
        raise NotImplementedError

    def curves(self, tmp_path) -> dict:
        """Changes that give 4-epoch curves (the rung tests); ``behaviour='curve'`` in ``sweep``."""
        return {"fidelity": {"epochs": 4, "asha": {"grace_period": 1, "reduction_factor": 2}}}

    def seeds(self) -> list:
        """Two seed designs of the study's space, named."""
        raise NotImplementedError

    def failing(self) -> dict:
        """Changes under which every attempt fails (with ``behaviour='failing'``)."""
        return {}

    def sweep(self, cfg, behaviour: str = "cheap", n_more: int | None = None, log=None) -> Sweep:
        raise NotImplementedError

    def run(self, cfg, behaviour: str = "cheap", n_more: int | None = None, log=None):
        return self.sweep(cfg, behaviour, n_more, log).run()

    # -- the budget ---------------------------------------------------------------------------------
    def test_budget_resume_and_extend(self, tmp_path):
        cfg = self.study(tmp_path, budget={"n_trials": 3})
        study = open_study(cfg)
        orphan = study.ask()
        propose(orphan, family_spaces(cfg))  # a dead driver left this one RUNNING
        self.run(cfg)
        trials = trials_of(cfg)
        first = trials[0]
        assert first.state == TrialState.FAIL and "interrupted" in first.user_attrs["failure_reason"]
        retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
        assert retry.params == first.params and trial_status(retry) in ("trained", "duplicate")
        assert statuses(cfg).count("trained") == 3
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        # Run again: the budget is met, nothing new; --n-trials 2: exactly two more.
        assert self.run(cfg).trained == 0
        self.run(cfg, n_more=2)
        assert statuses(cfg).count("trained") == 5

    def test_over_budget_architectures_are_never_trained(self, tmp_path):
        limit = self.param_limit()
        cfg = self.study(tmp_path, constraints={"max_params": limit}, budget={"n_trials": 3, "max_stalls": 500},
                         sampler={"name": "random", "seed": 1})
        self.run(cfg)
        trials = trials_of(cfg)
        infeasible = [t for t in trials if trial_status(t) == "infeasible"]
        trained = [t for t in trials if trial_status(t) == "trained"]
        assert infeasible and len(trained) == 3
        for t in infeasible:
            rec = t.user_attrs["record"]
            assert rec["params"] > limit
            assert t.user_attrs["constraints"][0] == pytest.approx(rec["params"] / limit - 1.0)
            assert "worker_seconds" not in rec  # no worker ever saw it
        assert all(t.user_attrs["record"]["params"] <= limit for t in trained)

    def test_duplicates_are_not_trained_again_and_stall_ends_the_sweep(self, tmp_path):
        cfg = self.study(tmp_path, budget={"n_trials": 2, "max_stalls": 3}, **self.one_architecture())
        with pytest.raises(SearchSpaceExhausted, match="already trained"):
            self.run(cfg)
        found = statuses(cfg)
        assert found.count("trained") == 1 and found.count("duplicate") == 3
        dup = next(t for t in trials_of(cfg) if trial_status(t) == "duplicate")
        assert dup.user_attrs["record"]["duplicate_of"] == 0

    # -- failures -----------------------------------------------------------------------------------
    def test_failures_are_retried_then_final(self, tmp_path):
        cfg = self.study(tmp_path, budget={"n_trials": 1}, retry={"max_retries": 1}, **self.failing())
        self.run(cfg, "failing")
        trials = trials_of(cfg)
        failed = [t for t in trials if t.state == TrialState.FAIL]
        assert len(failed) == 2 == len(trials)
        assert all(t.user_attrs["record"]["failure_kind"] == self.failure_kind for t in failed)
        assert failed[1].user_attrs["retry_of"] == failed[0].number and failed[1].user_attrs["attempt"] == 1
        assert failed[0].user_attrs["final"] is False and failed[-1].user_attrs["final"] is True
        assert all(t.params == failed[0].params for t in failed)
        assert failed[0].user_attrs["record"]["failure_reason"]

    def test_final_failures_count_against_the_budget_on_resume(self, tmp_path):
        cfg = self.study(tmp_path, budget={"n_trials": 2}, retry={"max_retries": 0}, **self.failing())
        self.run(cfg, "failing")
        assert statuses(cfg) == ["failed", "failed"]
        # The budget is spent: a resumed driver trains nothing; --n-trials 1 trains exactly one more.
        cfg = self.study(tmp_path, budget={"n_trials": 2}, retry={"max_retries": 0})
        assert self.run(cfg).trained == 0
        assert self.run(cfg, n_more=1).trained == 1
        assert statuses(cfg) == ["failed", "failed", "trained"]

    # -- rungs --------------------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def curve_sweep(cls, tmp_path_factory):
        """One sweep of 10 trials with 4-epoch curves, one at a time, that both rung tests read (neither
        writes to it)."""
        contract, tmp_path = cls(), tmp_path_factory.mktemp("curves")
        cfg = contract.study(tmp_path, budget={"n_trials": 10}, resources={"cpus_per_trial": 1, "max_concurrent": 1},
                             **contract.curves(tmp_path))
        contract.run(cfg, "curve")
        return cfg

    def test_the_rung_rule_stops_weak_trials_and_the_front_ignores_them(self, curve_sweep):
        cfg = curve_sweep
        trials = trials_of(cfg)
        stopped = [t for t in trials if trial_status(t) == "stopped"]
        trained = [t for t in trials if trial_status(t) == "trained"]
        assert stopped and trained and len(stopped) + len(trained) == 10
        for t in stopped:
            rec = t.user_attrs["record"]
            assert t.state == TrialState.PRUNED
            assert rec["epochs"] == rec["fidelity_reached"] == len(rec["curve"]) < 4
            assert rec["val_acc"] == rec["curve"][-1]
        assert all(len(t.user_attrs["record"]["curve"]) == 4 for t in trained)
        front = {m.number for m in pareto_front(load(cfg))}
        brute = {trained[i].number for i in non_dominated([list(t.values) for t in trained],
                                                           ["maximize", "minimize", "minimize"])}
        assert front == brute and not front & {t.number for t in stopped}

    def test_rung_tables_are_rebuilt_from_the_database_with_costs(self, curve_sweep):
        cfg = curve_sweep
        rule = rung_rule(cfg, load(cfg))
        assert rule.rank == "pareto"  # the default of a study with cost objectives
        ran = [read_record(t) for t in trials_of(cfg) if trial_status(t) in ("trained", "stopped")]
        assert len(ran) == 10
        assert sorted(rule.rungs[1]) == sorted((r.curve[0], (r.macs, r.params)) for r in ran)

    # -- seeds --------------------------------------------------------------------------------------
    def test_seeds_train_first_once_and_are_never_stopped(self, tmp_path):
        cfg = self.study(tmp_path, budget={"n_trials": 6}, seeds=self.seeds(),
                         resources={"cpus_per_trial": 1, "max_concurrent": 1}, **self.curves(tmp_path))
        self.run(cfg, "curve")
        self.run(cfg, "curve", n_more=2)
        trials = trials_of(cfg)
        seeded = [t for t in trials if "seed" in t.user_attrs]
        assert [t.number for t in seeded] == [0, 1]
        assert all(trial_status(t) == "trained" and len(t.user_attrs["record"]["curve"]) == 4 for t in seeded)
        for t, seed in zip(seeded, self.seeds()):
            assert t.user_attrs["record"]["knobs"] == {**t.user_attrs["record"]["knobs"], **seed["knobs"]}

    # -- a killed driver ----------------------------------------------------------------------------
    def test_a_driver_killed_then_rerun_loses_nothing(self, tmp_path, kill_at, warm_python):
        n = 5
        cfg = self.study(tmp_path, budget={"n_trials": n}, seeds=self.seeds())
        path = tmp_path / "killed.yaml"
        path.write_text(yaml.safe_dump(self.driver_raw(tmp_path, budget={"n_trials": n}, seeds=self.seeds())))
        killed = _driver(warm_python, tmp_path, path, kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        before = {t.number: (tuple(t.values), t.params) for t in trials_of(cfg) if trial_status(t) == "trained"}
        assert len(before) < n
        rerun = _driver(warm_python, tmp_path, path, None)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        trials = trials_of(cfg)
        trained = [t for t in trials if trial_status(t) == "trained"]
        assert len(trained) == n
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        after = {t.number: (tuple(t.values), t.params) for t in trained}
        assert all(after[k] == v for k, v in before.items())  # nothing lost, nothing re-run
        keys = [t.user_attrs["record"]["arch_key"] for t in trained]
        assert len(keys) == len(set(keys))
        names = sorted(s["name"] for s in self.seeds())
        assert sorted(t.user_attrs["seed"] for t in trained if "seed" in t.user_attrs) == names
        for t in (t for t in trials if t.state == TrialState.FAIL):
            assert "interrupted" in t.user_attrs["failure_reason"]
            if t.params or t.system_attrs.get("fixed_params"):  # it had drawn, or was a seed: its lineage goes on
                assert any(r.user_attrs.get("retry_of") == t.number for r in trials)

    def test_a_driver_killed_between_queueing_a_retry_and_telling_the_failure_retries_it_once(self, tmp_path,
                                                                                              warm_python):
        n = 4
        changes = {"budget": {"n_trials": n}, "retry": {"max_retries": 1}, **self.flaky()}
        cfg = self.study(tmp_path, **changes)
        path = tmp_path / "killed.yaml"
        path.write_text(yaml.safe_dump(self.driver_raw(tmp_path, **changes)))
        killed = _driver(warm_python, tmp_path, path, "retry_queued:1", "flaky_trial")
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        rerun = _driver(warm_python, tmp_path, path, None, "flaky_trial")
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        trials = trials_of(cfg)
        final = [t for t in trials if trial_status(t) == "failed" and t.user_attrs.get("final")]
        assert statuses(cfg).count("trained") + len(final) == n  # the budget, exactly
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        retried = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
        assert retried and len(retried) == len(set(retried))  # one retry per failed attempt, never two
        keys = [t.user_attrs["record"]["arch_key"] for t in trials if trial_status(t) == "trained"]
        assert len(keys) == len(set(keys))

    def flaky(self) -> dict:
        """Changes under which some first attempts fail (``flaky_trial`` on Ray backends)."""
        return {}

    def study_raw(self, tmp_path, **changes) -> dict:
        """The study file ``study`` parses."""
        raise NotImplementedError

    def driver_raw(self, tmp_path, **changes) -> dict:
        """The study file of the driver processes the kill tests start (default: ``study_raw``)."""
        return self.study_raw(tmp_path, **changes)


def load(cfg):
    from search.storage import load_existing_study

    return load_existing_study(cfg.storage_url, cfg.study)


def _driver(warm_python, tmp_path: Path, study: Path, kill_at: str | None, trial: str = "cheap_trial"):
    """A driver process (forked warm: tests/warm.py) run to its end or to its kill point."""
    env = {k: v for k, v in os.environ.items() if k != "EFFNAS_KILL_AT"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'tests'}"
    if kill_at:
        env["EFFNAS_KILL_AT"] = kill_at
    return warm_python.run(DRIVER, [str(tmp_path / "driver.py"), str(study), trial], env, tmp_path, timeout=300)


class RayBackendContract(BackendContract):
    """The contract on a Ray-based backend: the digits study, stand-in trial functions."""

    backend = "actors"
    TRIALS = {"cheap": "cheap_trial", "curve": "curve_trial", "failing": "failing_trial"}

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _ray_and_data(cls, ray_local, digits):
        cls.data = digits  # the class's: class-scoped fixtures (curve_sweep) sweep too

    def study_raw(self, tmp_path, **changes) -> dict:
        from studies import digits_raw, with_changes

        return with_changes(digits_raw(tmp_path, self.backend), changes)

    def study(self, tmp_path, **changes):
        from search.config import parse_study

        return parse_study(self.study_raw(tmp_path, **changes), str(tmp_path / "t.yaml"))

    def driver_raw(self, tmp_path, **changes) -> dict:
        """The killed drivers and their reruns join the module's Ray instance, as drivers on a cluster
        do (its RAY_AUTH_MODE reaches them in the environment), instead of each starting and stopping
        its own: what a kill leaves behind is in the study database. A killed driver that started its
        own instance: tests/test_prescreen.py and tests/test_postgres.py."""
        import ray

        return self.study_raw(tmp_path, **changes, ray={"address": ray.get_runtime_context().gcs_address})

    def one_architecture(self) -> dict:
        from studies import ONE_SLIMCONV

        return {"families": {"slimconv": {"knobs": ONE_SLIMCONV}}}

    def param_limit(self) -> int:
        return 12000

    def seeds(self) -> list:
        from studies import TINY_SLIMCONV, corner_seeds

        return corner_seeds("slimconv", TINY_SLIMCONV)

    def sweep(self, cfg, behaviour: str = "cheap", n_more: int | None = None, log=None) -> Sweep:
        from search import testing

        return Sweep(cfg, n_more=n_more, trial_fn=getattr(testing, self.TRIALS[behaviour]), data=self.data,
                     log=log or (lambda _: None))
