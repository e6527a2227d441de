"""Study files: the YAML schema, parsed once into typed, validated config objects.

Every section is a frozen dataclass; :func:`load_study` reads the YAML safely, rejects unknown keys,
wrong types and impossible values with one :class:`StudyFileError` naming the file and the key path,
and checks the knob overrides against each family's search space. Nothing downstream reads raw dicts,
and nothing is created or written while loading.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from search.exceptions import StudyFileError

__all__ = [
    "StudyConfig", "DataSection", "FamilySection", "ConstraintsSection", "SamplerSection",
    "BudgetSection", "FidelitySection", "AshaSection", "TrainSection", "ResourcesSection",
    "RaySection", "RetrySection", "ProxiesSection", "PrescreenSection", "LatencySection", "TrackingSection",
    "MlflowSection", "load_study", "RESULT_SETTINGS", "RESULT_NEUTRAL", "IN_EVERY_KEY",
    "parse_study", "OBJECTIVES", "SAMPLERS", "DATASETS", "PROXIES", "LATENCY_RUNTIMES",
]

OBJECTIVES = {"accuracy": "maximize", "macs": "minimize", "params": "minimize", "latency": "minimize"}
SAMPLERS = ("nsga2", "nsga3", "tpe", "random", "qmc", "gp", "bruteforce")
DATASETS = ("cifar10", "cifar100", "npz", "digits", "mnist", "fashion_mnist")
FAMILIES = ("condensenet", "igcv2", "rsnet", "slimconv")  # space.list_families(), without importing torch
ENTRY_POINT_GROUP = "effnas.families"  # space.registry.ENTRY_POINT_GROUP, without importing torch
PROXIES = ("synflow", "naswot", "snip", "grad_norm")  # trainers.proxies
LATENCY_RUNTIMES = ("torch", "onnxruntime")  # trainers.latency.RUNTIMES
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class DataSection:
    dataset: str = "cifar10"          # one of DATASETS
    root: Optional[str] = None        # folder holding the files (relative paths: to the study file)
    train_size: Optional[int] = None  # training images per trial (fidelity); None = all that remain
    val_size: int = 5000              # seeded validation split carved from the training set
    test_size: Optional[int] = None   # test images for front members' final report; None = all
    image_size: Optional[int] = None  # resize (fidelity); None = native resolution
    download: bool = False            # let torchvision download CIFAR/MNIST when online


@dataclass(frozen=True)
class FamilySection:
    knobs: dict = field(default_factory=dict)  # knob name (without family prefix) -> value/range/choices


@dataclass(frozen=True)
class ConstraintsSection:
    max_macs: Optional[float] = None       # multiply-accumulates of the deploy form
    max_params: Optional[float] = None     # parameters of the deploy form
    max_latency_ms: Optional[float] = None  # measured batch-1 latency of the deploy form


# effnas's own defaults for a sampler's options, under the study's `sampler.options` (which win).
# TPE models the knobs jointly and tells trials still running as "liars", so asynchronous workers do
# not all draw the same point: on NAS-Bench-Macro (4 simulated workers, 300 evaluations, 20 seeds) it
# reached 99.8% of the true front's hypervolume (median), NSGA-II (population 50) far less
# (bench/search_benchmark.py; README "Search on recorded tables").
SAMPLER_DEFAULT_OPTIONS = {"tpe": {"multivariate": True, "constant_liar": True}}


@dataclass(frozen=True)
class SamplerSection:
    name: str = "tpe"                # chosen by bench/search_benchmark.py (see SAMPLER_DEFAULT_OPTIONS)
    seed: Optional[int] = None
    options: dict = field(default_factory=dict)  # passed to the Optuna sampler's constructor


@dataclass(frozen=True)
class PlateauSection:
    # End the sweep once the front (accuracy, log10 costs) grew by less than min_gain of itself
    # over the last `window` trained trials (search.sweep._plateau).
    window: int = 50
    min_gain: float = 0.01


@dataclass(frozen=True)
class BudgetSection:
    n_trials: int = 20                    # architectures to train (infeasible/duplicate ones are free)
    time_limit_s: Optional[float] = None  # stop launching trials after this many seconds
    max_stalls: int = 500                 # consecutive samples that train nothing before giving up
    max_trials: Optional[int] = None      # the study's trials of every status (asks); a space smaller than n_trials ends here
    stop_when_flat: Optional[PlateauSection] = None  # end when the front stops improving


@dataclass(frozen=True)
class AshaSection:
    grace_period: int = 1       # epochs every trial gets before it can be stopped
    reduction_factor: int = 3   # keep the top 1/reduction_factor at each rung
    # "pareto": rank rung results on (accuracy, exact costs); "accuracy": accuracy alone (Ray Tune's
    # rule). None: pareto when the study has cost objectives, else accuracy.
    rank: Optional[str] = None


@dataclass(frozen=True)
class FidelitySection:
    epochs: int = 10
    asha: Optional[AshaSection] = None


@dataclass(frozen=True)
class TrainSection:
    # "default": CondenseNet's recipe (the keys below) for every family; "paper": each family's own
    # paper recipe (trainers.recipes), which sets lr, momentum, weight_decay, nesterov, batch_size
    # and the schedule per family, scaled to fidelity.epochs; the other keys apply to both.
    recipe: str = "default"
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    augment: bool = True
    amp: bool = True
    condensed_training: bool = True
    eval_test: bool = True           # test accuracy of every trained model (reported, never selected on)
    seed: int = 0


@dataclass(frozen=True)
class ResourcesSection:
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0        # fractions share a GPU between trials
    max_concurrent: Optional[int] = None  # None: as many as the resources allow


@dataclass(frozen=True)
class RetrySection:
    max_retries: int = 1             # re-runs of a failed trial (worker died, exception, OOM)
    retry_nonfinite: bool = False    # a diverged configuration usually diverges again


@dataclass(frozen=True)
class RaySection:
    address: Optional[str] = None    # None or "local": a private local instance; "auto", "host:port" or "ray://host:port": a cluster
    num_cpus: Optional[int] = None   # CPUs of the local instance (None: all)
    num_gpus: Optional[int] = None
    connect_timeout_s: float = 15.0  # a cluster that does not answer within this is an error, not a hang


BACKENDS = ("actors", "tune", "simulated")  # search.sweep.backends
MATCH_RULES = ("exact", "nearest")  # execution.match: how the simulated backend finds a proposal in its table


@dataclass(frozen=True)
class ExecutionSection:
    # actors: long-lived Ray actors, the lowest overhead per trial (bench/orchestration_overhead.py);
    # tune: every trial a Ray Tune trial (Tune's loggers, callbacks and result objects);
    # simulated: no training: curves and seconds replayed from a recorded table (search.tables) on
    # a simulated clock with `workers` asynchronous workers (search.sweep.backends.simulated).
    backend: str = "actors"
    table: Optional[str] = None      # simulated: the table file (relative to the study file)
    workers: int = 4                 # simulated: asynchronous workers
    seed: int = 0                    # simulated: which recorded run each trial replays (drawn per trial)
    failure_rate: float = 0.0        # simulated: share of trials that fail at a random epoch (retry settings)
    # simulated: "exact": a proposal the table lacks is an error (a full table such as NAS-Bench-Macro);
    # "nearest": it is served by the nearest recorded architecture of its family (a sparse table).
    match: str = "exact"


@dataclass(frozen=True)
class ProxiesSection:
    # Zero-cost proxies scored for every proposal (PROXIES: all). Off by default: all four cost
    # 0.4-2 s per proposal of the default (wide) spaces on one CPU thread, far more than the
    # driver's own work; `prescreen:` switches its own proxy on.
    names: tuple = ()
    batch_size: int = 32             # training images they are computed on (seeded, fixed per study)
    max_macs: float = 2.0e9          # networks above this are not scored (the score would cost minutes)


@dataclass(frozen=True)
class PrescreenSection:
    proxy: str = "synflow"           # one of proxies.names
    pool: int = 8                    # feasible, new proposals gathered before choosing
    keep: float = 0.25               # fraction of each pool trained, best proxy for its cost first


@dataclass(frozen=True)
class LatencySection:
    # Where the `latency` objective and `constraints.max_latency_ms` are measured, on the worker:
    # "torch" (eager PyTorch, on the trial's device) or "onnxruntime" (the exported graph, CPU).
    runtime: str = "torch"
    threads: Optional[int] = None    # intra-op threads; None: resources.cpus_per_trial (at least 1)
    batch: int = 1
    repeats: int = 30                # timed runs; the median is recorded
    warmup: int = 5                  # untimed runs first


@dataclass(frozen=True)
class MlflowSection:
    uri: str                         # tracking URI: http(s)://host:port of an MLflow server, or a local path
    experiment: Optional[str] = None  # experiment name (default: the study name)


@dataclass(frozen=True)
class TrackingSection:
    mlflow: Optional[MlflowSection] = None  # search.tracking: one MLflow run per trial


@dataclass(frozen=True)
class WarmStartSection:
    storage: str                     # SQLAlchemy URL of the other study's database
    study: str                       # its study name


@dataclass(frozen=True)
class StudyConfig:
    study: str
    families: dict                   # family name -> FamilySection
    # Python files (.py, relative to the study file's folder) or module names whose import registers
    # more families (space.registry.load_family_modules); once parsed: files as absolute paths.
    family_modules: tuple = ()
    data: DataSection = field(default_factory=DataSection)
    objectives: tuple = ("accuracy", "macs", "params")
    constraints: ConstraintsSection = field(default_factory=ConstraintsSection)
    latency: LatencySection = field(default_factory=LatencySection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    fidelity: FidelitySection = field(default_factory=FidelitySection)
    train: TrainSection = field(default_factory=TrainSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    retry: RetrySection = field(default_factory=RetrySection)
    ray: RaySection = field(default_factory=RaySection)
    execution: ExecutionSection = field(default_factory=ExecutionSection)
    proxies: ProxiesSection = field(default_factory=ProxiesSection)
    prescreen: Optional[PrescreenSection] = None  # None: every feasible new proposal is trained
    seeds: tuple = ()                # preset names or {family, knobs, name}; search.seeds.Seed once parsed
    warm_start: Optional[WarmStartSection] = None  # import another study's trained trials (search.warm_start)
    tracking: Optional[TrackingSection] = None  # experiment tracking of every trial (search.tracking)
    storage: Optional[str] = None    # SQLAlchemy URL; default sqlite file under the run directory
    # Epoch checkpoints and deploy weights: a pyarrow.fs URI or a path every node sees (search.artifacts);
    # default: the run directory on the driver's machine, reached through Ray's object store.
    artifacts: Optional[str] = None
    run_dir: Optional[str] = None    # default runs/<study>; relative paths: to the study file's folder
    path: str = "<memory>"           # the study file it came from (not a YAML key)

    @property
    def measures_latency(self) -> bool:
        return "latency" in self.objectives or self.constraints.max_latency_ms is not None

    def latency_setup(self) -> dict:
        """``trainers.latency.LatencySetup`` fields of this study (threads and device resolved)."""
        lat, res = self.latency, self.resources
        on_gpu = lat.runtime == "torch" and res.gpus_per_trial > 0
        return {"runtime": lat.runtime, "threads": lat.threads or max(1, int(res.cpus_per_trial)),
                "batch": lat.batch, "repeats": lat.repeats, "warmup": lat.warmup,
                "device": "cuda" if on_gpu else "cpu"}

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.study

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.run_path / 'study.db').as_posix()}"

    def fidelity_key(self) -> dict:
        """What makes two results comparable: every setting of :data:`RESULT_SETTINGS` (the data
        and its subset, resolution, epochs, the training recipe and seed).

        Settings listed with an implicit value enter the key only when set to something else, so a
        study written before they were listed keeps its keys (its records' ``fidelity`` and
        ``arch_key``). Under a recipe other than ``default`` the settings the recipe chooses per
        family (``trainers.recipes``) are the recipe's: ``batch_size`` and ``lr`` are null, as older
        versions wrote them, and the others are left out.
        """
        recipe_sets = _recipe_settings() if self.train.recipe != "default" else frozenset()
        key = {}
        for name, (setting, implicit) in RESULT_SETTINGS.items():
            if setting in recipe_sets:
                if implicit is IN_EVERY_KEY:
                    key[name] = None
                continue
            value = self._data_root_key() if setting == "data.root" else self._setting(setting)
            if implicit is IN_EVERY_KEY or value != implicit:
                key[name] = value
        return key

    def _setting(self, dotted: str) -> Any:
        section, name = dotted.split(".")
        return getattr(getattr(self, section), name)

    def _data_root_key(self) -> Optional[str]:
        """The data folder as the key holds it: relative to the study file's folder (the way a study
        file names it), so a project moved or cloned elsewhere keeps its keys; None where no folder is
        read (unset, or the bundled digits)."""
        root = self.data.root
        if root is None or self.data.dataset in _DATASETS_WITHOUT_FILES:
            return None
        if self.path != "<memory>" and Path(root).is_absolute():
            import os

            return Path(os.path.relpath(root, Path(self.path).resolve().parent)).as_posix()
        return Path(root).as_posix()


# --- what makes two results comparable ------------------------------------------------------------

IN_EVERY_KEY = "in every key"  # RESULT_SETTINGS: a setting every study's key has always held

# Every study-file setting that changes what a trial trains to (its curve, its accuracy): fidelity-key
# name -> (section.field, the value older versions left implicit). A new key of `data:`, `train:` or
# `fidelity:` goes here, or into RESULT_NEUTRAL with the reason it changes no result
# (tests/test_fidelity_key.py fails until it is in one of them). A setting added here later names
# the value every study used before it existed, so existing studies keep their keys.
RESULT_SETTINGS: dict[str, tuple[str, Any]] = {
    "dataset": ("data.dataset", IN_EVERY_KEY),
    "train_size": ("data.train_size", IN_EVERY_KEY),
    "val_size": ("data.val_size", IN_EVERY_KEY),
    "image_size": ("data.image_size", IN_EVERY_KEY),
    "epochs": ("fidelity.epochs", IN_EVERY_KEY),
    "batch_size": ("train.batch_size", IN_EVERY_KEY),
    "lr": ("train.lr", IN_EVERY_KEY),
    "seed": ("train.seed", IN_EVERY_KEY),
    "recipe": ("train.recipe", "default"),    # the schedule, and per family what the recipe sets
    "momentum": ("train.momentum", 0.9),
    "weight_decay": ("train.weight_decay", 1e-4),
    "nesterov": ("train.nesterov", True),
    "augment": ("train.augment", True),
    "amp": ("train.amp", True),               # bf16 autocast on CUDA
    "data_root": ("data.root", None),         # which files: see StudyConfig._data_root_key
}

# Keys of the same sections that change no trial's result, and why.
RESULT_NEUTRAL: dict[str, str] = {
    "data.test_size": "test images only report front members' test accuracy: never selected on, not in the curve",
    "data.download": "fetches the official files where they are missing: the same data either way",
    "train.eval_test": "whether test accuracy is measured and reported: never selected on, not in the curve",
    "train.condensed_training": "the condensed form takes the same SGD steps as the masked one (the trainer's "
                                "tests): it changes the cost of training, not its result",
    "fidelity.asha": "stops trials at rungs: a trial trained to the end (what is compared, imported and on "
                     "the front) trains the same, and a stopped one records the epochs it reached",
}

_DATASETS_WITHOUT_FILES = ("digits",)  # bundled with scikit-learn: data.root is not read


def _recipe_settings() -> frozenset:
    """``section.field`` of the study settings a non-default recipe chooses per family."""
    from trainers.recipes import PAPER_RECIPES  # plain data, no torch

    train_fields = {f.name for f in dataclasses.fields(TrainSection)}
    return frozenset(f"train.{k}" for recipe in PAPER_RECIPES.values() for k in recipe if k in train_fields)


# --- generic typed parsing ----------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            dict: "a mapping", tuple: "a list"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, path: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, path, key)
    if dataclasses.is_dataclass(tp):
        return _parse_section(tp, value, path, key)
    if tp is float and isinstance(value, str):
        value = _yaml11_float(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
        tuple: isinstance(value, list),
    }.get(tp, True)
    if not ok:
        raise StudyFileError(path, key, f"expected {_type_name(tp)}, got {value!r}")
    if tp is float:
        return float(value)
    if tp is tuple:
        return tuple(value)
    return value


def _yaml11_float(text: str):
    """PyYAML follows YAML 1.1, where ``2.0e7`` (no exponent sign) is a string; accept it as a number."""
    try:
        value = float(text)
    except ValueError:
        return text
    return value if value == value and abs(value) != float("inf") else text


def _parse_section(cls: type, raw: Any, path: str, key: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StudyFileError(path, key or "(top level)", f"expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        where = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise StudyFileError(path, where, f"unknown key; valid keys here: {', '.join(sorted(fields))}")
    values = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], path, sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise StudyFileError(path, sub, "required key is missing")
    return cls(**values)


# --- semantic checks ----------------------------------------------------------------------------

def _positive(path: str, key: str, value, allow_none: bool = True, strict: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or (value <= 0 if strict else value < 0):
        raise StudyFileError(path, key, f"must be {'> 0' if strict else '>= 0'}, got {value!r}")


def _did_you_mean(name: str, valid) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _load_family_modules(cfg: StudyConfig, base_dir: Path | None) -> tuple[tuple, tuple]:
    """Import ``family_modules`` (registering their families) before the family names are checked.

    Returns the entries as every process can load them again (files as absolute paths) and the
    families they registered."""
    if not cfg.family_modules:
        return (), ()
    from space.registry import FamilyModuleError, load_family_modules

    base = base_dir if base_dir is not None else Path.cwd()
    resolved, names = [], []
    for i, entry in enumerate(cfg.family_modules):
        try:
            names += [n for n in load_family_modules([entry], base) if n not in names]
        except FamilyModuleError as e:
            raise StudyFileError(cfg.path, f"family_modules[{i}]", str(e)) from e
        resolved.append(str((base / entry).resolve()) if entry.endswith(".py") else entry)
    return tuple(resolved), tuple(names)


def _entry_point_families() -> tuple[tuple, dict]:
    """Families of installed ``effnas.families`` plugins, and the plugins that failed to load. Looked
    up only for a name that is not known otherwise; with no plugin installed, without importing torch."""
    from importlib.metadata import entry_points

    if not entry_points(group=ENTRY_POINT_GROUP):
        return (), {}
    from space.registry import entry_point_errors, load_entry_point_families

    return tuple(load_entry_point_families()), entry_point_errors()


def _check_families(cfg: StudyConfig, outside: tuple = ()) -> dict:
    path = cfg.path
    if not isinstance(cfg.families, dict) or not cfg.families:
        raise StudyFileError(path, "families", f"name at least one family out of {list(FAMILIES)}")
    for name in cfg.families:  # before importing the built-in families (and torch): a typo answers at once
        if name in FAMILIES or name in outside:
            continue
        plugins, failed = _entry_point_families()
        if name not in plugins:
            valid = [*FAMILIES, *outside, *plugins]
            broken = "".join(f"; the installed family plugin {ep} failed to load ({why}): fix or uninstall it"
                             for ep, why in failed.items())
            raise StudyFileError(path, f"families.{name}", f"unknown family{_did_you_mean(name, valid)}; "
                                                           f"valid families: {valid}{broken}; a family of your own "
                                                           f"is named by family_modules: [path/to/module.py]")
    from space.knobs import apply_overrides
    from space.registry import get_family

    parsed = {}
    for name, section in cfg.families.items():
        sec = _parse_section(FamilySection, section, path, f"families.{name}")
        family = get_family(name)
        overrides = {f"{name}.{k}": v for k, v in sec.knobs.items()}
        try:
            apply_overrides(family.search_space(), overrides)
        except ValueError as e:
            raise StudyFileError(path, f"families.{name}.knobs", str(e).replace(f"{name}.", "")) from None
        parsed[name] = sec
    return parsed


def _check_values(cfg: StudyConfig) -> None:
    p = cfg.path
    if not isinstance(cfg.study, str) or not _NAME_RE.match(cfg.study):
        raise StudyFileError(p, "study", f"must be 1-64 letters, digits, '_', '.', '-' (a folder name), got {cfg.study!r}")
    if cfg.data.dataset not in DATASETS:
        raise StudyFileError(p, "data.dataset", f"unknown dataset {cfg.data.dataset!r}; valid: {', '.join(DATASETS)}")
    if cfg.data.dataset == "npz" and not cfg.data.root:
        raise StudyFileError(p, "data.root", "dataset 'npz' needs the folder holding train.npz and test.npz")
    for key in ("train_size", "test_size", "image_size"):
        _positive(p, f"data.{key}", getattr(cfg.data, key))
    _positive(p, "data.val_size", cfg.data.val_size, allow_none=False)
    if not cfg.objectives:
        raise StudyFileError(p, "objectives", f"name at least one of {list(OBJECTIVES)}")
    for i, obj in enumerate(cfg.objectives):
        if obj not in OBJECTIVES:
            raise StudyFileError(p, f"objectives[{i}]", f"unknown objective {obj!r}; valid: {list(OBJECTIVES)}")
    if len(set(cfg.objectives)) != len(cfg.objectives):
        raise StudyFileError(p, "objectives", f"lists an objective twice: {list(cfg.objectives)}")
    if "accuracy" not in cfg.objectives:
        raise StudyFileError(p, "objectives", "must include 'accuracy' (what training measures)")
    for key in ("max_macs", "max_params", "max_latency_ms"):
        _positive(p, f"constraints.{key}", getattr(cfg.constraints, key))
    _check_search(cfg)
    _check_training(cfg)
    _check_proxies(cfg)
    _check_latency(cfg)
    _check_tracking(cfg)
    _check_execution(cfg)
    if cfg.storage is not None and "://" not in cfg.storage:
        raise StudyFileError(p, "storage", f"expected an SQLAlchemy URL such as sqlite:///runs/x/study.db "
                                            f"or postgresql://user@host/db, got {cfg.storage!r}")


def _check_search(cfg: StudyConfig) -> None:
    """The sampler, the budget and the fidelity (with its rung rule)."""
    p = cfg.path
    if cfg.sampler.name not in SAMPLERS:
        raise StudyFileError(p, "sampler.name", f"unknown sampler {cfg.sampler.name!r}; valid: {', '.join(SAMPLERS)}")
    _positive(p, "budget.n_trials", cfg.budget.n_trials, allow_none=False)
    _positive(p, "budget.time_limit_s", cfg.budget.time_limit_s)
    _positive(p, "budget.max_stalls", cfg.budget.max_stalls, allow_none=False)
    _positive(p, "budget.max_trials", cfg.budget.max_trials)
    flat = cfg.budget.stop_when_flat
    if flat is not None:
        _positive(p, "budget.stop_when_flat.window", flat.window, allow_none=False)
        if not 0 < flat.min_gain < 1:
            raise StudyFileError(p, "budget.stop_when_flat.min_gain", f"must lie in (0, 1) (0.01: 1% growth), "
                                                                      f"got {flat.min_gain!r}")
    _positive(p, "fidelity.epochs", cfg.fidelity.epochs, allow_none=False)
    if cfg.fidelity.asha:
        a = cfg.fidelity.asha
        _positive(p, "fidelity.asha.grace_period", a.grace_period, allow_none=False)
        if a.grace_period >= cfg.fidelity.epochs:
            raise StudyFileError(p, "fidelity.asha.grace_period",
                                 f"must be below fidelity.epochs ({cfg.fidelity.epochs}), got {a.grace_period}")
        if a.reduction_factor < 2:
            raise StudyFileError(p, "fidelity.asha.reduction_factor", f"must be >= 2, got {a.reduction_factor}")
        if a.rank is not None and a.rank not in ("pareto", "accuracy"):
            raise StudyFileError(p, "fidelity.asha.rank", f"expected 'pareto' or 'accuracy', got {a.rank!r}")


def _check_training(cfg: StudyConfig) -> None:
    """The training recipe, the resources per trial and the Ray instance."""
    p = cfg.path
    from trainers.recipes import RECIPES  # torch-free

    if cfg.train.recipe not in RECIPES:
        raise StudyFileError(p, "train.recipe", f"unknown recipe {cfg.train.recipe!r}"
                                                f"{_did_you_mean(cfg.train.recipe, RECIPES)}; valid: {', '.join(RECIPES)}")
    for key in ("batch_size", "lr"):
        _positive(p, f"train.{key}", getattr(cfg.train, key), allow_none=False)
    _positive(p, "train.weight_decay", cfg.train.weight_decay, allow_none=False, strict=False)
    if not 0 <= cfg.train.momentum < 1:
        raise StudyFileError(p, "train.momentum", f"must lie in [0, 1), got {cfg.train.momentum}")
    _positive(p, "resources.cpus_per_trial", cfg.resources.cpus_per_trial, allow_none=False)
    _positive(p, "resources.gpus_per_trial", cfg.resources.gpus_per_trial, allow_none=False, strict=False)
    if cfg.resources.gpus_per_trial > 1 and cfg.resources.gpus_per_trial != int(cfg.resources.gpus_per_trial):
        raise StudyFileError(p, "resources.gpus_per_trial", f"above 1 must be a whole number, got {cfg.resources.gpus_per_trial}")
    _positive(p, "resources.max_concurrent", cfg.resources.max_concurrent)
    _positive(p, "retry.max_retries", cfg.retry.max_retries, allow_none=False, strict=False)
    _positive(p, "ray.num_cpus", cfg.ray.num_cpus)
    _positive(p, "ray.num_gpus", cfg.ray.num_gpus, strict=False)
    addr = cfg.ray.address
    if addr is not None and not (addr in ("auto", "local") or addr.startswith("ray://") or re.match(r"^[\w.-]+:\d+$", addr)):
        raise StudyFileError(p, "ray.address", f"expected null, 'local', 'auto', 'host:port' or 'ray://host:port', got {addr!r}")
    _positive(p, "ray.connect_timeout_s", cfg.ray.connect_timeout_s, allow_none=False)


def _check_latency(cfg: StudyConfig) -> None:
    p, lat = cfg.path, cfg.latency
    if lat.runtime not in LATENCY_RUNTIMES:
        raise StudyFileError(p, "latency.runtime", f"unknown runtime {lat.runtime!r}{_did_you_mean(lat.runtime, LATENCY_RUNTIMES)}; "
                                                   f"valid: {', '.join(LATENCY_RUNTIMES)}")
    _positive(p, "latency.threads", lat.threads)
    _positive(p, "latency.batch", lat.batch, allow_none=False)
    _positive(p, "latency.repeats", lat.repeats, allow_none=False)
    _positive(p, "latency.warmup", lat.warmup, allow_none=False, strict=False)
    if lat.runtime == "onnxruntime" and cfg.measures_latency:  # the workers need it too; the driver says so first
        _require_package(p, "latency.runtime", "'onnxruntime' needs", "onnxruntime", "onnx",
                         " (on every node), or measure with runtime: torch")


def _check_execution(cfg: StudyConfig) -> None:
    p, ex = cfg.path, cfg.execution
    if ex.backend not in BACKENDS:
        raise StudyFileError(p, "execution.backend", f"unknown backend {ex.backend!r}{_did_you_mean(ex.backend, BACKENDS)}; "
                                                     f"valid: {', '.join(BACKENDS)}")
    if ex.backend == "simulated":
        _check_simulated(cfg)
    elif ex.table is not None or ex.match != "exact":
        key = "execution.table" if ex.table is not None else "execution.match"
        raise StudyFileError(p, key, f"a recorded table is replayed by backend: simulated only, but "
                                     f"execution.backend is {ex.backend!r}; remove {key.split('.')[1]} or set the backend")
    if cfg.artifacts is not None:
        if not isinstance(cfg.artifacts, str) or not cfg.artifacts.strip():
            raise StudyFileError(p, "artifacts", f"expected a path or a URI such as s3://bucket/prefix, got {cfg.artifacts!r}")
        from search.artifacts import check_location, to_uri

        why = check_location(to_uri(cfg.artifacts))
        if why is not None:
            raise StudyFileError(p, "artifacts", f"{cfg.artifacts!r} cannot hold checkpoints ({why}); give a path "
                                                 f"or a URI pyarrow.fs reads (s3://, gs://, hdfs://, file://)")
    elif (cfg.ray.address or "").startswith("ray://"):
        raise StudyFileError(p, "artifacts", "a ray:// client driver runs on no Ray node, so trials cannot keep "
                                             "checkpoints in its run directory; set artifacts: to a location every "
                                             "node reaches (s3://bucket/prefix, or a shared path)")


def _check_simulated(cfg: StudyConfig) -> None:
    """What the simulated backend needs: settings it can honour (a table has no latency and no data
    to score proxies on); the table itself is checked once paths are resolved (``_check_table``)."""
    p, ex = cfg.path, cfg.execution
    if not ex.table:
        raise StudyFileError(p, "execution.table", "backend: simulated replays a recorded table; name its file "
                                                   "(e.g. table: ../examples/nas_bench_macro/table.json.gz)")
    if isinstance(ex.workers, bool) or not isinstance(ex.workers, int) or ex.workers < 1:
        raise StudyFileError(p, "execution.workers", f"must be a positive integer, got {ex.workers!r}")
    if not 0.0 <= ex.failure_rate <= 1.0:
        raise StudyFileError(p, "execution.failure_rate", f"must lie in [0, 1], got {ex.failure_rate!r}")
    if ex.match not in MATCH_RULES:
        raise StudyFileError(p, "execution.match", f"unknown rule {ex.match!r}{_did_you_mean(str(ex.match), MATCH_RULES)}; "
                                                   f"valid: {', '.join(MATCH_RULES)}")
    if "latency" in cfg.objectives or cfg.constraints.max_latency_ms is not None:
        raise StudyFileError(p, "objectives", "a recorded table holds no latency; drop latency from objectives "
                                              "and constraints.max_latency_ms, or use a training backend")
    if cfg.prescreen is not None or cfg.proxies.names:
        raise StudyFileError(p, "prescreen", "zero-cost proxies score real networks on real data, which the "
                                             "simulated backend does not load; remove prescreen: and proxies:")


def _check_table(cfg: StudyConfig) -> None:
    """The table loads, holds every searched family, and its curves reach the study's epochs."""
    if cfg.execution.backend != "simulated":
        return
    from search.tables import TableError, load_table

    try:
        table = load_table(cfg.execution.table)
    except TableError as e:
        raise StudyFileError(cfg.path, "execution.table", str(e)) from None
    missing = sorted(set(cfg.families) - table.families())
    if missing:
        raise StudyFileError(cfg.path, "families", f"{', '.join(missing)} not in the table {cfg.execution.table} "
                                                   f"(it holds {', '.join(sorted(table.families()))}); search those")
    if cfg.fidelity.epochs > table.epochs:
        raise StudyFileError(cfg.path, "fidelity.epochs", f"is {cfg.fidelity.epochs}, but the table's curves hold "
                                                          f"{table.epochs} epoch(s); lower it to at most {table.epochs}")


