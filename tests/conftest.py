"""Shared fixtures: an isolated working directory and store per test, the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject addopts): one worker per core, at most 4; each worker holds torch and a few
    compiled plans, and a large machine gains nothing from dozens of them on a ~5-minute suite."""
    return max(1, min(4, os.cpu_count() or 1))


def pytest_addoption(parser):
    """`--update-snapshots`: rewrite the pinned predictions (tests/snapshots/*.json) from today's twin. A
    deliberate change to the twin's numbers only; the tests then show what moved instead of failing."""
    parser.addoption("--update-snapshots", action="store_true", default=False,
                     help="rewrite tests/snapshots/*.json (pinned predictions) from today's twin, showing the diff")


def pytest_configure(config):
    """Rebuildable caches (the topology graphs) go to a folder of this test process, not the user's. Python keeps
    the bytecode it compiles even where the environment says not to (PYTHONDONTWRITEBYTECODE=1, as on the CI
    machines): the suite starts cmtwin in a few hundred subprocesses, each of which would compile the package's
    sources again (about 0.1 s each on a 2-core VM)."""
    import sys
    import tempfile

    config._cmtwin_cache = os.environ["CMTWIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="cmtwin-cache-")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(getattr(config, "_cmtwin_cache", ""), ignore_errors=True)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh folder with its own SQLite store (sqlite:///cmtwin.db there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CMTWIN_DB_URL", raising=False)
    monkeypatch.delenv("CMTWIN_FULL_ERROR", raising=False)
    return tmp_path


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch):
    monkeypatch.delenv("CMTWIN_FULL_ERROR", raising=False)
    if os.environ.get("CMTWIN_DB_URL", "").startswith("sqlite:///cmtwin.db"):
        monkeypatch.delenv("CMTWIN_DB_URL", raising=False)
