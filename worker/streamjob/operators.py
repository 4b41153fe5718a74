"""Keyed operators and the keyed state they keep.

State lives in named tables (``dict`` key -> value) owned by one subtask. A snapshot freezes
the tables (the synchronous part, milliseconds for typical state) and the frozen copy is
grouped by key group and written while processing continues.

Snapshot isolation: a frozen copy must not change when processing goes on after the barrier.
Immutable values (int, float, str, bytes, None, tuples of those) are shared at no cost; a
table that has ever held a mutable container (list, dict, set, bytearray, a tuple holding
one) is copied *deeply for its containers* at freeze (:func:`copy_value`), so a function that
appends to the list it got from ``value()`` and then ``update()``s it cannot leak post-barrier
records into the snapshot. Tables of plain values (counts, sums, strings) keep the C-speed
``dict.copy()``. The rule for user functions: state values are msgpack types; mutating a
value in place is allowed, but call ``update()`` (or ``put()``) after mutating it so that
incremental checkpoints see the change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from streamjob.keygroups import keys_of
from streamjob.timers import EVENT_TABLE, PROCESSING_TABLE

_MISSING = object()

# Types whose instances can change after the barrier (tuples may hold such a container):
# a first, cheap filter (one set lookup); :func:`is_mutable` decides for tuples.
MUTABLE = frozenset({list, dict, set, bytearray, tuple})


# Containers that change in place (a tuple only through what it holds).
CONTAINERS = frozenset({list, dict, set, bytearray})


def is_mutable(value: Any) -> bool:
    """Whether ``value`` is or holds a container that can change in place."""
    t = type(value)
    if t is tuple:
        for v in value:
            if type(v) in MUTABLE and is_mutable(v):
                return True
        return False
    return t in CONTAINERS


def copy_value(value: Any) -> Any:
    """A copy of ``value`` that shares nothing mutable with it (containers copied, leaves
    shared): what a snapshot keeps of a list or dict state value."""
    t = type(value)
    if t is list:
        return [copy_value(v) if type(v) in MUTABLE else v for v in value]
    if t is dict:
        return {k: copy_value(v) if type(v) in MUTABLE else v for k, v in value.items()}
    if t is tuple:
        if not any(type(v) in MUTABLE for v in value):
            return value
        return tuple(copy_value(v) for v in value)
    if t is set:
        return set(value)
    if t is bytearray:
        return bytes(value)
    return value


class KeyedStateBackend:
    """The keyed state of one subtask: tables of ``key -> value`` (value state) or
    ``key -> dict`` (map state)."""

    def __init__(self, track_changes: bool = False) -> None:
        self.tables: dict[str, dict[Any, Any]] = {}
        self.kinds: dict[str, str] = {}
        # Keys written since the last snapshot, when incremental checkpoints are on.
        self.dirty: set[Any] | None = set() if track_changes else None
        self.key_groups: range | None = None
        self.max_parallelism: int | None = None
        # Tables that have held a mutable value (see the module docstring): frozen deeply.
        self.mutable: set[str] = set()
        # Tables with a time-to-live (ttl.Expiry): snapshots leave expired entries out.
        self.expiring: dict[str, Any] = {}

    def note_value(self, name: str, value: Any) -> None:
        """Record that table ``name`` holds ``value`` (cheap: one type test)."""
        if type(value) in MUTABLE and is_mutable(value):
            self.mutable.add(name)

    def table(self, name: str, kind: str) -> dict[Any, Any]:
        if name in self.tables:
            if self.kinds[name] != kind:
                raise ValueError(f"state {name!r} is a {self.kinds[name]} state, not {kind}")
            return self.tables[name]
        self.kinds[name] = kind
        self.tables[name] = {}
        return self.tables[name]

    def freeze(self, reset_changes: bool = True) -> dict[str, tuple[str, dict[Any, Any]]]:
        """A copy that later updates do not change (map state copies its inner dicts).
        A savepoint passes ``reset_changes=False``: it must not end an incremental chain."""
        frozen = {}
        for name, table in self.tables.items():
            kind = self.kinds[name]
            if name in self.mutable and kind == "value":
                copied, deep = {}, False
                for k, v in table.items():
                    if type(v) in MUTABLE and is_mutable(v):
                        v, deep = copy_value(v), True
                    copied[k] = v
                if not deep:
                    # No container left (say restored lists since replaced by tuples): back
                    # to the cheap copy until one is stored again (every path flags it).
                    self.mutable.discard(name)
                frozen[name] = (kind, copied)
            elif name in self.mutable:
                frozen[name] = (kind, {k: copy_value(v) for k, v in table.items()})
            elif kind == "map":
                frozen[name] = (kind, {k: dict(v) for k, v in table.items()})
            else:
                frozen[name] = (kind, table.copy())
            if name in self.expiring:
                frozen[name] = (kind, self.expiring[name].live(frozen[name][1])[0])
        if self.dirty is not None and reset_changes:
            self.dirty = set()
        return frozen

    def tables_as_they_are(self) -> dict[str, tuple[str, dict[Any, Any]]]:
        """What :meth:`freeze` returns, without copying: for a forked snapshot child, whose
        copy-on-write memory already is the frozen copy (see ``forked_snapshot.py``)."""
        view = {}
        for name, table in self.tables.items():
            kind = self.kinds[name]
            if name in self.expiring:
                table = self.expiring[name].live(table)[0]
            view[name] = (kind, table)
        return view

    def freeze_delta(self) -> dict[str, tuple[str, dict[Any, Any], list[Any]]]:
        """Only what changed since the last snapshot: (kind, changed entries, deleted keys)
        per table. Cost proportional to the changes, not to the state."""
        dirty, self.dirty = self.dirty, set()
        delta = {}
        for name, table in self.tables.items():
            kind = self.kinds[name]
            deep = name in self.mutable
            changed, deleted = {}, []
            for k in dirty:
                v = table.get(k, _MISSING)
                if v is _MISSING:
                    deleted.append(k)
                elif deep:
                    changed[k] = copy_value(v)
                else:
                    changed[k] = dict(v) if kind == "map" else v
            if name in self.expiring:
                changed, gone = self.expiring[name].live(changed)
                deleted.extend(gone)
            delta[name] = (kind, changed, deleted)
        return delta

    def mark_dirty(self, keys: Any) -> None:
        if self.dirty is not None:
            self.dirty.update(keys)

    def load(self, name: str, kind: str, entries: dict[Any, Any],
             deleted: list[Any] = ()) -> None:
        table = self.table(name, kind)
        table.update(entries)
        if name not in self.mutable:
            inner = (v for m in entries.values() for v in m.values()) if kind == "map" \
                else entries.values()
            if any(type(v) in MUTABLE and is_mutable(v) for v in inner):
                self.mutable.add(name)
        for k in deleted:
            table.pop(k, None)

    def num_keys(self) -> int:
        return sum(len(t) for t in self.tables.values())

    def close(self) -> None:
        """Release what the backend holds outside Python's memory (nothing here)."""


