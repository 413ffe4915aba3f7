"""The TUI application and its factory.

`create_app(db_url=None, run_id=None)` opens the store read-only and returns a `CmtwinApp` whose screens
read through a `RunSource` (the store's repository functions); pass `source=` to read from anything else.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding

from cmtwin.tui.data import RunSource, store_source
from cmtwin.tui.screens import HelpScreen, QueryScreen, RunScreen, RunsScreen


class CmtwinApp(App):
    """`cmtwin tui`: the run history, one run's tabs, compare and query; never writes to the store."""

    CSS_PATH = Path(__file__).with_name("cmtwin.tcss")
    TITLE = "cmtwin tui"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
        Binding("s", "query", "SQL"),
    ]

    def __init__(self, source: RunSource, *, run_id: int | None = None, tab: str = "plan", poll_s: float = 1.0) -> None:
        super().__init__()
        self.source = source
        self.start_run_id = run_id
        self.start_tab = tab
        self.poll_s = poll_s

    def on_mount(self) -> None:
        self.push_screen(RunsScreen())
        if self.start_run_id is not None:
            self.push_screen(RunScreen(self.start_run_id, self.start_tab))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_query(self) -> None:
        if not isinstance(self.screen, QueryScreen):
            self.push_screen(QueryScreen())

    def on_unmount(self) -> None:
        self.source.close()


def create_app(
    db_url: str | None = None,
    run_id: int | None = None,
    *,
    tab: str = "plan",
    poll_s: float = 1.0,
    source: RunSource | None = None,
) -> CmtwinApp:
    """The TUI over the run store at `db_url` (resolved like --db: $CMTWIN_DB_URL, else ./cmtwin.db), opened
    read-only; StoreError (exit 2) if it cannot be read. `run_id` opens that run (on `tab`: plan, supernode,
    prediction, live, timeline) over the runs list; `poll_s` is the refresh period while runs are active."""
    return CmtwinApp(source or store_source(db_url), run_id=run_id, tab=tab, poll_s=poll_s)
