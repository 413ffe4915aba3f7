"""The TUI (`cmtwin tui`): shaping functions, the read-only store, Pilot-driven screens, live samples written
by another thread and another process, the query guard, and text snapshots of the main screens.

Snapshots are the screen's text (no colours) at a fixed terminal size, over fixed data (fixed timestamps, a
synthetic plan), stored in tests/tui_snapshots/. Regenerate them with CMTWIN_UPDATE_SNAPSHOTS=1 and review the
diff. Async tests run their own event loop (no pytest-asyncio needed).
"""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cmtwin.errors import StoreError
from store_fixtures import add_example_runs, db_url, pg_database  # noqa: F401 - fixtures
from cmtwin.store import add_samples, add_timeline, close_all_stores, open_store, record_run
from cmtwin.tui.data import (
    config_delta,
    describe_device,
    fmt_num,
    gantt_rows,
    key_metric,
    open_readonly_store,
    run_matches,
    sample_group,
    store_source,
    supernode_map,
)

SNAPSHOTS = Path(__file__).parent / "tui_snapshots"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------------------------ data


def synthetic_plan(kind: str = "npu") -> dict:
    """A small CloudMatrix-like plan: one prefill instance on nodes 0-1, one decode instance on nodes 2-5."""
    dies, rank = [], {"prefill": 0, "decode": 0}
    per_device = 2 if kind == "npu" else 1
    for role, nodes in (("prefill", range(0, 2)), ("decode", range(2, 6))):
        for n in nodes:
            for d in range(8):
                for k in range(per_device):
                    r = rank[role]
                    rank[role] += 1
                    shared_rank = role == "decode" and n == 5 and d == 7
                    die = f"n{n:02d}.{kind}{d}" + (f".d{k}" if kind == "npu" else "")
                    dies.append({
                        "die": die, "role": role, "instance": 0, "rank": r, "ep_rank": r, "tp_group": r // 4,
                        "experts": [] if shared_rank else [r % 256, (r + 64) % 256], "shared": role == "prefill" or shared_rank,
                    })
    mem = {"capacity_gib": 64.0, "used_gib": 40.0, "kv_cache_gib": 6.0, "weights_gib": 30.0}
    return {
        "plan_hash": "abcdef0123456789", "deployment": "tiny", "model": "deepseek_r1", "hardware": "ascend_910c",
        "topology": "cloudmatrix384", "precision": "int8", "devices_total": 384, "devices_used": 48,
        "dies_per_device": per_device,
        "pools": [
            {"role": "prefill", "instance": 0, "devices": 16, "dies": 32, "nodes": [0, 1], "ep": 32, "tp": 4,
             "dp": 8, "batch_per_die": 2,
             "experts": {"routed_ranks": 32, "routed_slots_per_rank": 9, "experts_per_rank": 10,
                         "replicated_experts": 32, "shared_expert": "colocated", "max_over_mean_rank_load": 1.0},
             "memory_per_die": {"routed": dict(mem, used_gib=50.0, kv_cache_gib=2.0)}},
            {"role": "decode", "instance": 0, "devices": 32, "dies": 64, "nodes": [2, 3, 4, 5], "ep": 64, "tp": 1,
             "dp": 64, "batch_per_die": 48,
             "experts": {"routed_ranks": 62, "routed_slots_per_rank": 4, "experts_per_rank": 4,
                         "replicated_experts": 0, "shared_expert": "dedicated", "max_over_mean_rank_load": 1.2},
             "memory_per_die": {"routed": mem, "shared": dict(mem, used_gib=20.0)}},
        ],
        "caching": {"nodes": 48, "capacity_tib": 48.0},
        "dies": dies,
    }


PREDICTION = {
    "prefill": {"tokens_per_s_per_device": 5000.0, "ttft_ms": 1200.5, "step_ms": 1100.0, "microbatches": 2},
    "decode": {"tokens_per_s_per_device": 1900.0, "tpot_ms": 50.25, "step_ms": 80.0, "batch_per_device": 96},
    "breakdown": [
        {"phase": "prefill", "stream": "compute", "operator": "mla_attention", "time_us": 600000.0, "bound": "compute"},
        {"phase": "prefill", "stream": "comm", "operator": "dispatch", "time_us": 400000.0, "bound": "comm"},
        {"phase": "decode", "stream": "attention", "operator": "mla_attention", "time_us": 40000.0, "bound": "compute"},
        {"phase": "decode", "stream": "moe", "operator": "routed_experts", "time_us": 30000.0, "bound": "memory"},
        {"phase": "decode", "stream": "comm", "operator": "combine", "time_us": 10000.0, "bound": "comm"},
    ],
    "bottleneck": "decode: stream 'attention' (50% of busy time); its largest operator is mla_attention",
    "notes": [],
}


