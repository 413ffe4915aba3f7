"""Request streams: Poisson or bursty (Gamma) arrivals with fixed or lognormal lengths and Zipf prefix
sharing, or the replay of a trace file (CSV or JSONL; format in docs/simulate.md).

A stream yields chunks of numpy arrays (arrival time s, prompt, output, prefix id, prefix tokens), so an
hour of traffic at full supernode load is generated without a Python object per request up front.
"""

from __future__ import annotations

import csv
import json
import math
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


MAX_LINE_BYTES = 1 << 20
"""A trace line longer than this (1 MiB) is refused: a request is a few numbers, and a file without line breaks
must not be read into memory whole."""

TRACE_CHUNK = 32768
"""Requests parsed per chunk: memory holds one chunk of the part not yet simulated, whatever the trace's length."""

_SHOW = 40  # characters of an offending value quoted in a message


def _bad(path: Path, line: int, msg: str, fix: str) -> TraceError:
    return TraceError(f"trace {path.name}, line {line}: {msg}.", key="workload.trace", fix=fix)


def _show(raw) -> str:
    """A value as the file wrote it, cut to a few dozen characters (never an unbounded repr)."""
    text = raw if isinstance(raw, str) else json.dumps(raw) if isinstance(raw, bool) else repr(raw)
    return repr(text if len(text) <= _SHOW else text[:_SHOW] + "...")


_FIXES = {"timestamp_s": "write a finite number of seconds from the start of the trace, e.g. 0.25",
          "prompt_len": "write a whole number of tokens, e.g. 2048",
          "output_len": "write a whole number of tokens, e.g. 256",
          "prefix_len": "write a whole number of tokens, at most prompt_len"}


