"""The event engine: an environment owning the clock, the event heap and a tie-breaking counter.

Events are dataclasses with slots, never changed once made (frozen, except the two an hour holds hundreds of
thousands of, a forward's end and a decode step's: a frozen dataclass's __init__ costs 2.7 x); handlers are
registered per event type. Two events at the same time fire in
the order they were scheduled (the counter), so a run is deterministic for a seed. No global state: two
environments never share anything.

A time-ordered stream known in advance (the simulator's arrivals) need not go through the heap: `merge(pull, ...)`
makes the environment call `pull(t)` before dispatching an event at time t whenever the stream has an element at
or before t, so the stream's elements are taken in, in bulk, before the first event at or after their time (at
one instant, before that instant's events), except events of the types the consumer says do not look at what the
stream feeds. An element after the last event is never taken in; a consumer that must react at an element's own
time schedules an event there (the simulator's `Arrival`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Arrival:
    """The next request of the stream arrives while a line is idle (a wake-up: the arrivals themselves are merged
    in from the stream, see `Environment.merge`)."""


@dataclass(slots=True)
class PrefillDone:
    """A prefill instance finished a forward; `done` are the requests whose prompt it completed."""

    instance: int
    done: tuple
    epoch: int = 0  # the instance's failure count when the forward started: a forward a failure cut is void


@dataclass(slots=True)
class DecodeStepDone:
    """Decode instance `instance` finished its step `step` (its DP ranks run in lockstep: one event per step)."""

    instance: int
    step: int


@dataclass(frozen=True, slots=True)
class DecodeWake:
    """KV of a request waiting for decode instance `instance` has landed while the instance was idle."""

    instance: int


@dataclass(frozen=True, slots=True)
class GroupDown:
    """An attention group (`rank` of the simulator's decode instance) fails (failures.events)."""

    instance: int
    rank: int
    die: str


@dataclass(frozen=True, slots=True)
class PrefillDown:
    """A die of prefill instance `instance` fails (failures.events): the whole instance stops (its EP group needs
    every rank)."""

    instance: int
    die: str


@dataclass(frozen=True, slots=True)
class PrefillUp:
    """The failed prefill instance serves again after failures.recovery_s."""

    instance: int


@dataclass(frozen=True, slots=True)
class GroupUp:
    """The failed group serves again after failures.recovery_s (the plan switched to a spare)."""

    instance: int
    rank: int


@dataclass(frozen=True, slots=True)
class SampleTick:
    """Take a time-series sample."""


@dataclass(frozen=True, slots=True)
class MeasureStart:
    """The warm-up ends: the measurement window opens."""


@dataclass(frozen=True, slots=True)
class Stop:
    """End of the simulated horizon."""


class Environment:
    """Clock + heap + counter. `schedule` an event at an absolute time; `run` dispatches to handlers."""

    __slots__ = ("now", "_heap", "_seq", "_handlers", "events", "_stopped", "_pull", "_next", "_blind")

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = 0
        self._handlers: dict[type, Callable[[Any], None]] = {}
        self.events = 0
        self._stopped = False
        self._pull: Callable[[float], float] | None = None
        self._next = math.inf
        self._blind: frozenset[type] = frozenset()

    def merge(self, pull: Callable[[float], float], first: float, *, blind: tuple[type, ...] = ()) -> None:
        """Merge a time-ordered stream whose first element is at `first` (inf: none): before an event at time t >=
        the stream's next time is dispatched (unless its type is in `blind`: events that neither read nor change
        what the stream feeds), the clock is set to t and `pull(t)` takes in the stream's elements at or before t
        and returns the stream's next time (inf once it is exhausted)."""
        self._pull, self._next, self._blind = pull, first, frozenset(blind)

    def on(self, kind: type, handler: Callable[[Any], None]) -> None:
        if kind in self._handlers:
            raise ValueError(f"a handler for {kind.__name__} is already registered")
        self._handlers[kind] = handler

    def schedule(self, at: float, event: Any) -> None:
        if at < self.now:
            raise ValueError(f"cannot schedule {type(event).__name__} at {at} before now ({self.now})")
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, event))

    def stop(self) -> None:
        self._stopped = True

    @property
    def pending(self) -> int:
        return len(self._heap)

    def run(self, until: float | None = None) -> None:
        """Dispatch events in time order until the heap is empty, `stop()` is called, or the next event is
        later than `until` (the clock then stands at `until`)."""
        heap, handlers, pop, pull, blind = self._heap, self._handlers, heapq.heappop, self._pull, self._blind
        self._stopped = False
        n = 0
        while heap and not self._stopped:
            if until is not None and heap[0][0] > until:
                self.now = until
                break
            t, _, ev = pop(heap)
            self.now = t
            if t >= self._next and type(ev) not in blind:
                self._next = pull(t)
            n += 1
            handlers[type(ev)](ev)
        self.events += n
