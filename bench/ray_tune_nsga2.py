"""The script a user would write instead of effnas: Ray Tune with OptunaSearch (NSGA-II), multi-objective.

It searches the same knob draws as a study file (the families' spaces with the file's ranges, drawn
define-by-run through Optuna), trains each architecture with the same trainer and fidelity, and
reports accuracy, MACs and params to Tune after each epoch. Like most such scripts it has no cost
pre-filter and no early stopping (Optuna's pruners refuse multi-objective studies; Ray's docs warn
that ASHA may not work with multi-objective search). Used by ``bench/search_efficiency.py``.

    python bench/ray_tune_nsga2.py --study bench/studies/cifar10_search.yaml --seed 0 --minutes 5 --workdir DIR

The last line is one JSON object: ``finished`` holds (seconds since fit() began, accuracy, MACs,
params) of each trial that trained to the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def define_by_run(trial, spaces: dict) -> dict:
    """A family and its knobs, drawn through the Optuna trial; the returned constants join the config."""
    from search.proposal import draw

    family, knobs = draw(trial, spaces)
    return {"family": family, "knobs": json.loads(json.dumps(dataclasses.asdict(knobs)))}


def trainable(config: dict, data=None, train_cfg: dict | None = None) -> None:
    from ray import tune

    from space.cost import measure
    from space.registry import get_family
    from trainers.train import TrainConfig, train

    knobs = get_family(config["family"]).knobs_from_dict(config["knobs"])
    cost = measure(config["family"], knobs, num_classes=data.num_classes, image_size=data.image_size,
                   in_channels=data.in_channels)
    epochs = train_cfg["epochs"]

    def report(r) -> bool:
        metrics = {"val_acc": r.val_acc, "macs": cost.macs, "params": cost.params, "epoch": r.epoch}
        if r.epoch == epochs:
            metrics["finished_at"] = time.time()
        tune.report(metrics)
        return True

    train(config["family"], knobs, data, TrainConfig(**train_cfg), report=report)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()

    import optuna
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search.config import load_study
    from search.proposal import family_spaces
    from trainers.data import DataConfig, load_data

    cfg = load_study(args.study)
    d = cfg.data
    data = load_data(DataConfig(dataset=d.dataset, root=d.root, train_size=d.train_size, val_size=d.val_size,
                                test_size=d.test_size, image_size=d.image_size, seed=cfg.train.seed))
    spaces = family_spaces(cfg)

    t = cfg.train
    train_cfg = {"epochs": cfg.fidelity.epochs, "batch_size": t.batch_size, "lr": t.lr, "momentum": t.momentum,
                 "weight_decay": t.weight_decay, "nesterov": t.nesterov, "augment": t.augment, "amp": t.amp,
                 "condensed_training": t.condensed_training, "eval_test": False, "seed": t.seed,
                 "device": "cpu", "threads": 1}
    searcher = OptunaSearch(space=functools.partial(define_by_run, spaces=spaces), metric=["val_acc", "macs", "params"], mode=["max", "min", "min"],
                            sampler=optuna.samplers.NSGAIISampler(seed=args.seed))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    started = time.time()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data, train_cfg=train_cfg), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=2), num_samples=-1,
                                    time_budget_s=60 * args.minutes),
        run_config=tune.RunConfig(storage_path=str(Path(args.workdir).resolve()), name="ray_tune", verbose=0))
    results = tuner.fit()
    ray.shutdown()
    finished = [(r.metrics["finished_at"] - started, r.metrics["val_acc"], r.metrics["macs"], r.metrics["params"])
                for r in results if r.metrics and "finished_at" in r.metrics]
    print(json.dumps({"finished": finished, "trained": len(finished), "started_trials": len(results)}))


if __name__ == "__main__":
    main()