def _check_tracking(cfg: StudyConfig) -> None:
    section = cfg.tracking.mlflow if cfg.tracking is not None else None
    if section is None:
        return
    if not section.uri.strip():
        raise StudyFileError(cfg.path, "tracking.mlflow.uri", "is empty; give the MLflow server's URL, e.g. http://127.0.0.1:5000")
    _require_package(cfg.path, "tracking.mlflow", "needs", "mlflow", "mlflow", ", or remove `tracking:`")


def _require_package(path: str, key: str, lead: str, module: str, extra: str, alternative: str) -> None:
    """An optional dependency a key asks for, checked without importing it."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise StudyFileError(path, key, f"{lead} the {module} package, which is not installed; install it with: "
                                        f"pip install 'effnas[{extra}]'{alternative}")


def _check_proxies(cfg: StudyConfig) -> None:
    p, names = cfg.path, list(cfg.proxies.names)
    for i, name in enumerate(names):
        if name not in PROXIES:
            raise StudyFileError(p, f"proxies.names[{i}]", f"unknown proxy {name!r}; valid: {', '.join(PROXIES)}")
    _positive(p, "proxies.batch_size", cfg.proxies.batch_size, allow_none=False)
    if cfg.proxies.batch_size < 2:
        raise StudyFileError(p, "proxies.batch_size", f"must be >= 2 (NASWOT compares images), got {cfg.proxies.batch_size}")
    _positive(p, "proxies.max_macs", cfg.proxies.max_macs, allow_none=False)
    s = cfg.prescreen
    if s is None:
        return
    if s.proxy not in PROXIES:
        raise StudyFileError(p, "prescreen.proxy", f"unknown proxy {s.proxy!r}; valid: {', '.join(PROXIES)}")
    if names and s.proxy not in names:
        raise StudyFileError(p, "prescreen.proxy", f"{s.proxy!r} is not scored; choose one of proxies.names "
                                                   f"({', '.join(names)}) or add it there")
    if s.pool < 2:
        raise StudyFileError(p, "prescreen.pool", f"must be >= 2 (a pool of one has nothing to choose from), got {s.pool}")
    if not 0 < s.keep < 1:
        raise StudyFileError(p, "prescreen.keep", f"must lie in (0, 1), got {s.keep}")
    if math.ceil(s.keep * s.pool) >= s.pool:
        raise StudyFileError(p, "prescreen.keep", f"keeps all of a pool of {s.pool} ({s.keep} x {s.pool} rounds up "
                                                  f"to {math.ceil(s.keep * s.pool)}); lower keep or raise pool")
    if cfg.storage is not None and not cfg.storage.startswith("sqlite:"):
        raise StudyFileError(p, "prescreen", "works with one driver per study (SQLite storage) for now; "
                                             "remove `prescreen:` to share the study between drivers")


def _check_seeds(cfg: StudyConfig) -> tuple:
    from search.seeds import parse_seeds

    seeds = parse_seeds(cfg.seeds, cfg.families, cfg.path)
    if len(seeds) > cfg.budget.n_trials:
        raise StudyFileError(cfg.path, "budget.n_trials", f"is {cfg.budget.n_trials}, fewer than the {len(seeds)} "
                                                         f"seeds, which are trained first; raise it or drop seeds")
    return seeds


def parse_study(raw: Any, path: str = "<memory>", base_dir: Path | None = None) -> StudyConfig:
    """Validate a study mapping (already read from YAML) into a :class:`StudyConfig`."""
    if not isinstance(raw, dict):
        raise StudyFileError(path, "", f"the study file must be a YAML mapping, got {type(raw).__name__}")
    cfg = _parse_section(StudyConfig, raw, path, "")
    cfg = dataclasses.replace(cfg, path=path)
    _check_values(cfg)
    modules, outside = _load_family_modules(cfg, base_dir)
    cfg = dataclasses.replace(cfg, family_modules=modules, families=_check_families(cfg, outside))
    cfg = dataclasses.replace(cfg, seeds=_check_seeds(cfg))
    if cfg.prescreen is not None and not cfg.proxies.names:  # the screening proxy is scored at least
        cfg = dataclasses.replace(cfg, proxies=dataclasses.replace(cfg.proxies, names=(cfg.prescreen.proxy,)))
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    _check_sizes(cfg)
    _check_table(cfg)
    return cfg


def _relative_to(base_dir: Path, path: str) -> str:
    return path if Path(path).is_absolute() else str((base_dir / path).resolve())


def _resolve_sqlite(base_dir: Path, url: str | None) -> str | None:
    prefix = "sqlite:///"
    if url is None or not url.startswith(prefix) or url[len(prefix):].split("?")[0] in ("", ":memory:"):
        return url
    return prefix + _relative_to(base_dir, url[len(prefix):])


def _resolve_paths(cfg: StudyConfig, base_dir: Path) -> StudyConfig:
    """One rule for relative paths: the data root, the run directory (default ``runs/<study>``) and
    SQLite storage files (this study's and a warm start's) are relative to the study file's folder,
    so every command finds the same study from any working directory."""
    data = cfg.data
    if data.root:
        data = dataclasses.replace(data, root=_relative_to(base_dir, data.root))
    warm = cfg.warm_start
    if warm is not None:
        warm = dataclasses.replace(warm, storage=_resolve_sqlite(base_dir, warm.storage))
    artifacts = cfg.artifacts
    if isinstance(artifacts, str) and artifacts.strip() and "://" not in artifacts:
        artifacts = Path(_relative_to(base_dir, artifacts)).as_uri()
    execution = cfg.execution
    if execution.table:
        execution = dataclasses.replace(execution, table=_relative_to(base_dir, execution.table))
    return dataclasses.replace(cfg, data=data, run_dir=_relative_to(base_dir, cfg.run_dir or f"runs/{cfg.study}"),
                               storage=_resolve_sqlite(base_dir, cfg.storage), warm_start=warm, artifacts=artifacts,
                               execution=execution)


def _check_sizes(cfg: StudyConfig) -> None:
    d = cfg.data
    if d.train_size is not None and d.val_size > d.train_size:
        raise StudyFileError(cfg.path, "data.val_size", f"is {d.val_size}, more than data.train_size ({d.train_size}): "
                                                        f"the validation split would outweigh the training set; "
                                                        f"lower val_size or raise train_size")


def study_location(path: str | Path) -> tuple[str, str, Path]:
    """The study name, storage URL and run directory a study file names, read without checking the
    rest of the file (so `status`, `trials` and `export` need neither torch nor the families)."""
    path = Path(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict) or "study" not in raw:
        raise StudyFileError(str(path), "study", "required key is missing")
    slim = StudyConfig(study=raw["study"], families={}, storage=raw.get("storage"), run_dir=raw.get("run_dir"),
                       path=str(path))
    for key in ("study", "storage", "run_dir"):
        value = getattr(slim, key)
        if value is not None and not isinstance(value, str):
            raise StudyFileError(str(path), key, f"expected a string, got {value!r}")
    slim = _resolve_paths(slim, path.resolve().parent)
    return slim.study, slim.storage_url, slim.run_path


def _read_yaml(path: Path):
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StudyFileError(str(path), "", "no such file; pass the path of a study YAML file (see studies/)") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise StudyFileError(str(path), "", f"cannot read the study file: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise StudyFileError(str(path), "", f"{where}not valid YAML ({getattr(e, 'problem', e)})") from None


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study file.

    Raises:
        StudyFileError: the file is missing, is not valid YAML, or fails validation.
    """
    path = Path(path)
    return parse_study(_read_yaml(path), str(path), base_dir=path.resolve().parent)
