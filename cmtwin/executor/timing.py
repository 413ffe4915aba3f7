"""How the executor and calibrate time their operators: one interface (a clock), two methods.

* ``SyncClock`` (a CPU; ``executor.timing=sync`` on a GPU): the operator runs eagerly between two
  ``time.perf_counter()`` reads, with a device synchronise before and after on a GPU. On a CPU this is the
  operator's time. On a GPU it is the operator's time plus a kernel launch and a host synchronise, which for
  the microsecond kernels of a decode step is most of it (docs/executor.md, GPU check).
* ``GraphClock`` (CUDA, the default there): what a serving engine runs -- kernels replayed from a CUDA
  graph -- timed by the device. Each operator's code is captured into its own graph the first time it runs
  in a timed pass (on one side stream, the stream the untimed warm-up pass ran on, as torch requires),
  replayed ``warmup`` times (the first replay computes the operator's outputs, which the pass then goes on
  with), then ``replays`` times, each replay between two ``Event(enable_timing=True)`` records; the
  operator's time is the median, its spread (p90 - p10) / median. A spin kernel queued first keeps the
  device busy while the host enqueues the replays, so a replay never waits for the host. In ``segment``
  mode the clock captures larger segments instead (one rank's attention, its router, its experts, its LM
  head: the compute between two exchanges of tokens, which is what a serving engine graphs) and the
  operators inside them run untimed as part of the segment; the executor runs one such pass after its
  per-operator passes, so a layer is measured both as the sum of its operators and as graphed segments.

A capture that fails (an operator that synchronises with the host, a library that refuses capture) raises
``CaptureFailed`` naming the operator and the reason; the caller falls back to ``SyncClock`` and reports it.

``FakeCuda`` stands in for ``torch.cuda``'s graph, stream and event API with a deterministic device clock,
so that the graphed path's control flow (capture on a side stream, a replay before the outputs are used,
warm-up and timed replays, median and spread, failure and fallback) is exercised on a machine without a GPU.
It cannot tell whether real kernels were captured correctly: that check needs a GPU (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

SPIN_CYCLES_PER_US = 1500  # torch.cuda._sleep spins this many device clock cycles per microsecond (~1.5 GHz)


@dataclass(frozen=True)
class Timing:
    """Timed repetitions of one graph (or one synchronised call), in seconds."""

    n: int
    min_s: float
    median_s: float
    max_s: float
    p10_s: float
    p90_s: float

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: how much the repetitions disagree."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else 0.0


def summarize(samples) -> Timing:
    """Median, extremes and the 10th and 90th percentiles (nearest rank) of timed repetitions."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("no timed repetitions")

    def pct(q: float) -> float:
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    return Timing(len(xs), xs[0], statistics.median(xs), xs[-1], pct(0.1), pct(0.9))


class CaptureFailed(RuntimeError):
    """A CUDA graph capture failed; `label` is what was being captured, `reason` why (torch's message)."""

    def __init__(self, label: str, reason: str):
        super().__init__(f"capturing {label} in a CUDA graph failed: {reason}")
        self.label, self.reason = label, reason


class Box:
    """What a timed region hands back once it ends: its seconds (None when it was not timed on its own)."""

    __slots__ = ("seconds",)

    def __init__(self):
        self.seconds: float | None = None


class SyncClock:
    """perf_counter around each operator, with a device synchronise on either side when `api` (torch.cuda)
    is given: the executor's method on a CPU, unchanged."""

    method = "sync"

    def __init__(self, api=None, fallback: str | None = None):
        self.api = api
        self.fallback = fallback  # why a graph clock fell back to this one (None: chosen)
        self.mode = "op"
        self.records: list[tuple[str, Timing]] = []

    @contextlib.contextmanager
    def session(self):
        yield self

    @contextlib.contextmanager
    def op(self, label: str):
        box = Box()
        if self.api is not None:
            self.api.synchronize()
        t0 = time.perf_counter()
        yield box
        if self.api is not None:
            self.api.synchronize()
        box.seconds = time.perf_counter() - t0

    @contextlib.contextmanager
    def segment(self, label: str):
        yield Box()  # a synchronised segment is only its operators' sum plus Python: not measured

    def time_callable(self, fn, reps: int, label: str = "probe") -> float:
        """The median of `reps` synchronised calls of fn after one untimed call (seconds)."""
        fn()
        ts = []
        for _ in range(reps):
            with self.op(label) as box:
                fn()
            ts.append(box.seconds)
        t = summarize(ts)
        self.records.append((label, t))
        return t.median_s

    def describe(self) -> dict:
        return {"method": self.method, "device_sync": self.api is not None, "fallback": self.fallback}


