"""`cmtwin search`'s record and picture: the run's recorded duration covers the whole search, and the frontier plot
is readable at tens of thousands of candidates with ids that the printed tables carry too."""

from __future__ import annotations

import json
import time

from test_search import SMALL

QUICK = SMALL + ["search.simulate_top=0", "search.workers=1"]


def test_search_run_records_its_true_wall_time(workdir, monkeypatch, capsys):
    """The run row is created after the candidates are evaluated; its duration must still cover them (it read
    5.6 s for a 55 s search)."""
    import cmtwin.search.run as search_run
    from cmtwin.cli.main import main
    from cmtwin.store.engine import open_store
    from cmtwin.store.repo import get_run, list_runs

    real = search_run.search

    def slow_search(*a, **kw):
        time.sleep(2.0)  # stands for a long candidate evaluation
        return real(*a, **kw)

    monkeypatch.setattr(search_run, "search", slow_search)
    assert main(["search", *QUICK, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    store = open_store("sqlite:///cmtwin.db")
    (summary,) = list_runs(store)
    run = get_run(store, out["run_id"])
    assert summary.duration_s >= 2.0 and run.duration_s >= 2.0
    # the recorded duration and the command's own wall clock agree
    assert abs(run.duration_s - run.metrics["wall_s"]) < 1.0
    assert abs(run.duration_s - out["wall_s"]["total"]) < 1.0
