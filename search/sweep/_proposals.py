"""The proposing side of a sweep: ask the study for an architecture, have it priced, let the policy
decide, pre-screen a pool of them, and hand the ones to train to the backend."""
from __future__ import annotations

import math
import time

from optuna.trial import TrialState

from search import faults
from search.feasibility import is_feasible
from search.lineage import PRESCREEN_KEPT_ATTR
from search.prescreen import Candidate, choose
from search.proposal import Proposal, propose, seed_proposal
from search.record import TrialRecord, TrialStatus, write_pending
from search.seeds import SEED_KNOBS_ATTR
from search.storage import budget_lock, params_in_one_write, set_constraints
from search.storage import _optuna_compat as compat
from search.sweep._apply import Outcomes, proposal_record
from search.sweep._policy import Verdict
from search.sweep._spec import trial_spec
from search.sweep._state import SweepState

__all__ = ["Proposals"]


class Proposals:
    """Moves proposals from the study's ``ask`` to the backend's ``submit``."""

    def __init__(self, state: SweepState, outcomes: Outcomes):
        self.s, self.outcomes = state, outcomes

    # -- ask and price ------------------------------------------------------------------------------
    def _ask(self):
        """A new trial, or None when other drivers took the last slots (shared database)."""
        s = self.s
        if not s.shared_db:
            return s.study.ask()
        with budget_lock(s.study, s.cfg.storage_url):
            if s.budget_left() <= 0:  # others took the last slots meanwhile
                return None
            trial = s.study.ask()
        faults.checkpoint("unbeaten")  # killed here, the trial never beats: reaped by its start time
        compat.record_heartbeat(s.study, trial)
        return trial

    def propose_one(self) -> None:
        """Ask the study for one architecture and get it priced (the backend prices off this
        thread where it can, overlapping the driver's database work for the next proposal)."""
        s = self.s
        with s.timed():
            trial = self._ask()
            if trial is None:
                return
            s.policy.asked += 1
            faults.checkpoint("asked")
            if s.shared_db and s.policy.is_surplus(trial.number, s.study.get_trials(deepcopy=False)):
                trial.set_user_attr("status", TrialStatus.SURPLUS.value)
                s.study.tell(trial, state=TrialState.PRUNED)
                return
            with params_in_one_write(trial):
                if SEED_KNOBS_ATTR in trial.user_attrs:
                    proposal = seed_proposal(trial, s.spaces, s.fidelity)
                else:
                    proposal = propose(trial, s.spaces, s.fidelity)
            if s.cfg.execution.match == "nearest":
                proposal = s.backend.served(proposal, s.fidelity)
            faults.checkpoint("proposed")
            if proposal.key in s.costs:
                self.decide(proposal)
            else:
                s.pending[trial.number] = proposal
                s.backend.price(trial.number, proposal.family, proposal.knobs_dict)

    def priced(self, token: int, cost: dict, constraints: dict, proxies: dict) -> None:
        proposal = self.s.pending.pop(token)
        self.s.costs[proposal.key] = (cost, constraints, proxies)
        with self.s.timed():
            self.decide(proposal)

    # -- decide -------------------------------------------------------------------------------------
    def decide(self, p: Proposal) -> None:
        """Record an over-budget or already-trained architecture at once, else send it to a worker."""
        s = self.s
        cost, constraints, proxies = s.costs[p.key]
        rec = proposal_record(s, p, cost, constraints, proxies)
        self._note_score(p, rec)
        if s.shared_db and is_feasible(constraints):  # what other drivers trained or train counts too
            s.policy.learn(s.study.get_trials(deepcopy=False))
        decision = s.policy.decide(p.number, p.key, constraints)
        if decision.verdict == Verdict.INFEASIBLE:
            self.outcomes.infeasible(p, rec, cost, constraints)
        elif decision.verdict == Verdict.DUPLICATE:
            self.outcomes.duplicate(p, rec, decision)
        else:
            rec = rec.with_outcome(attempt=p.trial.user_attrs.get("attempt", 0))
            if constraints and s.cfg.constraints.max_latency_ms is None:
                set_constraints(p.trial, constraints)  # else set with the measured latency on return
            if s.cfg.prescreen is not None and not p.trial.user_attrs.get(PRESCREEN_KEPT_ATTR):
                p.queued_at = time.perf_counter()  # waiting in the pool is queueing, not driver work
                s.pool.append((p, rec))  # chosen (or screened) once the pool is full
                if len(s.pool) >= s.cfg.prescreen.pool:
                    self.screen_pool()
            else:
                self._to_worker(p, rec)

    def _to_worker(self, p: Proposal, rec: TrialRecord) -> None:
        write_pending(p.trial, rec)  # one write now; the full record lands with the result
        if self.s.backend.free_slots():
            self.submit(p, rec)
        else:
            p.queued_at = p.queued_at or time.perf_counter()
            self.s.ready.append((p, rec))

    def submit(self, p: Proposal, rec: TrialRecord) -> None:
        s = self.s
        # Time spent waiting for a worker is queueing, not driver work: `status` leaves it out.
        queued = time.perf_counter() - p.queued_at if p.queued_at is not None else 0.0
        rec = rec.with_outcome(queued_seconds=queued)
        spec = trial_spec(s.cfg, p, s.costs[p.key][0])
        s.backend.submit(p.number, spec)
        s.inflight[p.number] = (p, rec)
        s.tracker.started(p.number, p.family, p.knobs_dict, spec.train, rec.to_dict())
        s.progress.running = len(s.inflight)
        s.progress.trial_started(p.number, p.family)
        faults.checkpoint("submitted")

    # -- pre-screening ------------------------------------------------------------------------------
    def _note_score(self, p: Proposal, rec: TrialRecord) -> None:
        if self.s.cfg.prescreen is not None:
            score = (rec.proxies or {}).get(self.s.cfg.prescreen.proxy)
            self.s.scored.append(Candidate(p.number, score, rec.macs, rec.params))

    def screen_pool(self, release: bool = False) -> None:
        """Train the pool's best for their cost (at most what the budget has left), screen the rest.
        ``release``: the sweep is over (time limit): release the pool without judging it."""
        s, rule = self.s, self.s.cfg.prescreen
        pool, s.pool = s.pool, []
        budget_left = s.policy.budget_left(len(s.inflight) + len(s.ready))
        if budget_left <= 0 or release:  # priced after the budget filled up or the time ran out
            for p, rec in pool:
                self.outcomes.released(p, rec, TrialStatus.SURPLUS)
            return
        candidates = [Candidate(p.number, (r.proxies or {}).get(rule.proxy), r.macs, r.params) for p, r in pool]
        numbers = {c.number for c in candidates}
        history = [c for c in s.scored if c.number not in numbers]
        kept = choose(rule.proxy, candidates, history, min(math.ceil(rule.keep * len(pool)), budget_left))
        verdict = {"proxy": rule.proxy, "pool": [c.number for c in candidates]}
        for p, rec in pool:
            if p.number in kept:
                p.trial.set_user_attr(PRESCREEN_KEPT_ATTR, True)  # a retry after a crash is not screened again
                self._to_worker(p, rec.with_outcome(prescreen={**verdict, "kept": True}))
            else:
                self.outcomes.released(p, rec.with_outcome(prescreen={**verdict, "kept": False}), TrialStatus.SCREENED)
        faults.checkpoint("screened")
        s.progress.line(f"pre-screening kept trials {sorted(kept)} of pool {verdict['pool']} by {rule.proxy} for their cost")
