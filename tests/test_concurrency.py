"""Eight processes writing runs and samples to one store at once lose nothing (SQLite WAL + busy timeout +
retry; PostgreSQL's own concurrency)."""

from __future__ import annotations

import multiprocessing as mp
from datetime import datetime, timezone

import pytest

from tests.store_fixtures import db_url, pg_database  # noqa: F401 - fixtures

WRITERS = 8
RUNS_EACH = 6
SAMPLES_EACH = 500


def _writer(url: str, k: int, q) -> None:
    try:
        from cmtwin.store import add_samples, finish_run, open_store, record_run, start_run

        store = open_store(url)
        now = datetime.now(timezone.utc)
        for i in range(RUNS_EACH):
            record_run(store, verb="plan", deployment=f"w{k}", plan_hash=f"{k}-{i}", overrides=[], config={"k": k},
                       status="ok", started_at=now, finished_at=now, metrics={"x": float(i)})
        run = start_run(store, verb="simulate", deployment=f"w{k}", plan_hash=f"{k}", overrides=[], config={})
        for start in range(0, SAMPLES_EACH, 50):
            add_samples(store, run, [(float(t), "throughput", float(k)) for t in range(start, start + 50)])
        finish_run(store, run, "ok")
        q.put((k, "ok"))
    except Exception as exc:  # noqa: BLE001 - report to the parent
        q.put((k, repr(exc)))


def test_eight_writers_lose_nothing(db_url):  # noqa: F811
    from cmtwin.store import list_runs, open_store
    from cmtwin.store.repo import get_samples

    open_store(db_url)  # create and stamp once, as the first cmtwin command would
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db_url, k, q)) for k in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    results = dict(q.get(timeout=5) for _ in range(WRITERS))
    assert results == {k: "ok" for k in range(WRITERS)}
    store = open_store(db_url)
    runs = list_runs(store, limit=1000)
    assert len(runs) == WRITERS * (RUNS_EACH + 1)
    sims = [r for r in runs if r.verb == "simulate"]
    assert all(r.status == "ok" for r in sims)
    assert sum(len(get_samples(store, r.id)) for r in sims) == WRITERS * SAMPLES_EACH
