"""Study database URLs: the SQLite file behind one, and a form safe to print."""
from __future__ import annotations

from pathlib import Path

__all__ = ["sqlite_path", "display_url"]


def sqlite_path(url: str) -> Path | None:
    """File of an ``sqlite:///`` URL, or None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):].split("?")[0]
    return Path(rest) if rest and rest != ":memory:" else None


def display_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url
