"""Window operators: tumbling, sliding and session windows over keyed event time.

Each window's accumulator is keyed map state (``key -> {window_start: acc}``, for sessions
``key -> {start: (end, acc)}``), so windows are checkpointed, restored and rescaled by key
group like any keyed state. A window's accumulator is ``first(record)`` (by default
``value_fn(record)``) then ``combine(acc, value_fn(record))``: ``sum`` and ``reduce`` are
that directly, ``aggregate`` has ``first = add(create(), record)``, ``value_fn`` the identity
and ``combine = add``; ``merge`` joins two accumulators when sessions merge; ``result`` (if
any) turns the accumulator into what is emitted.

When the watermark reaches a window's end the window *fires*: tumbling and sliding windows
emit ``(window_start, key, result)``, session windows ``(start, end, key, result)`` (their end
depends on the data). With ``allowed_lateness`` L a fired window is kept until the watermark
reaches ``end + L``: a record that arrives for it meanwhile is added and the window fires
again at once with the updated result (Flink's late firing). A record whose windows are all
past ``end + L`` is *late*: it is counted (``late_records``) and, if the pipeline asked for
``late_records()``, handed to the operator's side output ``late`` (``side_outputs``, which the
task sends on after each batch; records of a side output nobody reads are dropped).

A subtask's watermark is part of its snapshot: after a restore, a window that already fired
and was cleared must not be opened again by a replayed record (it would fire twice).

Pure logic, no I/O: the task feeds batches and watermarks and pushes what comes out.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from streamjob.keygroups import key_group
from streamjob.operators import MUTABLE, KeyedStateBackend, is_mutable
from streamjob.windows.watermarks import MIN_WATERMARK

LATE = "late"  # the side output of records beyond the allowed lateness

_MISSING = object()


class _EventTimeOperator:
    """What every window operator shares: watermark, per-key-group floors after a rescale,
    late records and their side output."""

    def __init__(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any],
                 timestamp_fn: Callable[[Any], int], name: str, allowed_lateness: int):
        if allowed_lateness < 0:
            raise ValueError("allowed_lateness must be 0 or more ms")
        self.backend = backend
        self.table = backend.table(name, "map")
        self.table_name = name
        self.key_fn, self.timestamp_fn = key_fn, timestamp_fn
        self.lateness = int(allowed_lateness)
        self.watermark: float = MIN_WATERMARK
        self.late_records = 0
        # Side outputs by tag: the task takes them after each batch (``late`` only here).
        self.side_outputs: dict[str, list[Any]] = {}
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

    def _floor(self, key: Any) -> float:
        """The watermark that applies to ``key`` (its key group's, after a rescale)."""
        if self._floors is None:
            return self.watermark
        return max(self.watermark, self._floors.get(key_group(key, self.backend.max_parallelism),
                                                    MIN_WATERMARK))

    def _advance(self, watermark: float) -> bool:
        if watermark <= self.watermark:
            return False
        self.watermark = watermark
        if self._floors is not None and watermark >= self._floor_max:
            self._floors = None
        return True

    def _late(self, records: list[Any]) -> None:
        if records:
            self.late_records += len(records)
            self.side_outputs.setdefault(LATE, []).extend(records)

    def _note(self, acc: Any) -> None:
        if type(acc) in MUTABLE and is_mutable(acc):
            self.backend.mutable.add(self.table_name)  # snapshot copies it deeply


class WindowOperator(_EventTimeOperator):
    """Tumbling (``slide`` None) or sliding event-time windows of ``size`` ms."""

    def __init__(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any],
                 timestamp_fn: Callable[[Any], int], size: int,
                 value_fn: Callable[[Any], Any], combine: Callable[[Any, Any], Any],
                 name: str = "window", *, slide: int | None = None, allowed_lateness: int = 0,
                 first: Callable[[Any], Any] | None = None,
                 result: Callable[[Any], Any] | None = None):
        super().__init__(backend, key_fn, timestamp_fn, name, allowed_lateness)
        self.size, self.slide = size, slide
        self.value_fn, self.combine, self.result = value_fn, combine, result
        self.first = first or value_fn  # a window's first accumulator from its first record
        # Windows not fired yet, by start, and fired windows kept for late records (allowed
        # lateness), by start: both derived from the table and the watermark (not state),
        # built lazily because the table is loaded after the operator is created.
        self._by_window: dict[int, dict[Any, None]] | None = None
        self._fired: dict[int, dict[Any, None]] = {}

    def _index(self) -> dict[int, dict[Any, None]]:
        if self._by_window is None:
            self._by_window = {}
            for key, windows in self.table.items():
                floor = self._floor(key)
                for start in windows:
                    target = self._fired if start + self.size <= floor else self._by_window
                    target.setdefault(start, {})[key] = None
        return self._by_window

    def _starts(self, ts: int) -> range:
        last = ts - ts % self.slide
        return range(last, ts - self.size, -self.slide)

    def process_batch(self, batch: list[Any]) -> list[Any]:
        if self.lateness == 0:
            if self.slide is None:
                return self._process_tumbling(batch)
            return self._process_sliding(batch)
        table, index, fired = self.table, self._index(), self._fired
        key_fn, ts_fn, value_fn, combine = self.key_fn, self.timestamp_fn, self.value_fn, \
            self.combine
        first, size, lateness, result = self.first, self.size, self.lateness, self.result
        slide = self.slide or size
        dirty = self.backend.dirty
        out: list[Any] = []
        late: list[Any] = []
        for record in batch:
            key = key_fn(record)
            ts = ts_fn(record)
            floor = self._floor(key)
            added = False
            last = ts - ts % slide
            for start in range(last, ts - size, -slide):
                end = start + size
                if end + lateness <= floor:
                    continue  # this window is gone for good
                windows = table.get(key)
                if windows is None:
                    windows = table[key] = {}
                acc = windows.get(start, _MISSING)
                if acc is _MISSING:
                    acc = first(record)
                    (fired if end <= floor else index).setdefault(start, {})[key] = None
                else:
                    acc = combine(acc, value_fn(record))
                windows[start] = acc
                self._note(acc)
                added = True
                if end <= floor:  # fired already, within the allowed lateness: fire again
                    out.append((start, key, acc if result is None else result(acc)))
            if not added:
                late.append(record)
            elif dirty is not None:
                dirty.add(key)
        self._late(late)
        return out

    def _process_tumbling(self, batch: list[Any]) -> list[Any]:
        """The common case, tumbling windows without lateness, in one tight loop. A run of
        records of one key and window (one key per window, or a hot key) folds into a local
        accumulator, written back to the table once at the end of the run."""
        table, index = self.table, self._index()
        key_fn, ts_fn, value_fn, combine = self.key_fn, self.timestamp_fn, self.value_fn, \
            self.combine
        first, size, wm, floors = self.first, self.size, self.watermark, self._floors
        m = self.backend.max_parallelism
        dirty = self.backend.dirty
        late = []
        # The run: its key, window start, the key's windows and the accumulator.
        run_key: Any = _MISSING
        run_start: Any = None
        windows: Any = None
        acc: Any = None
        for record in batch:
            key = key_fn(record)
            ts = ts_fn(record)
            start = ts - ts % size
            if start == run_start and key == run_key:
                acc = combine(acc, value_fn(record))
                continue
            if start + size <= wm or (floors is not None and
                                      start + size <= floors.get(key_group(key, m),
                                                                 MIN_WATERMARK)):
                late.append(record)  # its window already fired
                continue
            if windows is not None:
                self._write(run_key, windows, run_start, acc)
            run_key, run_start = key, start
            windows = table.get(key)
            if windows is None:
                windows = {}
            acc = windows.get(start, _MISSING)
            if acc is _MISSING:
                acc = first(record)
                keys = index.get(start)
                if keys is None:
                    keys = index[start] = {}
                keys[key] = None
            else:
                acc = combine(acc, value_fn(record))
            if dirty is not None:
                dirty.add(key)
        if windows is not None:
            self._write(run_key, windows, run_start, acc)
        if late:
            self._late(late)
        return []

    def _process_sliding(self, batch: list[Any]) -> list[Any]:
        """Sliding windows without lateness: ``value_fn`` once per record, the key's windows
        looked up once per run of records of one key."""
        table, index = self.table, self._index()
        key_fn, ts_fn, value_fn, combine = self.key_fn, self.timestamp_fn, self.value_fn, \
            self.combine
        first, size, slide, wm, floors = self.first, self.size, self.slide, self.watermark, \
            self._floors
        m, dirty, mutable = self.backend.max_parallelism, self.backend.dirty, False
        late = []
        run_key: Any = _MISSING
        windows: Any = None
        for record in batch:
            key = key_fn(record)
            ts = ts_fn(record)
            floor = wm if floors is None else max(wm, floors.get(key_group(key, m),
                                                                 MIN_WATERMARK))
            last = ts - ts % slide
            if last + size <= floor:
                late.append(record)  # even its latest window fired already
                continue
            if key != run_key or windows is None:
                if windows is not None:
                    table[run_key] = windows  # write back (a table need not be a dict)
                run_key = key
                windows = table.get(key)
                if windows is None:
                    windows = {}
                if dirty is not None:
                    dirty.add(key)
            value = value_fn(record)
            for start in range(last, ts - size, -slide):
                if start + size <= floor:
                    break  # this one and the earlier ones fired already
                acc = windows.get(start, _MISSING)
                if acc is _MISSING:
                    acc = windows[start] = first(record)
                    keys = index.get(start)
                    if keys is None:
                        keys = index[start] = {}
                    keys[key] = None
                else:
                    acc = windows[start] = combine(acc, value)
                if type(acc) in MUTABLE and is_mutable(acc):
                    mutable = True
        if windows is not None:
            table[run_key] = windows
        if mutable:
            self.backend.mutable.add(self.table_name)  # snapshot copies it deeply
        if late:
            self._late(late)
        return []

    def _write(self, key: Any, windows: dict[int, Any], start: int, acc: Any) -> None:
        windows[start] = acc
        self.table[key] = windows  # write back (a table need not be a plain dict)
        if type(acc) in MUTABLE and is_mutable(acc):
            self.backend.mutable.add(self.table_name)  # snapshot copies it deeply

    def on_watermark(self, watermark: float) -> list[Any]:
        """Advance to ``watermark``: fire every window that ends at or before it, oldest
        first, then drop those whose allowed lateness has passed too."""
        index = self._index()  # built at the old watermark: what it has not fired yet
        if not self._advance(watermark):
            return []
        table, size, out = self.table, self.size, []
        lateness, result, fired = self.lateness, self.result, self._fired
        dirty = self.backend.dirty
        for start in sorted(s for s in index if s + size <= watermark):
            for key in index.pop(start):
                windows = table[key]
                acc = windows[start]
                out.append((start, key, acc if result is None else result(acc)))
                if lateness:
                    fired.setdefault(start, {})[key] = None
                    continue
                del windows[start]
                if not windows:
                    del table[key]
                if dirty is not None:
                    dirty.add(key)
        for start in [s for s in fired if s + size + lateness <= watermark]:
            for key in fired.pop(start):
                windows = table.get(key)
                if windows is not None and windows.pop(start, _MISSING) is not _MISSING:
                    if not windows:
                        del table[key]
                    if dirty is not None:
                        dirty.add(key)
        return out