class GraphClock:
    """Operators (or segments) captured in CUDA graphs, timed over replays with device events.

    `api` is torch.cuda (or FakeCuda). Use inside ``with clock.session():`` -- the side stream everything
    runs on, warm-up included, and one memory pool that all of the session's graphs share (a graph is timed
    right after its capture and not replayed after the next capture, which is what sharing a pool requires)."""

    method = "cuda-graph"

    def __init__(self, api, *, warmup: int = 3, replays: int = 20, lead: bool = True):
        if warmup < 1 or replays < 1:
            raise ValueError("a graph needs at least one warm-up replay (it computes the outputs) and one timed")
        self.api = api
        self.warmup, self.replays, self.lead = warmup, replays, lead
        self.mode = "op"  # "op": a graph per operator; "segment": a graph per segment, its operators untimed
        self.records: list[tuple[str, Timing]] = []
        self._stream = None
        self._pool = None
        self._anchor = None
        self._capturing: str | None = None

    @contextlib.contextmanager
    def session(self):
        api = self.api
        if self._stream is not None:  # nested: the outer session's stream and pool
            yield self
            return
        self._stream = api.Stream()
        self._stream.wait_stream(api.current_stream())
        self._pool = api.graph_pool_handle()
        outer = api.current_stream()
        try:
            with api.stream(self._stream):
                # An empty graph holds the shared pool for the whole session: torch refuses to capture into a
                # pool whose every graph was deleted (use count 0) while tensors allocated in it are alive,
                # and each operator's graph is deleted once timed while its outputs live on.
                self._anchor = api.CUDAGraph()
                try:
                    with _quiet_empty_graph():
                        self._anchor.capture_begin(pool=self._pool)
                        self._anchor.capture_end()
                    self._anchor.replay()
                except Exception as exc:  # noqa: BLE001 - no graph can be captured here at all
                    raise CaptureFailed("an empty graph (the session's memory pool)", _first_line(exc)) from exc
                yield self
        except BaseException:
            with contextlib.suppress(Exception):  # after a failed capture: do not mask the failure
                outer.wait_stream(self._stream)
                api.synchronize()
            raise
        else:
            outer.wait_stream(self._stream)
            api.synchronize()
        finally:
            self._stream = self._pool = self._anchor = None
            self._capturing = None

    @contextlib.contextmanager
    def op(self, label: str):
        if self.mode != "op" or self._capturing is not None:
            yield Box()  # part of an enclosing segment's graph, not timed on its own
            return
        with self._captured(label) as box:
            yield box

    @contextlib.contextmanager
    def segment(self, label: str):
        if self.mode != "segment" or self._capturing is not None:
            yield Box()
            return
        with self._captured(label) as box:
            yield box

    @contextlib.contextmanager
    def _captured(self, label: str):
        """Capture the body into a graph, replay it (the first replay computes the outputs the caller goes on
        with), then time the replays."""
        if self._stream is None:
            raise RuntimeError("GraphClock: capture outside clock.session()")
        api = self.api
        box = Box()
        g = api.CUDAGraph()
        try:
            g.capture_begin(pool=self._pool)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, a fake or a driver may differ
            raise CaptureFailed(label, _first_line(exc)) from exc
        self._capturing = label
        try:
            yield box
        except BaseException as exc:
            self._capturing = None
            with contextlib.suppress(Exception):
                g.capture_end()  # end the invalidated capture so the stream can run eagerly again
            if _capture_error(exc):
                raise CaptureFailed(label, _first_line(exc)) from exc
            raise  # a bug, running out of memory or an interrupt is not a capture problem: it propagates
        self._capturing = None
        try:
            with _quiet_empty_graph():  # a rank with no expert rows has an empty segment: fine, 0 us
                g.capture_end()
        except Exception as exc:  # noqa: BLE001
            raise CaptureFailed(label, _first_line(exc)) from exc
        t = self.replay(g)
        self.records.append((label, t))
        box.seconds = t.median_s
        del g  # its memory stays in the session's pool; the outputs stay valid (nothing replays it again)

    def replay(self, g) -> Timing:
        """warmup replays (the first one computes the outputs), then `replays` replays each between two timing
        events, queued behind a spin kernel so the device never waits for the host; per-replay seconds."""
        api = self.api
        for _ in range(self.warmup):
            g.replay()
        if self.lead and hasattr(api, "_sleep"):
            api._sleep(int(15 * self.replays * SPIN_CYCLES_PER_US))  # ~15 us of host enqueueing per replay
        starts = [api.Event(enable_timing=True) for _ in range(self.replays)]
        ends = [api.Event(enable_timing=True) for _ in range(self.replays)]
        for s, e in zip(starts, ends):
            s.record()
            g.replay()
            e.record()
        ends[-1].synchronize()
        return summarize(s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends))  # elapsed_time is in ms

    def time_callable(self, fn, reps: int | None = None, label: str = "probe") -> float:
        """fn captured alone (after an untimed call on the session's stream), its replays' median (seconds)."""
        with self.session():
            for _ in range(2):  # warm-up on the capture stream (library handles, workspaces)
                fn()
            mode, self.mode = self.mode, "op"
            try:
                with self.op(label) as box:
                    fn()
            finally:
                self.mode = mode
        return box.seconds

    def describe(self) -> dict:
        spreads = [t.spread for _, t in self.records]
        return {"method": self.method, "warmup": self.warmup, "replays": self.replays, "graphs": len(self.records),
                "spread_median": statistics.median(spreads) if spreads else None,
                "spread_max": max(spreads) if spreads else None, "fallback": None}


