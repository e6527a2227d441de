"""`python -m search run`: the sweep driver loop.

One loop keeps up to ``max_concurrent`` trials training on the execution backend. For every free
slot it asks the Optuna study for a family and knobs (valid by construction), has the backend price
the architecture with the cost model, lets the policy decide (over-budget and already-trained
architectures are recorded at once, without a worker), and submits the rest. Results come back to
the driver, which alone writes the database. The policy (``_policy``) holds every rule; this module
only moves data between the study, the policy and the backend.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import optuna
from optuna.trial import TrialState

from search import faults
from search.asha import Asha
from search.config import StudyConfig
from search.exceptions import DataError, SearchSpaceExhausted
from search.feasibility import check_budget_reachable, check_seed_costs, is_feasible, latency_constraint
from search.prescreen import Candidate, choose
from search.proposal import Proposal, family_spaces, propose, seed_proposal
from search.record import (TrialRecord, TrialStatus, read_record, trial_status, write_pending, write_record)
from search.seeds import SEED_ATTR, SEED_KNOBS_ATTR
from search.storage import (DriverLock, Heartbeat, budget_lock, check_existing_database, display_url,
                            make_sampler, open_study, params_in_one_write, set_constraints, sqlite_path)
from search.storage import _optuna_compat as compat
from search.sweep._policy import SweepPolicy, Verdict, budget_used
from search.sweep._progress import Progress, SweepSummary
from search.sweep.backends import Backend, EpochReport, Finished, Priced, TrialSpec

__all__ = ["Sweep", "load_study_data"]

_LOOKAHEAD = 1  # architectures asked and priced ahead of the free workers


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


class _Pricing:
    """Costs, constraint values and zero-cost proxy scores of an architecture, by family and JSON
    knobs, for the study's data (picklable: it runs on the backend's pricer, with its batch)."""

    def __init__(self, cfg: StudyConfig, data_meta: dict, batch=None):
        self.cfg, self.data_meta, self.batch = cfg, data_meta, batch

    def __call__(self, family: str, knobs: dict) -> tuple[dict, dict, dict]:
        from search.feasibility import price
        from space.registry import get_family

        knobs_dc = get_family(family).knobs_from_dict(knobs)
        cost, constraints = price(self.cfg, family, knobs_dc, self.data_meta)
        return cost, constraints, self._proxies(family, knobs_dc, cost)

    def _proxies(self, family: str, knobs, cost: dict) -> dict:
        names = list(self.cfg.proxies.names)
        if not names or self.batch is None:
            return {}
        if cost["macs"] > self.cfg.proxies.max_macs:  # scoring it would cost minutes
            return {n: None for n in names}
        from trainers.proxies import finite_or_none, score_architecture

        x, y = self.batch
        try:
            scores = score_architecture(family, knobs, x, y, self.data_meta["num_classes"], names,
                                        seed=self.cfg.train.seed)
        except Exception:  # a proxy that cannot score this network says nothing about it
            return {n: None for n in names}
        return {n: finite_or_none(v) for n, v in scores.items()}


def _retry_attrs(trial, attempt: int) -> dict:
    """User attributes of a re-queued trial: which one it retries, whether pre-screening had
    already chosen it (then it is trained without entering another pool), and the seed it trains."""
    attrs = {"retry_of": trial.number, "attempt": attempt}
    for key in ("prescreen_kept", SEED_ATTR, SEED_KNOBS_ATTR):
        if key in trial.user_attrs:
            attrs[key] = trial.user_attrs[key]
    return attrs


def _costs(rec: TrialRecord) -> dict:
    return {"macs": rec.macs, "params": rec.params}


class Sweep:
    """Runs (or resumes) the study described by ``cfg``.

    Args:
        cfg: the validated study file.
        n_more: train this many more architectures instead of filling up to ``budget.n_trials``.
        trial_fn: replaces the training function on the workers (benchmarks use a trivial one).
        data: an already loaded ``DataSplits`` (tests reuse one); loaded from ``cfg.data`` if None.
        log: where progress lines go.
        backend: the execution backend (default: Ray actors with the study file's resources).
    """

    def __init__(self, cfg: StudyConfig, n_more: int | None = None, trial_fn: Callable | None = None,
                 data=None, log: Callable[[str], None] = print, backend: Backend | None = None,
                 progress: str = "lines"):
        self.cfg, self.n_more, self.trial_fn, self.data = cfg, n_more, trial_fn, data
        self.summary = SweepSummary()
        self.progress = Progress(self.summary, log, progress)
        self.log = log
        self.backend = backend
        self.policy: SweepPolicy | None = None
        self.data_meta: dict = {}
        self.spaces: dict[str, dict] = {}
        self.fidelity: dict = {}
        self.sampler = None
        from search.tracking import NoTracking

        self.tracker = NoTracking()  # preflight() sets the study's tracker
        self.shared_db = sqlite_path(cfg.storage_url) is None
        self.costs: dict[str, tuple[dict, dict, dict]] = {}  # arch_key -> (cost, constraints, proxies)
        self.pool: list[tuple[Proposal, TrialRecord]] = []  # pre-screening: feasible, new, not chosen yet
        self.scored: list[Candidate] = []                # every proposal's screening proxy so far
        self.pending: dict[int, Proposal] = {}           # being priced, by trial number
        self.ready: list[tuple[Proposal, TrialRecord]] = []  # priced, to train, waiting for a slot
        self.inflight: dict[int, tuple[Proposal, TrialRecord]] = {}
        self.overhead_s = 0.0

    # -- set-up ---------------------------------------------------------------------------------
    def _load_data(self) -> None:
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
        self.fidelity = self.cfg.fidelity_key()
        check_budget_reachable(self.cfg, self.spaces, self.data_meta)
        check_seed_costs(self.cfg, self.data_meta)
        if self.cfg.warm_start is not None:
            from search.warm_start import check_source

            check_source(self.cfg)
        check_existing_database(self.cfg)
        from search.tracking import make_tracker

        self.tracker = make_tracker(self.cfg, self.log)  # a tracking server that does not answer: now
        if self.backend is None and self.cfg.ray.address not in (None, "local"):
            from search.sweep.backends._ray import check_reachable

            check_reachable(self.cfg.ray.address, self.cfg.ray.connect_timeout_s, self.cfg.path)

    def _default_backend(self) -> Backend:
        """The study file's ``execution.backend`` with its ``resources`` and ``ray`` sections."""
        r, res = self.cfg.ray, self.cfg.resources
        common = dict(price_fn=self._pricing(), trial_fn=self.trial_fn, where=self.cfg.path, ray_address=r.address,
                      num_cpus=r.num_cpus, num_gpus=r.num_gpus, connect_timeout_s=r.connect_timeout_s,
                      artifacts_root=None if self.cfg.artifacts else str((self.cfg.run_path / "checkpoints").resolve()))
        if self.cfg.execution.backend == "tune":
            from search.sweep.backends.tune import TuneBackend

            return TuneBackend(res.cpus_per_trial, res.gpus_per_trial, res.max_concurrent,
                               storage_path=str((self.cfg.run_path / "tune").resolve()), name=self.cfg.study, **common)
        from search.sweep.backends.actors import ActorsBackend

        return ActorsBackend(res.cpus_per_trial, res.gpus_per_trial, res.max_concurrent, **common)

    def _pricing(self) -> _Pricing:
        batch = None
        if self.cfg.proxies.names:
            from trainers.proxies import proxy_batch

            batch = proxy_batch(self.data, self.cfg.proxies.batch_size, seed=self.cfg.train.seed)
        return _Pricing(self.cfg, self.data_meta, batch)

    def _recover(self, study: optuna.Study) -> int:
        """Mark trials a dead driver left RUNNING as failed and re-enqueue their parameters.

        On SQLite this driver holds the study's lock, so every RUNNING trial is orphaned. On a
        shared database only trials whose heartbeat stopped are (Optuna's stale-trial check; the
        re-enqueue happens in its callback, see ``search.storage``)."""
        if self.shared_db:
            before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            optuna.storages.fail_stale_trials(study)
            return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before
        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in stale:
            compat.fail_trial(study, t, {"status": TrialStatus.INTERRUPTED.value,
                                         "failure_reason": "interrupted: the driver stopped while this trial ran"})
            if t.params:  # a trial killed before it drew anything has nothing to retry
                study.enqueue_trial(t.params, user_attrs=_retry_attrs(t, t.user_attrs.get("attempt", 0)),
                                    skip_if_exists=False)
        return len(stale)

    def _rung_rule(self, study: optuna.Study) -> Asha | None:
        a = self.cfg.fidelity.asha
        if a is None:
            return None
        rank = a.rank or ("pareto" if len(self.cfg.objectives) > 1 else "accuracy")
        rule = Asha(a.grace_period, a.reduction_factor, self.cfg.fidelity.epochs, rank=rank)
        for t in study.get_trials(deepcopy=False):  # seeds never meet the rung rule (see _spec)
            status = trial_status(t)
            if status in (TrialStatus.TRAINED, TrialStatus.STOPPED, TrialStatus.IMPORTED) and SEED_ATTR not in t.user_attrs:
                rec = read_record(t)
                rule.record_curve(rec.curve or [], self._rung_costs(rec.macs, rec.params))
        return rule

    def _rung_costs(self, macs: int | None, params: int | None) -> tuple:
        """The exact costs the rung rule ranks on: the study's cost objectives that are known before
        training (MACs, params); MACs when the study has neither."""
        table = {"macs": macs, "params": params}
        names = [o for o in self.cfg.objectives if o in table] or ["macs"]
        return tuple(table[n] or 0 for n in names)

    def _start_policy(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        used = budget_used(trials)
        target = used + self.n_more if self.n_more is not None else self.cfg.budget.n_trials
        self.policy = SweepPolicy(target=target, used=used, max_stalls=self.cfg.budget.max_stalls,
                                  max_retries=self.cfg.retry.max_retries,
                                  retry_nonfinite=self.cfg.retry.retry_nonfinite, shared=self.shared_db)
        self.policy.learn(trials)
        for t in trials:
            rec = read_record(t)
            if trial_status(t) == TrialStatus.TRAINED:
                self.progress.note_trained(rec.val_acc, t.number)
            if self.cfg.prescreen is not None and rec.macs is not None and rec.proxies:
                self.scored.append(Candidate(t.number, rec.proxies.get(self.cfg.prescreen.proxy), rec.macs, rec.params))

    def run(self) -> SweepSummary:
        self.preflight()
        with DriverLock(self.cfg.storage_url, self.cfg.path, self.cfg.study):
            study = open_study(self.cfg, sampler=self.sampler)
            held = len(study.get_trials(deepcopy=False))
            if held:  # a resumed study: not the first run's draws again (see make_sampler)
                study.sampler = make_sampler(self.cfg, resumed_at=held)
            recovered = self._recover(study)
            if self.cfg.warm_start is not None:
                from search.warm_start import import_trials

                self.log(import_trials(self.cfg, study, self.spaces, self.fidelity, self.data_meta).message())
            self._start_policy(study)
            self._enqueue_seeds(study)
            used, target = self.policy.used, self.policy.target
            self.log(f"study {self.cfg.study!r} in {display_url(self.cfg.storage_url)}: {used} of {target} "
                     f"trials done" + (f", {recovered} interrupted trial(s) re-queued" if recovered else ""))
            if used >= target:
                return self.summary
            self.backend = self.backend or self._default_backend()
            slots = self.backend.start(self.data, self._rung_rule(study))
            self.log(f"{slots} concurrent trial(s), {self.cfg.resources.cpus_per_trial} CPU "
                     f"and {self.cfg.resources.gpus_per_trial} GPU each")
            loop_start = time.perf_counter()
            self.progress.start(target, used, self.cfg.fidelity.epochs, self.cfg.directions)
            try:
                with Heartbeat(study, self._held_trials):
                    self._loop(study)
            finally:
                self.progress.close()
                self.tracker.close()  # runs of trials still in flight end as KILLED
                self.backend.close()
            self.summary.loop_seconds = time.perf_counter() - loop_start
        s = self.summary
        s.nodes = set(self.backend.nodes)
        s.wall_seconds = time.perf_counter() - self.progress.started
        s.overhead_ms_per_trial = 1000 * self.overhead_s / max(1, s.proposals)
        return s

    def _enqueue_seeds(self, study: optuna.Study) -> None:
        """Queue every seed no trial carries yet (a seed trained, running, queued or failed is its
        own lineage: retries carry it on). Queued trials are asked before the sampler is, so the seeds
        are trained first."""
        if not self.cfg.seeds:
            return
        with budget_lock(study, self.cfg.storage_url):  # two drivers starting together queue each seed once
            known = {t.user_attrs.get(SEED_ATTR) for t in study.get_trials(deepcopy=False)}
            new = [s for s in self.cfg.seeds if s.name not in known]
            for seed in new:
                study.enqueue_trial({"family": seed.family}, skip_if_exists=False,
                                    user_attrs={SEED_ATTR: seed.name, SEED_KNOBS_ATTR: seed.knobs_dict})
        if new:
            self.log(f"{len(new)} seed(s) queued to train first: {', '.join(s.name for s in new)}")

    def _held_trials(self) -> list:
        """The trials whose heartbeat this driver keeps: training or priced and waiting for a slot."""
        return [p.trial for p, _ in list(self.inflight.values())] + [p.trial for p, _ in list(self.ready)]

    # -- one proposal ---------------------------------------------------------------------------
    def _under_way(self) -> int:
        """Trials that will use the budget unless they fail. With pre-screening, proposals being
        priced or waiting in the pool mostly do not (most are screened): the pool's choice is
        capped by the budget left instead."""
        if self.cfg.prescreen is not None:
            return len(self.inflight) + len(self.ready)
        return len(self.inflight) + len(self.ready) + len(self.pending)

    def _budget_left(self, study: optuna.Study) -> int:
        if not self.shared_db:
            return self.policy.budget_left(self._under_way())
        return self.policy.budget_left_shared(study.get_trials(deepcopy=False))

    def _ask(self, study: optuna.Study) -> optuna.Trial | None:
        """A new trial, or None when other drivers took the last slots (shared database)."""
        if not self.shared_db:
            return study.ask()
        with budget_lock(study, self.cfg.storage_url):
            if self._budget_left(study) <= 0:  # others took the last slots meanwhile
                return None
            trial = study.ask()
        compat.record_heartbeat(study, trial)  # a trial never beating is never stale
        return trial

    def _propose_one(self, study: optuna.Study) -> None:
        """Ask the study for one architecture and get it priced (the backend prices off this
        thread where it can, overlapping the driver's database work for the next proposal)."""
        t0 = time.perf_counter()
        trial = self._ask(study)
        if trial is None:
            return
        faults.checkpoint("asked")
        if self.shared_db and self.policy.is_surplus(trial.number, study.get_trials(deepcopy=False)):
            trial.set_user_attr("status", TrialStatus.SURPLUS.value)
            study.tell(trial, state=TrialState.PRUNED)
            return
        with params_in_one_write(trial):
            if SEED_KNOBS_ATTR in trial.user_attrs:
                proposal = seed_proposal(trial, self.spaces, self.fidelity)
            else:
                proposal = propose(trial, self.spaces, self.fidelity)
        faults.checkpoint("proposed")
        if proposal.key in self.costs:
            self._decide(study, proposal)
        else:
            self.pending[trial.number] = proposal
            self.backend.price(trial.number, proposal.family, proposal.knobs_dict)
        self.overhead_s += time.perf_counter() - t0

    def _objective_values(self, acc: float, cost: dict, latency: float | None) -> list[float]:
        table = {"accuracy": acc, "macs": cost["macs"], "params": cost["params"],
                 "latency": latency if latency is not None else float("inf")}
        return [float(table[o]) for o in self.cfg.objectives]

    def _proposal_record(self, p: Proposal, cost: dict, constraints: dict, proxies: dict) -> TrialRecord:
        return TrialRecord(family=p.family, knobs=p.knobs_dict, arch_key=p.key, fidelity=self.fidelity,
                           constraints=list(constraints.values()) or [0.0], **self.data_meta,
                           **{k: cost[k] for k in ("params", "macs", "train_params", "train_macs")},
                           proxies=proxies or None)

    def _tell_without_training(self, study, trial, status: TrialStatus, values, rec: TrialRecord) -> None:
        write_record(trial, status, rec)
        if values is None:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, values)

    def _decide(self, study: optuna.Study, p: Proposal) -> None:
        """Record an over-budget or already-trained architecture at once, else send it to a worker."""
        t0 = time.perf_counter()
        cost, constraints, proxies = self.costs[p.key]
        rec = self._proposal_record(p, cost, constraints, proxies)
        self._note_score(p, rec)
        if self.shared_db and is_feasible(constraints):  # what other drivers trained or train counts too
            self.policy.learn(study.get_trials(deepcopy=False))
        decision = self.policy.decide(p.number, p.key, constraints)
        if decision.verdict == Verdict.INFEASIBLE:
            if self.cfg.constraints.max_latency_ms is not None:
                constraints = {**constraints, "max_latency_ms": 0.0}  # never measured: no verdict
            set_constraints(p.trial, constraints)
            self._tell_without_training(study, p.trial, TrialStatus.INFEASIBLE,
                                        self._objective_values(0.0, cost, None), rec)
            self.summary.infeasible += 1
            self.progress.line(f"trial {p.number} {p.family} infeasible (macs {cost['macs']:,}, params {cost['params']:,})")
        elif decision.verdict == Verdict.DUPLICATE:
            rec = rec.with_outcome(duplicate_of=decision.duplicate_of)
            self._tell_without_training(study, p.trial, TrialStatus.DUPLICATE, decision.duplicate_values, rec)
            self.summary.duplicate += 1
        else:
            rec = rec.with_outcome(attempt=p.trial.user_attrs.get("attempt", 0))
            if constraints and self.cfg.constraints.max_latency_ms is None:
                set_constraints(p.trial, constraints)  # else set with the measured latency on return
            if self.cfg.prescreen is not None and not p.trial.user_attrs.get("prescreen_kept"):
                p.queued_at = time.perf_counter()  # waiting in the pool is queueing, not driver work
                self.pool.append((p, rec))  # chosen (or screened) once the pool is full
                if len(self.pool) >= self.cfg.prescreen.pool:
                    self._screen_pool(study)
            else:
                self._to_worker(p, rec)
        self.overhead_s += time.perf_counter() - t0

    def _to_worker(self, p: Proposal, rec: TrialRecord) -> None:
        write_pending(p.trial, rec)  # one write now; the full record lands with the result
        if self.backend.free_slots():
            self._submit(p, rec)
        else:
            p.queued_at = p.queued_at or time.perf_counter()
            self.ready.append((p, rec))

    # -- pre-screening --------------------------------------------------------------------------
    def _note_score(self, p: Proposal, rec: TrialRecord) -> None:
        if self.cfg.prescreen is not None:
            score = (rec.proxies or {}).get(self.cfg.prescreen.proxy)
            self.scored.append(Candidate(p.number, score, rec.macs, rec.params))

    def _screen_pool(self, study: optuna.Study, release: bool = False) -> None:
        """Train the pool's best for their cost (at most what the budget has left), screen the rest.
        ``release``: the sweep is over (time limit): release the pool without judging it."""
        s = self.cfg.prescreen
        pool, self.pool = self.pool, []
        budget_left = self.policy.budget_left(len(self.inflight) + len(self.ready))
        if budget_left <= 0 or release:  # priced after the budget filled up or the time ran out
            for p, rec in pool:
                self._tell_without_training(study, p.trial, TrialStatus.SURPLUS, None, rec)
                self.policy.finished(p.key, p.number, TrialStatus.SURPLUS)
            return
        candidates = [Candidate(p.number, (r.proxies or {}).get(s.proxy), r.macs, r.params) for p, r in pool]
        numbers = {c.number for c in candidates}
        history = [c for c in self.scored if c.number not in numbers]
        kept = choose(s.proxy, candidates, history, min(math.ceil(s.keep * len(pool)), budget_left))
        verdict = {"proxy": s.proxy, "pool": [c.number for c in candidates]}
        for p, rec in pool:
            if p.number in kept:
                p.trial.set_user_attr("prescreen_kept", True)  # a retry after a crash is not screened again
                self._to_worker(p, rec.with_outcome(prescreen={**verdict, "kept": True}))
            else:
                rec = rec.with_outcome(prescreen={**verdict, "kept": False})
                self._tell_without_training(study, p.trial, TrialStatus.SCREENED, None, rec)
                self.policy.finished(p.key, p.number, TrialStatus.SCREENED)
                self.summary.screened += 1
        faults.checkpoint("screened")
        self.progress.line(f"pre-screening kept trials {sorted(kept)} of pool {verdict['pool']} by {s.proxy} for their cost")

    def _spec(self, p: Proposal) -> TrialSpec:
        t, res = self.cfg.train, self.cfg.resources
        train = {"epochs": self.cfg.fidelity.epochs, "batch_size": t.batch_size, "lr": t.lr,
                 "momentum": t.momentum, "weight_decay": t.weight_decay, "nesterov": t.nesterov,
                 "augment": t.augment, "amp": t.amp, "condensed_training": t.condensed_training,
                 "eval_test": t.eval_test, "seed": t.seed,
                 "device": "cuda" if res.gpus_per_trial > 0 else "cpu",
                 "threads": max(1, int(res.cpus_per_trial))}
        if t.recipe == "paper":
            from trainers.recipes import paper_recipe

            train.update(paper_recipe(p.family))
        cost = self.costs[p.key][0]
        return TrialSpec(number=p.number, family=p.family, knobs=p.knobs_dict, train=train,
                         rung_costs=self._rung_costs(cost["macs"], cost["params"]),
                         checkpoint_dir=self._artifact_folder(p.key),
                         max_latency_ms=self.cfg.constraints.max_latency_ms,
                         measure_latency="latency" in self.cfg.objectives, use_gpu=res.gpus_per_trial > 0,
                         latency=self.cfg.latency_setup() if self.cfg.measures_latency else None,
                         # A seed is a reference: stopped at a rung, it would say nothing about the search.
                         early_stopping=SEED_ATTR not in p.trial.user_attrs)

    def _artifact_folder(self, key: str) -> str:
        """Where the trial's checkpoints and deploy weights go (``search.artifacts``): the configured
        location, else the run directory on this machine (workers elsewhere reach it through Ray)."""
        if self.cfg.artifacts:
            from search.artifacts import to_uri

            return f"{to_uri(self.cfg.artifacts).rstrip('/')}/{self.cfg.study}/{key}"
        return str((self.cfg.run_path / "checkpoints" / key).resolve())

    def _submit(self, p: Proposal, rec: TrialRecord) -> None:
        # Time spent waiting for a worker is queueing, not driver work: `status` leaves it out.
        queued = time.perf_counter() - p.queued_at if p.queued_at is not None else 0.0
        rec = rec.with_outcome(queued_seconds=queued)
        spec = self._spec(p)
        self.backend.submit(p.number, spec)
        self.inflight[p.number] = (p, rec)
        self.tracker.started(p.number, p.family, p.knobs_dict, spec.train, rec.to_dict())
        self.progress.running = len(self.inflight)
        self.progress.trial_started(p.number, p.family)
        faults.checkpoint("submitted")

    # -- one result -----------------------------------------------------------------------------
    def _finish(self, study: optuna.Study, number: int, out: dict) -> None:
        t0 = time.perf_counter()
        p, rec = self.inflight.pop(number)
        self.progress.running = len(self.inflight)
        status = TrialStatus(out.get("status", "failed"))
        used = status in (TrialStatus.TRAINED, TrialStatus.STOPPED) or (
            status == TrialStatus.FAILED and not self.policy.will_retry(rec.attempt or 0, out.get("failure_kind")))
        self.progress.trial_finished(number, used)
        rec = rec.with_outcome(**{k: v for k, v in out.items() if k not in ("status", "traceback")})
        limit = self.cfg.constraints.max_latency_ms
        if limit is not None and out.get("latency_ms") is not None:
            cost_constraints = self.costs[p.key][1]
            latency_c = latency_constraint(out["latency_ms"], limit)
            rec = rec.with_outcome(constraints=[*cost_constraints.values(), latency_c])
            set_constraints(p.trial, {**cost_constraints, "max_latency_ms": latency_c})
        self.tracker.finished(number, status.value, rec.to_dict())
        if status in (TrialStatus.TRAINED, TrialStatus.STOPPED):
            self._record_trained(study, p, rec, status, out)
        elif status == TrialStatus.INFEASIBLE:
            write_record(p.trial, status, rec)
            study.tell(p.trial, self._objective_values(0.0, _costs(rec), out.get("latency_ms")))
            self.policy.finished(p.key, number, status)
            self.summary.infeasible += 1
            self.progress.line(f"trial {number} {p.family} infeasible (latency {out.get('latency_ms'):.2f} ms)")
        else:
            self._fail(study, p, rec, out)
        self.overhead_s += time.perf_counter() - t0

    def _record_trained(self, study, p: Proposal, rec: TrialRecord, status: TrialStatus, out: dict) -> None:
        rec = rec.with_outcome(fidelity_reached=out.get("epochs"))
        write_record(p.trial, status, rec)
        faults.checkpoint("recorded")
        values = None
        if status == TrialStatus.TRAINED:
            values = self._objective_values(out["val_acc"], _costs(rec), out.get("latency_ms"))
            study.tell(p.trial, values)
            self.summary.trained += 1
            self.summary.stamp_result()
            self.progress.note_trained(rec.val_acc, p.number, values)
        else:
            study.tell(p.trial, state=TrialState.PRUNED)
            self.summary.stopped += 1
        faults.checkpoint("told")
        self.policy.finished(p.key, p.number, status, values)
        self.progress.line(f"trial {p.number} {p.family} {status} acc {out['val_acc']:.4f} "
                           f"({out.get('epochs')} ep, {out.get('train_seconds', 0):.1f}s) "
                           f"macs {rec.macs:,} params {rec.params:,}")

    def _fail(self, study, p: Proposal, rec: TrialRecord, out: dict) -> None:
        attempt = rec.attempt or 0
        will_retry = self.policy.will_retry(attempt, out.get("failure_kind"))
        rec = rec.with_outcome(failure_reason=out.get("reason", "unknown failure"), final=not will_retry)
        write_record(p.trial, TrialStatus.FAILED, rec)
        study.tell(p.trial, state=TrialState.FAIL)
        self.summary.failed += 1
        self.policy.finished(p.key, p.number, TrialStatus.FAILED, will_retry=will_retry)
        if will_retry:
            study.enqueue_trial(p.trial.params, user_attrs=_retry_attrs(p.trial, attempt + 1),
                                skip_if_exists=False)
        self.progress.line(f"trial {p.number} {p.family} failed: {rec.failure_reason}"
                           + (f" (retry {attempt + 1}/{self.cfg.retry.max_retries} queued)" if will_retry else ""))

    # -- the loop -------------------------------------------------------------------------------
    def _handle(self, study: optuna.Study, event) -> None:
        if isinstance(event, Priced):
            proposal = self.pending.pop(event.token)
            self.costs[proposal.key] = (event.cost, event.constraints, event.proxies)
            self._decide(study, proposal)
        elif isinstance(event, Finished):
            self._finish(study, event.token, event.result)
        elif isinstance(event, EpochReport):
            self.progress.epoch(event.token, event.metrics)
            self.tracker.epoch(event.token, event.metrics)
            faults.checkpoint("epoch")

    def _loop(self, study: optuna.Study) -> None:
        limit = self.cfg.budget.time_limit_s
        deadline = (time.perf_counter() + limit) if limit else None
        exhausted = False
        while True:
            out_of_time = deadline is not None and time.perf_counter() > deadline
            while self.ready and self.backend.free_slots():
                self._submit(*self.ready.pop(0))
            # Proposing one architecture ahead of the free workers keeps the driver busy while the
            # pricer works: a worker that comes back finds its next trial priced and waiting.
            while (self.backend.free_slots() + _LOOKAHEAD > len(self.pending) + len(self.ready)
                   and not (out_of_time or exhausted) and self._budget_left(study) > 0):
                exhausted = self.policy.exhausted
                if not exhausted:
                    self._propose_one(study)
            if not self.inflight and not self.pending and not self.ready:
                if not self.pool:
                    break
                # No more proposals come: choose from what the pool holds, unless the time is up.
                self._screen_pool(study, release=out_of_time)
                continue
            # Woken at least every second while trials train, for the per-epoch progress.
            for event in self.backend.next_events(timeout=1.0 if self.inflight else None):
                self._handle(study, event)
        if exhausted:
            self._give_up()
        if deadline is not None and time.perf_counter() > deadline:
            self.log(f"time limit of {limit:.0f}s reached; `run` again to continue")

    def _give_up(self) -> None:
        s = self.summary
        raise SearchSpaceExhausted(
            f"{self.cfg.path}: the last {self.cfg.budget.max_stalls} proposals were all over budget or "
            f"already trained ({s.infeasible} infeasible, {s.duplicate} duplicates in this run); widen "
            f"`constraints:` or the families' knob ranges, or lower budget.n_trials")
