"""The windowed-stream API (see docs/operators.md)::

    windowed = (stream.key_by(key_fn)
                .window(SlidingEventTimeWindows(size=10_000, slide=2_000))
                .allowed_lateness(5_000)
                .aggregate(create, add, merge, result))
    windowed.late_records().sink(FileSink("late"))   # records too late for any window

``window(...)`` is finished with ``sum``, ``reduce`` or ``aggregate``; what they return is a
stream like any other, plus ``late_records()``: the side output of the window operator.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from streamjob.pipeline import Stream
from streamjob.windows.assigners import EventTimeSessionWindows
from streamjob.windows.operator import LATE, WindowOperatorFactory


def _identity(x: Any) -> Any:
    return x


class WindowResultStream(Stream):
    """The output of a window operator: its results, and ``late_records()``."""

    def late_records(self) -> Stream:
        """Records that came after the allowed lateness of every window they belong to
        (otherwise dropped and counted in ``streamjob_late_records``): the window's side
        output ``"late"`` (``side_output(LATE)``, Flink's ``sideOutputLateData``). A stream
        like any other: its sink is committed with the same checkpoints as the main output,
        so each late record is written exactly once."""
        return self.side_output(LATE)


class WindowedStream:
    """``key_by(...).window(assigner)``: finish with ``sum``, ``reduce`` or ``aggregate``."""

    def __init__(self, keyed: Any, assigner: Any, timestamp_fn: Callable[[Any], int]):
        self._keyed, self.assigner, self.timestamp_fn = keyed, assigner, timestamp_fn
        self.lateness = 0

    @property
    def size(self) -> int | None:
        return getattr(self.assigner, "size", None)

    def allowed_lateness(self, ms: int) -> WindowedStream:
        """Keep fired windows ``ms`` longer: a record arriving meanwhile updates its window,
        which fires again at once with the new result."""
        if int(ms) != ms or ms < 0:
            raise ValueError(f"allowed lateness must be 0 or more whole ms, got {ms!r}")
        self.lateness = int(ms)
        return self

    def _finish(self, name: str, factory: WindowOperatorFactory) -> WindowResultStream:
        stream = self._keyed._add_keyed(factory, name)
        return WindowResultStream(stream._p, stream._task)

    def reduce(self, fn: Callable[[Any, Any], Any], name: str = "Window reduce",
               ) -> WindowResultStream:
        """``acc = fn(acc, record)`` from the window's first record (``fn`` also merges two
        sessions' accumulators, so records and accumulators must be alike)."""
        return self._finish(name, WindowOperatorFactory(
            self.assigner, self.timestamp_fn, _identity, fn, fn, None, self.lateness))

    def sum(self, value_fn: Callable[[Any], Any] = _identity, name: str = "Window sum",
            ) -> WindowResultStream:
        """The total of ``value_fn(record)`` per window."""
        return self._finish(name, WindowOperatorFactory(
            self.assigner, self.timestamp_fn, value_fn, operator.add, operator.add, None,
            self.lateness))

    def aggregate(self, create: Callable[[], Any], add: Callable[[Any, Any], Any],
                  merge: Callable[[Any, Any], Any] | None = None,
                  result: Callable[[Any], Any] | None = None,
                  name: str = "Window aggregate") -> WindowResultStream:
        """Flink's AggregateFunction, incrementally: ``acc = add(acc, record)`` starting from
        ``create()``; ``merge(a, b)`` joins two accumulators (needed by session windows);
        ``result(acc)`` is what the window emits (the accumulator itself if None)."""
        if isinstance(self.assigner, EventTimeSessionWindows) and merge is None:
            raise ValueError("session windows need aggregate(..., merge=...)")

        def first(record: Any) -> Any:
            return add(create(), record)

        return self._finish(name, WindowOperatorFactory(
            self.assigner, self.timestamp_fn, _identity, add, merge, result, self.lateness,
            first=first))