class _Reader:
    """One pass over a trace file: rows in order, each validated, until a row arrives after `until_s`.

    CSV rows are read line by line through csv.reader and JSONL lines one at a time, so memory holds one line
    and the current chunk, never the file. `rows_read` counts the requests parsed (the test of stopping at the
    window); `beyond` says a request after `until_s` exists (it was read, only its timestamp checked).
    """

    def __init__(self, path: Path, max_len: int, until_s: float, owner=None):
        self.p, self.max_len, self.until, self.owner = path, max_len, until_s, owner
        self.rows_read = 0
        self.beyond = False
        self.after_s: float | None = None  # the timestamp of the first request after the window
        self.line = 0
        self.jsonl = path.suffix.lower() in (".jsonl", ".ndjson", ".json")

    # -------------------------------------------------------------------- lines
    def _lines(self, fh):
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            self.line += 1
            if len(raw) > MAX_LINE_BYTES:
                raise _bad(self.p, self.line, f"the line is longer than {MAX_LINE_BYTES:,} bytes",
                           "write one request per line (a trace line is a few numbers)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte = exc.object[exc.start]
                raise _bad(self.p, self.line, f"not UTF-8 text ('utf-8' codec can't decode byte {byte:#04x} at column "
                           f"{exc.start + 1})", "save the trace as UTF-8 text") from None
            if self.line == 1:
                text = text.removeprefix("\ufeff")
            yield text

    def rows(self):
        """(line, {column: raw value}, {column: position}) for every non-blank row."""
        try:
            fh = self.p.open("rb")
        except OSError as exc:
            raise TraceError(f"trace {self.p}: cannot read it ({exc.strerror or exc}).", key="workload.trace",
                             fix="give a readable CSV or JSONL file") from None
        with fh:
            if self.jsonl:
                for text in self._lines(fh):
                    if not text.strip():
                        continue
                    try:
                        obj = json.loads(text)
                    except (ValueError, RecursionError) as exc:
                        why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)[:80] or type(exc).__name__
                        raise _bad(self.p, self.line, f"not a JSON object ({why})",
                                   "write one JSON object per line") from None
                    if not isinstance(obj, dict):
                        raise _bad(self.p, self.line, "not a JSON object", "write one JSON object per line")
                    yield self.line, obj, None
                return
            reader = csv.reader(self._lines(fh))
            try:
                header = [h.strip() for h in next(reader, [])]
                missing = [c for c in REQUIRED if c not in header]
                if missing:
                    raise _bad(self.p, 1, f"the header {_show(','.join(header))} lacks the column(s) {missing}",
                               f"the header must name {', '.join(REQUIRED)} (optional: {', '.join(OPTIONAL)})")
                where = {c: header.index(c) for c in (*REQUIRED, *OPTIONAL) if c in header}
                for fields in reader:
                    if not any(f.strip() for f in fields):
                        continue
                    yield self.line, {c: fields[i] if i < len(fields) else None for c, i in where.items()}, where
            except csv.Error as exc:
                raise _bad(self.p, self.line, f"not CSV ({exc})", "write comma-separated values, one request "
                           "per line") from None

    # -------------------------------------------------------------------- values
    def _column(self, where, col: str) -> str:
        return f"column {where[col] + 1} ({col})" if where is not None else f"key {col!r}"

    def _num(self, line: int, row: dict, where, col: str) -> float:
        raw = row.get(col)
        kind = type(raw)
        if kind is str or kind is int or kind is float:  # the fast path: a CSV cell or a JSON number
            try:
                v = float(raw)
            except ValueError:
                v = None
            except OverflowError:  # a JSON integer beyond 1.8e308
                v = math.inf
            if v is not None and v - v == 0.0:  # finite (inf - inf and nan - nan are nan)
                return v
        fix = _FIXES[col]
        if raw is None or (kind is str and not raw.strip()):
            raise _bad(self.p, line, f"{self._column(where, col)} is missing or empty",
                       f"give every request {', '.join(REQUIRED)}")
        if kind is bool:
            raise _bad(self.p, line, f"{self._column(where, col)} = {_show(raw)} is a boolean, not a number", fix)
        if kind not in (str, int, float) or v is None:
            raise _bad(self.p, line, f"{self._column(where, col)} = {_show(raw)} is not a number", fix)
        raise _bad(self.p, line, f"{self._column(where, col)} = {_show(raw)} is not a finite number (inf, nan and "
                   "values beyond 1.8e308 are refused)", fix)

    def _tokens(self, line: int, row: dict, where, col: str, low: int, high: int | None, what: str) -> int:
        v = self._num(line, row, where, col)
        if v != int(v) or v < low or (high is not None and v > high):
            raise _bad(self.p, line, f"{self._column(where, col)} = {_show(row[col])} is not {what}", _FIXES[col])
        return int(v)

    # -------------------------------------------------------------------- requests
    def requests(self):
        """Validated requests (t, prompt, output, prefix id, prefix tokens), stopping at the first one after
        `until_s` (only its timestamp and order are checked; nothing after it is read)."""
        ids: dict[str, int] = {}
        last = 0.0
        owner = self.owner
        for line, row, where in self.rows():
            self.rows_read += 1
            if owner is not None:
                owner.rows_read += 1
            ts = self._num(line, row, where, "timestamp_s")
            if ts < 0:
                raise _bad(self.p, line, f"timestamp_s = {_show(row['timestamp_s'])} is negative",
                           "timestamps start at 0 s")
            if ts < last:
                raise _bad(self.p, line, f"timestamp_s = {ts:g} is earlier than the previous request's {last:g}",
                           "sort the trace by timestamp_s")
            last = ts
            if ts > self.until:
                self.beyond, self.after_s = True, ts
                return
            prompt = self._tokens(line, row, where, "prompt_len", 1, None, "a positive whole number of tokens")
            output = self._tokens(line, row, where, "output_len", 1, None, "a positive whole number of tokens")
            for col, n in (("prompt_len", prompt), ("output_len", output)):
                if n > self.max_len:
                    raise _bad(self.p, line,
                               f"{self._column(where, col)} = {n} exceeds workload.max_len ({self.max_len})",
                               "raise workload.max_len or shorten the request")
            pid, prefix, plen = row.get("prefix_id"), -1, 0
            if pid is not None and not (isinstance(pid, str) and not pid.strip()):
                key = pid if isinstance(pid, str) else json.dumps(pid)
                prefix = ids.setdefault(key, len(ids))
                raw = row.get("prefix_len")
                if raw is None or (isinstance(raw, str) and not raw.strip()):
                    plen = prompt
                else:
                    plen = self._tokens(line, row, where, "prefix_len", 0, prompt,
                                        f"a whole number in 0..prompt_len ({prompt})")
            yield ts, prompt, output, prefix, plen


def _chunk(rows: list) -> Chunk:
    t, prompt, output, prefix, plen = zip(*rows) if rows else ((),) * 5
    return Chunk(np.array(t, dtype=float), np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64),
                 np.array(prefix, dtype=np.int64), np.array(plen, dtype=np.int64))


@dataclass(frozen=True)
class TraceWindow:
    """What a trace offers inside the simulated window [0, until_s]: read once, without keeping the requests."""

    requests: int
    first_s: float | None
    last_s: float | None
    max_prompt: int
    beyond: bool
    """A request arrives after the window (the trace was cut there)."""
    until_s: float
    after_s: float | None = None
    """When the first request after the window arrives (None if none does, or not known)."""

    @property
    def rate_per_s(self) -> float:
        """The offered rate: requests over the window when the trace runs past it, else over the trace's span."""
        if self.beyond:
            return self.requests / self.until_s
        return self.requests / max(1e-9, self.last_s) if self.requests > 1 else 1.0


