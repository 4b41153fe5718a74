"""Event time: watermarks and tumbling event-time windows.

A source declares event time with ``assign_timestamps(fn, max_out_of_orderness)``: its
subtasks track the largest event time seen and emit the watermark ``max - bound`` between
batches (at most every ``interval`` seconds), and ``MAX_WATERMARK`` at the end of their
input so that a finished source never holds the others back. A watermark ``w`` promises that
no record with event time ``<= w`` follows (records that break the promise are *late*).

Watermarks travel in order with the data but never block: a subtask with several input
channels keeps the last watermark of each (:class:`WatermarkTracker`) and its own watermark
is their minimum. :class:`WindowOperator` keeps one accumulator per key and window in keyed
map state (``key -> {window_start: acc}``), so windows are checkpointed, restored and
rescaled by key group like any keyed state; when the watermark reaches a window's end it
emits ``(window_start, key, acc)`` and clears it. A subtask's watermark is part of its
snapshot: after a restore, a window that already fired (its state is gone) must not be
opened again by a replayed record, or it would fire twice.

Pure logic, no I/O: the task feeds batches and watermarks and pushes what comes out.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamjob.keygroups import key_group, key_group_range
from streamjob.operators import MUTABLE, KeyedStateBackend, is_mutable

MIN_WATERMARK = -math.inf  # nothing known yet
MAX_WATERMARK = math.inf   # end of input: every window may fire
# "No records for a while": the channel is left out of the minimum until its next watermark
# (Flink's idleness). NaN travels as a plain float; test with math.isnan.
IDLE = math.nan

_MISSING = object()


@dataclass(frozen=True)
class WatermarkStrategy:
    """Event time of a source's records and how far out of order they may come (ms)."""

    timestamp_fn: Callable[[Any], int]
    max_out_of_orderness: int = 0
    interval: float = 0.2  # seconds between two watermarks of a source subtask (0: every batch)

    def __post_init__(self) -> None:
        if self.max_out_of_orderness < 0:
            raise ValueError("max_out_of_orderness must be 0 or more milliseconds")
        if self.interval < 0:
            raise ValueError("interval must be 0 or more seconds")


class WatermarkGenerator:
    """Bounded out-of-orderness watermarks of one source subtask."""

    def __init__(self, strategy: WatermarkStrategy):
        self.strategy = strategy
        self.max_timestamp: float = MIN_WATERMARK
        self.emitted: float = MIN_WATERMARK
        self.emitted_at = -math.inf

    def observe(self, batch: list[Any]) -> list[Any]:
        """A chain transform: note the batch's largest event time, pass it on unchanged."""
        if batch:
            m = max(map(self.strategy.timestamp_fn, batch))
            if m > self.max_timestamp:
                self.max_timestamp = m
        return batch

    def next_watermark(self, now: float) -> float | None:
        """The watermark to emit now, if it advanced and the interval has passed."""
        wm = self.max_timestamp - self.strategy.max_out_of_orderness
        if wm <= self.emitted or now - self.emitted_at < self.strategy.interval:
            return None
        self.emitted, self.emitted_at = wm, now
        return wm

    def finish(self) -> float | None:
        """End of input: the final watermark (None when it was already emitted)."""
        if self.emitted == MAX_WATERMARK:
            return None
        self.emitted = MAX_WATERMARK
        return MAX_WATERMARK


class WatermarkTracker:
    """The watermark of a subtask with ``n`` input channels: the minimum of the last
    watermark received on each channel that is not idle (:data:`IDLE`). It only moves
    forward; ``current`` may start at a restored value (the watermark the subtask had when
    its checkpoint was taken)."""

    def __init__(self, num_channels: int, current: float = MIN_WATERMARK):
        self.channels: list[float] = [MIN_WATERMARK] * num_channels
        self.idle: set[int] = set()
        self.current = current

    def update(self, channel: int, watermark: float) -> float | None:
        """Record a channel's watermark; the subtask's new watermark if it advanced, or
        :data:`IDLE` when every channel has just become idle."""
        if math.isnan(watermark):
            if channel in self.idle:
                return None
            self.idle.add(channel)
        elif channel in self.idle:
            self.idle.discard(channel)
            self.channels[channel] = max(self.channels[channel], watermark)
        elif watermark <= self.channels[channel]:
            return None
        else:
            self.channels[channel] = watermark
        active = [w for c, w in enumerate(self.channels) if c not in self.idle]
        if not active:
            return IDLE  # every input idle: so is this subtask's output
        low = min(active)
        if low <= self.current:
            return None
        self.current = low
        return low


def restored_floors(old: list[float | None], key_groups: range,
                    max_parallelism: int) -> dict[int, float]:
    """Watermark per key group of ``key_groups`` from the watermarks of the subtasks a
    checkpoint was taken with (``old[i]`` for old subtask i; None: it had none)."""
    floors: dict[int, float] = {}
    for i, wm in enumerate(old):
        rng = key_group_range(i, len(old), max_parallelism)
        for kg in range(max(rng.start, key_groups.start), min(rng.stop, key_groups.stop)):
            floors[kg] = MIN_WATERMARK if wm is None else wm
    return floors