class ValueState:
    """The value of one state for the current key."""

    __slots__ = ("_ctx", "_table", "_default", "_name")

    def __init__(self, ctx: KeyedContext, table: dict[Any, Any], default: Any, name: str = ""):
        self._ctx, self._table, self._default, self._name = ctx, table, default, name

    def value(self) -> Any:
        return self._table.get(self._ctx.key, self._default)

    def update(self, value: Any) -> None:
        self._table[self._ctx.key] = value
        if type(value) in MUTABLE and is_mutable(value):
            self._ctx.backend.mutable.add(self._name)
        self._ctx.touch()

    def clear(self) -> None:
        self._table.pop(self._ctx.key, None)
        self._ctx.touch()


class _MutableDefaultValueState(ValueState):
    """A value state whose default is a list or dict: each new key gets its own copy (the
    default itself must never be handed out, mutated and stored under many keys)."""

    __slots__ = ()

    def value(self) -> Any:
        v = self._table.get(self._ctx.key, _MISSING)
        return copy_value(self._default) if v is _MISSING else v


class MapState:
    """A mapping kept per key (for the current key)."""

    __slots__ = ("_ctx", "_table", "_name")

    def __init__(self, ctx: KeyedContext, table: dict[Any, Any], name: str = ""):
        self._ctx, self._table, self._name = ctx, table, name

    def _map(self, create: bool) -> dict[Any, Any] | None:
        m = self._table.get(self._ctx.key)
        if m is None and create:
            m = self._table[self._ctx.key] = {}
        return m

    def get(self, key: Any, default: Any = None) -> Any:
        m = self._map(False)
        return default if m is None else m.get(key, default)

    def put(self, key: Any, value: Any) -> None:
        self._map(True)[key] = value
        if type(value) in MUTABLE and is_mutable(value):
            self._ctx.backend.mutable.add(self._name)
        self._ctx.touch()

    def remove(self, key: Any) -> None:
        m = self._map(False)
        self._ctx.touch()
        if m is not None:
            m.pop(key, None)
            if not m:
                del self._table[self._ctx.key]

    def items(self) -> list[tuple[Any, Any]]:
        m = self._map(False)
        return list(m.items()) if m else []

    def __contains__(self, key: Any) -> bool:
        m = self._map(False)
        return m is not None and key in m


