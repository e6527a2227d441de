"""`python -m search validate`: what a study file would search, before anything runs.

`validate` makes every check `run` makes before writing anything, and describes the search space:
the MACs and params hundreds of random samples span. Three things are kept in the cache
(``search.cache``) so that validating again answers at once:

- the data's shape and statistics (``data_meta``), keyed by the data settings and the size and
  modification time of every file the loader could read: what the checks need from the data,
  without loading it again (files that change or disappear are loaded, and checked, again);
- each family's description (its samples' costs), keyed by the family's space, the data shape and
  the constraints: a study edited elsewhere prices nothing again;
- the whole answer, keyed by the study file's bytes, the data files and the code: answered without
  importing torch. What can change without any of those changing (the database, the warm-start
  source, the tracking server, the Ray cluster) is checked again every time (:func:`_live_checks`).

`validate` never downloads: data that `run` would download is reported missing, with the URL.
"""
from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

from search import cache
from search.config import StudyConfig

__all__ = ["describe_study", "validate_file"]

def _extremes(cfg: StudyConfig, name: str, space: dict, samples: int, meta: dict,
              drawn: set | None = None) -> list[str]:
    """The MACs and params that ``samples`` random configurations span, and the cheapest and largest
    of those that meet the budget; the knobs any sample drew are added to ``drawn``. Kept in the
    cache by family, space, data shape and constraints."""
    key = {"family": name, "space": {k: repr(d) for k, d in space.items()}, "samples": samples,
           "shape": [meta["num_classes"], meta["image_size"], meta["in_channels"]],
           "constraints": dataclasses.asdict(cfg.constraints)}
    hit = cache.load("validate-family", key)
    if hit is not None:
        if drawn is not None:
            drawn.update(hit["drawn"])
        return hit["lines"]
    seen: set = set()
    lines = _measure_extremes(cfg, name, space, samples, meta, seen)
    cache.save("validate-family", key, {"lines": lines, "drawn": sorted(seen)})
    if drawn is not None:
        drawn.update(seen)
    return lines


def _measure_extremes(cfg: StudyConfig, name: str, space: dict, samples: int, meta: dict, drawn: set) -> list[str]:
    from search.feasibility import cost_constraints, is_feasible
    from space.cost import measure
    from space.knobs import draw_random
    from space.registry import get_family

    rng, family, feasible, all_macs, all_params = random.Random(0), get_family(name), [], [], []
    for _ in range(samples):
        record: dict = {}
        knobs = family.sample(draw_random(space, rng, record))
        drawn.update(record)
        cost = measure(name, knobs, num_classes=meta["num_classes"], image_size=meta["image_size"],
                       in_channels=meta["in_channels"])
        all_macs.append(cost.macs)
        all_params.append(cost.params)
        if is_feasible(cost_constraints(cfg, cost.as_dict())):
            feasible.append((cost.macs, cost.params, knobs))
    lines = [f"    {samples} random samples span {min(all_macs):,}-{max(all_macs):,} MACs and "
             f"{min(all_params):,}-{max(all_params):,} params at {meta['image_size']}x{meta['image_size']}"]
    limit = cfg.constraints.max_macs
    if limit is None and max(all_macs) > 1e10:
        lines.append(f"    warning: with no constraints.max_macs, the largest samples cost over 1e10 MACs per image "
                     f"(hours per epoch on a CPU); set constraints.max_macs or narrow the ranges")
    elif limit is not None and max(all_macs) > 100 * limit:
        share = 1 - len(feasible) / samples
        lines.append(f"    warning: the largest samples cost {max(all_macs) / limit:,.0f}x constraints.max_macs; "
                     f"{share:.0%} of proposals would be refused before training; narrow the ranges")
    if not feasible:
        return lines + [f"    none of {samples} random samples meets the budget: widen `constraints:` or the ranges"]
    feasible.sort(key=lambda x: x[0])
    lines.append(f"    {len(feasible)}/{samples} random samples meet the budget")
    for label, (macs, params, knobs) in (("cheapest", feasible[0]), ("largest", feasible[-1])):
        lines.append(f"    {label}: {macs:,} MACs, {params:,} params: {knobs}")
    return lines


def _constraints_text(cfg: StudyConfig) -> str:
    c = cfg.constraints
    limits = [f"{name} {value:,.0f}" if name != "max_latency_ms" else f"{name} {value:g}"
              for name, value in (("max_macs", c.max_macs), ("max_params", c.max_params),
                                  ("max_latency_ms", c.max_latency_ms)) if value is not None]
    text = ", ".join(limits) or "none (every proposal is trained, however large)"
    if cfg.measures_latency:
        lat = cfg.latency_setup()
        text += (f"; latency measured on the worker in {lat['runtime']} ({lat['device']}, {lat['threads']} "
                 f"thread{'s' if lat['threads'] > 1 else ''}, batch {lat['batch']}, median of {lat['repeats']})")
    return text


