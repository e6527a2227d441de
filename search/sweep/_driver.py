"""`python -m search run`: the sweep driver loop.

One loop keeps up to the backend's slots busy. For every free slot it has ``_proposals`` ask the
study for an architecture, get it priced and decided (over-budget and already-trained architectures
are recorded at once, without a worker) and submitted; every event the backend returns is applied by
``_outcomes`` (the one place that records, tells and retries). The driver alone writes the database.
The policy (``_policy``) holds every rule; ``_start`` rebuilds a resumed sweep's state from the study.
"""
from __future__ import annotations

import time
from typing import Callable

from optuna.trial import TrialState

from search import faults
from search.artifacts import clean_leftovers
from search.config import StudyConfig
from search.exceptions import DataError, SearchSpaceExhausted
from search.feasibility import check_budget_reachable, check_seed_costs
from search.prescreen import Candidate
from search.proposal import family_spaces
from search.record import TrialStatus, read_record, trial_status
from search.storage import (HEARTBEAT_S, DriverLock, Heartbeat, budget_lock, check_existing_database, display_url,
                            make_sampler, open_study, sqlite_path)
from search.sweep._apply import Outcomes
from search.sweep._plateau import watch_plateau
from search.sweep._pricing import PriceFunction
from search.sweep._progress import Progress, SweepSummary
from search.sweep._proposals import Proposals
from search.sweep._start import enqueue_seeds, make_policy, recover, rung_rule
from search.sweep._state import SweepState
from search.sweep.backends import Backend, EpochReport, Finished, Priced, make_backend

__all__ = ["Sweep", "load_study_data"]

_LOOKAHEAD = 1  # architectures asked and priced ahead of the free workers
_WAIT_S = 0.5  # how often a driver waiting on other drivers' trials looks at the study


def load_study_data(cfg: StudyConfig):
    """The study's data splits, as every trial sees them (``run``, ``validate``, ``evaluate``).

    Raises:
        DataError: missing files, or sizes the dataset cannot give.
    """
    from trainers.data import DataConfig, load_data

    d = cfg.data
    try:
        return load_data(DataConfig(dataset=d.dataset, root=d.root, train_size=d.train_size, val_size=d.val_size,
                                    test_size=d.test_size, image_size=d.image_size, seed=cfg.train.seed,
                                    download=d.download))
    except (OSError, ValueError) as e:
        raise DataError(f"{cfg.path}: data: {e}") from e


