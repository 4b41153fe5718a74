"""Timers of a keyed function: event time and processing time, per key (Flink's TimerService).

A :class:`~streamjob.operators.KeyedProcessFunction` reaches them as ``ctx.timers``::

    ctx.timers.register_event_time(ts)        # fires once the watermark reaches ts
    ctx.timers.register_processing_time(ts)   # fires once the wall clock (ms) reaches ts
    ctx.timers.delete_event_time(ts) / delete_processing_time(ts)

and gets ``on_timer(ts, key, out)`` with ``ctx.key`` set and ``ctx.timers.time_domain`` telling
which kind fired. One timer per (key, domain, timestamp): registering it twice fires it once.

Timers are keyed state: the truth is one value-state table per domain (``key -> sorted tuple of
timestamps``), so they are in every snapshot (full or incremental), restored, and moved with
their key group on rescale like any other state. The heap that orders them across keys is
derived from the tables (built lazily, after a restore has loaded them); a deleted timer stays
in the heap and is skipped when it comes up. Event-time timers fire in timestamp order when the
watermark passes them; processing-time timers fire from the task loop, which wakes up when the
next one is due (:meth:`TimerService.next_processing_time`) even without input, so timers
restored after a failover that are already due fire at once.

Pure logic: the clock is injected (wall-clock ms by default).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

EVENT_TABLE = "__timers/event"
PROCESSING_TABLE = "__timers/processing"


class TimeDomain:
    """Which clock a timer follows (Flink's names)."""

    EVENT_TIME = "event_time"
    PROCESSING_TIME = "processing_time"


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class TimerQueue:
    """The timers of one domain of one subtask."""

    def __init__(self, backend: Any, table_name: str):
        self.backend = backend
        self.table: dict[Any, tuple[Any, ...]] = backend.table(table_name, "value")
        self._heap: list[tuple[Any, int, Any]] | None = None
        self._seq = itertools.count()

    def heap(self) -> list[tuple[Any, int, Any]]:
        if self._heap is None:  # first use: after the restore loaded the table
            seq = self._seq
            self._heap = [(ts, next(seq), key) for key, tss in self.table.items() for ts in tss]
            heapq.heapify(self._heap)
        return self._heap

    def _touch(self, key: Any) -> None:
        if self.backend.dirty is not None:
            self.backend.dirty.add(key)

    def register(self, key: Any, ts: Any) -> None:
        heap = self.heap()
        tss = self.table.get(key, ())
        if ts in tss:
            return
        self.table[key] = tuple(sorted((*tss, ts)))
        heapq.heappush(heap, (ts, next(self._seq), key))
        self._touch(key)

    def delete(self, key: Any, ts: Any) -> None:
        tss = self.table.get(key)
        if not tss or ts not in tss:
            return
        rest = tuple(t for t in tss if t != ts)
        if rest:
            self.table[key] = rest
        else:
            del self.table[key]
        self._touch(key)  # the heap entry is skipped when it comes up

    def timestamps(self, key: Any) -> tuple[Any, ...]:
        return self.table.get(key, ())

    def peek(self) -> Any | None:
        """The earliest live timer's timestamp (stale heap entries are dropped on the way)."""
        heap, table = self.heap(), self.table
        while heap:
            ts, _, key = heap[0]
            tss = table.get(key)
            if tss and ts in tss:
                return ts
            heapq.heappop(heap)
        return None

    def pop_due(self, upto: Any) -> tuple[Any, Any] | None:
        """Remove and return the earliest live timer ``(ts, key)`` with ``ts <= upto``."""
        ts = self.peek()
        if ts is None or ts > upto:
            return None
        _, _, key = heapq.heappop(self._heap)
        self.delete(key, ts)
        return ts, key

    def __len__(self) -> int:
        return sum(len(t) for t in self.table.values())


class TimerService:
    """``ctx.timers``: register and delete timers of the current key, read the clocks."""

    def __init__(self, ctx: Any, clock: Callable[[], int] = wall_clock_ms):
        self.ctx = ctx
        self.clock = clock
        self.event = TimerQueue(ctx.backend, EVENT_TABLE)
        self.processing = TimerQueue(ctx.backend, PROCESSING_TABLE)
        self.watermark: float = -math.inf
        # Set while on_timer runs: TimeDomain.EVENT_TIME or PROCESSING_TIME.
        self.time_domain: str | None = None

    # -- the user's side --------------------------------------------------------------

    def register_event_time(self, ts: int) -> None:
        self.event.register(self.ctx.key, ts)

    def register_processing_time(self, ts: int) -> None:
        self.processing.register(self.ctx.key, ts)

    def delete_event_time(self, ts: int) -> None:
        self.event.delete(self.ctx.key, ts)

    def delete_processing_time(self, ts: int) -> None:
        self.processing.delete(self.ctx.key, ts)

    def current_watermark(self) -> float:
        return self.watermark

    def current_processing_time(self) -> int:
        return self.clock()

    # -- the task's side --------------------------------------------------------------

    def advance_watermark(self, watermark: float,
                          on_timer: Callable[[Any, Any, list[Any]], None]) -> list[Any]:
        """Fire every event-time timer ``<= watermark`` in timestamp order (including those
        that on_timer registers at or before it) and return what they emitted."""
        if watermark > self.watermark:
            self.watermark = watermark
        return self._fire(self.event, self.watermark, TimeDomain.EVENT_TIME, on_timer)

    def next_processing_time(self) -> Any | None:
        return self.processing.peek()

    def fire_processing_time(self, on_timer: Callable[[Any, Any, list[Any]], None],
                             now: int | None = None) -> list[Any]:
        return self._fire(self.processing, self.clock() if now is None else now,
                          TimeDomain.PROCESSING_TIME, on_timer)

    def _fire(self, queue: TimerQueue, upto: Any, domain: str,
              on_timer: Callable[[Any, Any, list[Any]], None]) -> list[Any]:
        out: list[Any] = []
        ctx = self.ctx
        while (due := queue.pop_due(upto)) is not None:
            ts, key = due
            ctx.key = key
            self.time_domain = domain
            try:
                on_timer(ts, key, out)
            finally:
                self.time_domain = None
        return out
