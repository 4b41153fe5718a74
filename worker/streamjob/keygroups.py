"""Key groups: how keyed state is split so that it can move between subtasks.

A key belongs to key group ``murmur3_32(stable_bytes(key)) % max_parallelism``; subtask i of p
owns a contiguous range of key groups (Flink's ``KeyGroupRangeAssignment``). The hash must be
stable across processes and machines, so Python's salted ``hash()`` is never used.
"""

from __future__ import annotations

import struct
from array import array
from collections import deque
from collections.abc import Callable, Collection, Sequence
from operator import is_
from typing import Any

import mmh3

DEFAULT_MAX_PARALLELISM = 128


_PACK_INT64 = struct.Struct("<q").pack


def stable_bytes(key: object) -> bytes:
    """Bytes of a key that are the same in every process (no salted hash, no repr of objects)."""
    # Plain str and int first, by exact type: most keys are, and it is about twice as fast
    # as the isinstance chain below (which handles subclasses and bool the same way).
    kind = type(key)
    if kind is str:
        return key.encode("utf-8")  # type: ignore[attr-defined]
    if kind is int and -(2**63) <= key < 2**63:  # type: ignore[operator]
        return _PACK_INT64(key)
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bool):
        return b"\x01" if key else b"\x00"
    if isinstance(key, int):
        if -(2**63) <= key < 2**63:
            return struct.pack("<q", key)
        return str(key).encode("ascii")
    if isinstance(key, bytes):
        return key
    if isinstance(key, float):
        return struct.pack("<d", key)
    if isinstance(key, tuple):
        return b"\x1f".join(stable_bytes(k) for k in key)
    if key is None:
        return b""
    raise TypeError(f"key of type {type(key).__name__} has no stable bytes; use str, int, "
                    "bytes, float or a tuple of them")


def key_group(key: object, max_parallelism: int) -> int:
    """The key group of ``key``: murmur3_32 (seed 0, unsigned) of its stable bytes mod m."""
    return mmh3.hash(stable_bytes(key), 0, signed=False) % max_parallelism


_MEMOISED = frozenset({str, int, bytes})


class KeyGroupOf:
    """``key -> key group`` for one max parallelism: one key at a time (memoised, up to
    ``cache_limit`` keys), or every key of a table at once (:meth:`many`, and
    :meth:`of_table`: a memory backend's snapshot places each of its keys, every
    checkpoint)."""

    def __init__(self, max_parallelism: int, cache_limit: int = 1 << 20) -> None:
        self.max_parallelism, self.cache_limit = max_parallelism, cache_limit
        self._cache: dict[Any, int] = {}
        # Per table: its keys at the last of_table() and their key groups. Two snapshots
        # may be encoded at once: one get and one set of this dict are each atomic, and no
        # lock is taken (one held by another thread at a fork would stay locked in the
        # forked snapshot child, which calls of_table too).
        self._tables: dict[str, tuple[list[Any], array]] = {}

    def __call__(self, key: Any) -> int:
        # Only keys of these exact types are memoised: two of them are equal only if their
        # stable bytes are. Not so across types (True == 1 == 1.0, and tuples holding them),
        # whose key groups differ: a cache of any key gave one the other's key group.
        if type(key) not in _MEMOISED:
            return key_group(key, self.max_parallelism)
        kg = self._cache.get(key)
        if kg is None:
            kg = key_group(key, self.max_parallelism)
            if len(self._cache) < self.cache_limit:
                self._cache[key] = kg
        return kg

    def many(self, keys: Collection[Any]) -> list[int]:
        """The key groups of ``keys`` (a collection: iterated twice, never copied), in
        order. Keys that are all ``str`` are hashed in one comprehension, not memoised: at a
        million keys that is 2-3x faster than a function call and a memo lookup per key, and
        the memo would be a second table of every key (about 30 MB per million). They are
        encoded here, not handed to ``mmh3`` as ``str``: mmh3 5.3 crashes the process on a
        string that has no UTF-8 form (a lone surrogate); encoding raises
        ``UnicodeEncodeError`` instead, as :func:`stable_bytes` does."""
        if keys and set(map(type, keys)) == {str}:
            h, m = mmh3.hash, self.max_parallelism
            return [h(k.encode("utf-8"), 0, False) % m for k in keys]
        return list(map(self, keys))

    def of_table(self, name: str, keys: Collection[Any]) -> Sequence[int]:
        """:meth:`many` for the keys of table ``name`` (a full snapshot's copy of it, in the
        table's order), hashing only the keys that were not there, in the same order, at the
        last call for that table. A dict keeps its keys in insertion order, so a table that
        only gained keys since (the common case: values updated, new keys added) starts with
        the same key objects: they are compared by identity (``is``, never ``==``: ``1 ==
        True`` but their key groups differ) and only the new tail is hashed. Any other change
        (a key removed) hashes all of them again. Costs a list of the keys (8 bytes each,
        which also keeps them alive, so no other key can reuse one's address) and their key
        groups (2 bytes each: maxParallelism is at most 32768) per table between
        snapshots; saves hashing every key of every table each checkpoint (0.25-0.33 of
        about 1.2 CPU-s for a million keys)."""
        now = list(keys)
        before, groups = self._tables.get(name, ((), array("H")))
        n = len(before)
        if n and len(now) >= n and all(map(is_, now, before)):
            groups = groups + array("H", self.many(now[n:]))
        else:
            groups = array("H", self.many(now))
        self._tables[name] = (now, groups)
        return groups


