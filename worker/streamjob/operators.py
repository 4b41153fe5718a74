"""Keyed operators and the keyed state they keep.

State lives in named tables (``dict`` key -> value) owned by one subtask. A snapshot freezes
the tables with a shallow copy (the synchronous part, milliseconds for typical state) and the
copy is grouped by key group and written while processing continues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MISSING = object()


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
            if kind == "map":
                frozen[name] = (kind, {k: dict(v) for k, v in table.items()})
            else:
                frozen[name] = (kind, table.copy())
        if self.dirty is not None and reset_changes:
            self.dirty = set()
        return frozen

    def freeze_delta(self) -> dict[str, tuple[str, dict[Any, Any], list[Any]]]:
        """Only what changed since the last snapshot: (kind, changed entries, deleted keys)
        per table. Cost proportional to the changes, not to the state."""
        dirty, self.dirty = self.dirty, set()
        delta = {}
        for name, table in self.tables.items():
            kind = self.kinds[name]
            changed, deleted = {}, []
            for k in dirty:
                v = table.get(k, _MISSING)
                if v is _MISSING:
                    deleted.append(k)
                else:
                    changed[k] = dict(v) if kind == "map" else v
            delta[name] = (kind, changed, deleted)
        return delta

    def mark_dirty(self, keys: Any) -> None:
        if self.dirty is not None:
            self.dirty.update(keys)

    def load(self, name: str, kind: str, entries: dict[Any, Any],
             deleted: list[Any] = ()) -> None:
        table = self.table(name, kind)
        table.update(entries)
        for k in deleted:
            table.pop(k, None)

    def num_keys(self) -> int:
        return sum(len(t) for t in self.tables.values())


class ValueState:
    """The value of one state for the current key."""

    __slots__ = ("_ctx", "_table", "_default")

    def __init__(self, ctx: KeyedContext, table: dict[Any, Any], default: Any):
        self._ctx, self._table, self._default = ctx, table, default

    def value(self) -> Any:
        return self._table.get(self._ctx.key, self._default)

    def update(self, value: Any) -> None:
        self._table[self._ctx.key] = value
        self._ctx.touch()

    def clear(self) -> None:
        self._table.pop(self._ctx.key, None)
        self._ctx.touch()


class MapState:
    """A mapping kept per key (for the current key)."""

    __slots__ = ("_ctx", "_table")

    def __init__(self, ctx: KeyedContext, table: dict[Any, Any]):
        self._ctx, self._table = ctx, table

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
    """What a KeyedProcessFunction sees: the current key and its declared states."""

    def __init__(self, backend: KeyedStateBackend, key_groups: range | None = None,
                 max_parallelism: int | None = None):
        self.backend = backend
        self.key: Any = None
        # The key groups this subtask owns (for functions that pre-load their state).
        self.key_groups = key_groups if key_groups is not None else backend.key_groups
        self.max_parallelism = max_parallelism or backend.max_parallelism

    def touch(self) -> None:
        if self.backend.dirty is not None:
            self.backend.dirty.add(self.key)

    def value_state(self, name: str, default: Any = None) -> ValueState:
        return ValueState(self, self.backend.table(name, "value"), default)

    def map_state(self, name: str) -> MapState:
        return MapState(self, self.backend.table(name, "map"))


class KeyedProcessFunction:
    """Subclass and override ``process``; declare states in ``open``."""

    def open(self, ctx: KeyedContext) -> None:
        """Declare states here: ``self.total = ctx.value_state("total", 0)``."""

    def process(self, key: Any, value: Any, out: list[Any]) -> None:
        raise NotImplementedError


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
        keys = list(map(self.key_fn, batch))
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
        for record in batch:
            key = key_fn(record)
            acc = table.get(key, _MISSING)
            acc = record if acc is _MISSING else fn(acc, record)
            table[key] = acc
            out.append((key, acc))
        if self.backend.dirty is not None:
            self.backend.dirty.update(map(self.key_fn, batch))
        return out


class ProcessOperator:
    def __init__(self, backend: KeyedStateBackend, key_fn: Callable[[Any], Any],
                 fn: KeyedProcessFunction):
        self.ctx = KeyedContext(backend)
        self.key_fn, self.fn = key_fn, fn
        fn.open(self.ctx)

    def process_batch(self, batch: list[Any]) -> list[Any]:
        ctx, key_fn, process, out = self.ctx, self.key_fn, self.fn.process, []
        for record in batch:
            key = ctx.key = key_fn(record)
            process(key, record, out)
        return out


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
