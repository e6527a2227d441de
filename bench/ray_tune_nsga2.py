"""The script a user would write instead of effnas: Ray Tune with OptunaSearch (NSGA-II), multi-objective.

It searches the same knob draws as a study file (the families' spaces with the file's ranges, drawn
define-by-run through Optuna), trains each architecture with the same trainer and fidelity, and
reports accuracy, MACs and params to Tune after each epoch. It meets the study's MACs/params limits
the way a careful Ray Tune user would: every drawn network is priced with effnas's cost model
(``search.feasibility.price``) while it is drawn, the constraint value is stored on the Optuna trial
(NSGA-II's constrained domination reads it), and an over-limit network is refused before Tune starts
a trial for it (:class:`RefuseOverLimit`): Optuna is told accuracy 0.0 with its real costs, the values
effnas tells for a refused network, and no worker time is spent. The study file's seeds are trained
first (``points_to_evaluate`` enqueues their family; the define-by-run function gives them the seed's
knobs, as effnas's seed trials do). There is no early stopping (Optuna's pruners refuse
multi-objective studies; Ray's docs warn that ASHA may not work with multi-objective search). Used by
``bench/search_efficiency.py``.

    python bench/ray_tune_nsga2.py --study bench/studies/cifar10_search.yaml --seed 0 --minutes 5 --workdir DIR

The last line is one JSON object: ``finished`` holds (seconds since fit() began, accuracy, MACs,
params) of each trial that trained to the end; ``trials`` one point per proposal (trained, refused,
failed or cut off by the time budget) with its times, family, knobs, accuracy, costs and status.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import optuna
from ray.tune.search import Searcher

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METRICS = ["val_acc", "macs", "params"]
MODES = ["max", "min", "min"]


def define_by_run(trial, spaces: dict, cfg=None, data_meta: Optional[dict] = None, seeds: tuple = ()) -> dict:
    """A family and its knobs, drawn through the Optuna trial and priced; the returned constants join
    the config. The first ``len(seeds)`` trials are the enqueued seeds (Optuna hands out enqueued
    trials first, in order): their family comes from the queue, their knobs from the seed."""
    from search.feasibility import is_feasible, price
    from search.proposal import draw
    from space.registry import knobs_json

    design = None
    if trial.number < len(seeds):
        seed = seeds[trial.number]
        family = trial.suggest_categorical("family", sorted(spaces))
        if family != seed.family:
            raise RuntimeError(f"trial {trial.number} should be seed {seed.name} ({seed.family}), drew {family}")
        knobs, design = seed.knobs, seed.name
    else:
        family, knobs = draw(trial, spaces)
    cost, constraints = price(cfg, family, knobs, data_meta)
    trial.set_user_attr("constraints", [constraints[k] for k in sorted(constraints)] or [0.0])
    if hasattr(trial, "set_constraint"):  # Optuna >= 5; older samplers read the user attribute
        for key, value in constraints.items():
            trial.set_constraint(key, value)
    return {"family": family, "knobs": knobs_json(knobs), "design": design, "number": trial.number,
            "macs": cost["macs"], "params": cost["params"], "feasible": is_feasible(constraints)}


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable: Optuna 5's genetic samplers hold a thread lock, and ``tune.Tuner``
    pickles its search algorithm (with the sampler) when it is built."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def constraints_of(trial) -> list[float]:
    """``constraints_func`` for Optuna < 5 (a module function: OptunaSearch pickles its sampler)."""
    return list(trial.user_attrs.get("constraints", [0.0]))


def refused_result(config: dict) -> dict:
    """What Optuna is told for an over-limit network: no accuracy and its real costs (its constraint
    value, stored when it was drawn, marks it infeasible)."""
    return {"val_acc": 0.0, "macs": config["macs"], "params": config["params"]}


class RefuseOverLimit(Searcher):
    """Wraps a searcher: a suggestion whose config says ``feasible: False`` is told back to the searcher
    at once as :func:`refused_result` and replaced by the next one, so Tune never starts a trial for
    it. ``on_refuse(config)`` is called for each refused one."""

    def __init__(self, searcher, on_refuse: Callable[[dict], None] = lambda config: None,
                 max_refusals_in_a_row: int = 2000):
        self.searcher = searcher
        self.on_refuse = on_refuse
        self.max_refusals_in_a_row = max_refusals_in_a_row
        self.refused = 0
        self._inner: dict[str, str] = {}  # Tune's trial id -> the wrapped searcher's id for it
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        for attempt in itertools.count():
            inner_id = trial_id if attempt == 0 else f"{trial_id}-refused-{attempt}"
            config = self.searcher.suggest(inner_id)
            if not isinstance(config, dict) or config.get("feasible", True):
                if isinstance(config, dict):
                    self._inner[trial_id] = inner_id
                return config
            self.searcher.on_trial_complete(inner_id, result=refused_result(config))
            self.refused += 1
            self.on_refuse(config)
            if attempt + 1 >= self.max_refusals_in_a_row:
                raise RuntimeError(f"the last {attempt + 1} proposals were all over the study's limits")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(self._inner.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(self._inner.pop(trial_id, trial_id), result=result, error=error)

    def get_state(self) -> dict:  # Tune's experiment checkpoints save each wrapper's state
        return {"refused": self.refused, "_inner": dict(self._inner)}

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    @property
    def metric(self):
        return self.searcher.metric

    @property
    def mode(self):
        return self.searcher.mode


def trainable(config: dict, data=None, train_cfg: dict | None = None) -> None:
    from ray import tune

    from space.registry import get_family
    from trainers.train import TrainConfig, train

    started_at = time.time()
    if not config.get("feasible", True):  # RefuseOverLimit keeps these from starting; never train one
        tune.report({**refused_result(config), "started_at": started_at, "refused": True})
        return
    knobs = get_family(config["family"]).knobs_from_dict(config["knobs"])
    epochs = train_cfg["epochs"]

    def report(r) -> bool:
        metrics = {"val_acc": r.val_acc, "macs": config["macs"], "params": config["params"], "epoch": r.epoch,
                   "started_at": started_at}
        if r.epoch == epochs:
            metrics["finished_at"] = time.time()
        tune.report(metrics)
        return True

    train(config["family"], knobs, data, TrainConfig(**train_cfg), report=report)


def _point(config: dict, status: str, start: Optional[float], end: Optional[float], accuracy=None) -> dict:
    return {"trial": config.get("number"), "start_s": start, "end_s": end, "family": config.get("family"),
            "knobs": config.get("knobs"), "design": config.get("design"), "accuracy": accuracy,
            "macs": config.get("macs"), "params": config.get("params"), "status": status}


def trial_points(results, refused: list[tuple[float, dict]], started: float) -> list[dict]:
    """One point per proposal: trained, failed or unfinished (cut off by the time budget) from Tune's
    results, infeasible (refused before starting) from the refusals; times in seconds since ``started``."""
    def rel(t):
        return None if t is None else round(t - started, 3)

    points = [_point(config, "infeasible", rel(at), rel(at)) for at, config in refused]
    for r in results:
        m, config = r.metrics or {}, r.config or {}
        if "finished_at" in m:
            status = "trained"
        elif r.error is not None:
            status = "failed"
        else:
            status = "unfinished"
        points.append(_point(config, status, rel(m.get("started_at")), rel(m.get("finished_at")), m.get("val_acc")))
    return sorted(points, key=lambda p: (p["trial"] is None, p["trial"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()

    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search.config import load_study
    from search.feasibility import check_seed_costs
    from search.proposal import family_spaces
    from trainers.data import DataConfig, load_data

    cfg = load_study(args.study)
    d = cfg.data
    data = load_data(DataConfig(dataset=d.dataset, root=d.root, train_size=d.train_size, val_size=d.val_size,
                                test_size=d.test_size, image_size=d.image_size, seed=cfg.train.seed))
    data_meta = {"num_classes": data.num_classes, "image_size": data.image_size, "in_channels": data.in_channels}
    check_seed_costs(cfg, data_meta)
    spaces = family_spaces(cfg)

    t = cfg.train
    train_cfg = {"epochs": cfg.fidelity.epochs, "batch_size": t.batch_size, "lr": t.lr, "momentum": t.momentum,
                 "weight_decay": t.weight_decay, "nesterov": t.nesterov, "augment": t.augment, "amp": t.amp,
                 "condensed_training": t.condensed_training, "eval_test": False, "seed": t.seed,
                 "device": "cpu", "threads": 1}
    native = hasattr(optuna.trial.Trial, "set_constraint")
    sampler = NSGAIISampler(seed=args.seed, **({} if native else {"constraints_func": constraints_of}))
    searcher = OptunaSearch(space=functools.partial(define_by_run, spaces=spaces, cfg=cfg, data_meta=data_meta,
                                                    seeds=tuple(cfg.seeds)),
                            metric=METRICS, mode=MODES, sampler=sampler,
                            points_to_evaluate=[{"family": s.family} for s in cfg.seeds] or None)
    refused: list[tuple[float, dict]] = []
    priced = RefuseOverLimit(searcher, on_refuse=lambda config: refused.append((time.time(), config)))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    started = time.time()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data, train_cfg=train_cfg), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(priced, max_concurrent=2), num_samples=-1,
                                    time_budget_s=60 * args.minutes),
        run_config=tune.RunConfig(storage_path=str(Path(args.workdir).resolve()), name="ray_tune", verbose=0))
    results = tuner.fit()
    ray.shutdown()
    points = trial_points(results, refused, started)
    finished = [(p["end_s"], p["accuracy"], p["macs"], p["params"]) for p in points if p["status"] == "trained"]
    print(json.dumps({"finished": finished, "trials": points, "trained": len(finished),
                      "started_trials": len(results), "refused": len(refused)}))


if __name__ == "__main__":
    main()
