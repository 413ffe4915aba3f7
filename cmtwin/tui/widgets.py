"""Widgets of the TUI: the supernode map and the live metrics panel, plus the typed messages that the
background readers post (workers never touch widgets; they post one of these and the screen updates)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, Sparkline

from cmtwin.store.query import QueryResult
from cmtwin.executor.trace import TimelineEvent
from cmtwin.store.repo import RunDetail, RunSummary, SamplePoint
from cmtwin.tui.data import DeviceCell, SupernodeMap, fmt_num, sample_group
from cmtwin.tui.render import role_style

# ------------------------------------------------------------------------------------------- messages


class RunsLoaded(Message):
    """The newest runs, read by a worker."""

    def __init__(self, runs: list[RunSummary]) -> None:
        super().__init__()
        self.runs = runs


class RunLoaded(Message):
    """One run's details (plan, prediction, metrics), read by a worker."""

    def __init__(self, detail: RunDetail) -> None:
        super().__init__()
        self.detail = detail


class SamplesLoaded(Message):
    """New samples of a run (ids above the last one seen)."""

    def __init__(self, run_id: int, points: list[SamplePoint]) -> None:
        super().__init__()
        self.run_id = run_id
        self.points = points


class TimelineLoaded(Message):
    """A run's executor timeline."""

    def __init__(self, run_id: int, events: list[TimelineEvent]) -> None:
        super().__init__()
        self.run_id = run_id
        self.events = events


class CompareLoaded(Message):
    """The two runs of the Compare screen."""

    def __init__(self, a: RunDetail, b: RunDetail) -> None:
        super().__init__()
        self.a = a
        self.b = b


class QueryFinished(Message):
    """A query's rows, or why it was refused or failed (then `result` is None)."""

    def __init__(self, sql: str, result: QueryResult | None, error: str | None = None) -> None:
        super().__init__()
        self.sql = sql
        self.result = result
        self.error = error


class PlanFound(Message):
    """The full plan (with per-die placement) of another run with the same plan hash."""

    def __init__(self, run_id: int, plan: dict) -> None:
        super().__init__()
        self.run_id = run_id
        self.plan = plan


class LoadFailed(Message):
    """A read failed (the store went away, a run was deleted...)."""

    def __init__(self, what: str, error: str) -> None:
        super().__init__()
        self.what = what
        self.error = error


# --------------------------------------------------------------------------------------- supernode map

_LEVELS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Cursor:
    node: int
    device: int