class TraceSource:
    """A trace file replayed lazily: `chunks(until_s)` parses it chunk by chunk and stops at the first request
    after `until_s`, so memory is independent of the trace's length (the Simulator pulls a chunk only when the
    previous one is simulated). Problems are raised as TraceError naming the file, line, column, value and fix;
    a request after the window is not read further than its timestamp."""

    def __init__(self, path: str | Path, *, max_len: int = 1 << 30, chunk: int = TRACE_CHUNK):
        self.path = resolve_trace(str(path))
        self.max_len = max_len
        self.chunk = chunk
        self.rows_read = 0
        """Requests parsed so far, over all passes (counted as they are read)."""

    def chunks(self, until_s: float = math.inf):
        """Validated requests up to `until_s`, `chunk` at a time, parsed only when the next chunk is asked for."""
        rows: list = []
        for req in _Reader(self.path, self.max_len, until_s, self).requests():
            rows.append(req)
            if len(rows) >= self.chunk:
                yield _chunk(rows)
                rows = []
        if rows:
            yield _chunk(rows)

    def window(self, until_s: float) -> TraceWindow:
        """One validating pass over the part of the trace inside [0, until_s] (TraceError on a bad row or an
        empty trace)."""
        reader = _Reader(self.path, self.max_len, until_s, self)
        n, first, last, top = 0, None, None, 0
        for t, prompt, *_ in reader.requests():
            if first is None:
                first = t
            n, last, top = n + 1, t, max(top, prompt)
        if n == 0 and not reader.beyond:
            raise TraceError(f"trace {self.path}: no requests in it.", key="workload.trace",
                             fix=f"give at least one request ({', '.join(REQUIRED)})")
        return TraceWindow(n, first, last, top, reader.beyond, until_s, reader.after_s)


def chunk_window(trace: Chunk, until_s: float) -> TraceWindow:
    """TraceWindow of a trace already in memory (a Chunk, as load_trace returns)."""
    keep = trace.t <= until_s
    n = int(keep.sum())
    t = trace.t[keep]
    return TraceWindow(n, float(t[0]) if n else None, float(t[-1]) if n else None,
                       int(trace.prompt[keep].max()) if n else 0, bool(n < len(trace)), until_s,
                       float(trace.t[n]) if n < len(trace) else None)


def check_window(win: TraceWindow, name: str, *, warmup_s: float) -> None:
    """Refuse a trace with no request in the simulated window (exit 2); warn when none falls in the measured
    part [warmup_s, until_s] (the run would report no latencies)."""
    import logging

    if win.requests == 0:
        raise TraceError(
            f"trace {name}: no request arrives inside the simulated window [0, {win.until_s:g}] s "
            f"(sim.duration_s = {win.until_s:g}); "
            + (f"the first arrives at {win.after_s:g} s" if win.after_s is not None else "the trace is empty")
            + ", so the run would simulate nothing.",
            key="sim.duration_s",
            fix="raise sim.duration_s past the trace's first timestamp_s, or shift the trace's timestamps to start "
                "near 0 s")
    if win.last_s is not None and win.last_s < warmup_s:
        logging.getLogger("cmtwin.sim").warning(
            "warning: trace %s: all %d requests inside the window arrive before the warm-up ends (the last at %.6g s, "
            "sim.warmup_s = %g), so no latency is measured; lower sim.warmup_s or replay a longer trace",
            name, win.requests, win.last_s, warmup_s)


def load_trace(path: str | Path, *, max_len: int = 1 << 30) -> Chunk:
    """Read and validate a whole trace into memory (small traces, tests); raises TraceError naming the line of
    the first problem. The simulator streams instead (TraceSource)."""
    src = TraceSource(path, max_len=max_len)
    parts = list(src.chunks())
    if not parts:
        raise TraceError(f"trace {src.path}: no requests in it.", key="workload.trace",
                         fix=f"give at least one request ({', '.join(REQUIRED)})")
    if len(parts) == 1:
        return parts[0]
    return Chunk(*(np.concatenate([getattr(c, f) for c in parts]) for f in ("t", "prompt", "output", "prefix",
                                                                             "prefix_len")))


def _lengths(rng, mean: int, cv: float, dist: str, n: int, max_len: int) -> np.ndarray:
    if dist == "fixed" or cv == 0:
        return np.full(n, mean, dtype=np.int64)
    s2 = np.log1p(cv * cv)
    x = rng.lognormal(np.log(mean) - s2 / 2, np.sqrt(s2), n)
    return np.clip(np.rint(x), 1, max_len).astype(np.int64)


class Stream:
    """Synthetic or replayed requests, in chunks, up to `until_s` of arrival time."""

    def __init__(self, workload, *, rate_per_s: float | None, until_s: float, seed: int, chunk: int = 32768,
                 trace: Chunk | TraceSource | None = None):
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
        if isinstance(self.trace, TraceSource):  # read lazily, up to the window
            yield from self.trace.chunks(self.until)
            return
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