def _metrics(tokens: float, tpot: float) -> dict[str, float]:
    return {"decode.tokens_per_s_per_device": tokens, "decode.tpot_ms": tpot, "prefill.ttft_ms": 1200.5}


def fill_store(url: str) -> dict[str, int]:
    """Four runs with fixed timestamps: two plans, a finished simulation with samples and a timeline, and a
    simulation still 'running' (recorded by this live process)."""
    store = open_store(url)
    plan = synthetic_plan()
    common = {"deployment": "tiny", "plan_hash": plan["plan_hash"], "plan": plan, "prediction": PREDICTION}
    ids = {}
    ids["plan"] = record_run(
        store, verb="plan", overrides=["+deployment=tiny"], config={"decode": {"batch": 96, "microbatches": 2}},
        status="ok", started_at=T0, finished_at=T0 + timedelta(seconds=1.5), metrics=_metrics(1900.0, 50.25), **common,
    )
    ids["plan2"] = record_run(
        store, verb="plan", overrides=["+deployment=tiny", "decode.microbatches=1"],
        config={"decode": {"batch": 96, "microbatches": 1}}, status="ok", started_at=T0 + timedelta(minutes=5),
        finished_at=T0 + timedelta(minutes=5, seconds=1), metrics=_metrics(1500.0, 61.0), **common,
    )
    ids["sim"] = record_run(
        store, verb="simulate", overrides=["+deployment=tiny"], config={"workload": {"rate": 10}}, status="ok",
        started_at=T0 + timedelta(minutes=10), finished_at=T0 + timedelta(minutes=12, seconds=5),
        metrics={"decode.tokens_per_s_per_device": 1850.0, "decode.tpot_ms": 52.0, "prefill.ttft_ms": 1300.0}, **common,
    )
    add_samples(store, ids["sim"], [
        (i * 0.5, name, value)
        for i in range(24)
        for name, value in (("throughput_tokens_per_s", 1000 + 40 * (i % 6)), ("ttft_ms_p50", 1200 + 10 * i),
                            ("ttft_ms_p99", 1900 + 20 * i), ("queue_prefill", i % 4), ("cache_hit_ratio", 0.5 + i / 50))
    ])
    add_timeline(store, ids["sim"], [
        (rank, op, start, dur, kind, pred)
        for rank in range(4)
        for op, start, dur, kind, pred in (("attn", 0.0, 300.0, "compute", 280.0), ("dispatch", 300.0, 100.0, "comm", 120.0),
                                           ("experts", 400.0, 400.0 + 50 * rank, "compute", 390.0), ("combine", 850.0, 150.0, "comm", None))
    ])
    ids["live"] = record_run(
        store, verb="simulate", overrides=["+deployment=tiny"], config={"workload": {"rate": 20}}, status="running",
        started_at=T0 + timedelta(minutes=20), finished_at=None, **common,
    )
    return ids


@pytest.fixture
def db(tmp_path):
    """(url, run ids) of a filled SQLite store."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    ids = fill_store(url)
    yield url, ids
    close_all_stores()


def dump(url: str) -> str:
    """The whole database as SQL text (to prove the TUI wrote nothing)."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return "\n".join(conn.iterdump())


# ------------------------------------------------------------------------------------ pure functions


def test_supernode_map_places_every_die_on_48_nodes_by_8_npus():
    grid = supernode_map(synthetic_plan())
    assert (grid.kind, grid.nodes, grid.per_node) == ("npu", 48, 8)
    assert grid.role_counts() == {"prefill": 16, "decode": 32, "idle": 336}
    cell = grid.cell(5, 7)
    assert [d.die for d in cell.dies] == ["n05.npu7.d0", "n05.npu7.d1"]
    assert cell.dies[0].memory["used_gib"] == 20.0  # the dedicated shared-expert rank uses the 'shared' memory
    assert grid.cell(2, 0).memory_fraction == pytest.approx(40 / 64)
    text = "\n".join(describe_device(grid.cell(0, 0)))
    assert "n00.npu0.d0  prefill 0  rank 0  ep 0  mem 50.0/64 GiB" in text and "experts [0,64] + shared" in text
    assert describe_device(grid.cell(40, 3)) == ["node 40 npu3: idle (no role in this plan)"]


