"""The run store: SQLAlchemy models, engine/schema management and repository functions.

Open a store with `open_store(url)` and go through the functions of `cmtwin.store.repo` (re-exported
here); `cmtwin.store.query.run_readonly_query` serves `cmtwin query`.
"""

from cmtwin.store.engine import Store, UpgradeResult, close_all_stores, open_store, resolve_url, upgrade_store
from cmtwin.store.repo import (
    ArtifactRef,
    RunDetail,
    RunSummary,
    SamplePoint,
    TimelineEvent,
    add_artifact,
    add_samples,
    add_timeline,
    finish_run,
    get_run,
    get_samples,
    get_timeline,
    list_runs,
    record_run,
    set_metrics,
    start_run,
)

__all__ = [
    "ArtifactRef",
    "RunDetail",
    "RunSummary",
    "SamplePoint",
    "Store",
    "TimelineEvent",
    "UpgradeResult",
    "add_artifact",
    "add_samples",
    "add_timeline",
    "close_all_stores",
    "finish_run",
    "get_run",
    "get_samples",
    "get_timeline",
    "list_runs",
    "open_store",
    "record_run",
    "resolve_url",
    "set_metrics",
    "start_run",
    "upgrade_store",
]
