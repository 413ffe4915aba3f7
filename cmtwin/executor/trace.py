"""A run's executor timeline as Chrome / Perfetto trace JSON (chrome://tracing, ui.perfetto.dev)."""

from __future__ import annotations

from typing import NamedTuple


class TimelineEvent(NamedTuple):
    """One operator on one rank: start and duration in microseconds, 'compute' or 'comm'."""

    rank: int
    op: str
    start_us: float
    dur_us: float
    kind: str
    predicted_us: float | None = None


def trace_dict(events) -> dict:
    """Trace Event Format: one complete ('X') event per operator and rank; a process per phase, a thread
    per rank; args carry the kind (compute measured, comm twin-modelled) and the twin's prediction."""
    pids: dict[str, int] = {}
    out = []
    for ev in events:
        phase, _, op = ev.op.partition(".") if "." in ev.op else ("run", "", ev.op)
        pid = pids.setdefault(phase, len(pids) + 1)
        args = {"kind": ev.kind}
        if ev.predicted_us is not None:
            args["predicted_us"] = round(ev.predicted_us, 3)
        out.append({"name": op, "cat": ev.kind, "ph": "X", "ts": ev.start_us, "dur": ev.dur_us, "pid": pid,
                    "tid": ev.rank, "args": args})
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": phase}} for phase, pid in pids.items()]
    return {"traceEvents": meta + out, "displayTimeUnit": "ms"}
