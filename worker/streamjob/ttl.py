"""State time-to-live (Flink's StateTtlConfig) for value and map state.

    self.last = ctx.value_state("last", None, ttl=StateTtlConfig(60))   # 60 s after a write
    self.seen = ctx.map_state("seen", ttl=StateTtlConfig(
        3600, update_type=StateTtlConfig.ON_READ_AND_WRITE))           # ... or a read

A value (or a map entry) is stored with the processing time (ms) of its last write — or of its
last read or write with ``ON_READ_AND_WRITE`` — as ``(value, timestamp)``. Once ``ttl_s`` has
passed since then it is expired: never returned (as if cleared), and removed

* on access (the entry read is dropped),
* incrementally: every access of the state also checks ``cleanup_size`` further entries of
  the table, walking round it (Flink's incremental cleanup), so untouched keys go too,
* from snapshots: expired entries are left out of full snapshots and are deletions in
  incremental ones, so a restore never brings them back.

TTL follows processing time (wall-clock ms, injected for tests), as in Flink.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_MISSING = object()
WALK_CHUNK = 1024  # keys of a rocksdb table read at a time by the incremental clean-up


@dataclass(frozen=True)
class StateTtlConfig:
    ttl_s: float
    update_type: str = "on_create_and_write"
    cleanup_size: int = 5  # entries checked per state access (incremental cleanup)

    ON_CREATE_AND_WRITE = "on_create_and_write"
    ON_READ_AND_WRITE = "on_read_and_write"

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ValueError(f"ttl_s must be a positive number of seconds, got {self.ttl_s}")
        if self.update_type not in (self.ON_CREATE_AND_WRITE, self.ON_READ_AND_WRITE):
            raise ValueError(f"update_type must be {self.ON_CREATE_AND_WRITE!r} or "
                             f"{self.ON_READ_AND_WRITE!r}, got {self.update_type!r}")
        if self.cleanup_size < 0:
            raise ValueError("cleanup_size must be 0 or more")

    @property
    def ttl_ms(self) -> float:
        return self.ttl_s * 1000


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class Expiry:
    """Expiry of one table: which entries are expired, incremental cleanup, snapshot filter."""

    def __init__(self, ctx: Any, table: dict[Any, Any], kind: str, config: StateTtlConfig,
                 clock: Callable[[], int]):
        self.ctx, self.table, self.kind, self.config, self.clock = ctx, table, kind, config, clock
        self._walk: list[Any] = []
        self._at = 0

    def expired(self, entry: tuple[Any, int], now: int) -> bool:
        return now - entry[1] >= self.config.ttl_ms

    def _clean_key(self, key: Any, now: int) -> bool:
        """Drop what is expired under ``key``; whether anything was."""
        v = self.table.get(key, _MISSING)
        if v is _MISSING:
            return False
        if self.kind == "value":
            if self.expired(v, now):
                del self.table[key]
                return True
            return False
        gone = [k for k, e in v.items() if self.expired(e, now)]
        for k in gone:
            del v[k]
        if not v:
            del self.table[key]
        return bool(gone)

    def step(self, now: int) -> None:
        """Incremental cleanup: check the next ``cleanup_size`` keys of the table."""
        n = self.config.cleanup_size
        dirty = self.ctx.backend.dirty
        while n > 0:
            if self._at >= len(self._walk):
                # The next keys to check: the whole table (a dict), or the next chunk of a
                # table on disk (rocksdb: never all of its keys in memory at once).
                next_keys = getattr(self.table, "next_keys", None)
                self._walk = list(self.table) if next_keys is None else next_keys(
                    self._walk[-1] if self._walk else None, WALK_CHUNK)
                self._at = 0
                if not self._walk:
                    return
            key = self._walk[self._at]
            self._at += 1
            n -= 1
            if self._clean_key(key, now) and dirty is not None:
                dirty.add(key)

    def live(self, entries: dict[Any, Any]) -> tuple[dict[Any, Any], list[Any]]:
        """A snapshot's entries without what is expired, and the keys left with nothing."""
        now = self.clock()
        kept: dict[Any, Any] = {}
        gone: list[Any] = []
        for key, v in entries.items():
            if self.kind == "value":
                if self.expired(v, now):
                    gone.append(key)
                else:
                    kept[key] = v
            else:
                inner = {k: e for k, e in v.items() if not self.expired(e, now)}
                if inner:
                    kept[key] = inner
                else:
                    gone.append(key)
        return kept, gone