class KeyedContext:
    """What a KeyedProcessFunction sees: the current key, its declared states and its timers
    (``ctx.timers``, see ``timers.py``). ``clock`` is processing time in ms (timers, TTL)."""

    def __init__(self, backend: KeyedStateBackend, key_groups: range | None = None,
                 max_parallelism: int | None = None, clock: Callable[[], int] | None = None):
        self.backend = backend
        self.key: Any = None
        self.clock = clock
        self._timers: Any = None  # created on first use: no cost for functions without timers
        # The key groups this subtask owns (for functions that pre-load their state).
        self.key_groups = key_groups if key_groups is not None else backend.key_groups
        self.max_parallelism = max_parallelism or backend.max_parallelism

    def touch(self) -> None:
        if self.backend.dirty is not None:
            self.backend.dirty.add(self.key)

    @property
    def timers(self) -> Any:
        """The :class:`~streamjob.timers.TimerService` of this function."""
        if self._timers is None:
            from streamjob.timers import TimerService, wall_clock_ms

            self._timers = TimerService(self, self.clock or wall_clock_ms)
        return self._timers

    def value_state(self, name: str, default: Any = None, ttl: Any = None) -> ValueState:
        """``ttl``: a :class:`~streamjob.ttl.StateTtlConfig` makes the value expire."""
        table = self.backend.table(name, "value")
        if ttl is not None:
            from streamjob.ttl import TtlValueState

            return TtlValueState(self, table, default, name, self._expiry(name, "value", ttl))
        if is_mutable(default):
            self.backend.mutable.add(name)  # frozen deeply (see the module docstring)
            return _MutableDefaultValueState(self, table, default, name)
        return ValueState(self, table, default, name)

    def map_state(self, name: str, ttl: Any = None) -> MapState:
        """``ttl``: a :class:`~streamjob.ttl.StateTtlConfig` makes each entry expire."""
        table = self.backend.table(name, "map")
        if ttl is not None:
            from streamjob.ttl import TtlMapState

            return TtlMapState(self, table, name, self._expiry(name, "map", ttl))
        return MapState(self, table, name)

    def _expiry(self, name: str, kind: str, config: Any) -> Any:
        from streamjob.ttl import Expiry, wall_clock_ms

        expiry = Expiry(self, self.backend.tables[name], kind, config,
                        self.clock or wall_clock_ms)
        self.backend.expiring[name] = expiry  # snapshots leave expired entries out
        return expiry


