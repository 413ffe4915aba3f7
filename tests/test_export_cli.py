"""`cmtwin export trace RUN`: RUN is an id or 'last' (the newest execute run, the only verb with a timeline)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from cmtwin.cli.main import main
from cmtwin.store.engine import open_store
from cmtwin.store.repo import add_timeline, record_run


def _run(store, verb: str, events: int) -> int:
    now = datetime.now(timezone.utc)
    run_id = record_run(store, verb=verb, deployment="r1_ep320", plan_hash=None, overrides=[], config=None,
                        status="ok", started_at=now, finished_at=now)
    if events:
        add_timeline(store, run_id, [(0, "decode.q_a_proj", float(i), 1.0, "compute", 1.5) for i in range(events)])
    return run_id


def test_trace_last_is_the_newest_execute_run_not_the_newest_run(workdir, capsys):
    store = open_store("sqlite:///cmtwin.db")
    _run(store, "execute", 2)
    newest_execute = _run(store, "execute", 3)
    _run(store, "plan", 0)  # the newest run is a plan: 'last' must skip it
    assert main(["export", "trace", "last"]) == 0
    tr = json.loads((workdir / f"run{newest_execute}.trace.json").read_text())
    assert sum(e["ph"] == "X" for e in tr["traceEvents"]) == 3


def test_trace_last_without_an_execute_run_and_a_bad_id_exit_2(workdir, capsys):
    store = open_store("sqlite:///cmtwin.db")
    _run(store, "plan", 0)
    assert main(["export", "trace", "last"]) == 2
    assert "no `cmtwin execute` run" in capsys.readouterr().err
    assert main(["export", "trace", "three"]) == 2
    assert "run id or 'last'" in capsys.readouterr().err
