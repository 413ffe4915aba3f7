"""Sweeps (`cmtwin plan|simulate|search -m ...`) are Hydra multiruns: Hydra's sweeper expands the overrides, Hydra's
launcher (basic in-process, joblib in local processes) runs one verb per point, and every run is recorded with the
sweep's id."""

from __future__ import annotations

import importlib.util

import pytest

from cmtwin.cli.main import main
from cmtwin.store.engine import open_store
from cmtwin.store.repo import get_run, list_runs


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CMTWIN_DB_URL", raising=False)
    return tmp_path


def _sweep_runs(db: str):
    runs = list_runs(open_store(db, create=False), limit=100)
    sweeps = {r.sweep for r in runs}
    assert len(sweeps) == 1 and None not in sweeps, sweeps
    return runs, sweeps.pop()


def test_plan_sweep_records_one_run_per_point_in_one_sweep(workdir, capsys):
    db = f"sqlite:///{workdir / 'sweep.db'}"
    assert main(["plan", "-m", "+deployment=r1_h200_tp8_agg", "decode.tp=1,8", "serving.concurrency=8,64",
                 "--db", db]) == 0
    runs, sweep = _sweep_runs(db)
    assert len(runs) == 4 and all(r.status == "ok" and r.verb == "plan" for r in runs)
    store = open_store(db, create=False)
    points = {tuple(sorted(o for o in get_run(store, r.id).overrides if not o.startswith("+"))) for r in runs}
    assert points == {(f"decode.tp={t}", f"serving.concurrency={c}") for t in (1, 8) for c in (8, 64)}
    assert f"`cmtwin runs ls --sweep {sweep}`" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["runs", "ls", "--sweep", sweep, "--db", db, "--format", "json"]) == 0
    assert capsys.readouterr().out.count('"sweep"') == 4
    # a single run afterwards belongs to no sweep
    assert main(["plan", "+deployment=r1_h200_tp8_agg", "--db", db]) == 0
    assert list_runs(store, limit=1)[0].sweep is None


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
                    reason="the sweep extra (hydra-joblib-launcher) is not installed")
def test_simulate_sweep_through_the_joblib_launcher(workdir):
    """The issue's example at a short duration: three loads, two local processes, one sweep, three runs."""
    db = f"sqlite:///{workdir / 'sweep.db'}"
    assert main(["simulate", "-m", "+deployment=r1_ep320", "workload.load=0.5,0.7,0.9", "sim.duration_s=10",
                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "--db", db]) == 0
    runs, _ = _sweep_runs(db)
    assert sorted(r.verb for r in runs) == ["simulate"] * 3 and all(r.status == "ok" for r in runs)
    loads = sorted(o for r in runs for o in get_run(open_store(db, create=False), r.id).overrides if "load" in o)
    assert loads == ["workload.load=0.5", "workload.load=0.7", "workload.load=0.9"]


@pytest.mark.parametrize("args,needle", [
    (["plan", "-m", "+deployment=r1_h200_tp8_agg"], "no override lists several values"),
    (["plan", "-m", "+deployment=r1_h200_tp8_agg", "decode.tp=1,8", "hydra/launcher=nope"], "nope"),
])
def test_a_bad_sweep_exits_2_with_the_fix(workdir, capsys, args, needle):
    assert main([*args, "--db", f"sqlite:///{workdir / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_a_failing_point_fails_the_sweep_but_not_the_others(workdir, capsys):
    db = f"sqlite:///{workdir / 'sweep.db'}"
    assert main(["plan", "-m", "+deployment=r1_h200_tp8_agg", "decode.batch_per_device=8,100000", "--db", db]) == 1
    err = capsys.readouterr().err
    assert "HBM overflow" in err and "2 runs, 1 failed" in err
    assert [r.status for r in list_runs(open_store(db, create=False), limit=10)] == ["ok"]


def test_the_tui_filter_lists_one_sweep():
    from datetime import datetime, timezone

    from cmtwin.store.repo import RunSummary
    from cmtwin.tui.data import run_matches

    def run(i, sweep):
        return RunSummary(i, "plan", "d", None, "ok", datetime.now(timezone.utc), None, None, {}, sweep)

    runs = [run(1, "20261207T120404-1"), run(2, "20261207T130000-2"), run(3, None)]
    assert [r.id for r in runs if run_matches(r, "sweep:20261207T120404")] == [1]
    assert [r.id for r in runs if run_matches(r, "sweep:2026")] == [1, 2]
