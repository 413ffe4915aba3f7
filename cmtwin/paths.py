"""Where the declarative trees live: inside an installed wheel, or at the checkout root."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PKG = Path(__file__).resolve().parent
_TREES = ("conf", "topologies", "policies", "migrations")


@cache
def data_root() -> Path:
    """The folder holding conf/, topologies/, policies/ and migrations/.

    A wheel carries them under cmtwin/_data/; an editable install or a checkout has them beside the package.
    """
    bundled = _PKG / "_data"
    if (bundled / "conf").is_dir():
        return bundled
    return _PKG.parent


def conf_dir() -> Path:
    return data_root() / "conf"


def topologies_dir() -> Path:
    return data_root() / "topologies"


def policies_dir() -> Path:
    return data_root() / "policies"


def migrations_dir() -> Path:
    return data_root() / "migrations"


def cache_dir() -> Path | None:
    """Where cmtwin keeps rebuildable caches: $CMTWIN_CACHE_DIR, else $XDG_CACHE_HOME/cmtwin, else
    ~/.cache/cmtwin. CMTWIN_CACHE_DIR set to an empty string turns caching off (None)."""
    import os

    explicit = os.environ.get("CMTWIN_CACHE_DIR")
    if explicit is not None:
        return Path(explicit) if explicit else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cmtwin"