class SessionWindowOperator(_EventTimeOperator):
    """Event-time session windows: a record opens ``[ts, ts + gap)`` and every session of
    its key that overlaps or touches it merges with it (their accumulators joined with
    ``merge``): as in Flink, ``[a, b)`` and ``[c, d)`` merge when ``a <= d and c <= b``, so
    two records at most ``gap`` apart are in one session.

    A batch is grouped by key, and a record that falls inside its key's one open session
    (the common case: a user active for a while) only extends that session's end and adds
    to its accumulator, with no merge and no timer: each session has one entry on a heap of
    pending firings, at an end it had when the entry was pushed; the heap entry of a session
    that has grown since is pushed again at its new end when it comes up, so a session
    extended by every record costs one heap entry per ``gap`` of event time."""

    def __init__(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any],
                 timestamp_fn: Callable[[Any], int], gap: int,
                 value_fn: Callable[[Any], Any], combine: Callable[[Any, Any], Any],
                 merge: Callable[[Any, Any], Any], name: str = "session", *,
                 allowed_lateness: int = 0, first: Callable[[Any], Any] | None = None,
                 result: Callable[[Any], Any] | None = None):
        super().__init__(backend, key_fn, timestamp_fn, name, allowed_lateness)
        self.gap = gap
        self.value_fn, self.combine, self.merge, self.result = value_fn, combine, merge, result
        self.first = first or value_fn
        # Heaps of (time, seq, key, start): sessions not fired yet, at (at most) their end,
        # and fired sessions kept for late records, at (at most) their end + lateness.
        # Derived, not state (built lazily after the table is loaded); an entry whose
        # session was merged away is skipped, one whose session grew is pushed again.
        self._pending: list[tuple[Any, ...]] | None = None
        self._fired: list[tuple[Any, ...]] = []
        self._seq = 0  # tie-breaker: keys of different types never get compared

    def _heaps(self) -> list[tuple[Any, ...]]:
        if self._pending is None:
            self._pending = []
            for key, sessions in self.table.items():
                floor = self._floor(key)
                for start, (end, _acc) in sessions.items():
                    self._push(end <= floor, end, key, start)
        return self._pending

    def _push(self, fired: bool, end: int, key: Any, start: int) -> None:
        self._seq += 1
        if fired:
            heapq.heappush(self._fired, (end + self.lateness, self._seq, key, start))
        else:
            heapq.heappush(self._pending, (end, self._seq, key, start))

    def _emit(self, start: int, end: int, key: Any, acc: Any) -> tuple[Any, ...]:
        return (start, end, key, acc if self.result is None else self.result(acc))

    def process_batch(self, batch: list[Any]) -> list[Any]:
        self._heaps()
        key_fn = self.key_fn
        by_key: dict[Any, list[Any]] = {}
        for record in batch:
            key = key_fn(record)
            records = by_key.get(key)
            if records is None:
                by_key[key] = [record]
            else:
                records.append(record)
        table, ts_fn, value_fn, combine = self.table, self.timestamp_fn, self.value_fn, \
            self.combine
        gap, watermark, floors, dirty = self.gap, self.watermark, self._floors, \
            self.backend.dirty
        out: list[Any] = []
        late: list[Any] = []
        for key, records in by_key.items():
            floor = watermark if floors is None else self._floor(key)
            sessions = table.get(key)
            # The key's one session while it has only one and it has not fired (start None
            # otherwise): records inside it take the fast path.
            start = end = acc = None
            if sessions is not None and len(sessions) == 1:
                ((start, (end, acc)),) = sessions.items()
                if end <= floor:
                    start = None
            extended = touched = False
            for record in records:
                ts = ts_fn(record)
                if start is not None and start <= ts <= end:
                    if ts + gap > end:
                        end = ts + gap
                    acc = combine(acc, value_fn(record))
                    extended = True
                    continue
                if extended:
                    sessions[start] = (end, acc)
                    table[key] = sessions
                    extended = False
                if self._add(key, record, ts, floor, out, late):
                    touched = True
                sessions = table.get(key)
                start = None
                if sessions is not None and len(sessions) == 1:
                    ((start, (end, acc)),) = sessions.items()
                    if end <= floor:
                        start = None
            if extended:
                sessions[start] = (end, acc)
                self._note(acc)
                touched = True
            if touched:
                table[key] = sessions  # write back (a table need not be a plain dict)
                if dirty is not None:
                    dirty.add(key)
        self._late(late)
        return out

    def _add(self, key: Any, record: Any, ts: int, floor: float, out: list[Any],
             late: list[Any]) -> bool:
        """One record, the general way: merge every session it overlaps; fire at once if
        the merged session has fired already (allowed lateness). False if it was late."""
        start, end = ts, ts + self.gap
        sessions = self.table.get(key)
        overlapping = [] if sessions is None else sorted(
            s for s, (e, _) in sessions.items() if s <= end and ts <= e)
        for s in overlapping:
            start, end = min(start, s), max(end, sessions[s][0])
        if end + self.lateness <= floor:
            late.append(record)  # even merged, its session is gone for good
            return False
        if sessions is None:
            sessions = {}
        # The merged session keeps the heap entry of the session that had its start, if
        # any (a second entry would fire it twice); the others' entries go stale.
        kept = bool(overlapping) and overlapping[0] == start
        was_fired = kept and sessions[start][0] <= floor
        acc = _MISSING
        for s in overlapping:
            _, other = sessions.pop(s)
            acc = other if acc is _MISSING else self.merge(acc, other)
        acc = self.first(record) if acc is _MISSING else self.combine(acc, self.value_fn(record))
        sessions[start] = (end, acc)
        self.table[key] = sessions
        self._note(acc)
        if end <= floor:  # merged into a fired session: fire the result again now
            out.append(self._emit(start, end, key, acc))
            if not kept:
                self._push(True, end, key, start)
        elif not kept or was_fired:  # new, or a fired session grown past the watermark
            self._push(False, end, key, start)
        return True

    def on_watermark(self, watermark: float) -> list[Any]:
        """Fire sessions that end at or before ``watermark`` (by end), then drop fired
        sessions whose allowed lateness has passed."""
        pending = self._heaps()  # built at the old watermark: what it has not fired yet
        if not self._advance(watermark):
            return []
        fired, out = self._fired, []
        table, lateness, dirty = self.table, self.lateness, self.backend.dirty
        while pending and pending[0][0] <= watermark:
            at, _, key, start = heapq.heappop(pending)
            sessions = table.get(key)
            entry = None if sessions is None else sessions.get(start)
            if entry is None:
                continue  # merged into another session since
            end, acc = entry
            if end > at:
                self._push(False, end, key, start)  # grew since: its turn comes at its end
                continue
            out.append(self._emit(start, end, key, acc))
            if lateness:
                self._push(True, end, key, start)
            else:
                self._drop(key, sessions, start, dirty)
        while fired and fired[0][0] <= watermark:
            at, _, key, start = heapq.heappop(fired)
            sessions = table.get(key)
            entry = None if sessions is None else sessions.get(start)
            if entry is None:
                continue  # merged, or dropped through another entry
            if entry[0] + lateness > at:
                self._push(True, entry[0], key, start)  # grew since (a late record)
            else:
                self._drop(key, sessions, start, dirty)
        return out

    def _drop(self, key: Any, sessions: dict[int, Any], start: int,
              dirty: set[Any] | None) -> None:
        sessions.pop(start)
        if sessions:
            self.table[key] = sessions
        else:
            self.table.pop(key)
        if dirty is not None:
            dirty.add(key)


