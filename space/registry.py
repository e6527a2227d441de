"""Strict registries of network families and of the papers' named presets.

A family bundles everything the rest of effnas needs to search over it: its knob dataclass, its
default search space (Optuna distributions under stable hierarchical names), a sampler that turns
drawn values into valid knobs, and a builder for the training-form ``nn.Module``. Registering a
name twice raises, and so does asking for an unknown one (the message lists the valid names), as in
torchvision's model registry.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable

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
]

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
    _ensure_loaded()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; valid families: {sorted(_FAMILIES)}") from None


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
