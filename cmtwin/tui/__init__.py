"""The Textual TUI (`cmtwin tui`): a read-only, live view over the run store.

`create_app(db_url, run_id)` builds the app; it is the only place textual is imported (lazily by the verb).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cmtwin.tui.app import CmtwinApp


def create_app(*args: Any, **kwargs: Any) -> CmtwinApp:
    """Build the TUI app; see `cmtwin.tui.app.create_app`."""
    from cmtwin.tui.app import create_app as _create

    return _create(*args, **kwargs)


__all__ = ["create_app"]
