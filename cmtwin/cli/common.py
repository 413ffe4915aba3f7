"""Helpers shared by the verbs: output format flags, the console, JSON printing, progress on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_overrides(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides: key=value, +group=option (e.g. +deployment=r1_ep320), ~key")
    if sweep:
        p.add_argument("-m", "--multirun", action="store_true",
                       help="sweep: run once per combination of the overrides' comma-separated values, as a Hydra "
                            "multirun (hydra/launcher=joblib for local processes); every run is recorded with the "
                            "sweep's id")


def add_format(p: argparse.ArgumentParser, choices=("table", "json")) -> None:
    p.add_argument("--format", choices=choices, default=choices[0], help="output format (default: %(default)s)")


def add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", default=None,
                   help="SQLAlchemy URL of the run store (default: CMTWIN_DB_URL, else store.url, else sqlite:///cmtwin.db)")


def compact_table(**kw):
    """A table that fits an 80-column terminal: a rule under the header, no borders, a space between columns. Give
    it no title: print one on the line above (a table's title wraps to the table's width)."""
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), **kw)


def console():
    from rich.console import Console

    return Console(highlight=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str, allow_nan=False) + "\n")


def gib(x: float) -> str:
    return f"{x:,.2f}"


def progress_bar(labels: dict[str, str] | None = None):
    """A rich progress display on stderr (stdout stays clean for --format json); silent when stderr is not a
    terminal. Returns (context manager, progress(stage, done, total)); `labels` names a stage's bar (default: the
    stage)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task((labels or {}).get(stage, stage), total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return bar, progress


def say(text: str) -> None:
    """One line on stderr (estimates, warnings): stdout stays the result."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(text)