class SupernodeWidget(Widget, can_focus=True):
    """Nodes as columns, devices as rows, one cell per NPU/GPU coloured by role. With the memory overlay
    a cell's height shows its fullest die's used memory. Arrows move the selection; m toggles the overlay."""

    BINDINGS = [
        Binding("left", "move(-1, 0)", "node-", show=False),
        Binding("right", "move(1, 0)", "node+", show=False),
        Binding("up", "move(0, -1)", "device-", show=False),
        Binding("down", "move(0, 1)", "device+", show=False),
        Binding("m", "toggle_overlay", "memory/role"),
    ]

    overlay: reactive[str] = reactive("role")
    cursor: reactive[Cursor] = reactive(Cursor(0, 0))

    class Selected(Message):
        """The selected device changed."""

        def __init__(self, cell: DeviceCell) -> None:
            super().__init__()
            self.cell = cell

    def __init__(self, grid: SupernodeMap, **kwargs) -> None:
        super().__init__(**kwargs)
        self.grid = grid

    def set_grid(self, grid: SupernodeMap) -> None:
        """Show another plan's map (the selection goes back to the first device)."""
        self.grid = grid
        self.refresh(layout=True)
        self.cursor = Cursor(0, 0)
        self.watch_cursor(self.cursor)

    def action_move(self, dn: int, dd: int) -> None:
        if not self.grid.nodes:
            return
        node = min(max(self.cursor.node + dn, 0), self.grid.nodes - 1)
        device = min(max(self.cursor.device + dd, 0), self.grid.per_node - 1)
        self.cursor = Cursor(node, device)

    def action_toggle_overlay(self) -> None:
        self.overlay = "memory" if self.overlay == "role" else "role"

    def watch_cursor(self, cursor: Cursor) -> None:
        if self.grid.nodes:
            self.post_message(self.Selected(self.grid.cell(cursor.node, cursor.device)))

    def selected(self) -> DeviceCell | None:
        return self.grid.cell(self.cursor.node, self.cursor.device) if self.grid.nodes else None

    def get_content_height(self, container, viewport, width: int) -> int:
        return self.grid.per_node + 3 + bool(self.grid.note) if self.grid.nodes else 1

    def render(self) -> Text:
        g = self.grid
        if not g.nodes:
            return Text("This run's plan places no devices.", style="italic")
        label = len(f"{g.kind}{g.per_node - 1} ")
        text = Text()
        text.append(" " * (label - 5) + "node ")
        text.append("".join(str(n // 10) if n % 10 == 0 or n == 0 else " " for n in range(g.nodes)) + "\n", "grey58")
        text.append(" " * label + "".join(str(n % 10) for n in range(g.nodes)) + "\n", "grey58")
        for d in range(g.per_node):
            text.append(f"{g.kind}{d}".rjust(label - 1) + " ", "grey58")
            for n in range(g.nodes):
                cell = g.cell(n, d)
                ch = "·" if cell.role == "idle" else "█"
                if self.overlay == "memory" and cell.role != "idle":
                    frac = cell.memory_fraction
                    ch = "?" if frac is None else _LEVELS[min(int(frac * len(_LEVELS)), len(_LEVELS) - 1)]
                style = role_style(cell.role)
                if (n, d) == (self.cursor.node, self.cursor.device):
                    style += " reverse"
                text.append(ch, style)
            text.append("\n")
        counts = g.role_counts()
        for role in sorted(counts, key=lambda r: (r == "idle", r)):
            text.append("■" if role != "idle" else "·", role_style(role))
            text.append(f" {role} {counts[role]}  ")
        text.append("overlay: " + ("memory used (▁ low █ full)" if self.overlay == "memory" else "role"), "italic")
        if g.note:
            text.append("\n" + g.note, "italic grey58")
        return text


# ---------------------------------------------------------------------------------------- live metrics


class LiveMetrics(VerticalScroll):
    """One sparkline per sample series, grouped by name prefix, growing as new samples arrive."""

    MAX_POINTS = 5000

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.series: dict[str, list[float]] = {}
        self.last_t: float | None = None
        self._sparks: dict[str, Sparkline] = {}
        self._values: dict[str, Label] = {}
        self._group_last: dict[str, Widget] = {}

    def compose(self):
        yield Label("No samples yet: a running `cmtwin simulate` writes them here as it goes.", id="live-summary")

    def add_points(self, points: list[SamplePoint]) -> None:
        """Append points (in id order); new series get a row in their group."""
        touched: set[str] = set()
        for p in points:
            values = self.series.get(p.name)
            if values is None:
                values = self.series[p.name] = []
                self._add_row(p.name)
            values.append(p.value)
            if len(values) > self.MAX_POINTS:
                del values[: len(values) - self.MAX_POINTS]
            touched.add(p.name)
            self.last_t = p.t if self.last_t is None else max(self.last_t, p.t)
        for name in touched:
            values = self.series[name]
            self._sparks[name].data = list(values)
            self._values[name].update(fmt_num(values[-1]).rjust(9))
        if self.series:
            total = sum(len(v) for v in self.series.values())
            self.query_one("#live-summary", Label).update(
                f"{len(self.series)} series · {total} points · t = {fmt_num(self.last_t)} s"
            )

    def _add_row(self, name: str) -> None:
        group = sample_group(name)
        spark = Sparkline([], summary_function=max, classes="live-spark")
        value = Label("", classes="live-value")
        short = name[len(group) + 1 :] if name.startswith(group + ".") else name
        row = Horizontal(Label(short, classes="live-name"), spark, value, classes="live-row")
        self._sparks[name], self._values[name] = spark, value
        anchor = self._group_last.get(group)
        if anchor is None:
            header = Label(group, classes="live-group")
            self.mount(header)
            self.mount(row)
        else:
            self.mount(row, after=anchor)
        self._group_last[group] = row
