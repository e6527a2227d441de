"""The peers, each run by its own library's code behind one interface:
``Adapter.run(table, settings, seed) -> list[evaluation dicts]``.

- ``random``: random search without repetition over the table's entries; entries over the MACs limit
  are never proposed (priced and rejected before training).
- ``optuna-tpe``, ``optuna-nsga2``: a plain Optuna loop (in-memory storage, ask/tell) with the
  sampler's defaults and ``seed``; with a MACs limit, each trial gets the constraint value MACs -
  limit before it is told (``Trial.set_constraint`` on Optuna 5, ``constraints_func`` on Optuna 4). W trials are asked ahead and told in
  simulated completion order.
- ``syne-morea``, ``syne-ehvi``, ``syne-moasha``: Syne Tune's schedulers driven through ``suggest`` /
  ``on_trial_add`` / ``on_trial_result`` / ``on_trial_complete`` on the simulated clock. MO-REA and
  EHVI are Syne Tune's searchers inside its ``SingleFidelityScheduler`` (as ``baselines.EHVI``
  builds it); MOASHA gets a result per epoch (``time_attr`` ``epoch``, ``max_t`` the table's epochs,
  grace period 1, reduction factor 3). Infeasible proposals are reported with the worst values.
  EHVI runs with Syne Tune's defaults except ``double_precision=False`` (with the default, Syne Tune
  0.16 fails inside botorch 0.18's log-EHVI); ``settings["ehvi_options"]`` overrides searcher
  arguments (the tests make it cheap; the benchmark sets none).

Every method sees the same objective vector: the normalised objectives (``metrics.Normaliser``),
all minimised. The seed designs in ``settings["seed_designs"]`` (``[{"family", "knobs"}]``) are
given where a method takes known points (Optuna's ``enqueue_trial``, Syne Tune's
``points_to_evaluate``, random search's first proposals).
"""
from __future__ import annotations

import random as _random
import warnings
from datetime import datetime

import numpy as np

from .metrics import Normaliser
from .simulator import Method, simulate
from .tables import Space

_SPACES: dict[int, Space] = {}


def space_of(table) -> Space:
    space = _SPACES.get(id(table))
    if space is None or space.table is not table:
        space = _SPACES[id(table)] = Space(table)
    return space


def _seed_rows(space: Space, settings: dict) -> list[int]:
    rows = []
    for d in settings.get("seed_designs") or []:
        row = space.resolve(d["family"], d["knobs"])
        if row is not None and row not in rows:
            rows.append(row)
    return rows


class Adapter:
    name = ""
    needs_curves = False

    def make(self, table, space: Space, normaliser: Normaliser, settings: dict, seed: int) -> Method:
        raise NotImplementedError

    def run(self, table, settings: dict, seed: int) -> list[dict]:
        space = space_of(table)
        normaliser = Normaliser(table, settings["objectives"])
        method = self.make(table, space, normaliser, settings, seed)
        records, note = simulate(method, table, space, normaliser, settings, seed)
        self.last_note = note
        return records


# --- random search ------------------------------------------------------------------------------


class _RandomMethod(Method):
    def __init__(self, space: Space, settings: dict, seed: int):
        limit = settings.get("max_macs")
        rows = [i for i, e in enumerate(space.entries) if limit is None or e.macs <= limit]
        _random.Random(seed).shuffle(rows)
        first = [r for r in _seed_rows(space, settings) if limit is None or space.entries[r].macs <= limit]
        self.order = iter(first + [r for r in rows if r not in set(first)])
        self.space = space

    def ask(self):
        row = next(self.order, None)
        if row is None:
            return None
        e = self.space.entries[row]
        return row, e.family, e.knobs

    def tell(self, token, values, feasible, info):
        pass


class RandomSearch(Adapter):
    name = "random"

    def make(self, table, space, normaliser, settings, seed):
        return _RandomMethod(space, settings, seed)


# --- Optuna ---------------------------------------------------------------------------------------


def _constraint_of(trial):
    return trial.user_attrs["constraint"]