class WindowOperatorFactory:
    """What a windowed stream adds to its task: builds the operator for each subtask."""

    def __init__(self, assigner: Any, timestamp_fn: Callable[[Any], int],
                 value_fn: Callable[[Any], Any], combine: Callable[[Any, Any], Any],
                 merge: Callable[[Any, Any], Any] | None = None,
                 result: Callable[[Any], Any] | None = None, allowed_lateness: int = 0,
                 first: Callable[[Any], Any] | None = None):
        from streamjob.windows.assigners import (
            EventTimeSessionWindows,
            SlidingEventTimeWindows,
            TumblingEventTimeWindows,
        )

        if not isinstance(assigner, (TumblingEventTimeWindows, SlidingEventTimeWindows,
                                     EventTimeSessionWindows)):
            raise TypeError(f"not a window assigner: {assigner!r}")
        self.assigner, self.timestamp_fn = assigner, timestamp_fn
        self.value_fn, self.combine, self.merge, self.result = value_fn, combine, merge, result
        self.allowed_lateness, self.first = allowed_lateness, first

    @property
    def size(self) -> int | None:
        return getattr(self.assigner, "size", None)

    def create(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any]) -> Any:
        from streamjob.windows.assigners import EventTimeSessionWindows, SlidingEventTimeWindows

        a = self.assigner
        if isinstance(a, EventTimeSessionWindows):
            if self.merge is None:
                raise ValueError("session windows need a merge function")
            return SessionWindowOperator(backend, key_fn, self.timestamp_fn, a.gap,
                                         self.value_fn, self.combine, self.merge,
                                         allowed_lateness=self.allowed_lateness,
                                         first=self.first, result=self.result)
        slide = a.slide if isinstance(a, SlidingEventTimeWindows) else None
        return WindowOperator(backend, key_fn, self.timestamp_fn, a.size, self.value_fn,
                              self.combine, slide=slide, allowed_lateness=self.allowed_lateness,
                              first=self.first, result=self.result)