def test_supernode_map_from_pools_when_a_run_kept_no_dies():
    plan = {k: v for k, v in synthetic_plan().items() if k != "dies"}
    grid = supernode_map(plan)
    assert grid.role_counts() == {"prefill": 16, "decode": 32, "idle": 336}
    assert "stored no per-die placement" in grid.note
    assert describe_device(grid.cell(3, 4)) == ["node 03 npu4: decode", " n03.npu4.d0  decode 0  mem 40.0/64 GiB",
                                                " n03.npu4.d1  decode 0  mem 40.0/64 GiB"]


def test_supernode_map_reads_gpu_ids():
    grid = supernode_map(dict(synthetic_plan("gpu"), devices_total=176))
    assert (grid.kind, grid.nodes, grid.per_node) == ("gpu", 22, 8)
    assert [d.die for d in grid.cell(3, 5).dies] == ["n03.gpu5"]
    assert supernode_map({}).nodes == 0


def test_filters_metrics_and_deltas(db):
    url, ids = db
    store = open_readonly_store(url)
    from cmtwin.store.repo import get_run, list_runs

    runs = list_runs(store)
    assert [r.id for r in runs if run_matches(r, "simulate status:run")] == [ids["live"]]
    assert [r.id for r in runs if run_matches(r, "verb:plan")] == [ids["plan2"], ids["plan"]]
    assert key_metric({"sim.tpot_ms": 3.0}, ("decode.tpot_ms", "tpot_ms")) == 3.0
    assert key_metric({}, ("tpot_ms",)) is None
    delta = config_delta(get_run(store, ids["plan"]), get_run(store, ids["plan2"]))
    assert ("config.decode.microbatches", 2, 1) in delta
    assert sample_group("ttft_ms_p99") == "ttft" and sample_group("sim.queue") == "sim"
    assert fmt_num(12345.6) == "12346" and fmt_num(2.0) == "2" and fmt_num(None) == ""
    rows = gantt_rows(__import__("cmtwin.store.repo", fromlist=["x"]).get_timeline(store, ids["sim"]), 20)
    assert [r[0] for r in rows] == [0, 1, 2, 3] and "█" in rows[0][1] and "░" in rows[0][1]
    store.engine.dispose()


def test_readonly_store_refuses_writes_and_creates_nothing(db, tmp_path):
    url, ids = db
    before = dump(url)
    store = open_readonly_store(url)
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError, match="readonly|read-only|attempt to write"):
        with store.write() as session:
            session.execute(text("DELETE FROM runs"))
    store.engine.dispose()
    assert dump(url) == before
    missing = tmp_path / "nothing.db"
    with pytest.raises(StoreError, match="there is no run store"):
        store_source(f"sqlite:///{missing}")
    assert not missing.exists()


def _is_superuser(url: str) -> bool:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()
    finally:
        engine.dispose()


def test_source_reads_sqlite_and_postgresql_and_never_writes(db_url):  # noqa: F811 - fixture
    ids = add_example_runs(db_url)
    source = store_source(db_url)
    try:
        assert [r.id for r in source.list_runs()] == ids[::-1]
        assert source.get_run(ids[0]).metrics["decode.tpot_ms"] == 50.0
        assert source.get_samples(ids[0], 0) == [] and source.get_timeline(ids[0]) == []
        if db_url.startswith("postgresql") and _is_superuser(db_url):
            # the query box refuses a superuser connection, as `cmtwin query` does (pg_read_file & co.)
            with pytest.raises(StoreError, match="superuser"):
                source.query("SELECT count(*) FROM runs")
        else:
            assert source.query("SELECT count(*) FROM runs").rows == [(2,)]
            with pytest.raises(StoreError, match="refused"):
                source.query("UPDATE runs SET status = 'failed'")
        store = open_readonly_store(db_url)
        from sqlalchemy import text

        with pytest.raises(Exception, match="(?i)read-only|readonly"):
            with store.write() as session:
                session.execute(text("UPDATE runs SET status = 'failed'"))
        store.engine.dispose()
        assert {r.status for r in source.list_runs()} == {"ok"}
    finally:
        source.close()