def _seed_lines(cfg: StudyConfig, meta: dict) -> list[str]:
    """Each seed's costs at the study's data shape (`preflight` has refused seeds over the limits)."""
    from search.feasibility import price

    if not cfg.seeds:
        return []
    lines = [f"seeds ({len(cfg.seeds)}, trained first):"]
    for seed in cfg.seeds:
        cost, _ = price(cfg, seed.family, seed.knobs, meta)
        lines.append(f"    {seed.name:24s} {seed.family:12s} {cost['macs']:,} MACs, {cost['params']:,} params")
    return lines


class _DataShape:
    """What the checks read of loaded data (``DataSplits``' shape and statistics), from the cache."""

    def __init__(self, meta: dict):
        self.num_classes, self.image_size, self.in_channels = meta["num_classes"], meta["image_size"], meta["in_channels"]
        self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])


def _data_shape(cfg: StudyConfig):
    """The study's data as the checks need it: from the cache when the files are those it was
    measured on, else loaded (never downloaded: data `run` would download is one error saying so)."""
    fingerprint = _data_fingerprint(cfg.data.dataset, _data_root(cfg.data.root))
    key = {"data": dataclasses.asdict(cfg.data), "seed": cfg.train.seed, "files": fingerprint}
    hit = cache.load("validate-data", key) if fingerprint is not None else None
    if hit is not None:
        return _DataShape(hit)
    from search.exceptions import DataError
    from search.sweep import load_study_data

    try:
        data = load_study_data(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, download=False)))
    except DataError as e:
        missing = _not_downloaded(cfg, e)
        if missing is None:
            raise
        raise missing from e
    meta = {"num_classes": data.num_classes, "image_size": data.image_size, "in_channels": data.in_channels,
            "mean": list(data.mean), "std": list(data.std)}
    if fingerprint is not None:
        cache.save("validate-data", key, meta)
    return _DataShape(meta)


def _not_downloaded(cfg: StudyConfig, error: Exception):
    """The message for data that `run` would download (``download: true``) and is not there yet."""
    from trainers.data import DatasetNotFoundError, download_plan

    if not cfg.data.download or not isinstance(error.__cause__, DatasetNotFoundError):
        return None
    root = _data_root(cfg.data.root)
    plan = download_plan(cfg.data.dataset, root)
    if plan is None:
        return None
    from search.exceptions import DataError

    url, instead = plan
    return DataError(f"{cfg.path}: data: {cfg.data.dataset} is not in {root} yet, and validate downloads nothing: "
                     f"`run` would download it from {url} (download: true); to check it here first, put {instead}")


def _data_root(root: str | None) -> Path:
    """The folder the loader reads (``trainers.data``: ``root``, else $EFFNAS_DATA, else ./data)."""
    return Path(root or os.environ.get("EFFNAS_DATA", "data")).expanduser().resolve()


def _data_fingerprint(dataset: str, root: Path) -> list | None:
    """Name, size and modification time of every file the loader could read for ``dataset`` in
    ``root`` (the folder, its subfolders and their ``raw`` folders), or None when there are too
    many to say."""
    if dataset == "digits":  # bundled with scikit-learn (its version is in the code version)
        return ["digits"]
    entries: list = [dataset, str(root)]
    folders = [root]
    try:
        for folder in folders:
            with os.scandir(folder) as it:
                for entry in sorted(it, key=lambda e: e.name):
                    stat = entry.stat()
                    entries.append([os.path.relpath(entry.path, root), stat.st_size, stat.st_mtime_ns])
                    depth = len(Path(entry.path).relative_to(root).parts)
                    if entry.is_dir() and (depth == 1 or (depth == 2 and entry.name == "raw")):
                        folders.append(Path(entry.path))
            if len(entries) > 5000:
                return None
    except OSError:
        entries.append("unreadable")
    return entries