class TtlValueState:
    """A value state whose value expires (see the module docstring)."""

    __slots__ = ("_ctx", "_table", "_default", "_name", "_expiry", "_on_read")

    def __init__(self, ctx: Any, table: dict[Any, Any], default: Any, name: str,
                 expiry: Expiry):
        self._ctx, self._table, self._default, self._name = ctx, table, default, name
        self._expiry = expiry
        self._on_read = expiry.config.update_type == StateTtlConfig.ON_READ_AND_WRITE

    def _default_value(self) -> Any:
        from streamjob.operators import copy_value

        return copy_value(self._default)

    def value(self) -> Any:
        now = self._expiry.clock()
        key = self._ctx.key
        entry = self._table.get(key)
        self._expiry.step(now)
        if entry is None:
            return self._default_value()
        if self._expiry.expired(entry, now):
            self._table.pop(key, None)
            self._ctx.touch()
            return self._default_value()
        if self._on_read:
            self._table[key] = (entry[0], now)
            self._ctx.touch()
        return entry[0]

    def update(self, value: Any) -> None:
        now = self._expiry.clock()
        entry = self._table[self._ctx.key] = (value, now)
        self._ctx.backend.note_value(self._name, entry)
        self._ctx.touch()
        self._expiry.step(now)

    def clear(self) -> None:
        self._table.pop(self._ctx.key, None)
        self._ctx.touch()


class TtlMapState:
    """A map state whose entries expire one by one (see the module docstring)."""

    __slots__ = ("_ctx", "_table", "_name", "_expiry", "_on_read")

    def __init__(self, ctx: Any, table: dict[Any, Any], name: str, expiry: Expiry):
        self._ctx, self._table, self._name, self._expiry = ctx, table, name, expiry
        self._on_read = expiry.config.update_type == StateTtlConfig.ON_READ_AND_WRITE

    def _live(self, now: int) -> dict[Any, Any] | None:
        """The current key's map with its expired entries dropped."""
        self._expiry.step(now)
        key = self._ctx.key
        if self._expiry._clean_key(key, now):
            self._ctx.touch()
        return self._table.get(key)

    def _read(self, m: dict[Any, Any], k: Any, now: int) -> Any:
        entry = m[k]
        if self._on_read:
            m[k] = (entry[0], now)
            self._ctx.touch()
        return entry[0]

    def get(self, key: Any, default: Any = None) -> Any:
        now = self._expiry.clock()
        m = self._live(now)
        if m is None or key not in m:
            return default
        return self._read(m, key, now)

    def put(self, key: Any, value: Any) -> None:
        now = self._expiry.clock()
        m = self._live(now)
        if m is None:
            m = self._table[self._ctx.key] = {}
        entry = m[key] = (value, now)
        self._ctx.backend.note_value(self._name, entry)
        self._ctx.touch()

    def remove(self, key: Any) -> None:
        m = self._live(self._expiry.clock())
        self._ctx.touch()
        if m is not None:
            m.pop(key, None)
            if not m:
                del self._table[self._ctx.key]

    def items(self) -> list[tuple[Any, Any]]:
        now = self._expiry.clock()
        m = self._live(now)
        return [(k, self._read(m, k, now)) for k in list(m)] if m else []

    def __contains__(self, key: Any) -> bool:
        m = self._live(self._expiry.clock())
        return m is not None and key in m