# ---------------------------------------------------------------------------------------------- Pilot


def run_app(url: str, scenario: Callable, *, size=(80, 24), poll_s: float = 60.0, run_id=None, tab="plan", messages=None):
    """Run `scenario(pilot)` against the app over `url`, in a fresh event loop."""
    from cmtwin.tui import create_app

    app = create_app(url, run_id, tab=tab, poll_s=poll_s)

    async def main():
        hook = messages.append if messages is not None else None
        async with app.run_test(size=size, message_hook=hook) as pilot:
            await scenario(pilot)

    asyncio.run(main())
    return app


async def until(pilot, condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)
    await pilot.pause()


def screen_text(app) -> str:
    """The current screen as plain text, lines right-stripped (what export_screenshot draws, without styles)."""
    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system="truecolor",
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text(styles=False).splitlines()) + "\n"


async def check_snapshot(pilot, name: str) -> None:
    """Compare the settled screen (no toasts, layout done) with tests/tui_snapshots/<name>.txt."""
    pilot.app.clear_notifications()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()
    await pilot.pause()
    text = screen_text(pilot.app)
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("CMTWIN_UPDATE_SNAPSHOTS") or not path.exists():
        if not os.environ.get("CMTWIN_UPDATE_SNAPSHOTS"):
            pytest.fail(f"no snapshot {path.name}; run with CMTWIN_UPDATE_SNAPSHOTS=1 to create it")
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"screen differs from {path.name} (CMTWIN_UPDATE_SNAPSHOTS=1 regenerates):\n{text}"


