"""The bad-input contract, checked the same way everywhere: `main(argv)` exits 2 with one paragraph that starts
with `error:`, names what the caller expects, shows no traceback and leaves the run store as it was."""

from __future__ import annotations

import signal
import sqlite3
from contextlib import contextmanager, nullcontext
from pathlib import Path

from cmtwin.cli.main import main


def runs_in_store(path: Path) -> int | None:
    """Runs recorded in path/cmtwin.db (None when there is no store)."""
    db = path / "cmtwin.db"
    if not db.exists():
        return None
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0]


@contextmanager
def deadline(seconds: float):
    """Fail (rather than hang) if the block runs longer than `seconds` (SIGALRM, main thread only)."""
    def _timeout(signum, frame):
        raise AssertionError(f"did not finish within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def expect_bad_input(argv, fragments, workdir, capsys, *, seconds: float | None = None) -> str:
    """Run the CLI and check the bad-input contract; return the message as one line."""
    before = runs_in_store(workdir)
    capsys.readouterr()
    with deadline(seconds) if seconds else nullcontext():
        rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, f"{argv} exited {rc}: {err or out}"
    assert "Traceback" not in err and "Traceback" not in out
    text = " ".join(err.split())
    assert text.startswith("error:"), err
    assert "\n\n" not in err.strip(), "one paragraph"
    for fragment in [fragments] if isinstance(fragments, str) else fragments:
        assert fragment.lower() in text.lower(), f"message lacks {fragment!r}: {text}"
    assert len(text) < 3000, f"message too long ({len(text)} characters)"
    assert runs_in_store(workdir) == before, "the store changed"
    return text