class Collector(list):
    """What a process function emits to: ``out.append(value)`` for the main output,
    ``out.side(tag, value)`` for side output ``tag`` (``stream.side_output(tag)``; records of
    a tag nobody reads are dropped, as in Flink)."""

    __slots__ = ("sides",)

    def __init__(self, sides: dict[str, list[Any]]):
        super().__init__()
        self.sides = sides

    def side(self, tag: str, value: Any) -> None:
        records = self.sides.get(tag)
        if records is None:
            records = self.sides[tag] = []
        records.append(value)


class KeyedProcessFunction:
    """Subclass and override ``process``; declare states in ``open``; override ``on_timer``
    when the function registers timers (``ctx.timers``)."""

    def open(self, ctx: KeyedContext) -> None:
        """Declare states here: ``self.total = ctx.value_state("total", 0)``."""

    def process(self, key: Any, value: Any, out: list[Any]) -> None:
        raise NotImplementedError

    def on_timer(self, timestamp: Any, key: Any, out: list[Any]) -> None:
        """A timer of ``key`` fired (``ctx.key`` is ``key``; ``ctx.timers.time_domain``
        says whether it was an event-time or a processing-time timer)."""


class CountOperator:
    def __init__(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any]):
        self.table = backend.table("count", "value")
        self.key_fn = key_fn
        self.backend = backend

    @property
    def dirty(self) -> set[Any] | None:
        return self.backend.dirty

    def process_batch(self, batch: list[Any]) -> list[Any]:
        table, out = self.table, []
        append, get = out.append, table.get
        keys = keys_of(batch, self.key_fn)
        for key in keys:
            n = get(key, 0) + 1
            table[key] = n
            append((key, n))
        if self.dirty is not None:
            self.dirty.update(keys)
        return out


class ReduceOperator:
    def __init__(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any],
                 fn: Callable[[Any, Any], Any]):
        self.table = backend.table("reduce", "value")
        self.key_fn, self.fn = key_fn, fn
        self.backend = backend

    def process_batch(self, batch: list[Any]) -> list[Any]:
        table, key_fn, fn, out = self.table, self.key_fn, self.fn, []
        mutable, containers = False, CONTAINERS
        for record in batch:
            key = key_fn(record)
            acc = table.get(key, _MISSING)
            acc = record if acc is _MISSING else fn(acc, record)
            table[key] = acc
            out.append((key, acc))
            if type(acc) in containers:
                mutable = True
        # Tuples holding a container: judged by the batch's last accumulator (a reduce
        # function returns one shape), not per record (a tuple scan costs more than reduce).
        if mutable or (batch and type(acc) is tuple and is_mutable(acc)):
            self.backend.mutable.add("reduce")
        if self.backend.dirty is not None:
            self.backend.dirty.update(map(self.key_fn, batch))
        return out


class CoProcessFunction:
    """Two keyed inputs, one keyed state (``connect``): override ``process1`` (records of the
    first stream) and ``process2`` (the second); declare states in ``open``. Both see the
    same state for the same key."""

    def open(self, ctx: KeyedContext) -> None:
        """Declare states here: ``self.seen = ctx.value_state("seen", False)``."""

    def process1(self, key: Any, value: Any, out: Collector) -> None:
        raise NotImplementedError

    def process2(self, key: Any, value: Any, out: Collector) -> None:
        raise NotImplementedError

    def on_timer(self, timestamp: Any, key: Any, out: Collector) -> None:
        """A timer of ``key`` fired (registered with ``ctx.timers`` from either input)."""