def test_runs_screen_lists_filters_sorts_and_opens_a_run(db):
    from cmtwin.tui.screens import RunScreen, RunsScreen
    from cmtwin.tui.widgets import RunLoaded, RunsLoaded

    url, ids = db
    before = dump(url)
    seen: list = []

    async def scenario(pilot):
        screen = pilot.app.screen
        assert isinstance(screen, RunsScreen)
        await until(pilot, lambda: screen.loads, what="runs")
        assert [r.id for r in screen.shown] == [ids["live"], ids["sim"], ids["plan2"], ids["plan"]]
        await check_snapshot(pilot, "runs_80x24")
        await pilot.press("slash", *"verb:plan", "enter")
        assert [r.id for r in screen.shown] == [ids["plan2"], ids["plan"]]
        await pilot.press("escape")
        assert len(screen.shown) == 4
        await pilot.press("o", "o", "o", "o")  # sort by tok/s/dev, highest first (the running one has none)
        assert [r.id for r in screen.shown] == [ids["plan"], ids["sim"], ids["plan2"], ids["live"]]
        await pilot.press("o")  # TPOT, lowest first
        assert [r.id for r in screen.shown][0] == ids["plan"]
        assert screen.highlighted_id() == ids["plan2"]  # the cursor follows its run through filters and sorts
        await pilot.press("up", "enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, RunScreen) and pilot.app.screen.detail, what="run")
        assert pilot.app.screen.run_id == ids["sim"]
        await pilot.press("escape")
        assert pilot.app.screen is screen

    run_app(url, scenario, messages=seen)
    assert any(isinstance(m, RunsLoaded) for m in seen) and any(isinstance(m, RunLoaded) for m in seen)
    assert dump(url) == before  # the TUI never writes


@pytest.mark.parametrize("tab", ["plan", "supernode", "prediction", "live", "timeline"])
def test_run_screen_tabs_snapshot(db, tab):
    from cmtwin.tui.screens import RunScreen

    url, ids = db

    async def scenario(pilot):
        screen = pilot.app.screen
        assert isinstance(screen, RunScreen)
        await until(pilot, lambda: screen.detail and screen.samples_seen == 120 and screen.timeline_events, what="run data")
        if tab == "supernode":
            await pilot.press("right", "right", "down")
        await pilot.pause()
        await check_snapshot(pilot, f"run_{tab}_80x24")

    run_app(url, scenario, run_id=ids["sim"], tab=tab)


def test_supernode_selection_and_overlay(db):
    from cmtwin.tui.widgets import SupernodeWidget

    url, ids = db

    async def scenario(pilot):
        screen = pilot.app.screen
        await until(pilot, lambda: screen.detail, what="run")
        await pilot.press("2")
        widget = screen.query_one(SupernodeWidget)
        assert widget.has_focus
        await pilot.press(*["right"] * 5, "down", "down")
        cell = widget.selected()
        assert (cell.node, cell.device, cell.role) == (5, 2, "decode")
        details = str(screen.query_one("#map-details").render())
        assert "node 05 npu2: decode" in details and "n05.npu2.d1" in details
        await pilot.press("m")
        assert widget.overlay == "memory"
        assert "memory used" in str(widget.render())
        await pilot.press("m")
        assert widget.overlay == "role"

    run_app(url, scenario, run_id=ids["plan"], size=(120, 40))


def test_live_metrics_grow_while_another_thread_and_process_write(db):
    """Samples written by another thread, then by another process, appear without restarting the app."""
    from cmtwin.tui.screens import RunScreen
    from cmtwin.tui.widgets import LiveMetrics, SamplesLoaded

    url, ids = db
    run_id = ids["live"]
    seen: list = []

    def write_from_thread():
        store = open_store(url)
        for i in range(5):
            add_samples(store, run_id, [(i, "throughput_tokens_per_s", 100.0 + i), (i, "queue_prefill", float(i))])
            time.sleep(0.05)

    code = (
        "import sys; from cmtwin.store import open_store, add_samples, finish_run\n"
        f"s = open_store({url!r}); add_samples(s, {run_id}, [(5.0, 'ttft_ms_p50', 900.0), (5.0, 'throughput_tokens_per_s', 200.0)])\n"
        f"finish_run(s, {run_id}, 'ok')\n"
    )

    async def scenario(pilot):
        screen = pilot.app.screen
        assert isinstance(screen, RunScreen)
        live = screen.query_one(LiveMetrics)
        await until(pilot, lambda: screen.detail, what="run")
        assert live.series == {}
        writer = threading.Thread(target=write_from_thread)
        writer.start()
        await until(pilot, lambda: len(live.series.get("throughput_tokens_per_s", [])) == 5, what="thread's samples")
        writer.join()
        assert live.series["queue_prefill"] == [0.0, 1.0, 2.0, 3.0, 4.0]
        proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        await until(pilot, lambda: "ttft_ms_p50" in live.series, what="process's samples")
        await until(pilot, lambda: screen.detail.status == "ok", what="the run's end")
        assert live.series["throughput_tokens_per_s"][-1] == 200.0
        assert live._sparks["throughput_tokens_per_s"].data == [100.0, 101.0, 102.0, 103.0, 104.0, 200.0]
        assert "3 series · 12 points" in str(live.query_one("#live-summary").render())

    run_app(url, scenario, run_id=run_id, tab="live", poll_s=0.05, messages=seen)
    assert sum(1 for m in seen if isinstance(m, SamplesLoaded) and m.points) >= 2


def test_runs_screen_refreshes_while_a_run_is_active(db):
    from cmtwin.store import finish_run

    url, ids = db

    async def scenario(pilot):
        screen = pilot.app.screen
        await until(pilot, lambda: screen.loads, what="runs")
        assert next(r for r in screen.runs if r.id == ids["live"]).status == "running"
        await asyncio.to_thread(finish_run, open_store(url), ids["live"], "failed", "boom")
        await until(pilot, lambda: next(r for r in screen.runs if r.id == ids["live"]).status == "failed",
                    what="the status change")

    run_app(url, scenario, poll_s=0.05)


def test_compare_two_runs(db):
    from cmtwin.tui.screens import CompareScreen

    url, ids = db

    async def scenario(pilot):
        screen = pilot.app.screen
        await until(pilot, lambda: screen.loads, what="runs")
        await pilot.press("c")  # nothing marked: a warning, no screen
        assert pilot.app.screen is screen
        await pilot.press("down", "down", "m", "down", "c")  # mark plan2, compare with plan
        assert isinstance(pilot.app.screen, CompareScreen)
        compare = pilot.app.screen
        await until(pilot, lambda: compare.loaded, what="both runs")
        assert (compare.a, compare.b) == (ids["plan2"], ids["plan"])
        await check_snapshot(pilot, "compare_80x24")

    run_app(url, scenario)


def test_query_tab_reads_and_refuses_writes(db):
    from cmtwin.tui.screens import QueryScreen

    url, ids = db
    before = dump(url)

    async def scenario(pilot):
        await pilot.press("s")
        screen = pilot.app.screen
        assert isinstance(screen, QueryScreen)
        await pilot.press("enter")
        await until(pilot, lambda: screen.last, what="the default query")
        assert screen.last.result is not None and len(screen.last.result.rows) == 4
        sql = screen.query_one("#sql")
        sql.value = "DELETE FROM runs"
        screen.last = None
        await pilot.press("enter")
        await until(pilot, lambda: screen.last, what="the refusal")
        assert screen.last.result is None and "refused DELETE" in screen.last.error
        await check_snapshot(pilot, "query_refused_80x24")
        sql.value = "SELECT 1; DROP TABLE runs"
        screen.last = None
        await pilot.press("enter")
        await until(pilot, lambda: screen.last, what="the second refusal")
        assert "refused" in screen.last.error

    run_app(url, scenario)
    assert dump(url) == before


def test_help_and_quit(db):
    from cmtwin.tui.screens import HelpScreen, RunsScreen

    url, _ = db

    async def scenario(pilot):
        # the help overlays the runs table: wait until its rows are drawn (their widths set the columns behind)
        await until(pilot, lambda: "simulate  tiny" in screen_text(pilot.app), what="the runs drawn")
        await pilot.press("question_mark")
        assert isinstance(pilot.app.screen, HelpScreen)
        await check_snapshot(pilot, "help_80x24")
        await pilot.press("escape")
        assert isinstance(pilot.app.screen, RunsScreen)
        await pilot.press("q")

    app = run_app(url, scenario)
    assert app.return_code == 0


def test_wide_terminal_snapshot(db):
    url, ids = db

    async def scenario(pilot):
        screen = pilot.app.screen
        await until(pilot, lambda: screen.detail, what="run")
        await pilot.pause()
        await check_snapshot(pilot, "run_supernode_120x40")

    run_app(url, scenario, run_id=ids["plan"], tab="supernode", size=(120, 40))


# ------------------------------------------------------------------------------------------------ verb


def test_verb_errors_exit_2_without_starting_the_app(db, tmp_path, capsys):
    from cmtwin.cli.main import main

    url, _ = db
    assert main(["tui", "--db", url, "999"]) == 2
    assert "run 999 not found" in capsys.readouterr().err
    assert main(["tui", "--db", url, "nope"]) == 2
    assert main(["tui", "--db", url, "--poll", "0"]) == 2
    from cmtwin.cli.tui_cmd import _run_id

    source = store_source(url)
    assert _run_id("last", source) == max(db[1].values()) and _run_id(None, source) is None
    source.close()
    missing = tmp_path / "none.db"
    assert main(["tui", "--db", f"sqlite:///{missing}"]) == 2
    assert "there is no run store" in capsys.readouterr().err
    assert not missing.exists()


def test_plan_verb_does_not_import_textual():
    code = (
        "import sys\nfrom cmtwin.cli.main import build_parser\nbuild_parser()\n"
        "import cmtwin.tui\nassert 'textual' not in sys.modules, 'textual imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_supernode_takes_placement_from_a_run_with_the_same_plan_hash(db):
    """`cmtwin simulate` stores a trimmed plan (pools, no dies): the map borrows the dies of a plan run."""
    from cmtwin.tui.widgets import SupernodeWidget

    url, ids = db
    trimmed = {k: v for k, v in synthetic_plan().items() if k != "dies"}
    run_id = record_run(open_store(url), verb="simulate", deployment="tiny", plan_hash=trimmed["plan_hash"],
                        overrides=[], config={}, status="ok", started_at=T0, finished_at=T0, plan=trimmed)

    async def scenario(pilot):
        screen = pilot.app.screen
        widget = screen.query_one(SupernodeWidget)
        await until(pilot, lambda: widget.grid.note.startswith("placement from"), what="the sibling's placement")
        assert widget.grid.note == f"placement from run {ids['live']} (same plan hash)"
        assert widget.selected().dies[0].rank == 0
        assert "rank 0" in str(screen.query_one("#map-details").render())

    run_app(url, scenario, run_id=run_id, tab="supernode")
