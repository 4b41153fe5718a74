"""Joins of two keyed streams on event time (Flink's window join and interval join).

Both are :class:`~streamjob.operators.CoProcessFunction` s: the two streams are ``connect``-ed
by key, the records waiting for a partner are keyed map state and the clean-up runs on
event-time timers (``ctx.timers``), so a join is checkpointed, restored and moved by key group
on rescale like any keyed state.

* **Window join**: ``a.key_by(f).join(b.key_by(g)).window(assigner).apply(fn)``: the
  records of both sides with equal keys that fall in the same event-time window (the
  assigners of ``streamjob.windows``: ``TumblingEventTimeWindows(size)`` or just the size in
  ms, ``SlidingEventTimeWindows(size, slide)``) are paired when the watermark reaches the
  window's end, ``fn(left, right)`` once per pair (an inner join: a window with records on one side
  only emits nothing). The window's records are then dropped.
* **Interval join**: ``a.key_by(f).interval_join(b.key_by(g)).between(lower, upper).apply(fn)``:
  ``fn(left, right)`` for every pair with equal keys and
  ``left_ts + lower <= right_ts <= left_ts + upper`` (bounds included, in ms, either may be
  negative). A pair is emitted as soon as its second record arrives. A left record is kept
  until the watermark passes ``left_ts + upper`` (no right record can match it afterwards),
  a right record until it passes ``right_ts - lower``.

Event time: each side's records are read with the ``assign_timestamps`` function of its
source (or ``timestamps=(left_fn, right_fn)``). Records that arrive behind the watermark (late:
for a window join, all of its windows have fired; for an interval join, its timestamp is at or
below the watermark) are dropped and counted in ``late_records``, as Flink drops them.

Pure logic on top of the operators' keyed state and timers: unit-tested by feeding batches
and watermarks (``tests/unit/test_joins.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamjob.jobgraph import PipelineError
from streamjob.operators import Collector, CoProcessFunction, KeyedContext
from streamjob.windows.assigners import SlidingEventTimeWindows, TumblingEventTimeWindows

Timestamp = Callable[[Any], int]
Assigner = TumblingEventTimeWindows | SlidingEventTimeWindows


class WindowJoinFunction(CoProcessFunction):
    """The window join (see the module docstring). State per key: ``left`` and ``right``,
    each ``window start -> records``; one event-time timer per (key, window end)."""

    def __init__(self, fn: Callable[[Any, Any], Any], assigner: Assigner,
                 timestamps: tuple[Timestamp, Timestamp]):
        self.fn, self.assigner, self.size = fn, assigner, assigner.size
        self.timestamps = timestamps
        self.late_records = 0

    def open(self, ctx: KeyedContext) -> None:
        self.timers = ctx.timers  # created now: it follows every watermark
        self.sides = (ctx.map_state("join/left"), ctx.map_state("join/right"))

    def _add(self, side: int, value: Any) -> None:
        ts = self.timestamps[side](value)
        state, watermark = self.sides[side], self.timers.current_watermark()
        added = False
        for start in self.assigner.starts(ts):
            end = start + self.size
            if end <= watermark:
                continue  # this window has fired already
            records = state.get(start)
            if records is None:
                state.put(start, [value])
            else:  # in place (no copy per record), then put: incremental checkpoints see it
                records.append(value)
                state.put(start, records)
            self.timers.register_event_time(end)
            added = True
        if not added:
            self.late_records += 1

    def process1(self, key: Any, value: Any, out: Collector) -> None:
        self._add(0, value)

    def process2(self, key: Any, value: Any, out: Collector) -> None:
        self._add(1, value)

    def on_timer(self, timestamp: Any, key: Any, out: Collector) -> None:
        start = timestamp - self.size
        left, right = self.sides
        lefts, rights = left.get(start), right.get(start)
        if lefts and rights:
            fn = self.fn
            out.extend(fn(a, b) for a in lefts for b in rights)
        left.remove(start)
        right.remove(start)


class IntervalJoinFunction(CoProcessFunction):
    """The interval join (see the module docstring). State per key: ``left`` and ``right``,
    each ``timestamp -> records``; one event-time clean-up timer per (key, timestamp)."""

    def __init__(self, fn: Callable[[Any, Any], Any], lower: int, upper: int,
                 timestamps: tuple[Timestamp, Timestamp]):
        self.fn, self.lower, self.upper = fn, lower, upper
        self.timestamps = timestamps
        self.late_records = 0

    def open(self, ctx: KeyedContext) -> None:
        self.timers = ctx.timers
        self.sides = (ctx.map_state("join/left"), ctx.map_state("join/right"))

    def _cleanup_time(self, side: int, ts: int) -> int:
        """When a record of ``side`` at ``ts`` can meet no future partner: the watermark has
        passed the last partner timestamp it accepts."""
        return ts + max(self.upper, 0) if side == 0 else ts + max(-self.lower, 0)

    def _add(self, side: int, value: Any, out: Collector) -> None:
        ts = self.timestamps[side](value)
        if ts <= self.timers.current_watermark():  # no record at or before it may follow
            self.late_records += 1
            return
        # Partners' timestamps: right in [ts + lower, ts + upper]; left in [ts - upper,
        # ts - lower].
        low, high = ((ts + self.lower, ts + self.upper) if side == 0
                     else (ts - self.upper, ts - self.lower))
        fn = self.fn
        for other_ts, others in self.sides[1 - side].items():
            if low <= other_ts <= high:
                if side == 0:
                    out.extend(fn(value, o) for o in others)
                else:
                    out.extend(fn(o, value) for o in others)
        state = self.sides[side]
        records = state.get(ts)
        if records is None:
            state.put(ts, [value])
        else:
            records.append(value)
            state.put(ts, records)
        self.timers.register_event_time(self._cleanup_time(side, ts))

    def process1(self, key: Any, value: Any, out: Collector) -> None:
        self._add(0, value, out)

    def process2(self, key: Any, value: Any, out: Collector) -> None:
        self._add(1, value, out)

    def on_timer(self, timestamp: Any, key: Any, out: Collector) -> None:
        for side, state in enumerate(self.sides):
            for ts, _ in state.items():
                if self._cleanup_time(side, ts) <= timestamp:
                    state.remove(ts)


# -- the pipeline API ------------------------------------------------------------------


def _event_time(connected: Any, timestamps: tuple[Timestamp, Timestamp] | None,
                what: str) -> tuple[Timestamp, Timestamp]:
    if timestamps is not None:
        return timestamps
    p = connected._p
    found = []
    for keyed in (connected.first, connected.second):
        strategy = p.event_time(o.task for o in keyed._origins)
        if strategy is None:
            raise PipelineError(f"{what} needs event time on both sides: call "
                                "assign_timestamps(...) right after each source, or pass "
                                "timestamps=(left_fn, right_fn)")
        found.append(strategy.timestamp_fn)
    return found[0], found[1]


class JoinedStreams:
    """``a.key_by(f).join(b.key_by(g))``: finish with ``.window(assigner)`` and
    ``.apply(fn)``."""

    def __init__(self, connected: Any):
        self._connected = connected
        self.assigner: Assigner | None = None

    def window(self, assigner: Assigner | int) -> JoinedStreams:
        """``TumblingEventTimeWindows(size)`` (or just the size in ms) or
        ``SlidingEventTimeWindows(size, slide)``."""
        if isinstance(assigner, int | float):
            try:
                assigner = TumblingEventTimeWindows(assigner)
            except ValueError as err:
                raise PipelineError(str(err)) from None
        if not isinstance(assigner, TumblingEventTimeWindows | SlidingEventTimeWindows):
            raise PipelineError(f"a window join takes tumbling or sliding windows, not "
                                f"{type(assigner).__name__}")
        self.assigner = assigner
        return self

    def apply(self, fn: Callable[[Any, Any], Any], name: str = "Window join",
              timestamps: tuple[Timestamp, Timestamp] | None = None) -> Any:
        """``fn(left, right)`` per pair of each window: a stream of what it returns."""
        if self.assigner is None:
            raise PipelineError("join(...) needs .window(assigner) before .apply(fn)")
        function = WindowJoinFunction(fn, self.assigner,
                                      _event_time(self._connected, timestamps, "join"))
        return self._connected.process(function, name)


class IntervalJoin:
    """``a.key_by(f).interval_join(b.key_by(g))``: finish with ``.between(lower, upper)``
    and ``.apply(fn)``."""

    def __init__(self, connected: Any):
        self._connected = connected
        self.bounds: tuple[int, int] | None = None

    def between(self, lower_ms: int, upper_ms: int) -> IntervalJoin:
        """Pair ``left`` with every ``right`` at ``left_ts + lower <= right_ts <= left_ts +
        upper``."""
        if int(lower_ms) != lower_ms or int(upper_ms) != upper_ms or lower_ms > upper_ms:
            raise PipelineError(f"between(lower, upper) needs whole ms with lower <= upper, "
                                f"got ({lower_ms!r}, {upper_ms!r})")
        self.bounds = (int(lower_ms), int(upper_ms))
        return self

    def apply(self, fn: Callable[[Any, Any], Any], name: str = "Interval join",
              timestamps: tuple[Timestamp, Timestamp] | None = None) -> Any:
        """``fn(left, right)`` per matching pair: a stream of what it returns."""
        if self.bounds is None:
            raise PipelineError("interval_join(...) needs .between(lower, upper) before "
                                ".apply(fn)")
        function = IntervalJoinFunction(fn, *self.bounds,
                                        _event_time(self._connected, timestamps,
                                                    "interval_join"))
        return self._connected.process(function, name)
