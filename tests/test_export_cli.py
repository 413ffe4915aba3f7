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


def test_a_reader_that_leaves_early_is_not_an_internal_error(workdir):
    """`cmtwin query ... --format json | head`: a closed pipe ends the command quietly (exit 141, no message)."""
    import subprocess
    import sys

    assert main(["plan", "+deployment=r1_ep320", "--format", "json"]) == 0
    code = ("import sys; from cmtwin.cli.main import main; "
            "sys.exit(main(['query', 'with recursive c(x) as (select 1 union all select x + 1 from c where x < 100000) "
            "select x from c', '--max-rows', '100000', '--format', 'json']))")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()  # the reader leaves
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "internal error" not in err and "Traceback" not in err