class Sweep:
    """Runs (or resumes) the study described by ``cfg``.

    Args:
        cfg: the validated study file.
        n_more: train this many more architectures instead of filling up to ``budget.n_trials``.
        trial_fn: replaces the training function on the workers (benchmarks use a trivial one).
        data: an already loaded ``DataSplits`` (tests reuse one); loaded from ``cfg.data`` if None.
        log: where progress lines go.
        backend: the execution backend (default: :func:`~search.sweep.backends.make_backend`).
        progress: ``lines``, ``live`` or ``quiet`` (``search.sweep._progress``).
    """

    def __init__(self, cfg: StudyConfig, n_more: int | None = None, trial_fn: Callable | None = None,
                 data=None, log: Callable[[str], None] = print, backend: Backend | None = None,
                 progress: str = "lines"):
        self.cfg, self.n_more, self.trial_fn, self.data = cfg, n_more, trial_fn, data
        self.summary = SweepSummary()
        self.progress = Progress(self.summary, log, progress)
        self.log, self.backend = log, backend
        self.data_meta: dict = {}
        self.spaces: dict[str, dict] = {}
        self.sampler = None
        from search.tracking import NoTracking

        self.tracker = NoTracking()  # preflight() sets the study's tracker
        self.shared_db = sqlite_path(cfg.storage_url) is None
        self.state: SweepState | None = None
        self._reaped_at = time.monotonic()
        self._waiting = False  # said once that it waits for other drivers' trials

    # -- set-up ---------------------------------------------------------------------------------
    def _load_data(self) -> None:
        if self.cfg.execution.backend == "simulated":  # nothing trains: the table says the data's shape
            from search.sweep.backends.simulated import table_data_meta
            from search.tables import load_table

            self.data_meta = table_data_meta(load_table(self.cfg.execution.table))
            return
        if self.data is None:
            self.data = load_study_data(self.cfg)
        self.data_meta = {"num_classes": self.data.num_classes, "image_size": self.data.image_size,
                          "in_channels": self.data.in_channels,
                          "mean": list(self.data.mean), "std": list(self.data.std)}

    def preflight(self) -> None:
        """Every check of the study file's inputs that can fail (sampler options, data present and
        readable, budget reachable, seeds within the limits, warm-start source, storage creatable and
        holding this study or none), before the run directory or database exist. `validate` runs it too."""
        self.sampler = make_sampler(self.cfg)  # bad sampler options; built once, used by the study
        self._load_data()
        self.spaces = family_spaces(self.cfg)
        if self.cfg.execution.backend == "simulated" and self.cfg.execution.match == "exact":
            # a space reaching beyond the table: now, not mid-sweep
            from search.sweep.backends.simulated import check_table_covers
            from search.tables import load_table

            check_table_covers(self.cfg, load_table(self.cfg.execution.table), self.spaces)
        check_budget_reachable(self.cfg, self.spaces, self.data_meta)
        check_seed_costs(self.cfg, self.data_meta)
        if self.cfg.warm_start is not None:
            from search.warm_start import check_source

            check_source(self.cfg)
        check_existing_database(self.cfg)
        from search.tracking import make_tracker

        self.tracker = make_tracker(self.cfg, self.log)  # a tracking server that does not answer: now
        if self.backend is None and self.cfg.execution.backend != "simulated" and \
                self.cfg.ray.address not in (None, "local"):
            from search.sweep.backends._ray import check_reachable

            check_reachable(self.cfg.ray.address, self.cfg.ray.connect_timeout_s, self.cfg.path)

    def _open(self):
        """The study, trials a dead driver left re-queued, warm-start imports, this driver's policy
        and state, and the seeds queued."""
        study = open_study(self.cfg, sampler=self.sampler, single_writer=not self.shared_db)
        held = len(study.get_trials(deepcopy=False))
        if held:  # a resumed study: not the first run's draws again (see make_sampler)
            study.sampler = make_sampler(self.cfg, resumed_at=held)
        recovered = recover(study, self.shared_db)
        removed = clean_leftovers(self.cfg)  # temporary files a killed driver or worker left
        if removed:
            self.log(f"removed {removed} temporary file(s) that a killed driver or worker left")
        fidelity = self.cfg.fidelity_key()
        if self.cfg.warm_start is not None:
            from search.warm_start import import_trials

            with budget_lock(study, self.cfg.storage_url):  # two drivers starting together import once
                self.log(import_trials(self.cfg, study, self.spaces, fidelity, self.data_meta).message())
        trials = study.get_trials(deepcopy=False)
        policy = make_policy(self.cfg, trials, self.n_more, self.shared_db)
        self.state = SweepState(self.cfg, study, policy, self.backend, self.summary, self.progress, self.tracker,
                                fidelity, self.spaces, self.data_meta, shared_db=self.shared_db)
        self._note_history(trials)
        self.state.plateau = watch_plateau(self.cfg, trials)
        enqueue_seeds(self.cfg, study, self.log)
        return study, recovered

    def _note_history(self, trials: list) -> None:
        """The best so far for the progress view, and the screening scores of earlier proposals."""
        for t in trials:
            rec = read_record(t)
            if trial_status(t) == TrialStatus.TRAINED:
                self.progress.note_trained(rec.val_acc, t.number)
            if self.cfg.prescreen is not None and rec.macs is not None and rec.proxies:
                self.state.scored.append(Candidate(t.number, rec.proxies.get(self.cfg.prescreen.proxy), rec.macs,
                                                   rec.params))

    def run(self) -> SweepSummary:
        self.preflight()
        with DriverLock(self.cfg.storage_url, self.cfg.path, self.cfg.study):
            study, recovered = self._open()
            used, target = self.state.policy.used, self.state.policy.target
            self.log(f"study {self.cfg.study!r} in {display_url(self.cfg.storage_url)}: {used} of {target} "
                     f"trials done" + (f", {recovered} interrupted trial(s) re-queued" if recovered else ""))
            if used >= target:
                return self.summary
            self.backend = self.state.backend = self.backend or self._make_backend(study)
            slots = self.backend.start(self.data, rung_rule(self.cfg, study))
            self.log(self._slots_line(slots))
            loop_start = time.perf_counter()
            self.progress.start(target, used, self.cfg.fidelity.epochs, self.cfg.directions)
            try:
                with Heartbeat(study, self.state.held_trials):
                    self._loop()
            finally:
                self.progress.close()
                self.tracker.close()  # runs of trials still in flight end as KILLED
                self.backend.close()
            self.summary.loop_seconds = time.perf_counter() - loop_start
        return self._summarise()

    def _make_backend(self, study) -> Backend:
        clock_start = 0.0
        if self.cfg.execution.backend == "simulated":
            from search.sweep.backends.simulated import study_clock

            clock_start = study_clock(study.get_trials(deepcopy=False))
        price_fn = PriceFunction.for_study(self.cfg, self.data, self.data_meta)
        return make_backend(self.cfg, price_fn, self.trial_fn, clock_start=clock_start)

    def _slots_line(self, slots: int) -> str:
        if self.cfg.execution.backend == "simulated":
            return f"{slots} simulated worker(s) replaying {self.cfg.execution.table}"
        return (f"{slots} concurrent trial(s), {self.cfg.resources.cpus_per_trial} CPU "
                f"and {self.cfg.resources.gpus_per_trial} GPU each")

    def _summarise(self) -> SweepSummary:
        s = self.summary
        s.nodes = set(self.backend.nodes)
        s.wall_seconds = time.perf_counter() - self.progress.started
        s.overhead_ms_per_trial = 1000 * self.state.overhead_s / max(1, s.proposals)
        s.clock_seconds = self.backend.clock()
        return s

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        st, limit = self.state, self.cfg.budget.time_limit_s
        outcomes = Outcomes(st)
        proposals = Proposals(st, outcomes)
        exhausted = False
        while True:
            out_of_time = limit is not None and self.backend.clock() > limit
            out_of_time = out_of_time or (st.plateau is not None and st.plateau.flat)
            while st.ready and self.backend.free_slots():
                proposals.submit(*st.ready.pop(0))
            # Proposing one architecture ahead of the free workers keeps the driver busy while the
            # pricer works: a worker that comes back finds its next trial priced and waiting.
            while (self.backend.free_slots() + _LOOKAHEAD > len(st.pending) + len(st.ready)
                   and not (out_of_time or exhausted) and st.budget_left() > 0):
                exhausted = st.policy.exhausted
                if not exhausted:
                    proposals.propose_one()
            if not st.inflight and not st.pending and not st.ready:
                if st.pool:  # no more proposals come: choose from what the pool holds, unless the time is up
                    proposals.screen_pool(release=out_of_time)
                    continue
                if out_of_time or exhausted or not self._others_running():
                    break
                self._wait_for_others()
                continue
            # Woken at least every second while trials train, for the per-epoch progress.
            for event in self.backend.next_events(timeout=1.0 if st.inflight else None):
                self._handle(event, proposals, outcomes)
            self._reap_stale()
        if exhausted:
            self._give_up()
        if limit is not None and self.backend.clock() > limit:
            self.log(f"time limit of {limit:.0f}s reached; `run` again to continue")
        if st.plateau is not None and st.plateau.flat:
            flat = self.cfg.budget.stop_when_flat
            self.log(f"the front grew by less than {flat.min_gain:.1%} over the last {flat.window} trained trials: "
                     f"stopped early (budget.stop_when_flat)")

    def _others_running(self) -> int:
        """Trials other drivers hold RUNNING on a shared database (this one holds none now)."""
        if not self.shared_db:
            return 0
        return len(self.state.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def _wait_for_others(self) -> None:
        """The budget is spoken for by other drivers' trials: wait for them to end rather than exit,
        re-queueing those whose driver stops beating (then taken here): a driver killed near the
        end loses nothing even when nobody runs it again."""
        if not self._waiting:
            self._waiting = True
            self.log(f"waiting for {self._others_running()} trial(s) of other drivers to end "
                     f"(those of a driver that stops are re-queued and trained here)")
        time.sleep(_WAIT_S)
        self._reap_stale()

    def _reap_stale(self) -> None:
        """On a shared database, re-queue the trials of drivers that stopped beating while this one
        runs (not only when a driver starts): their budget and architectures are free again."""
        if not self.shared_db:
            return
        now = time.monotonic()
        if now - self._reaped_at >= HEARTBEAT_S:
            self._reaped_at = now
            recover(self.state.study, shared_db=True)

    def _handle(self, event, proposals: Proposals, outcomes: Outcomes) -> None:
        if isinstance(event, Priced):
            proposals.priced(event.token, event.cost, event.constraints, event.proxies)
        elif isinstance(event, Finished):
            with self.state.timed():
                outcomes.finished(event.token, event.outcome)
        elif isinstance(event, EpochReport):
            self.progress.epoch(event.token, event.metrics)
            self.tracker.epoch(event.token, event.metrics)
            faults.checkpoint("epoch")

    def _give_up(self) -> None:
        s = self.summary
        raise SearchSpaceExhausted(
            f"{self.cfg.path}: the last {self.cfg.budget.max_stalls} proposals were all over budget or "
            f"already trained ({s.infeasible} infeasible, {s.duplicate} duplicates in this run); widen "
            f"`constraints:` or the families' knob ranges, or lower budget.n_trials")
