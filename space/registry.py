"""Strict registries of network families and of the papers' named presets.

A family bundles everything the rest of effnas needs to search over it: its knob dataclass, its
default search space (Optuna distributions under stable hierarchical names), a sampler that turns
drawn values into valid knobs, and a builder for the training-form ``nn.Module``. Registering a
name twice raises, and so does asking for an unknown one (the message lists the valid names), as in
torchvision's model registry.

Families from outside ``space/`` register through the same contract from their own module:

- a study file's ``family_modules:`` lists Python files (``.py``, relative to the study file's
  folder) or importable module names; :func:`load_family_modules` imports them, once per process,
  and says which families each registered. A file is imported under a module name made from its
  stem and a hash of its contents (``effnas_family_<stem>_<hash>``), so every process that loads the
  same file (a Ray worker, say) gives its classes the same qualified name.
- an installed package declares the entry-point group ``effnas.families`` (in its
  ``pyproject.toml``: ``[project.entry-points."effnas.families"] mine = "my_pkg.families"``); the
  value is a module whose import registers families, or a function (``"my_pkg.families:register"``)
  that registers them when called. These are loaded lazily, once, the first time a family name is
  not found (:func:`get_family`, :func:`load_entry_point_families`).

A family module calls :func:`register_family` at import, exactly as ``space/rsnet.py`` does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = [
    "Family",
    "Preset",
    "PaperFigures",
    "register_family",
    "register_preset",
    "get_family",
    "get_preset",
    "list_families",
    "list_presets",
    "build_model",
    "knobs_json",
    "load_family_modules",
    "load_entry_point_families",
    "entry_point_errors",
    "FamilyModuleError",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "effnas.families"

Draw = Callable[[str], Any]


@dataclass(frozen=True)
class Family:
    """One searchable network family.

    Attributes:
        name: registry key and prefix of its Optuna parameter names (``<name>.<knob>``).
        knobs_cls: frozen dataclass of the family's design knobs; it validates itself.
        build: ``build(knobs, num_classes=.., image_size=.., in_channels=3) -> nn.Module``, the
            training form (learned group convs and SFR carry masks; see ``space.convert``).
        search_space: ``() -> dict[name, optuna distribution]``: the default, wide space.
        sample: ``sample(draw) -> knobs`` where ``draw(name)`` returns a value of that parameter.
            Structural constraints hold by construction (reparameterised draws), so every sample builds.
        summary: one line for ``python -m search arch`` and ``validate``.
    """

    name: str
    knobs_cls: type
    build: Callable[..., Any]
    search_space: Callable[[], dict]
    sample: Callable[[Draw], Any]
    summary: str = ""

    def default_knobs(self) -> Any:
        return self.knobs_cls()

    def knobs_from_dict(self, values: dict) -> Any:
        """Rebuild knobs from their stored JSON form (lists become tuples); unknown keys raise.

        For what a record or a worker's spec holds: a knob absent there means what it meant when
        the record was written (``absent_means``). User input goes through :meth:`knobs_with`.
        """
        names = {f.name for f in dataclasses.fields(self.knobs_cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0].split(".")[0], sorted(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown knob(s) {unknown} for family {self.name!r}{hint}; valid knobs: {sorted(names)}"
            )
        cleaned = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        # A knob whose default changed what existing records meant says what its absence means:
        # records written before it existed keep building the network they trained.
        for f in dataclasses.fields(self.knobs_cls):
            if "absent_means" in f.metadata and f.name not in cleaned:
                cleaned[f.name] = f.metadata["absent_means"]
        return self.knobs_cls(**cleaned)

    def knobs_with(self, base: Any, changes: dict) -> Any:
        """``base`` knobs with ``changes`` applied, named as in study files too: a whole knob
        (``growth: [8, 16, 32]``) or one stage of a per-stage knob (``growth.1: 16``).

        Raises:
            ValueError: an unknown knob, a stage past the knob's length, or values the knobs refuse.
        """
        values = json.loads(json.dumps(dataclasses.asdict(base)))
        for key, value in changes.items():
            field_name, _, index = key.rpartition(".")
            if index.isdigit() and field_name in values:
                current = values[field_name]
                if not isinstance(current, list):
                    raise ValueError(f"{key}: {field_name} is one value for every stage ({current!r}) here; "
                                     f"set {field_name}=[...] with one value per stage")
                if int(index) >= len(current):
                    raise ValueError(f"{key}: {field_name} has {len(current)} stages (0-{len(current) - 1})")
                current[int(index)] = value
            else:
                values[key] = value
        return self.knobs_from_dict(values)


@dataclass(frozen=True)
class PaperFigures:
    """What a paper reports for a preset: params and MACs (FLOPs counted as multiply-adds).

    ``params_convention`` says what the paper counted ("all" parameters, or "conv" weights only)
    so tests compare like with like; ``rel_tol`` is the tolerance the tests use.
    """

    params: float | None
    macs: float | None
    source: str
    params_convention: str = "all"
    rel_tol: float = 0.05
    note: str = ""


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    knobs: Any
    num_classes: int
    image_size: int
    paper: PaperFigures | None = None
    extra: dict = field(default_factory=dict)


_FAMILIES: dict[str, Family] = {}
_PRESETS: dict[str, Preset] = {}


def knobs_json(knobs: Any) -> dict:
    """The JSON form of a knobs dataclass, as the database, dedup keys and checkpoints hold it.

    A knob added to a family after studies were recorded, with a default that builds the network
    those studies trained, is marked ``field(metadata={"omit_default": True})`` and left out while
    it has its default, so the architectures of existing studies keep their dedup keys (and are not
    trained again on resume) and their checkpoints stay resumable. A knob whose default builds
    another network is marked ``metadata={"absent_means": <old value>}`` instead (see
    :meth:`Family.knobs_from_dict`), and always written.
    """
    values = json.loads(json.dumps(dataclasses.asdict(knobs)))
    for f in dataclasses.fields(knobs):
        if f.metadata.get("omit_default") and getattr(knobs, f.name) == f.default:
            values.pop(f.name)
    return values


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def register_preset(preset: Preset) -> Preset:
    if preset.name in _PRESETS:
        raise ValueError(f"preset {preset.name!r} is already registered")
    if preset.family not in _FAMILIES:
        raise ValueError(
            f"preset {preset.name!r} names unknown family {preset.family!r}; "
            f"valid families: {sorted(_FAMILIES)}"
        )
    if not isinstance(preset.knobs, _FAMILIES[preset.family].knobs_cls):
        raise TypeError(f"preset {preset.name!r}: knobs must be {_FAMILIES[preset.family].knobs_cls.__name__}")
    _PRESETS[preset.name] = preset
    return preset


def _ensure_loaded() -> None:
    # Importing the package registers every family module exactly once.
    import space  # noqa: F401


def get_family(name: str) -> Family:
    """The family ``name``; a name not registered yet loads the installed ``effnas.families``
    entry points (once) before it is refused.

    Raises:
        KeyError: no such family; the message lists the valid names and any plugin that failed.
    """
    _ensure_loaded()
    if name not in _FAMILIES:
        load_entry_point_families()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(_unknown_family_message(name)) from None


def _unknown_family_message(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), sorted(_FAMILIES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    failed = "".join(f"; the installed family plugin {ep} failed to load ({why}): fix or uninstall it"
                     for ep, why in _ENTRY_POINT_ERRORS.items())
    return f"unknown family {name!r}{hint}; valid families: {sorted(_FAMILIES)}{failed}"


def get_preset(name: str) -> Preset:
    _ensure_loaded()
    try:
        return _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; valid presets: {sorted(_PRESETS)}") from None


def list_families() -> list[str]:
    _ensure_loaded()
    return sorted(_FAMILIES)


def list_presets(family: str | None = None) -> list[str]:
    _ensure_loaded()
    return sorted(n for n, p in _PRESETS.items() if family is None or p.family == family)


def build_model(family: str, knobs: Any, num_classes: int, image_size: int, in_channels: int = 3):
    """Training-form network of ``family`` with ``knobs``."""
    return get_family(family).build(knobs, num_classes=num_classes, image_size=image_size,
                                    in_channels=in_channels)


# --- families from outside space/ ---------------------------------------------------------------

class FamilyModuleError(ValueError):
    """An entry of ``family_modules`` that cannot be loaded: missing file, import error, or a
    module that registers no family. ``entry`` is the entry as given."""

    def __init__(self, entry: Any, message: str):
        self.entry = entry
        super().__init__(message)


_LOADED_MODULES: dict[str, tuple[str, ...]] = {}  # resolved file path or module name -> its families
_ENTRY_POINTS_LOADED = False
_ENTRY_POINT_FAMILIES: tuple[str, ...] = ()  # what the entry points registered
_ENTRY_POINT_ERRORS: dict[str, str] = {}  # "name = value" of a plugin -> why it failed


def load_family_modules(entries: Iterable[str], base_dir: str | Path | None = None) -> list[str]:
    """Import each entry (a ``.py`` file, relative to ``base_dir``, or a module name) and return the
    names of the families they register, in order.

    Idempotent: an entry loaded before in this process (the same resolved file, or module name) is
    not imported again, and its families are returned as before. A plain function of picklable
    arguments, so a worker process loads the same entries with the same call.

    Raises:
        FamilyModuleError: an entry is not a string, names a missing file or a module that is not
            installed, fails to import, or registers no family.
    """
    _ensure_loaded()  # the built-in families first, so they are not taken for the module's own
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    names: list[str] = []
    for entry in entries:
        for name in _load_one(entry, base):
            if name not in names:
                names.append(name)
    return names


def _load_one(entry: Any, base: Path) -> tuple[str, ...]:
    if not isinstance(entry, str) or not entry.strip():
        raise FamilyModuleError(entry, f"{entry!r} is not a file path or module name; give the path of a "
                                       f"Python file ending in .py or an importable module name")
    if entry.endswith(".py"):
        path = (base / entry).expanduser().resolve()
        if not path.is_file():
            raise FamilyModuleError(entry, f"{entry!r}: no such file {path}; give the path of a Python file "
                                           f"relative to {base} (the study file's folder), or an absolute one")
        key, label = str(path), str(path)
    else:
        key, label = entry, f"module {entry!r}"
    if key in _LOADED_MODULES:
        return _LOADED_MODULES[key]
    before = set(_FAMILIES)
    try:
        module = _import_file(path) if entry.endswith(".py") else _import_module(entry)
    except BaseException as e:  # whatever the module raised: undo the registrations it made
        _forget(before)
        if isinstance(e, FamilyModuleError) or not isinstance(e, Exception):
            raise
        raise FamilyModuleError(entry, f"{entry!r}: importing {label} failed: {type(e).__name__}: {e}; "
                                       f"fix the module (--debug shows the traceback)") from e
    families = tuple(n for n in _FAMILIES if n not in before) or _families_of(module)
    if not families:
        raise FamilyModuleError(entry, f"{entry!r}: {label} registered no family; a family module must call "
                                       f"space.registry.register_family(Family(...)) when it is imported "
                                       f"(see examples/nas_bench_macro/family.py)")
    _LOADED_MODULES[key] = families
    return families


def _import_file(path: Path):
    import importlib.util

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"effnas_family_{stem}_{digest}"
    if name in sys.modules:  # the same contents loaded from another path: the same families
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look the module up by name while it runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # as the import system does with a module that fails
        raise
    return module


def _import_module(entry: str):
    try:
        return importlib.import_module(entry)
    except ModuleNotFoundError as e:
        if e.name and (entry == e.name or entry.startswith(e.name + ".")):
            raise FamilyModuleError(entry, f"{entry!r}: no module named {e.name!r} is importable here; install "
                                           f"the package that provides it, add its folder to PYTHONPATH, or "
                                           f"give the path of its .py file") from None
        raise


def _families_of(module) -> tuple[str, ...]:
    """Families whose knobs or builder come from ``module`` (one imported before it was listed)."""
    name = getattr(module, "__name__", None)
    return tuple(n for n, f in _FAMILIES.items()
                 if name in (getattr(f.knobs_cls, "__module__", None), getattr(f.build, "__module__", None)))


def _forget(families_before: set) -> None:
    """Unregister the families (and their presets) registered since ``families_before``."""
    for name in [n for n in _FAMILIES if n not in families_before]:
        del _FAMILIES[name]
    for name in [p for p, preset in _PRESETS.items() if preset.family not in _FAMILIES]:
        del _PRESETS[name]


def entry_point_errors() -> dict[str, str]:
    """The ``effnas.families`` plugins that failed to load (``"name = value"`` -> why)."""
    return dict(_ENTRY_POINT_ERRORS)


def load_entry_point_families() -> list[str]:
    """Load the installed packages' ``effnas.families`` entry points, once per process; return the
    families they registered. A plugin that fails is skipped and remembered: the error for an
    unknown family names it and why."""
    global _ENTRY_POINTS_LOADED, _ENTRY_POINT_FAMILIES
    if _ENTRY_POINTS_LOADED:
        return list(_ENTRY_POINT_FAMILIES)
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    points = list(entry_points(group=ENTRY_POINT_GROUP))
    if not points:
        return []
    _ensure_loaded()
    before = set(_FAMILIES)
    for ep in points:
        families = set(_FAMILIES)
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type(sys)):
                loaded()
        except Exception as e:  # a broken plugin must not take the built-in families with it
            _forget(families)
            _ENTRY_POINT_ERRORS[f"{ep.name} = {ep.value}"] = f"{type(e).__name__}: {e}"
    _ENTRY_POINT_FAMILIES = tuple(n for n in _FAMILIES if n not in before)
    return list(_ENTRY_POINT_FAMILIES)
