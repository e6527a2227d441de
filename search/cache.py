"""Results of the slow, deterministic parts of `arch` and `validate`, kept on disk between runs.

Pricing an architecture builds it with torch (a second to import, milliseconds per network), and
`validate` prices hundreds of random samples and loads the study's data. The answers depend only
on their inputs and on the code, so they are kept in small JSON files under
``$EFFNAS_CACHE`` (default ``$XDG_CACHE_HOME/effnas``, else ``~/.cache/effnas``), each keyed by a
hash of its inputs and of :func:`code_version`: the contents of effnas's own sources and the
installed torch, torchvision, Optuna, NumPy and scikit-learn. Any edit to effnas or upgrade of
those makes every entry a miss; nothing is ever invalidated by hand. ``EFFNAS_CACHE=off`` turns
the cache off. A cache that cannot be read or written is silently not used: it only saves time.

Values are JSON; the one pickled value (a parsed study file, for `validate`) is read back by an
unpickler that builds nothing but ``search.config``'s dataclasses and plain containers.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

__all__ = ["folder", "code_version", "load", "save", "dumps_config", "loads_config"]

_PACKAGES = ("torch", "torchvision", "optuna", "numpy", "sklearn")
_SOURCES = ("search", "space", "trainers")
_MAX_ENTRIES = 2000  # beyond this, the older half goes
_version: str | None = None


def folder() -> Path | None:
    """The cache folder, or None when ``EFFNAS_CACHE=off``."""
    where = os.environ.get("EFFNAS_CACHE")
    if where is not None and where.strip().lower() in ("off", "0", "no", "false", ""):
        return None
    if where:
        return Path(where).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "effnas"


def code_version() -> str:
    """Hash of effnas's sources (contents) and of the installed packages its answers depend on
    (each one's location, size and modification time: an upgrade rewrites them). Milliseconds."""
    global _version
    if _version is None:
        import importlib.util

        digest = hashlib.sha1()
        repo = Path(__file__).resolve().parents[1]
        for package in _SOURCES:
            for path in sorted((repo / package).rglob("*.py")):
                digest.update(str(path.relative_to(repo)).encode())
                digest.update(path.read_bytes())
        for name in _PACKAGES:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            origin = spec.origin if spec is not None else None
            stat = os.stat(origin) if origin and os.path.exists(origin) else None
            digest.update(f"{name}:{origin}:{stat.st_size if stat else '-'}:{stat.st_mtime_ns if stat else '-'}".encode())
        _version = digest.hexdigest()
    return _version


def _path(kind: str, key: Any) -> Path | None:
    where = folder()
    if where is None:
        return None
    blob = json.dumps([kind, code_version(), key], sort_keys=True, default=str)
    return where / f"{kind}-{hashlib.sha1(blob.encode()).hexdigest()}.json"


def load(kind: str, key: Any) -> Any | None:
    """The value saved under ``kind`` and ``key`` by this code version, or None."""
    path = _path(kind, key)
    if path is None:
        return None
    try:
        return json.loads(path.read_text())["value"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(kind: str, key: Any, value: Any) -> None:
    """Keep ``value`` (JSON) under ``kind`` and ``key``; written atomically, errors ignored."""
    path = _path(kind, key)
    if path is None:
        return
    try:
        from trainers.atomic import write_atomic

        write_atomic(path, json.dumps({"kind": kind, "value": value}))
        _prune(path.parent)
    except (OSError, TypeError, ValueError):
        pass


def _prune(where: Path) -> None:
    entries = list(where.glob("*.json"))
    if len(entries) <= _MAX_ENTRIES:
        return
    entries.sort(key=lambda p: p.stat().st_mtime)
    for path in entries[: len(entries) // 2]:
        try:
            path.unlink()
        except OSError:
            pass


# --- a parsed study file ----------------------------------------------------------------------

_ALLOWED_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool", "NoneType"}


class _ConfigUnpickler(pickle.Unpickler):
    """Builds ``search.config`` dataclasses and plain containers, and refuses everything else."""

    def find_class(self, module: str, name: str):
        if module == "search.config" and name[:1].isupper() or module == "builtins" and name in _ALLOWED_BUILTINS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a study file")


def dumps_config(cfg) -> str:
    return base64.b64encode(pickle.dumps(cfg, protocol=4)).decode()


def loads_config(text: str):
    return _ConfigUnpickler(io.BytesIO(base64.b64decode(text))).load()
