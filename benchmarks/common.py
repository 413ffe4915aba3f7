"""What the benchmarks share: the machine line they print, and a git revision's tree to time against."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load() -> str:
    """The load average, as `uptime` shows it (others sharing the cores slow the wall time, not the CPU time)."""
    one, five, fifteen = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def machine() -> str:
    return (f"machine: {platform.machine()} {platform.processor() or ''} · {os.cpu_count()} cores · "
            f"Python {platform.python_version()} · {load()}")


def export(rev: str, into: Path) -> Path:
    """The tree of git revision `rev`, written under `into`: of this checkout, or (when this file was itself
    exported from one) of the git checkout of the current directory."""
    into.mkdir()
    repo = ROOT if (ROOT / ".git").exists() else Path.cwd()
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into