class ProcessOperator:
    """Runs a KeyedProcessFunction. ``side_outputs`` collects what it emitted with
    ``out.side(tag, value)``; the task takes them after each batch."""

    def __init__(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any],
                 fn: Any, clock: Callable[[], int] | None = None):
        self.ctx = KeyedContext(backend, clock=clock)
        self.key_fn, self.fn = key_fn, fn
        self.side_outputs: dict[str, list[Any]] = {}
        self.watermark: float = -math.inf
        fn.open(self.ctx)

    def _run(self, batch: list[Any], key_fn: Callable[[Any], Any],
             process: Callable[[Any, Any, Collector], None]) -> list[Any]:
        ctx, out = self.ctx, Collector(self.side_outputs)
        for record in batch:
            key = ctx.key = key_fn(record)
            process(key, record, out)
        return out

    def process_batch(self, batch: list[Any]) -> list[Any]:
        return self._run(batch, self.key_fn, self.fn.process)

    @property
    def late_records(self) -> int:
        """Records the function dropped as late (joins count them)."""
        return getattr(self.fn, "late_records", 0)

    # Time: the task calls these between batches (timers fire only for functions using them).

    def _timers(self) -> Any:
        """The function's timer service, if it uses timers or restored some."""
        ctx = self.ctx
        if ctx._timers is None and (EVENT_TABLE in ctx.backend.tables
                                    or PROCESSING_TABLE in ctx.backend.tables):
            ctx.timers.watermark = self.watermark
        return ctx._timers

    def restore_watermark(self, floors: dict[int, float]) -> None:
        if floors:
            self.watermark = max(self.watermark, min(floors.values()))
            if self._timers() is not None:
                self.ctx._timers.watermark = self.watermark

    def on_watermark(self, watermark: float) -> list[Any]:
        self.watermark = max(self.watermark, watermark)
        timers = self._timers()
        return [] if timers is None else timers.advance_watermark(watermark, self._on_timer)

    def next_processing_time(self) -> Any | None:
        timers = self._timers()
        return None if timers is None else timers.next_processing_time()

    def on_processing_time(self) -> list[Any]:
        timers = self._timers()
        return [] if timers is None else timers.fire_processing_time(self._on_timer)

    def _on_timer(self, timestamp: Any, key: Any, out: list[Any]) -> None:
        """The function's on_timer with a Collector: timers may emit to side outputs too."""
        collector = Collector(self.side_outputs)
        self.fn.on_timer(timestamp, key, collector)
        out.extend(collector)


class CoProcessOperator(ProcessOperator):
    """Runs a CoProcessFunction: ``process_batch`` is the first input, ``process_batch2``
    the second, each keyed by its own key function."""

    def __init__(self, backend: KeyedStateBackend, key_fns: tuple[Callable[[Any], Any], ...],
                 fn: CoProcessFunction):
        super().__init__(backend, key_fns[0], fn)
        self.key_fn2 = key_fns[1]

    def process_batch(self, batch: list[Any]) -> list[Any]:
        return self._run(batch, self.key_fn, self.fn.process1)

    def process_batch2(self, batch: list[Any]) -> list[Any]:
        return self._run(batch, self.key_fn2, self.fn.process2)


class CountOperatorFactory:
    def create(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any]) -> CountOperator:
        return CountOperator(backend, key_fn)


class ReduceOperatorFactory:
    def __init__(self, fn: Callable[[Any, Any], Any]):
        self.fn = fn

    def create(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any]) -> ReduceOperator:
        return ReduceOperator(backend, key_fn, self.fn)


class ProcessOperatorFactory:
    def __init__(self, fn: KeyedProcessFunction):
        self.fn = fn

    def create(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any]) -> ProcessOperator:
        import copy

        # Each subtask gets its own instance: user functions may keep fields.
        return ProcessOperator(backend, key_fn, copy.copy(self.fn))


class CoProcessOperatorFactory:
    def __init__(self, fn: CoProcessFunction, key_fns: tuple[Callable[[Any], Any], ...]):
        if not isinstance(fn, CoProcessFunction):
            raise TypeError(f"connect(...).process takes a CoProcessFunction, not "
                            f"{type(fn).__name__}")
        self.fn, self.key_fns = fn, key_fns

    def create(self, backend: KeyedStateBackend) -> CoProcessOperator:
        import copy

        return CoProcessOperator(backend, self.key_fns, copy.copy(self.fn))
