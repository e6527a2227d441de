"""Study builders the tests share: tiny search spaces, the digits study every backend runs, the
simulated NAS-Bench-Macro study and a multi-epoch table for rung tests, and readers of the result."""
from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

from search.config import StudyConfig, parse_study

REPO = Path(__file__).resolve().parents[1]
NBM_FAMILY = REPO / "examples" / "nas_bench_macro" / "family.py"
NBM_TABLE = REPO / "examples" / "nas_bench_macro" / "table.json.gz"

TINY_CONDENSENET = {"num_stages": 3, "layers.0": [1, 2], "layers.1": [1, 2], "layers.2": [1, 2],
                    "growth.0": [8, 16], "growth.1": [8, 16], "growth.2": [8, 16], "bottleneck": [1, 2],
                    "stem_channels": [8, 16], "se_start": -1, "hs_start": -1, "head_channels": 0,
                    "dropout": 0.0, "stem_stride": 1, "last_se_reduction": 0}
TINY_SLIMCONV = {"layers.0": 1, "layers.1": 1, "layers.2": 1, "layers.3": 1, "base_width": [8, 16],
                 "groups": 1, "width_mult": [1, 2], "stem": "cifar"}
# The one architecture TINY_SLIMCONV's lowest corner builds (a space that holds nothing else).
ONE_SLIMCONV = {**{k: (v[0] if isinstance(v, list) else v) for k, v in TINY_SLIMCONV.items()},
                "k": "4/3", "reduction": 4, "min_hidden": 1, "flip": True}


def with_changes(raw: dict, changes: dict) -> dict:
    """``raw`` with ``a__b=value`` changes applied at nested key ``a.b``."""
    raw = copy.deepcopy(raw)
    for path, value in changes.items():
        node = raw
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return raw


def digits_raw(tmp_path, backend: str = "actors") -> dict:
    """The digits study of the sweep tests: two tiny families, 4 trials of one epoch, 2 slots."""
    return {
        "execution": {"backend": backend},
        "study": "t", "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "digits", "val_size": 200, "train_size": 600, "image_size": 16},
        "families": {"condensenet": {"knobs": TINY_CONDENSENET}, "slimconv": {"knobs": TINY_SLIMCONV}},
        "budget": {"n_trials": 4}, "fidelity": {"epochs": 1},
        "sampler": {"name": "random", "seed": 0},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2},
    }


def digits_study(tmp_path, backend: str = "actors", **changes) -> StudyConfig:
    return parse_study(with_changes(digits_raw(tmp_path, backend), changes), str(tmp_path / "t.yaml"))


def load_digits(image_size: int = 16, train_size: int | None = 600, val_size: int = 200):
    from trainers.data import DataConfig, load_data

    return load_data(DataConfig(dataset="digits", val_size=val_size, train_size=train_size, image_size=image_size))


def simulated_raw(tmp_path, table: Path = NBM_TABLE, workers: int = 2) -> dict:
    """NAS-Bench-Macro on the simulated backend: 4 trials, ``workers`` simulated workers."""
    return {
        "study": "t", "run_dir": str(tmp_path / "run"),
        "family_modules": [str(NBM_FAMILY)],
        "data": {"dataset": "cifar10"},
        "families": {"nas_bench_macro": {}},
        "execution": {"backend": "simulated", "table": str(table), "workers": workers, "seed": 0},
        "budget": {"n_trials": 4}, "fidelity": {"epochs": 1},
        "sampler": {"name": "random", "seed": 0},
    }


def simulated_study(tmp_path, **changes) -> StudyConfig:
    return parse_study(with_changes(simulated_raw(tmp_path), changes), str(tmp_path / "t.yaml"))


def curve_table(path: Path, epochs: int = 4) -> Path:
    """NAS-Bench-Macro as a table of ``epochs``-epoch curves (each run rising linearly to its
    recorded accuracy, each epoch a share of the recorded seconds): rung decisions to replay."""
    from search.tables import TableEntry, load_table, write_table

    src = load_table(NBM_TABLE)
    rows = [TableEntry(e.family, e.knobs, e.params, e.macs,
                       tuple(tuple(round(run[-1] * (k + 1) / epochs, 6) for k in range(epochs)) for run in e.runs),
                       (round(e.seconds / epochs, 3),) * epochs) for e in src.entries]
    return write_table(path, name="nbm-curves", epochs=epochs, provenance=dict(src.provenance), entries=rows)


def trials_of(cfg: StudyConfig) -> list:
    from search.storage import load_existing_study

    return load_existing_study(cfg.storage_url, cfg.study).get_trials()


def statuses(cfg: StudyConfig) -> list[str]:
    from search.record import trial_status

    return [trial_status(t) for t in trials_of(cfg)]


def status_counts(cfg: StudyConfig) -> Counter:
    return Counter(statuses(cfg))


def corner_seeds(family: str, overrides: dict) -> list[dict]:
    """Two seed designs of ``family`` within the study's ``overrides``: its lowest and highest
    corner (every knob at its smallest, then its largest value), named ``<family>-low``/``-high``."""
    from optuna.distributions import CategoricalDistribution

    from space.knobs import apply_overrides
    from space.registry import get_family, knobs_json

    space = apply_overrides(get_family(family).search_space(), {f"{family}.{k}": v for k, v in overrides.items()})

    def corner(pick):
        def draw(name):
            d = space[name]
            if isinstance(d, CategoricalDistribution):
                return pick(d.choices)
            return pick([d.low, d.high])
        return knobs_json(get_family(family).sample(draw))

    return [{"family": family, "name": f"{family}-low", "knobs": corner(lambda c: c[0])},
            {"family": family, "name": f"{family}-high", "knobs": corner(lambda c: c[-1])}]
