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