class WindowOperator:
    """Tumbling event-time windows of ``size`` ms: ``acc = combine(acc, value_fn(record))``
    per key and window, emitted as ``(window_start, key, acc)`` when the watermark reaches
    the window's end."""

    def __init__(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any],
                 timestamp_fn: Callable[[Any], int], size: int,
                 value_fn: Callable[[Any], Any], combine: Callable[[Any, Any], Any],
                 name: str = "window"):
        self.backend = backend
        self.table = backend.table(name, "map")
        self.table_name = name
        self.key_fn, self.timestamp_fn, self.size = key_fn, timestamp_fn, size
        self.value_fn, self.combine = value_fn, combine
        self.watermark: float = MIN_WATERMARK
        self.late_records = 0
        # Which keys have an open window, by window start (derived from the table; not
        # state). Built lazily because the table is loaded after the operator is created.
        self._by_window: dict[int, dict[Any, None]] | None = None
        # After a rescale, key groups may come from subtasks that were at different
        # watermarks: until the watermark passes the highest, lateness is per key group.
        self._floors: dict[int, float] | None = None
        self._floor_max: float = MIN_WATERMARK

    def restore_watermark(self, floors: dict[int, float]) -> None:
        """Start from the watermark(s) the restored state was taken at."""
        if not floors:
            return
        low, high = min(floors.values()), max(floors.values())
        self.watermark = max(self.watermark, low)
        if high > low:
            self._floors, self._floor_max = floors, high

    def _index(self) -> dict[int, dict[Any, None]]:
        if self._by_window is None:
            self._by_window = {}
            for key, windows in self.table.items():
                for start in windows:
                    self._by_window.setdefault(start, {})[key] = None
        return self._by_window

    def process_batch(self, batch: list[Any]) -> list[Any]:
        table, index = self.table, self._index()
        key_fn, ts_fn, value_fn, combine = self.key_fn, self.timestamp_fn, self.value_fn, \
            self.combine
        size, wm, floors = self.size, self.watermark, self._floors
        m = self.backend.max_parallelism
        dirty = self.backend.dirty
        late = 0
        for record in batch:
            key = key_fn(record)
            ts = ts_fn(record)
            start = ts - ts % size
            if start + size <= wm or (floors is not None and
                                      start + size <= floors.get(key_group(key, m),
                                                                 MIN_WATERMARK)):
                late += 1  # its window already fired: drop it
                continue
            windows = table.get(key)
            if windows is None:
                windows = table[key] = {}
            acc = windows.get(start, _MISSING)
            if acc is _MISSING:
                acc = windows[start] = value_fn(record)
                if type(acc) in MUTABLE and is_mutable(acc):
                    self.backend.mutable.add(self.table_name)  # snapshot copies it deeply
                keys = index.get(start)
                if keys is None:
                    keys = index[start] = {}
                keys[key] = None
            else:
                acc = windows[start] = combine(acc, value_fn(record))
                if type(acc) in MUTABLE and is_mutable(acc):
                    self.backend.mutable.add(self.table_name)  # snapshot copies it deeply
            if dirty is not None:
                dirty.add(key)
        self.late_records += late
        return []

    def on_watermark(self, watermark: float) -> list[Any]:
        """Advance to ``watermark``: fire (and clear) every window that ends at or before
        it, oldest first."""
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        if self._floors is not None and watermark >= self._floor_max:
            self._floors = None
        index, table, size, out = self._index(), self.table, self.size, []
        dirty = self.backend.dirty
        for start in sorted(s for s in index if s + size <= watermark):
            for key in index.pop(start):
                windows = table[key]
                out.append((start, key, windows.pop(start)))
                if not windows:
                    del table[key]
                if dirty is not None:
                    dirty.add(key)
        return out


class WindowOperatorFactory:
    def __init__(self, size: int, timestamp_fn: Callable[[Any], int],
                 value_fn: Callable[[Any], Any], combine: Callable[[Any, Any], Any]):
        self.size, self.timestamp_fn = size, timestamp_fn
        self.value_fn, self.combine = value_fn, combine

    def create(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any]) -> WindowOperator:
        return WindowOperator(backend, key_fn, self.timestamp_fn, self.size, self.value_fn,
                              self.combine)


def _identity(x: Any) -> Any:
    return x


class WindowedStream:
    """``key_by(...).window(size_ms)``: finish with ``reduce`` or ``sum``."""

    def __init__(self, keyed: Any, size: int, timestamp_fn: Callable[[Any], int]):
        self._keyed, self.size, self.timestamp_fn = keyed, size, timestamp_fn

    def reduce(self, fn: Callable[[Any, Any], Any], name: str = "Window reduce") -> Any:
        """Emit ``(window_start, key, acc)`` per window, ``acc = fn(acc, record)``."""
        return self._keyed._add_keyed(WindowOperatorFactory(
            self.size, self.timestamp_fn, _identity, fn), name)

    def sum(self, value_fn: Callable[[Any], Any] = _identity, name: str = "Window sum") -> Any:
        """Emit ``(window_start, key, total of value_fn(record))`` per window."""
        return self._keyed._add_keyed(WindowOperatorFactory(
            self.size, self.timestamp_fn, value_fn, operator.add), name)
