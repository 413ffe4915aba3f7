"""A run's executor timeline as Chrome / Perfetto trace JSON (chrome://tracing, ui.perfetto.dev)."""

from __future__ import annotations

import json


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


def write_trace(store, run_id: int, path) -> int:
    """Write run_id's timeline to path; returns the number of events. A run without a timeline is bad input."""
    from cmtwin.errors import CmtwinError
    from cmtwin.store.repo import get_timeline

    events = get_timeline(store, run_id)
    if not events:
        raise CmtwinError(f"run {run_id} has no executor timeline; `cmtwin execute` records one.", key="RUN")
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(trace_dict(events), f)
    except OSError as exc:
        raise CmtwinError(f"--out {path}: cannot write the file ({exc.strerror}).", key="--out",
                          fix="give a writable file path") from None
    return len(events)