def describe_study(cfg: StudyConfig, samples: int = 300) -> str:
    """What the study would search, after every check `run` makes before writing anything.

    Raises:
        EffnasError: the first problem `run` would report, with the same message.
    """
    from search.proposal import family_spaces
    from search.sweep import Sweep
    from space.knobs import describe_distribution, space_size

    data = None if getattr(cfg.execution, "backend", None) == "simulated" else _data_shape(cfg)
    sweep = Sweep(cfg, log=lambda _: None, data=data)
    sweep.preflight()
    meta = sweep.data_meta

    lines = [f"study {cfg.study} ({cfg.path}) -> {cfg.storage_url}",
             f"data: {cfg.data.dataset}, train {cfg.data.train_size or 'all'}, val {cfg.data.val_size}, "
             f"image {cfg.data.image_size or 'native'}; {cfg.fidelity.epochs} epochs"
             + (f", ASHA grace {cfg.fidelity.asha.grace_period} rf {cfg.fidelity.asha.reduction_factor}"
                if cfg.fidelity.asha else ""),
             f"objectives: {', '.join(f'{o} ({d[:3]})' for o, d in zip(cfg.objectives, cfg.directions))}",
             f"budget: {cfg.budget.n_trials} trials; constraints: {_constraints_text(cfg)}",
             f"sampler: {cfg.sampler.name} (seed {cfg.sampler.seed})",
             f"proxies: {', '.join(cfg.proxies.names) or 'off'}"
             + (f"; prescreen: train the best {cfg.prescreen.keep:g} of every {cfg.prescreen.pool} proposals "
                f"by {cfg.prescreen.proxy} for their cost" if cfg.prescreen else "")]
    lines += _seed_lines(cfg, meta)
    for name, space in family_spaces(cfg).items():
        drawn: set = set()
        costs = _extremes(cfg, name, space, samples, meta, drawn)
        # Knobs no sample draws cannot apply (layers.3 of a 3-stage network): neither listed nor counted.
        used = {k: d for k, d in space.items() if k in drawn}
        size = space_size(used)
        unused = len(space) - len(used)
        lines.append(f"family {name}: {len(used)} knobs, "
                     + (f"{size:,} configurations" if size is not None else "continuous space")
                     + (f" ({unused} knobs that these settings never use left out)" if unused else ""))
        for key, dist in used.items():
            lines.append(f"    {key:32s} {describe_distribution(dist)}")
        lines += costs
    return "\n".join(lines)


# --- the whole answer, without torch ------------------------------------------------------------

def _file_key(path: str, samples: int) -> dict | None:
    """What `validate`'s answer depends on besides the code: the study file's bytes and place, the
    data files, the folder relative data paths resolve against. None where the answer cannot be
    kept (outside families, a simulated backend's table, a file that does not parse)."""
    import hashlib

    import yaml

    try:
        study = Path(path).resolve()
        blob = study.read_bytes()
        raw = yaml.safe_load(blob)
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict) or raw.get("family_modules") or not isinstance(raw.get("families"), dict):
        return None
    if (raw.get("execution") or {}).get("backend") == "simulated":
        return None
    space_dir = Path(__file__).resolve().parents[1] / "space"
    if not all(isinstance(f, str) and (space_dir / f"{f}.py").is_file() for f in raw["families"]):
        return None  # a family from an installed plugin: its code is not in the code version
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        return None
    root, dataset = data.get("root"), data.get("dataset", "cifar10")
    if not isinstance(dataset, str) or not (root is None or isinstance(root, str)):
        return None
    files = _data_fingerprint(dataset, _data_root(str(study.parent / root) if root else None))
    if files is None:
        return None
    return {"study": str(study), "bytes": hashlib.sha1(blob).hexdigest(), "samples": samples, "files": files,
            "cwd": os.getcwd()}


def _live_checks(cfg: StudyConfig) -> None:
    """The checks of ``Sweep.preflight`` whose answer can change while the study file, the data and
    the code stay the same: sampler options (cheap, so always), the warm-start source, the storage,
    the tracking server and the Ray cluster."""
    from search.storage import check_existing_database, make_sampler
    from search.tracking import make_tracker

    make_sampler(cfg)
    if cfg.warm_start is not None:
        from search.warm_start import check_source

        check_source(cfg)
    check_existing_database(cfg)
    make_tracker(cfg, lambda _: None)
    if getattr(cfg.execution, "backend", None) != "simulated" and cfg.ray.address not in (None, "local"):
        from search.sweep.backends._ray import check_reachable

        check_reachable(cfg.ray.address, cfg.ray.connect_timeout_s, cfg.path)


def validate_file(path: str, samples: int = 300) -> str:
    """`validate` of the study file at ``path``: :func:`describe_study` of it, answered from the
    cache (after the live checks) when nothing it depends on changed.

    Raises:
        EffnasError: the first problem `run` would report, with the same message.
    """
    from search.config import load_study

    key = _file_key(path, samples)
    hit = cache.load("validate", key) if key is not None else None
    if hit is not None:
        try:
            cfg = cache.loads_config(hit["cfg"])
        except Exception:  # an entry this version cannot read: answer afresh
            cfg = None
        if cfg is not None:
            _live_checks(cfg)
            return hit["text"]
    cfg = load_study(path)
    text = describe_study(cfg, samples=samples)
    if key is not None and not cfg.family_modules:
        cache.save("validate", key, {"text": text, "cfg": cache.dumps_config(dataclasses.replace(cfg, seeds=()))})
    return text