@contextlib.contextmanager
def _quiet_empty_graph():
    """torch warns at the end of a capture that recorded no kernel; here an empty graph is expected."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUDA Graph is empty.*")
        yield


def _capture_error(exc: BaseException) -> bool:
    """Whether an exception raised inside a capture is the capture's failure: torch's RuntimeError (a host
    synchronise, an uncapturable call), not running out of memory, not our own errors."""
    return (isinstance(exc, RuntimeError) and not isinstance(exc, CaptureFailed)
            and "OutOfMemory" not in type(exc).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def clock_for(ex, device: str):
    """The clock executor.timing asks for on this device: 'auto' is graphs on CUDA and sync on a CPU; 'graph'
    on a CPU is refused (CUDA graphs need CUDA)."""
    from cmtwin.errors import CmtwinError
    from cmtwin.executor.modules import torch

    want = ex.timing
    if device != "cuda":
        if want == "graph":
            raise CmtwinError("executor.timing=graph needs a CUDA device (CUDA graphs); this run is on the cpu.",
                              key="executor.timing", fix="use executor.timing=auto (sync timing on a CPU)")
        return SyncClock()
    api = torch().cuda
    if want == "sync":
        return SyncClock(api)
    return GraphClock(api, warmup=ex.graph_warmup, replays=ex.replays)


def method_text(clock) -> str:
    """How a clock times, in words (the `source` of calibrated constants, the execute table's title)."""
    d = clock.describe()
    if d["method"] == "cuda-graph":
        return f"CUDA graphs, event-timed, median of {d['replays']} replays after {d['warmup']}"
    text = "a device synchronise around each operator" if d.get("device_sync") else "perf_counter around each operator"
    return text + (f" ({d['fallback']})" if d.get("fallback") else "")


def fallback_clock(clock, exc: CaptureFailed):
    """The synchronised clock that replaces a graph clock whose capture failed; describe() reports why."""
    return SyncClock(clock.api, fallback=f"CUDA graph capture failed ({exc.label}: {exc.reason}); timed with a "
                                         "synchronise around each operator instead")


def with_fallback(clock, measure, warn=None):
    """(measure(clock), clock), or, when a CUDA graph capture fails, (measure(fallback), fallback) with the
    synchronised clock that replaces it (`warn(fallback)` first, where given)."""
    try:
        return measure(clock), clock
    except CaptureFailed as exc:
        clock = fallback_clock(clock, exc)
        if warn is not None:
            warn(clock)
        return measure(clock), clock


# ------------------------------------------------------------------------------------------- a fake device
class GraphRecord:
    """What FakeCuda remembers of one graph: capture index, cost per replay (us), replays, why it failed."""

    def __init__(self):
        self.index: int | None = None
        self.cost = 0.0
        self.replayed = 0
        self.invalid: str | None = None
        self.ended = False


class FakeCuda:
    """A deterministic stand-in for the part of torch.cuda the GraphClock uses (CUDAGraph, Event, Stream,
    stream(), current_stream(), synchronize(), graph_pool_handle(), _sleep()).

    The device clock advances only by what is queued on it: a replay of graph i by ``cost_us(i)`` times the
    next factor of ``jitter`` (cycled per graph), a spin by its cycles. It enforces the rules the real API
    has and the clock must follow: capture on a non-default stream, no nested capture, no host synchronise
    during capture (the capture is invalidated and capture_end fails, as on a GPU), timing events recorded
    outside capture, no capture into a shared pool once every graph captured into it was deleted (torch
    asserts), and -- because on a GPU a captured body computes nothing until a replay -- a graph replayed at
    least once before the next capture begins (``strict``). Tensors are those of the CPU: the
    captured body really runs, so numerics stay checkable. ``fail_on``: capture indices whose capture fails
    (as an operator that cannot be captured makes it fail)."""

    def __init__(self, cost_us=None, jitter=(1.0, 1.1, 0.9, 1.0, 1.3), strict: bool = True, fail_on=()):
        self.cost_us = cost_us or (lambda i: 10.0)
        self.fail_on = set(fail_on)  # capture indices that fail as an uncapturable operator's capture does
        self.jitter = tuple(jitter)
        self.strict = strict
        self.now_us = 0.0
        self.captures = 0
        self.replays = 0
        self.spins = 0
        self.graphs: list = []
        self.pools: dict = {}  # pool handle -> graphs alive that were captured into it
        self._default = self.Stream(default=True)
        self._current = self._default
        self._capturing = None
        fake = self

        class CUDAGraph:
            """A graph; its record (capture index, cost, replays, failure) stays in fake.graphs after it is
            deleted, so that deleting it is seen (the pool rule)."""

            def __init__(self):
                self.rec = GraphRecord()
                self.pool = None

            def capture_begin(self, pool=None):
                if fake._capturing is not None:
                    raise RuntimeError("Cannot capture while another capture is underway")
                if fake._current.default:
                    raise RuntimeError("CUDA graphs must be captured on a non-default stream.")
                if pool is not None:
                    if fake.pools.get(pool, None) == 0:  # torch: beginAllocateToPool asserts use_count > 0
                        raise RuntimeError("INTERNAL ASSERT FAILED: it->second->use_count > 0 (every graph of "
                                           "this memory pool was deleted)")
                    fake.pools[pool] = fake.pools.get(pool, 0) + 1
                    self.pool = pool
                last = fake.graphs[-1] if fake.graphs else None
                if fake.strict and last is not None and not last.invalid and not last.replayed:
                    raise AssertionError("fake: the previous graph was never replayed, so its outputs were "
                                         "never computed (a captured body computes nothing on a GPU)")
                rec = self.rec
                rec.index = fake.captures
                fake.captures += 1
                fake._capturing = rec
                fake.graphs.append(rec)
                if rec.index in fake.fail_on:
                    rec.invalid = "an operation not permitted when stream is capturing"

            def capture_end(self):
                rec = self.rec
                if fake._capturing is not rec:
                    raise RuntimeError("capture_end without capture_begin")
                fake._capturing = None
                rec.ended = True
                if rec.invalid:
                    raise RuntimeError(f"CUDA error: operation failed due to a previous error during capture "
                                       f"({rec.invalid})")
                rec.cost = float(fake.cost_us(rec.index))

            def __del__(self):
                if self.pool is not None and fake.pools.get(self.pool):
                    fake.pools[self.pool] -= 1

            def replay(self):
                rec = self.rec
                if fake._capturing is not None:
                    raise RuntimeError("cannot replay a graph during a capture")
                if not rec.ended or rec.invalid:
                    raise RuntimeError("replay of a graph that was not captured")
                j = fake.jitter[rec.replayed % len(fake.jitter)] if fake.jitter else 1.0
                fake.now_us += rec.cost * j
                rec.replayed += 1
                fake.replays += 1

        class Event:
            def __init__(self, enable_timing: bool = False):
                self.enable_timing = enable_timing
                self.t = None

            def record(self, stream=None):
                if fake._capturing is not None and self.enable_timing:
                    raise RuntimeError("timing events cannot be recorded inside a capture")
                self.t = fake.now_us

            def synchronize(self):
                if self.t is None:
                    raise RuntimeError("event not recorded")

            def elapsed_time(self, end) -> float:
                if not (self.enable_timing and end.enable_timing):
                    raise RuntimeError("Both events must be created with argument 'enable_timing=True'")
                if self.t is None or end.t is None:
                    raise RuntimeError("event not recorded")
                return (end.t - self.t) / 1e3  # ms, as torch

        self.CUDAGraph = CUDAGraph
        self.Event = Event

    class Stream:
        def __init__(self, default: bool = False):
            self.default = default

        def wait_stream(self, other):
            return None

        def synchronize(self):
            return None

    def current_stream(self):
        return self._current

    @contextlib.contextmanager
    def stream(self, s):
        prev, self._current = self._current, s
        try:
            yield
        finally:
            self._current = prev

    def synchronize(self):
        if self._capturing is not None:
            self._capturing.invalid = "a host synchronise during capture"
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    def graph_pool_handle(self):
        self._pools_made = getattr(self, "_pools_made", 0) + 1  # a new pool id per call, as torch's
        return (0, self._pools_made)

    def _sleep(self, cycles: int):
        if self._capturing is not None:
            raise RuntimeError("fake: a spin inside a capture")
        self.spins += 1
        self.now_us += cycles / SPIN_CYCLES_PER_US