class _OptunaMethod(Method):
    def __init__(self, sampler_name: str, space: Space, normaliser: Normaliser, settings: dict, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.limited = settings.get("max_macs") is not None
        # Optuna 5 reads constraints set on the trial (Trial.set_constraint; constraints_func is
        # deprecated there); Optuna 4 needs constraints_func.
        self.set_constraint = hasattr(optuna.trial.Trial, "set_constraint")
        kwargs = {"seed": seed}
        if self.limited and not self.set_constraint:
            kwargs["constraints_func"] = _constraint_of
        sampler = (optuna.samplers.TPESampler(**kwargs) if sampler_name == "tpe"
                   else optuna.samplers.NSGAIISampler(**kwargs))
        self.study = optuna.create_study(directions=["minimize"] * len(normaliser.objectives), sampler=sampler)
        self.space = space
        for row in _seed_rows(space, settings):
            self.study.enqueue_trial(space.params_of(row))

    def ask(self):
        trial = self.study.ask()
        fams = self.space.family_names
        family = trial.suggest_categorical("family", fams) if len(fams) > 1 else fams[0]
        params = {name: trial.suggest_categorical(name, choices)
                  for name, choices in self.space.families[family].params}
        return trial, family, self.space.knobs_of(family, params)

    def tell(self, trial, values, feasible, info):
        if self.limited:
            value = info["constraint"] if info.get("constraint") is not None else 1.0
            if self.set_constraint:
                trial.set_constraint("macs", value)
            else:
                trial.set_user_attr("constraint", [value])
        self.study.tell(trial, list(values))


class OptunaTPE(Adapter):
    name = "optuna-tpe"
    sampler = "tpe"

    def make(self, table, space, normaliser, settings, seed):
        return _OptunaMethod(self.sampler, space, normaliser, settings, seed)


class OptunaNSGA2(OptunaTPE):
    name = "optuna-nsga2"
    sampler = "nsga2"


# --- Syne Tune ------------------------------------------------------------------------------------


def _syne_space(space: Space) -> dict:
    from syne_tune.config_space import choice

    cs = {}
    if len(space.family_names) > 1:
        cs["family"] = choice(space.family_names)
    for fs in space.families.values():
        for name, choices in fs.params:
            cs[name] = choice(choices)
    return cs


class _SyneMethod(Method):
    def __init__(self, kind: str, table, space: Space, normaliser: Normaliser, settings: dict, seed: int):
        from syne_tune.optimizer.schedulers.single_fidelity_scheduler import SingleFidelityScheduler

        # Syne Tune's samplers and MOASHA's bracket choice draw from numpy's and Python's global
        # generators: seed them with the run's seed.
        np.random.seed(seed)
        _random.seed(seed)
        self.space = space
        self.kind = kind
        self.metrics = list(normaliser.objectives)
        cs = _syne_space(space)
        points = [{**space.params_of(r)} for r in _seed_rows(space, settings)]
        if kind == "moasha":
            from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

            self.multi_fidelity = True
            self.scheduler = MOASHA(cs, metrics=self.metrics, do_minimize=True, time_attr="epoch",
                                    max_t=int(table.epochs), grace_period=1, reduction_factor=3, random_seed=seed)
            self.points = list(points)
        else:
            if kind == "morea":
                from syne_tune.optimizer.schedulers.multiobjective import MultiObjectiveRegularizedEvolution

                searcher = MultiObjectiveRegularizedEvolution(cs, points_to_evaluate=points or None, random_seed=seed)
            else:
                import torch
                from syne_tune.optimizer.schedulers.multiobjective.expected_hyper_volume_improvement import (
                    ExpectedHyperVolumeImprovement,
                )

                torch.manual_seed(seed)
                # double_precision=False: with its default (True), Syne Tune 0.16 fails inside botorch
                # 0.18's log-EHVI ("expected scalar type Double but found Float").
                options = {"double_precision": False, **(settings.get("ehvi_options") or {})}
                searcher = ExpectedHyperVolumeImprovement(cs, points_to_evaluate=points or None, random_seed=seed,
                                                          **options)
            self.scheduler = SingleFidelityScheduler(cs, metrics=self.metrics, do_minimize=True, searcher=searcher,
                                                     random_seed=seed)
            self.points = []
        self.next_id = 0

    def ask(self):
        from syne_tune.backend.trial_status import Trial

        if self.points:  # MOASHA takes no points_to_evaluate: its seed designs go first
            config = self.points.pop(0)
        else:
            suggestion = self.scheduler.suggest()
            if suggestion is None:
                return None
            config = suggestion.config
        trial = Trial(trial_id=self.next_id, config=dict(config), creation_time=datetime.now())
        self.next_id += 1
        self.scheduler.on_trial_add(trial)
        fams = self.space.family_names
        family = config["family"] if len(fams) > 1 else fams[0]
        return trial, family, self.space.knobs_of(family, config)

    def _result(self, values, epoch):
        out = dict(zip(self.metrics, (float(v) for v in values)))
        out["epoch"] = epoch
        return out

    def report(self, trial, epoch, values):
        from syne_tune.optimizer.scheduler import SchedulerDecision

        decision = self.scheduler.on_trial_result(trial, self._result(values, epoch))
        return decision == SchedulerDecision.CONTINUE

    def tell(self, trial, values, feasible, info):
        if self.kind == "moasha":
            epochs = int(info.get("epochs") or 0) if feasible else 1
            result = self._result(values, max(epochs, 1))
            if not feasible:
                self.scheduler.on_trial_result(trial, result)
            if feasible and 0 < epochs < self.scheduler.max_t:
                self.scheduler.on_trial_remove(trial)  # stopped at a rung: no completion
            else:
                self.scheduler.on_trial_complete(trial, result)
        else:
            self.scheduler.on_trial_complete(trial, self._result(values, info.get("epochs") or 1))


class SyneMOREA(Adapter):
    name = "syne-morea"
    kind = "morea"

    def make(self, table, space, normaliser, settings, seed):
        return _SyneMethod(self.kind, table, space, normaliser, settings, seed)


class SyneEHVI(SyneMOREA):
    name = "syne-ehvi"
    kind = "ehvi"


class SyneMOASHA(SyneMOREA):
    name = "syne-moasha"
    kind = "moasha"
    needs_curves = True


PEERS = {a.name: a for a in (RandomSearch, OptunaTPE, OptunaNSGA2, SyneMOREA, SyneEHVI, SyneMOASHA)}
