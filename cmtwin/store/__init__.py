"""The run store: SQLAlchemy models, engine/schema management and repository functions.

Open a store with `open_store(url)` and go through the functions of `cmtwin.store.repo` (re-exported
here); `cmtwin.store.query.run_readonly_query` serves `cmtwin query`; `cmtwin.store.direct.record_finished_run`
records a finished run, through sqlite3 alone where it can.

The names below are imported from their modules on first use, so that importing `cmtwin.store.direct` does not
import SQLAlchemy (see that module).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "engine": ("Store", "UpgradeResult", "close_all_stores", "open_store", "resolve_url", "upgrade_store"),
    "repo": ("ArtifactRef", "RunDetail", "RunSummary", "SamplePoint", "TimelineEvent", "add_artifact", "add_samples",
             "add_timeline", "finish_run", "get_run", "get_samples", "get_timeline", "list_runs", "record_run",
             "set_metrics", "start_run"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