def key_group_range(index: int, parallelism: int, max_parallelism: int) -> range:
    """Key groups owned by subtask ``index`` of ``parallelism``:
    ``[ceil(i*m/p), floor(((i+1)*m - 1)/p)]``, as Flink's computeKeyGroupRangeForOperatorIndex."""
    check_parallelism(parallelism, max_parallelism)
    if not 0 <= index < parallelism:
        raise ValueError(f"subtask index {index} is outside 0..{parallelism - 1}")
    start = (index * max_parallelism + parallelism - 1) // parallelism
    end = ((index + 1) * max_parallelism - 1) // parallelism
    return range(start, end + 1)


def operator_index(key_group_id: int, parallelism: int, max_parallelism: int) -> int:
    """The subtask that owns a key group (the inverse of ``key_group_range``)."""
    return key_group_id * parallelism // max_parallelism


def check_parallelism(parallelism: int, max_parallelism: int) -> None:
    if parallelism < 1:
        raise ValueError(f"parallelism must be at least 1, got {parallelism}")
    if max_parallelism < parallelism:
        raise ValueError(
            f"parallelism {parallelism} is above maxParallelism {max_parallelism}")


# Key functions that return a record of exactly their own type as it is: ``key_by(str)`` over
# string records is the identity (see ``keys_of``).
IDENTITY_KEY_FNS: tuple[type, ...] = (str, int, bytes)


def keys_of(records: Sequence[Any], key_fn: Callable[[Any], Any]) -> Sequence[Any]:
    """The key of every record, in order.

    ``key_by(str)`` over records that are all exact ``str`` (or ``int``/``bytes`` with the
    type as key function) returns every record unchanged, so the records are their keys: the
    call per record, the largest single cost of routing by key (``bench/exchange.py``), is
    skipped for a check of the batch's types. Any other record (a subclass, which may define
    ``__str__``) gets the key function's result."""
    # The type check costs about a quarter of the calls it saves (counting the types is
    # cheaper than collecting them in a set); the first record spares it to other batches.
    if (key_fn in IDENTITY_KEY_FNS and records and type(records[0]) is key_fn
            and list(map(type, records)).count(key_fn) == len(records)):
        return records
    return list(map(key_fn, records))


class KeyRouter:
    """Maps keys to subtask indexes, memoising because stream keys repeat.

    The cache is bounded so that a stream of unique keys cannot grow it without limit.
    """

    __slots__ = ("parallelism", "max_parallelism", "_cache", "_limit", "_buckets")

    def __init__(self, parallelism: int, max_parallelism: int, cache_limit: int = 1 << 18):
        check_parallelism(parallelism, max_parallelism)
        self.parallelism = parallelism
        self.max_parallelism = max_parallelism
        # One list per target subtask, reused by every batch (empty between batches); the
        # cache maps a key to its target's list, so routing a record is one lookup.
        self._buckets: list[list[Any]] = [[] for _ in range(parallelism)]
        self._cache: dict[object, list[Any]] = {}
        self._limit = cache_limit

    def target(self, key: object) -> int:
        """The subtask that owns ``key`` (computed, not cached)."""
        return operator_index(key_group(key, self.max_parallelism), self.parallelism,
                              self.max_parallelism)

    def _bucket(self, key: object) -> list[Any]:
        bucket = self._cache.get(key)
        if bucket is None:
            bucket = self._buckets[self.target(key)]
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[key] = bucket
        return bucket

    def partition(self, records: Sequence[Any], key_fn: Callable[[Any], Any]) -> list[list[Any]]:
        """The records of a batch per target subtask, each list in the batch's order.

        Routing is the main CPU a keyed exchange adds per record (``bench/exchange.py``), so
        no Python bytecode runs per record: ``keys_of`` takes the keys, ``map`` looks up each
        key's target list in the cache and appends the record to it (``list.append``). A
        batch with keys not in the cache (new, or evicted) is routed key by key, caching
        them."""
        keys = keys_of(records, key_fn)
        buckets = self._buckets
        try:
            try:
                deque(map(list.append, map(self._cache.__getitem__, keys), records), maxlen=0)
            except KeyError:
                for bucket in buckets:
                    bucket.clear()
                bucket_of = self._bucket
                for key, record in zip(keys, records, strict=True):
                    bucket_of(key).append(record)
            return [bucket.copy() for bucket in buckets]
        finally:
            for bucket in buckets:
                bucket.clear()
