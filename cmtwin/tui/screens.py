"""The TUI's screens: Runs (the history), Run (tabs over one run), Compare, Query and Help.

Screens read only through the app's RunSource, always in thread workers that post a typed message back
(see widgets.py); handlers on the UI thread turn messages into widget updates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Static, TabbedContent, TabPane

from cmtwin.store.repo import RunDetail, RunSummary
from cmtwin.tui.data import (
    RUN_COLUMNS,
    STATUS_MARK,
    SupernodeMap,
    describe_device,
    fmt_duration,
    fmt_num,
    run_matches,
    run_row,
    supernode_map,
)
from cmtwin.tui.render import compare_renderable, plan_renderable, prediction_renderable, run_title, timeline_renderable
from cmtwin.tui.widgets import (
    CompareLoaded,
    LiveMetrics,
    LoadFailed,
    PlanFound,
    QueryFinished,
    RunLoaded,
    RunsLoaded,
    SamplesLoaded,
    SupernodeWidget,
    TimelineLoaded,
)

_STATUS_STYLE = {"running": "bold yellow", "ok": "green", "failed": "bold red", "interrupted": "red", "cancelled": "grey58"}


def _cell(column: str, value: Any) -> Any:
    if column == "status":
        return Text(f"{STATUS_MARK.get(value, '?')} {value}", style=_STATUS_STYLE.get(value, ""))
    if column == "duration":
        return Text(fmt_duration(value) if value is not None else "…", justify="right")
    if isinstance(value, int | float) or value is None:
        return Text(fmt_num(value), justify="right")
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    """None sorts last; numbers before text."""
    if value is None:
        return (2, 0)
    return (0, value) if isinstance(value, int | float) else (1, str(value))


class RunsScreen(Screen):
    """The run history: a sortable, filterable table, refreshed while any run is active."""

    BINDINGS = [
        Binding("enter", "open", "open", show=False),
        Binding("slash", "filter", "filter"),
        Binding("o", "sort", "sort"),
        Binding("m", "mark", "mark"),
        Binding("c", "compare", "compare"),
        Binding("r", "refresh", "refresh"),
        Binding("escape", "clear_filter", "clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunSummary] = []
        self.shown: list[RunSummary] = []
        self.sort_column = 0
        self.sort_reverse = True
        self.marked: int | None = None
        self.loads = 0
        self._ticks = 0

    @property
    def source(self):
        return self.app.source  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter: words, or verb:plan status:running  (/ to type, esc to clear)", id="filter")
        table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("", id="runs-status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"runs · {self.source.label}"
        table = self.query_one(DataTable)
        for name in RUN_COLUMNS:
            table.add_column(name, key=name)
        table.focus()
        self.load_runs()
        self.set_interval(self.app.poll_s, self._tick)  # type: ignore[attr-defined]

    def _tick(self) -> None:
        # While a run is active, every tick; otherwise every 2nd (new runs still appear within seconds).
        self._ticks += 1
        if any(r.status == "running" for r in self.runs) or self._ticks % 2 == 0:
            self.load_runs()

    @work(thread=True, exclusive=True, group="runs")
    def load_runs(self) -> None:
        try:
            runs = self.source.list_runs()
        except Exception as exc:  # noqa: BLE001 - shown in the status line, the app stays up
            self.post_message(LoadFailed("runs", str(exc)))
            return
        self.post_message(RunsLoaded(runs))

    def on_runs_loaded(self, message: RunsLoaded) -> None:
        self.loads += 1
        if message.runs == self.runs and self.loads > 1:
            return  # nothing changed: keep the table (and its scroll position) as it is
        self.runs = message.runs
        self.refresh_table()

    def on_load_failed(self, message: LoadFailed) -> None:
        self.query_one("#runs-status", Static).update(Text(f"cannot read {message.what}: {message.error}", style="bold red"))

    def refresh_table(self) -> None:
        table = self.query_one(DataTable)
        needle = self.query_one("#filter", Input).value
        current = self.highlighted_id()
        shown = [r for r in self.runs if run_matches(r, needle)]
        shown.sort(key=lambda r: _sort_key(run_row(r)[self.sort_column]), reverse=self.sort_reverse)
        # Runs without a value (no metric yet, unfinished) stay last in either direction.
        shown.sort(key=lambda r: run_row(r)[self.sort_column] is None)
        self.shown = shown
        table.clear()
        for run in shown:
            cells = [_cell(col, v) for col, v in zip(RUN_COLUMNS, run_row(run), strict=True)]
            if run.id == self.marked:
                cells[0] = Text(f"*{run.id}", style="bold", justify="right")
            table.add_row(*cells, key=str(run.id))
        if current is not None and any(r.id == current for r in shown):
            table.move_cursor(row=table.get_row_index(str(current)), animate=False)
        active = sum(r.status == "running" for r in self.runs)
        order = f"{RUN_COLUMNS[self.sort_column]} {'↓' if self.sort_reverse else '↑'}"
        status = f"{len(shown)}/{len(self.runs)} runs · {active} running · sorted by {order}"
        if self.marked is not None:
            status += f" · marked {self.marked} (c compares)"
        self.query_one("#runs-status", Static).update(status)

    def highlighted_id(self) -> int | None:
        table = self.query_one(DataTable)
        if not self.shown or table.cursor_row is None or not (0 <= table.cursor_row < table.row_count):
            return None
        row_key, _ = table.coordinate_to_cell_key((table.cursor_row, 0))
        return int(row_key.value) if row_key.value is not None else None

    def on_input_changed(self, event: Input.Changed) -> None:
        self.refresh_table()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        self.set_sort(event.column_index)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.app.push_screen(RunScreen(int(event.row_key.value)))

    def set_sort(self, column: int) -> None:
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, column in (0, 4, 6, 7)
        self.refresh_table()

    def action_sort(self) -> None:
        self.set_sort((self.sort_column + 1) % len(RUN_COLUMNS))

    def action_open(self) -> None:
        run_id = self.highlighted_id()
        if run_id is not None:
            self.app.push_screen(RunScreen(run_id))

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#filter", Input).value = ""
        self.query_one(DataTable).focus()

    def action_mark(self) -> None:
        run_id = self.highlighted_id()
        self.marked = None if run_id == self.marked else run_id
        self.refresh_table()

    def action_compare(self) -> None:
        run_id = self.highlighted_id()
        if self.marked is None or run_id is None or run_id == self.marked:
            self.notify("mark a run with m, move to another, then press c", severity="warning")
            return
        self.app.push_screen(CompareScreen(self.marked, run_id))

    def action_refresh(self) -> None:
        self.load_runs()


TABS = ("plan", "supernode", "prediction", "live", "timeline")


class RunScreen(Screen):
    """One run in tabs: Plan, Supernode, Prediction, Live metrics, Timeline. Polls while it runs."""

    BINDINGS = [
        Binding("escape", "back", "back"),
        *(Binding(str(i + 1), f"tab('{tab}')", tab, show=False) for i, tab in enumerate(TABS)),
        Binding("m", "overlay", "memory overlay", show=False),
        Binding("r", "refresh", "refresh"),
    ]

    def __init__(self, run_id: int, tab: str = "plan") -> None:
        super().__init__()
        self.run_id = run_id
        self.initial_tab = tab
        self.detail: RunDetail | None = None
        self.last_sample_id = 0
        self.samples_seen = 0
        self.timeline_events: list = []
        self._final_fetch = False

    @property
    def source(self):
        return self.app.source  # type: ignore[attr-defined]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"run {self.run_id}: loading…", id="run-title")
        with TabbedContent(initial=self.initial_tab, id="run-tabs"):
            with TabPane("1 Plan", id="plan"):
                yield VerticalScroll(Static("", id="plan-body"))
            with TabPane("2 Supernode", id="supernode"):
                yield Vertical(SupernodeWidget(SupernodeMap("npu", 0, 0, ()), id="map"), Static("", id="map-details"), id="map-pane")
            with TabPane("3 Prediction", id="prediction"):
                yield VerticalScroll(Static("", id="prediction-body"))
            with TabPane("4 Live", id="live"):
                yield LiveMetrics(id="live-metrics")
            with TabPane("5 Timeline", id="timeline"):
                yield VerticalScroll(Static("", id="timeline-body"))
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"run {self.run_id} · {self.source.label}"
        self.load_run()
        self.load_samples()
        self.load_timeline()
        self.set_interval(self.app.poll_s, self._tick)  # type: ignore[attr-defined]

    def _tick(self) -> None:
        if self.detail is None or self.detail.status == "running":
            self.load_run()
            self.load_samples()
        elif self._final_fetch:
            self._final_fetch = False
            self.load_samples()

    @work(thread=True, exclusive=True, group="run")
    def load_run(self) -> None:
        try:
            self.post_message(RunLoaded(self.source.get_run(self.run_id)))
        except Exception as exc:  # noqa: BLE001
            self.post_message(LoadFailed(f"run {self.run_id}", str(exc)))

    @work(thread=True, exclusive=True, group="samples")
    def load_samples(self) -> None:
        try:
            points = self.source.get_samples(self.run_id, self.last_sample_id)
        except Exception as exc:  # noqa: BLE001
            self.post_message(LoadFailed("samples", str(exc)))
            return
        self.post_message(SamplesLoaded(self.run_id, points))

    @work(thread=True, exclusive=True, group="timeline")
    def load_timeline(self) -> None:
        try:
            self.post_message(TimelineLoaded(self.run_id, self.source.get_timeline(self.run_id)))
        except Exception as exc:  # noqa: BLE001
            self.post_message(LoadFailed("timeline", str(exc)))

    def on_run_loaded(self, message: RunLoaded) -> None:
        first = self.detail is None
        was_running = self.detail is None or self.detail.status == "running"
        detail = self.detail = message.detail
        if was_running and detail.status != "running":
            self._final_fetch = True
            if not first:
                self.load_timeline()
        self.query_one("#run-title", Static).update(run_title(detail))
        if first or was_running:
            self.query_one("#plan-body", Static).update(plan_renderable(detail.plan))
            self.query_one("#prediction-body", Static).update(prediction_renderable(detail))
        if first:
            self.query_one(SupernodeWidget).set_grid(supernode_map(detail.plan or {}))
            if detail.plan and not detail.plan.get("dies") and detail.plan_hash:
                self.find_placement(detail.plan_hash)
            if self.query_one(TabbedContent).active == "supernode":
                self.query_one(SupernodeWidget).focus()

    @work(thread=True, exclusive=True, group="placement")
    def find_placement(self, plan_hash: str) -> None:
        """A run that stored a trimmed plan (no dies): take the placement from the newest run with the same
        plan hash that stored it (the plan hash is the plan's identity)."""
        try:
            for run in self.source.list_runs():
                if run.plan_hash == plan_hash and run.id != self.run_id:
                    plan = self.source.get_run(run.id).plan
                    if plan and plan.get("dies"):
                        self.post_message(PlanFound(run.id, plan))
                        return
        except Exception as exc:  # noqa: BLE001
            self.post_message(LoadFailed("placement", str(exc)))

    def on_plan_found(self, message: PlanFound) -> None:
        grid = supernode_map(message.plan)
        note = f"placement from run {message.run_id} (same plan hash)"
        self.query_one(SupernodeWidget).set_grid(dataclasses.replace(grid, note=note))

    def on_samples_loaded(self, message: SamplesLoaded) -> None:
        fresh = [p for p in message.points if p.id > self.last_sample_id]
        if not fresh:
            return
        self.last_sample_id = fresh[-1].id
        self.samples_seen += len(fresh)
        self.query_one(LiveMetrics).add_points(fresh)

    def on_timeline_loaded(self, message: TimelineLoaded) -> None:
        self.timeline_events = message.events
        self.query_one("#timeline-body", Static).update(timeline_renderable(message.events))

    def on_load_failed(self, message: LoadFailed) -> None:
        self.query_one("#run-title", Static).update(Text(f"cannot read {message.what}: {message.error}", style="bold red"))

    def on_supernode_widget_selected(self, message: SupernodeWidget.Selected) -> None:
        widget = self.query_one(SupernodeWidget)
        self.query_one("#map-details", Static).update("\n".join(describe_device(message.cell, widget.grid.kind)))

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        if tab == "supernode":
            self.query_one(SupernodeWidget).focus()  # now, so arrows typed right after `2` move the selection

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # The map takes the arrows as soon as its tab shows.
        if event.pane.id == "supernode":
            self.query_one(SupernodeWidget).focus()

    def action_overlay(self) -> None:
        for widget in self.query(SupernodeWidget):
            widget.action_toggle_overlay()

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_refresh(self) -> None:
        self.load_run()
        self.load_samples()
        self.load_timeline()


class CompareScreen(Screen):
    """Two runs side by side: headline figures, config delta, metric ratios."""

    BINDINGS = [Binding("escape", "back", "back")]

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.loaded: tuple[RunDetail, RunDetail] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield VerticalScroll(Static(f"comparing runs {self.a} and {self.b}…", id="compare-body"))
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"compare {self.a} vs {self.b}"
        self.load()

    @work(thread=True, exclusive=True, group="compare")
    def load(self) -> None:
        source = self.app.source  # type: ignore[attr-defined]
        try:
            self.post_message(CompareLoaded(source.get_run(self.a), source.get_run(self.b)))
        except Exception as exc:  # noqa: BLE001
            self.post_message(LoadFailed("runs", str(exc)))

    def on_compare_loaded(self, message: CompareLoaded) -> None:
        self.loaded = (message.a, message.b)
        self.query_one("#compare-body", Static).update(compare_renderable(message.a, message.b))

    def on_load_failed(self, message: LoadFailed) -> None:
        self.query_one("#compare-body", Static).update(Text(f"cannot read {message.what}: {message.error}", style="bold red"))

    def action_back(self) -> None:
        self.app.pop_screen()


DEFAULT_SQL = "SELECT id, verb, deployment, status FROM runs ORDER BY id DESC"


class QueryScreen(Screen):
    """A read-only SQL box (the guard of `cmtwin query`), results in a table."""

    BINDINGS = [Binding("escape", "back", "back")]

    def __init__(self) -> None:
        super().__init__()
        self.last: QueryFinished | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(value=DEFAULT_SQL, placeholder="SELECT … (read-only; enter runs it)", id="sql")
        yield Static("enter runs the query · only one read-only SELECT/WITH/VALUES/EXPLAIN", id="query-status")
        yield DataTable(id="query-table", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"query · {self.app.source.label}"  # type: ignore[attr-defined]
        self.query_one("#sql", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#query-status", Static).update("running…")
        self.run_query(event.value)

    @work(thread=True, exclusive=True, group="query")
    def run_query(self, sql: str) -> None:
        try:
            result = self.app.source.query(sql)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a refusal or SQL error is shown, never raised
            self.post_message(QueryFinished(sql, None, str(exc)))
            return
        self.post_message(QueryFinished(sql, result))

    def on_query_finished(self, message: QueryFinished) -> None:
        self.last = message
        status = self.query_one("#query-status", Static)
        table = self.query_one("#query-table", DataTable)
        if message.result is None:
            table.clear(columns=True)
            status.update(Text.assemble(("✗ ", "bold red"), (message.error or "", "red")))
            return
        result = message.result
        table.clear(columns=True)
        for name in result.columns:
            table.add_column(name)
        for row in result.rows:
            table.add_row(*(Text(fmt_num(v), justify="right") if isinstance(v, int | float) else ("" if v is None else str(v)) for v in row))
        more = " (more left out)" if result.truncated else ""
        status.update(Text(f"✓ {len(result.rows)} rows{more}", style="green"))

    def action_back(self) -> None:
        self.app.pop_screen()


HELP = """\
[b]cmtwin tui[/b]: a read-only view of the run store

[b]anywhere[/b]  ? help   q quit   s SQL query   escape back
[b]Runs[/b]      ↑↓ move   enter open   / filter (verb:plan status:running)
          o sort by the next column (or click a header)
          m mark a run, then c compares it with the highlighted one
          r refresh (automatic while a run is active)
[b]Run[/b]       1-5 tabs: Plan Supernode Prediction Live Timeline
          Supernode: arrows select a device, m memory overlay
          Live: a sparkline per sample series, growing as it runs
[b]Query[/b]     one SELECT, enter runs it; writes are refused

escape or ? closes this"""


class HelpScreen(ModalScreen):
    """The keys, on top of the current screen."""

    BINDINGS = [Binding("escape", "close", "close"), Binding("question_mark", "close", "close", show=False)]

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help-body")

    def action_close(self) -> None:
        self.dismiss()


__all__ = ["CompareScreen", "HelpScreen", "QueryScreen", "RunScreen", "RunsScreen"]

