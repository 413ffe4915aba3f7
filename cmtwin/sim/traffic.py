"""Request streams: Poisson or bursty (Gamma) arrivals with fixed or lognormal lengths and Zipf prefix
sharing, or the replay of a trace file (CSV or JSONL; format in docs/simulate.md).

A stream yields chunks of numpy arrays (arrival time s, prompt, output, prefix id, prefix tokens), so an
hour of traffic at full supernode load is generated without a Python object per request up front.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmtwin.errors import ConfigError

REQUIRED = ("timestamp_s", "prompt_len", "output_len")
OPTIONAL = ("prefix_id", "prefix_len")


class TraceError(ConfigError):
    """A trace file is malformed (the message names the file, the line, the column and the value)."""


@dataclass(frozen=True)
class Chunk:
    """Requests in arrival order (parallel arrays)."""

    t: np.ndarray  # arrival time, s
    prompt: np.ndarray  # prompt tokens
    output: np.ndarray  # output tokens
    prefix: np.ndarray  # shared-prefix id, -1 = none
    prefix_len: np.ndarray  # tokens of the prompt that are the shared prefix

    def __len__(self) -> int:
        return len(self.t)


def resolve_trace(path: str) -> Path:
    """A trace path as given (relative to the working directory), else under conf/workload/.

    Like topology files, the path must resolve inside the working directory tree or conf/workload/
    (symlinks and `..` resolved first), so a config cannot make the simulator read e.g. /etc/passwd.
    """
    from cmtwin.paths import conf_dir

    folder = (conf_dir() / "workload").resolve()
    cwd = Path.cwd().resolve()
    p = Path(path).expanduser()
    candidates = [(cwd / p).resolve() if not p.is_absolute() else p.resolve()]
    if not p.is_absolute():
        candidates.append((folder / p).resolve())
    for resolved in candidates:
        if resolved.is_file() and not any(resolved.is_relative_to(r) for r in (folder, cwd)):
            raise TraceError(
                f"workload.trace: path '{path}' resolves to {resolved}, outside the allowed folders "
                f"({folder} and the working directory {cwd}).", key="workload.trace",
                fix="copy the trace under the working directory, or give a name under conf/workload/ "
                    "such as workload.trace=traces/synthetic_small.csv")
        if resolved.is_file():
            return resolved
    raise TraceError(f"workload.trace: no such file '{path}' (looked in the working directory and in "
                     f"{folder}).", key="workload.trace",
                     fix="give an existing CSV or JSONL file, e.g. workload.trace=traces/synthetic_small.csv")


def _bad(path: Path, line: int, msg: str, fix: str) -> TraceError:
    return TraceError(f"trace {path.name}, line {line}: {msg}.", key="workload.trace", fix=fix)


def load_trace(path: str | Path, *, max_len: int = 1 << 30) -> Chunk:
    """Read and validate a whole trace; raises TraceError naming the line of the first problem."""
    p = resolve_trace(str(path))
    rows: list[tuple[int, dict]] = []
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"trace {p}: cannot read it ({exc}).", key="workload.trace") from None
    if p.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad(p, i, f"not a JSON object ({exc.msg})", "write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise _bad(p, i, "not a JSON object", "write one JSON object per line")
            rows.append((i, obj))
    else:
        reader = csv.DictReader(text.splitlines())
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise _bad(p, 1, f"the header {header} lacks the column(s) {missing}",
                       f"the header must name {', '.join(REQUIRED)} (optional: {', '.join(OPTIONAL)})")
        reader.fieldnames = header
        for i, row in enumerate(reader, start=2):
            rows.append((i, row))
    if not rows:
        raise TraceError(f"trace {p}: no requests in it.", key="workload.trace")
    n = len(rows)
    t = np.empty(n)
    prompt = np.empty(n, dtype=np.int64)
    output = np.empty(n, dtype=np.int64)
    prefix = np.full(n, -1, dtype=np.int64)
    plen = np.zeros(n, dtype=np.int64)
    ids: dict[str, int] = {}
    last = 0.0
    for k, (line, row) in enumerate(rows):
        for col in REQUIRED:
            if row.get(col) in (None, ""):
                raise _bad(p, line, f"column '{col}' is missing or empty",
                           f"give every request {', '.join(REQUIRED)}")
        try:
            ts = float(row["timestamp_s"])
        except (TypeError, ValueError):
            raise _bad(p, line, f"timestamp_s = {row['timestamp_s']!r} is not a number", "write seconds, e.g. 0.25") from None
        if not np.isfinite(ts) or ts < 0:
            raise _bad(p, line, f"timestamp_s = {ts} is negative or not finite", "timestamps start at 0 s")
        if ts < last:
            raise _bad(p, line, f"timestamp_s = {ts} is earlier than the previous request's {last}",
                       "sort the trace by timestamp_s")
        last = ts
        vals = {}
        for col in ("prompt_len", "output_len"):
            raw = row[col]
            try:
                v = float(raw)
            except (TypeError, ValueError):
                raise _bad(p, line, f"{col} = {raw!r} is not a number", "write a whole number of tokens") from None
            if v < 1 or v != int(v):
                raise _bad(p, line, f"{col} = {raw} is not a positive whole number of tokens", f"{col} must be >= 1")
            if v > max_len:
                raise _bad(p, line, f"{col} = {int(v)} exceeds workload.max_len ({max_len})",
                           "raise workload.max_len or shorten the request")
            vals[col] = int(v)
        t[k], prompt[k], output[k] = ts, vals["prompt_len"], vals["output_len"]
        pid = row.get("prefix_id")
        if pid not in (None, ""):
            prefix[k] = ids.setdefault(str(pid), len(ids))
            raw = row.get("prefix_len")
            if raw in (None, ""):
                plen[k] = prompt[k]
            else:
                try:
                    v = float(raw)
                except (TypeError, ValueError):
                    raise _bad(p, line, f"prefix_len = {raw!r} is not a number", "write a whole number of tokens") from None
                if v < 0 or v != int(v) or v > prompt[k]:
                    raise _bad(p, line, f"prefix_len = {raw} must be a whole number in 0..prompt_len ({prompt[k]})",
                               "fix prefix_len")
                plen[k] = int(v)
    return Chunk(t, prompt, output, prefix, plen)


def _lengths(rng, mean: int, cv: float, dist: str, n: int, max_len: int) -> np.ndarray:
    if dist == "fixed" or cv == 0:
        return np.full(n, mean, dtype=np.int64)
    s2 = np.log1p(cv * cv)
    x = rng.lognormal(np.log(mean) - s2 / 2, np.sqrt(s2), n)
    return np.clip(np.rint(x), 1, max_len).astype(np.int64)


class Stream:
    """Synthetic or replayed requests, in chunks, up to `until_s` of arrival time."""

    def __init__(self, workload, *, rate_per_s: float | None, until_s: float, seed: int, chunk: int = 32768,
                 trace: Chunk | None = None):
        self.w = workload
        self.rate = rate_per_s
        self.until = until_s
        self.rng = np.random.default_rng(seed)
        self.chunk = chunk
        self.trace = trace
        self.t0 = 0.0
        self.done = False
        if workload.prefix_groups and workload.prefix_share > 0:
            ranks = np.arange(1, workload.prefix_groups + 1, dtype=float)
            pw = ranks ** (-workload.prefix_zipf)
            self.prefix_p = pw / pw.sum()
        else:
            self.prefix_p = None

    def __iter__(self):
        if self.trace is not None:
            keep = self.trace.t <= self.until
            tr = self.trace
            yield Chunk(tr.t[keep], tr.prompt[keep], tr.output[keep], tr.prefix[keep], tr.prefix_len[keep])
            return
        w, rng, n = self.w, self.rng, self.chunk
        mean_gap = 1.0 / self.rate if self.rate else 1.0
        left = w.requests if w.arrival == "offline" else None
        while True:
            if left is not None:  # offline: the whole batch is there at t = 0
                n = min(n, left)
                left -= n
                gaps = np.zeros(n)
            elif w.arrival == "gamma":
                shape = 1.0 / (w.burstiness_cv ** 2)
                gaps = rng.gamma(shape, mean_gap / shape, n)
            else:
                gaps = rng.exponential(mean_gap, n)
            t = self.t0 + np.cumsum(gaps)
            self.t0 = float(t[-1])
            prompt = _lengths(rng, w.prompt_len, w.prompt_cv, w.length_dist, n, w.max_len)
            output = _lengths(rng, w.output_len, w.output_cv, w.length_dist, n, w.max_len)
            if self.prefix_p is not None:
                prefix = rng.choice(len(self.prefix_p), size=n, p=self.prefix_p).astype(np.int64)
                plen = np.minimum(prompt, np.rint(w.prefix_share * w.prompt_len)).astype(np.int64)
            else:
                prefix = np.full(n, -1, dtype=np.int64)
                plen = np.zeros(n, dtype=np.int64)
            keep = t <= self.until
            yield Chunk(t[keep], prompt[keep], output[keep], prefix[keep], plen[keep])
            if not keep.all() or left == 0:
                return
