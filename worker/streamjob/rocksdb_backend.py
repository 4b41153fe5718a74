"""The embedded RocksDB keyed state backend (``spec.stateBackend.type: rocksdb``).

Keyed state on local disk, bounded in memory, checkpointed by uploading only new SST files.
Operators, timers, TTL, windows and joins use it unchanged: :meth:`table` returns a
:class:`RocksDBTable`, a dict-like object with the methods they call on the memory backend's
plain dicts (``get``, ``[]``, ``[]=``, ``del``, ``pop``, ``in``, ``items``, ``len``...).

Decisions, and why:

* **Measured first.** From Python, one ``rocksdict`` ``get`` costs about 4-7 us, a ``put``
  with the WAL about 18 us, a ``put`` into a ``WriteBatch`` about 2 us and writing the batch
  about 2.5 us per entry, while a dict lookup is well under 0.1 us (2-core machine, loaded).
  Going to RocksDB per record would cost many times the memory backend. So each table is a
  **dict subclass that is its own write-back cache**: hits and all writes are the dict's own
  C code (no Python ``__setitem__``), a miss reads one value (``get``, ``__missing__``,
  ``in``). While a table holds every key of its state (a state that never outgrew the
  cache, or a small one loaded whole after a restore) even ``get`` is the dict's.
* **What to write back** is the backend's ``dirty`` key set, which every writer (value and
  map state, timers, TTL, windows, the count and reduce operators) fills already for the
  memory backend's incremental checkpoints (``ctx.touch``); deletions are remembered per
  table. At the snapshot barrier the dirty entries go to RocksDB in one ``WriteBatch``
  (measured ~5-8 us per entry, most of it RocksDB's memtable insert, which holds the GIL).
  Between batches (:meth:`trim`, called by the task) a cache over its bound
  (``cache_entries`` per table, 131,072 by default) writes back and drops its oldest
  entries, by first use; never during a batch, since an operator adds the keys it changed
  to ``dirty`` by the end of its batch and may still hold a value it is changing in place.
  A job whose hot keys fit the cache runs near dict speed; one with 20 M keys keeps only
  the cache in Python memory and the rest in RocksDB's block cache and files.
* **Write-behind.** Once the job checkpoints, :meth:`trim` also writes dirty entries
  between batches in slices, so that a barrier finds at most ``write_behind``
  (``cache_entries / 16``) of them: with 1,000,000 keys rewritten in turn the barrier wrote
  100-200 k entries, 0.4-1.1 s of the task at each one, and now ~60 ms. It is the same
  writes at another time (a key changed once per checkpoint is written once either way),
  made when eviction may write too (between batches, no checkpoint being made), so the
  checkpoint still holds exactly the state at its barrier. A key changed again after it was
  written behind is written twice: after a checkpoint interval where over a quarter of its
  writes were such (hot keys), write-behind pauses for 1, 2, 4... up to 16 intervals.
  Without checkpoints it never runs (eviction writes what must be).
* **Keys** are ``key group (2 bytes, big-endian) + msgpack(key)`` and values msgpack (never
  pickle), one column family per state (table). A key-group range is then one contiguous
  key range: rescaling clips a restored database with ``delete_range`` or copies one range.
  msgpack turns tuples into arrays: a value read back from disk is a list where a tuple was
  written (as after a restore on the memory backend); keys come back as tuples.
* **No WAL.** Durability comes from checkpoints (as in Flink): writes go without the
  write-ahead log; a crash restores the last checkpoint anyway.
* **Checkpoints.** Synchronous part: write the dirty entries in one batch. The RocksDB
  ``Checkpoint`` into ``<base>/chk-<n>-<instance>`` is made on a thread of its own: a flush
  of every state's memtable (without the WAL, RocksDB must write them out, and the wait
  releases the GIL), then hard links (milliseconds). It used to be made at the barrier, where
  the task waited for the flush: 0.2-0.4 s of every 1 s interval with 100 MB of state
  (``bench/checkpoint_overhead.py``). Until it is made, the task writes nothing to RocksDB
  (the checkpoint must hold exactly the state at the barrier): :meth:`trim` lets the caches
  grow to twice their bound instead of writing back, and any other write waits for it
  (:meth:`_writable`). Asynchronous part: wait for it, then upload the SST files not
  uploaded before to ``<job>/shared/<task>/<subtask>-<instance>-
  <file>`` (names unique per database instance, so two attempts never overwrite each other's
  files) and the small files (MANIFEST, CURRENT, OPTIONS...) into the checkpoint's own folder.
  The handle lists every file with its size and sha256, the tables and the key-group range;
  ``checkpoints.handle_keys`` returns the shared files, so the coordinator's
  reference-counted clean-up keeps them while a retained checkpoint needs them.
* **Restore.** Each file is verified against its sha256; a missing or corrupt file raises
  ``CorruptStateError`` and the coordinator falls back to the next older checkpoint. The
  files come from the local checkpoint folder when it is still there and matches (local
  recovery: a restarted worker on the same node downloads nothing), else from storage.
  Same key-group range: open the checkpoint as the new database. Another range (rescale):
  one old database covering the new range is opened and clipped with ``delete_range``;
  otherwise the overlapping key range of each old database is copied into a new one.
* **Directories.** ``<localDir>/<job>/<task>/<subtask>/`` is the subtask's, independent of the
  attempt (so local recovery finds it). Each database instance lives in ``inst-<uuid>/db``
  next to a ``lock`` file held (``flock``) while it is open: two attempts that overlap briefly
  never share a RocksDB directory, and a folder whose lock nobody holds is left over from a
  dead process and removed.
* **Savepoints** stay canonical (``state.write_snapshot_sections``, the memory backend's
  format by key group) and are written by iterating a RocksDB checkpoint in key order, one
  key group at a time: the state is never materialised in memory, and either backend can
  restore them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import msgpack
from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    Checkpoint,
    DBCompactionStyle,
    IngestExternalFileOptions,
    Options,
    Rdict,
    ReadOptions,
    SstFileWriter,
    UniversalCompactOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from streamjob import faults, state
from streamjob.keygroups import key_group
from streamjob.operators import KeyedStateBackend
from streamjob.state import CorruptStateError

log = logging.getLogger("streamjob.rocksdb")

FORMAT = 1
MB = 1 << 20
CACHE_ENTRIES = 1 << 17  # per table: entries kept decoded in Python (see the docstring)
LOCAL_CHECKPOINTS = 2    # local checkpoint folders kept per subtask (local recovery)
COPY_BATCH = 10_000      # entries read at a time when copying a key range (rescale)
SST_FILE_BYTES = 64 * MB  # SST files written for a bulk load (RocksDB's default target)
CREATE_TIMEOUT_S = 600.0  # a RocksDB checkpoint not made by then fails the task (a hung disk)
WRITE_BEHIND_PAUSE = 16  # most checkpoint intervals write-behind pauses after hot keys
DEFAULT_CF = "default"
# Read and hash uploaded files in chunks this big: each chunk's read and hash release the GIL
# and must take it back, and the task thread may hold it for tens of ms at a time (RocksDB's
# writes); with 1 MB chunks a 100 MB file's sha256 took up to 1 s of wall time for 0.1 s of
# CPU while the task ran. One buffer, read into: the peak grows by one chunk.
HASH_CHUNK = 8 * MB

_MISSING = object()
_ABSENT = object()  # cached: the key has no value (a deletion not written yet, or a miss)


def subtask_dir(local_dir: str, job_id: str, task_id: str, subtask: int) -> str:
    """The subtask's folder under ``localDir``: the same for every attempt (local recovery)."""
    for part in (job_id, task_id):
        if not part or "/" in part or part in (".", ".."):
            raise ValueError(f"cannot make a directory name of {part!r}")
    return os.path.join(local_dir, job_id, task_id, str(subtask))


def kg_prefix(kg: int) -> bytes:
    return kg.to_bytes(2, "big")


def _unpack_value(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _unpack_key(data: bytes) -> Any:
    return msgpack.unpackb(data[2:], raw=False, use_list=False, strict_map_key=False)


def write_behind_pause(written: int, again: int, last: int) -> int:
    """Checkpoint intervals to go without write-behind after one in which it made ``written``
    writes and ``again`` writes were of a key it had written already (at the barrier or
    behind): none if at most a quarter were, else twice the ``last`` pause (1 the first
    time), at most ``WRITE_BEHIND_PAUSE``."""
    if again * 4 <= written:
        return 0
    return min(max(1, 2 * last), WRITE_BEHIND_PAUSE)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    buf = bytearray(min(HASH_CHUNK, max(1, os.path.getsize(path))))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


# One block cache and one write buffer manager per process and size: every keyed subtask
# of a worker (a pipeline may have several keyed tasks) shares them, so RocksDB's memory in
# a worker is blockCacheMB + writeBufferMB however many databases it has open.
_SHARED: dict[tuple[int, int], tuple[Cache, WriteBufferManager]] = {}


def _options(block_cache_mb: int, write_buffer_mb: int) -> Options:
    key = (block_cache_mb, write_buffer_mb)
    if key not in _SHARED:
        _SHARED[key] = (Cache(block_cache_mb * MB),
                        WriteBufferManager(write_buffer_mb * MB, False))
    cache, buffers = _SHARED[key]
    opt = Options(raw_mode=True)
    opt.create_if_missing(True)
    opt.create_missing_column_families(True)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_cache_index_and_filter_blocks(True)  # bounded by the cache too
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    table.set_bloom_filter(10, False)  # a miss (a new key) rarely touches the disk
    opt.set_block_based_table_factory(table)
    opt.set_write_buffer_manager(buffers)  # memtables of every database of the process
    opt.set_write_buffer_size(max(1, write_buffer_mb // 2) * MB)
    opt.set_max_background_jobs(2)
    # Universal compaction, a merge when 16 sorted runs have piled up, a full merge at
    # RocksDB's default 200 % size amplification. A checkpoint uploads the SST files written
    # since the last one, by the flush *and by compactions*, so the policy that rewrites the
    # least per flush wins. Changes to keyed state are spread over every key, so each flushed
    # file overlaps the whole database: leveled compaction rewrote 41-100 % of it every ~4
    # checkpoints. `python bench/compaction.py --keys 300000 --rounds 400 --settings ...`,
    # upload per round of "1 % of the keys changed, flush" in % of the state, mean over 400
    # rounds (max 100-101 for every universal setting: the full merge, every 100-200
    # rounds): universal with 8 runs at 100 % (this runtime until now) 3.4, 12 runs at 200 %
    # 2.9, 16 runs at 200 % 2.6 (at 300 % the same), 20 runs 2.8, 24 runs at 150 % 2.7,
    # 32 runs 2.5, 16 runs with a 10 % size ratio 3.1; leveled with an L0 trigger of 20
    # 6.0. Below 16 runs the medium merges come often; above, little is gained for more
    # runs to read. The price: a point read may look at up to 16 sorted runs (bloom filters
    # keep a miss off the disk), and the disk and the checkpoint storage hold up to 2.6x the
    # live state just before a full merge (1.5x right after).
    opt.set_compaction_style(DBCompactionStyle.universal())
    universal = UniversalCompactOptions()
    universal.max_size_amplification_percent = 200
    opt.set_universal_compaction_options(universal)
    opt.set_level_zero_file_num_compaction_trigger(16)
    opt.set_level_zero_slowdown_writes_trigger(40)
    opt.set_level_zero_stop_writes_trigger(64)
    return opt


class RestoreCancelled(Exception):
    """The attempt that was restoring is being cancelled (:attr:`cancelled`)."""


class RocksDBTable(dict):
    """One state (a column family) seen as a dict. The dict itself is the cache: reads that
    hit and every write run at dict speed (no Python-level ``__setitem__``); a miss reads
    RocksDB (:meth:`__missing__`, :meth:`get`, ``in``). Which cached entries must be written
    back is the backend's ``dirty`` key set, which every writer keeps already (``touch``);
    deletions are remembered in ``_deleted`` until written.

    While the cache holds *every* key of the state (a new state that never outgrew its
    bound, or a small one loaded whole after a restore: :meth:`fill`), a key that is not in
    the dict does not exist, and ``get`` is the dict's own, in C (an instance slot); once
    entries are evicted it is :meth:`_get`, which reads RocksDB on a miss."""

    __slots__ = ("backend", "name", "kind", "_deleted", "_limit", "_cf", "_handle", "_full",
                 "get")

    def __init__(self, backend: RocksDBKeyedStateBackend, name: str, kind: str, limit: int):
        super().__init__()
        self.backend, self.name, self.kind = backend, name, kind
        self._deleted: set[Any] = set()  # deleted since the last flush, not written yet
        self._limit = max(2, limit)
        self._cf: Any = None       # the column family (an Rdict), bound by the backend
        self._handle: Any = None   # its handle, for write batches
        self._set_full(False)

    def _set_full(self, full: bool) -> None:
        self._full = full
        self.get = dict.get.__get__(self) if full else self._get

    def fill(self) -> bool:
        """Load the whole state into the cache if it fits in half of it (then misses are
        answered without RocksDB); whether it did."""
        if self._full:
            return True
        self.backend.flush()
        entries = list(itertools.islice(self._cf.items(), self._limit // 2 + 1))
        if len(entries) > self._limit // 2:
            return False
        get = dict.get
        for kb, vb in entries:
            k = _unpack_key(kb)
            if get(self, k, _MISSING) is _MISSING:
                dict.__setitem__(self, k, _unpack_value(vb))
        self._set_full(True)
        return True

    # -- reads that miss the cache ---------------------------------------------------------

    def _get(self, key: Any, default: Any = None) -> Any:
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            v = self._load(key)
            return default if v is _ABSENT else v

    def __missing__(self, key: Any) -> Any:
        v = self._load(key)
        if v is _ABSENT:
            raise KeyError(key)
        return v

    def __contains__(self, key: Any) -> bool:
        return dict.__contains__(self, key) or self._load(key) is not _ABSENT

    def _load(self, key: Any) -> Any:
        """The value of a key not in the cache (cached if it has one), or _ABSENT."""
        if self._full or key in self._deleted:
            return _ABSENT
        data = self._cf.get(self.backend.encode_key(key))
        if data is None:
            return _ABSENT
        v = _unpack_value(data)
        dict.__setitem__(self, key, v)  # bounded by trim() between batches
        return v

    # -- deletions (remembered until written) ----------------------------------------------

    def __delitem__(self, key: Any) -> None:
        if not dict.__contains__(self, key) and self._load(key) is _ABSENT:
            raise KeyError(key)
        dict.__delitem__(self, key)
        self._deleted.add(key)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        v = dict.pop(self, key, _MISSING)
        if v is _MISSING:
            v = self._load(key)
            if v is _ABSENT:
                if default is _MISSING:
                    raise KeyError(key)
                return default
            dict.__delitem__(self, key)
        self._deleted.add(key)
        return v

    def setdefault(self, key: Any, default: Any = None) -> Any:
        v = self.get(key, _MISSING)
        if v is _MISSING:
            self[key] = v = default
        return v

    def popitem(self) -> tuple[Any, Any]:
        raise NotImplementedError("popitem on a rocksdb state table")

    def clear(self) -> None:
        self.backend._writable()
        dict.clear(self)
        self._deleted = set()
        self._cf.delete_range(b"\x00\x00", kg_prefix(0xFFFF) + b"\xff")
        self._set_full(True)

    # -- write-back ------------------------------------------------------------------------

    def evict(self) -> None:
        """Write (if dirty) and drop the oldest entries, by first use, down to half the
        bound."""
        dirty = self.backend.dirty
        self._set_full(False)
        old = list(itertools.islice(dict.keys(self), dict.__len__(self) - self._limit // 2))
        batch = WriteBatch(raw_mode=True)
        encode, pack, handle, n = self.backend.encode_key, self.backend.pack, self._handle, 0
        for k in old:
            v = dict.pop(self, k)
            if k in dirty:
                batch.put(encode(k), pack(v), handle)
                self._deleted.discard(k)
                n += 1
        if n:
            self.backend.db.write(batch)

    def write_dirty(self, batch: WriteBatch, dirty: Iterable[Any]) -> int:
        """The cached values of ``dirty`` keys and the deletions into ``batch``; how many."""
        n = self.write_values(batch, dirty)
        for k in self._deleted:
            if not dict.__contains__(self, k):
                batch.delete(self.backend.encode_key(k), self._handle)
                n += 1
        self._deleted = set()
        return n

    def write_values(self, batch: WriteBatch, keys: Iterable[Any]) -> int:
        """The cached values of ``keys`` into ``batch`` (keys not cached are skipped: never
        loaded here, deleted, or written when evicted); how many."""
        encode, pack, handle, n = self.backend.encode_key, self.backend.pack, self._handle, 0
        get, put = dict.get, batch.put
        for k in keys:
            v = get(self, k, _MISSING)
            if v is not _MISSING:
                put(encode(k), pack(v), handle)
                n += 1
        return n

    def drop_cache(self) -> None:
        """Forget the cache (after the database under it changed: a restore)."""
        dict.clear(self)
        self._deleted = set()
        self._set_full(False)

    # -- whole-table reads (flush first, then the database in key order) ------------------

    def __iter__(self) -> Iterator[Any]:
        self.backend.flush()
        return (_unpack_key(k) for k in self._cf.keys())

    def keys(self) -> Iterator[Any]:  # type: ignore[override]
        return iter(self)

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        self.backend.flush()
        get = dict.get
        for kb, vb in self._cf.items():
            k = _unpack_key(kb)
            v = get(self, k, _MISSING)  # the cached object (identity, as with a dict)
            yield k, _unpack_value(vb) if v is _MISSING else v

    def decoded_items(self) -> Iterator[tuple[Any, Any]]:
        """Like :meth:`items`, but every value decoded from disk: a copy that later changes
        of cached values do not reach."""
        self.backend.flush()
        return ((_unpack_key(k), _unpack_value(v)) for k, v in self._cf.items())

    def next_keys(self, after: Any, n: int) -> list[Any]:
        """Up to ``n`` keys in key order after ``after`` (from the first when None, and again
        from the first past the last key): a walk round the state a chunk at a time."""
        self.backend.flush()
        start = None if after is None else self.backend.encode_key(after)
        keys = []
        for kb in self._cf.keys(from_key=start) if start else self._cf.keys():
            if kb == start:
                continue
            keys.append(_unpack_key(kb))
            if len(keys) >= n:
                break
        if not keys and after is not None:
            return self.next_keys(None, n)
        return keys

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        return (v for _, v in self.items())

    def __len__(self) -> int:
        """Exact, by counting the keys on disk (O(n): for tests and small tables)."""
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        return next(iter(self), _MISSING) is not _MISSING

    def copy(self) -> dict[Any, Any]:
        return dict(self.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RocksDBTable({self.name!r}, {self.kind})"


class RocksDBKeyedStateBackend(KeyedStateBackend):
    """The keyed state of one subtask in an embedded RocksDB (see the module docstring)."""

    def __init__(self, directory: str, key_groups: range, max_parallelism: int,
                 block_cache_mb: int = 256, write_buffer_mb: int = 64,
                 cache_entries: int = CACHE_ENTRIES):
        # Every writer adds the keys it changed to ``dirty`` (the memory backend's
        # incremental checkpoints rely on the same): what a flush writes back.
        super().__init__(track_changes=True)
        self.key_groups, self.max_parallelism = key_groups, max_parallelism
        self.base = directory
        # "<task>/<subtask>" (the end of subtask_dir): the key of this backend's fault points
        self.label = "/".join(os.path.normpath(directory).split(os.sep)[-2:])
        self.cache_entries = cache_entries
        self.options = _options(block_cache_mb, write_buffer_mb)
        self.write_options = WriteOptions()
        self.write_options.disable_wal = True
        self.pack = msgpack.Packer(use_bin_type=True).pack  # the processing thread's
        self._encoded: dict[Any, bytes] = {}
        # Write-behind (see trim()): dirty entries a barrier may find; keys written behind
        # since the last barrier (the first cache_entries / 4: a sample), how many writes of
        # those, how many of them of a key written already; checkpoint intervals left
        # without it; on once checkpointing.
        self.write_behind = max(64, cache_entries // 16)
        self._behind: set[Any] = set()
        self._behind_writes = self._behind_again = 0
        self._behind_pause = self._behind_paused = 0
        self._checkpointing = False
        self._prefixes = [kg_prefix(kg) for kg in range(max_parallelism)]
        # SST files already in storage: name -> {"name", "key", "size", "sha256"}.
        self.uploaded: dict[str, dict[str, Any]] = {}
        self.cancelled = False  # set from another thread: a restore stops at its next file
        self.db: Any = None
        self._lock: Any = None
        # The checkpoint being made on its thread (see checkpoint()): no write until it is.
        self._creating: LocalCheckpoint | None = None
        os.makedirs(self.base, exist_ok=True)
        self._new_instance()
        self._reap()
        self._open(self.db_path)

    # -- instances and directories ---------------------------------------------------------

    def _new_instance(self) -> None:
        self.instance = uuid.uuid4().hex[:12]
        self.instance_dir = os.path.join(self.base, f"inst-{self.instance}")
        self.db_path = os.path.join(self.instance_dir, "db")
        os.makedirs(self.instance_dir)
        self._lock = open(os.path.join(self.instance_dir, "lock"), "w")  # noqa: SIM115
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _reap(self) -> None:
        """Remove instance folders nobody holds (left by a dead process)."""
        for name in os.listdir(self.base):
            path = os.path.join(self.base, name)
            if name.startswith("inst-") and path != self.instance_dir:
                try:
                    with open(os.path.join(path, "lock"), "a") as f:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        shutil.rmtree(path, ignore_errors=True)
                except (BlockingIOError, FileNotFoundError):
                    continue  # another attempt's database, open right now

    def prune_local_checkpoints(self, uploaded: int) -> None:
        """After checkpoint ``uploaded`` is in storage: keep our newest local checkpoints up
        to it (local recovery) and those after it (their uploads are pending); drop the
        rest, and those of earlier instances (a restore is behind us)."""
        own = []
        for name in os.listdir(self.base):
            parts = name.split("-")
            if len(parts) != 3 or parts[0] != "chk" or not parts[1].isdigit():
                continue
            path = os.path.join(self.base, name)
            if parts[2] != self.instance:
                shutil.rmtree(path, ignore_errors=True)
            elif int(parts[1]) <= uploaded:
                own.append((int(parts[1]), path))
        for _, path in sorted(own)[:-LOCAL_CHECKPOINTS]:
            shutil.rmtree(path, ignore_errors=True)

    def _open(self, path: str) -> None:
        names = [DEFAULT_CF]
        if os.path.exists(os.path.join(path, "CURRENT")):
            names = Rdict.list_cf(path, Options(raw_mode=True))
        cfs = {n: self.options for n in names if n != DEFAULT_CF}
        self.db = Rdict(path, self.options, column_families=cfs)
        self.db.set_write_options(self.write_options)
        for table in self.tables.values():
            self._bind(table)

    def _bind(self, table: RocksDBTable) -> None:
        try:
            table._cf = self.db.get_column_family(table.name)
        except Exception:  # noqa: BLE001 - rocksdict raises a plain Exception
            table._cf = self.db.create_column_family(table.name, self.options)
        table._handle = self.db.get_column_family_handle(table.name)

    def _close_db(self) -> None:
        """Close the database for real: rocksdict keeps it open while any column family
        object lives, so the tables let go of theirs first."""
        if self._creating is not None:  # its thread uses the database
            self._creating.created.wait(CREATE_TIMEOUT_S)
            self._creating = None
        for t in self.tables.values():
            t._cf = t._handle = None
        if self.db is not None:
            self.db.close()
            self.db = None

    def close(self) -> None:
        """Close the database and drop its instance folder (the local checkpoints stay)."""
        self._close_db()
        if self._lock is not None:
            shutil.rmtree(self.instance_dir, ignore_errors=True)
            self._lock.close()
            self._lock = None

    # -- the interface the operators use ---------------------------------------------------

    def table(self, name: str, kind: str) -> RocksDBTable:  # type: ignore[override]
        if name in self.tables:
            if self.kinds[name] != kind:
                raise ValueError(f"state {name!r} is a {self.kinds[name]} state, not {kind}")
            return self.tables[name]
        if name == DEFAULT_CF:
            raise ValueError(f"{DEFAULT_CF!r} is not a valid state name on rocksdb")
        self._writable()  # a new column family is a change to the database too
        t = RocksDBTable(self, name, kind, self.cache_entries)
        self._bind(t)
        t.fill()  # a new state (or a small restored one) is all in the cache
        self.kinds[name] = kind
        self.tables[name] = t
        return t

    def encode_key(self, key: Any) -> bytes:
        """``key group + msgpack(key)``, memoised for as many keys as a table caches (a
        flush encodes the same hot keys at every checkpoint). A memo of twice that, keeping
        its newer half when full, saved ~6 % of encoding with 1,000,000 keys rewritten in
        turn, for 30-50 MB more peak memory: not kept."""
        encoded = self._encoded.get(key)
        if encoded is None:
            encoded = self._prefixes[key_group(key, self.max_parallelism)] + self.pack(key)
            if len(self._encoded) >= self.cache_entries:
                self._encoded.clear()
            self._encoded[key] = encoded
        return encoded

    def _writable(self) -> None:
        """Before the task writes to RocksDB: the checkpoint being made must be complete,
        since it must not hold a write made after its barrier."""
        local = self._creating
        if local is None:
            return
        local.wait_created()
        self._creating = None

    def _check_cancelled(self) -> None:
        """A restore calls it between files and batches: stop if the attempt is cancelled."""
        if self.cancelled:
            raise RestoreCancelled(f"{self.label}: restore cancelled")

    def flush(self) -> int:
        """Write every table's dirty entries and deletions to RocksDB (one batch); how
        many."""
        self._writable()
        batch = WriteBatch(raw_mode=True)
        n = sum(t.write_dirty(batch, self.dirty) for t in self.tables.values())
        if n:
            self.db.write(batch)
        # Emptied in place: an operator may hold the set for the rest of its batch.
        self.dirty.clear()
        return n

    def trim(self) -> None:
        """Between batches (the task calls it): keep the caches and the dirty set within
        their bounds. Never during a batch: an operator adds the keys it changed to
        ``dirty`` by the end of its batch, and may hold a value it is changing.
        While a checkpoint is being made the caches may grow to twice their bound rather
        than write back (which would wait for it)."""
        creating = self._creating is not None and not self._creating.created.is_set()
        for t in self.tables.values():
            size = dict.__len__(t)
            if size > t._limit and not (creating and size <= 2 * t._limit):
                self._writable()
                t.evict()
        if len(self.dirty) > 4 * self.cache_entries:
            self.flush()
        elif (self._checkpointing and not creating and not self._behind_pause
              and len(self.dirty) > self.write_behind // 2):
            self._write_behind()

    def _write_behind(self) -> None:
        """Write a slice of the dirty entries now, so that the barrier finds at most
        ``write_behind`` of them: its synchronous part writes those, not every key changed
        since the last checkpoint (with 1,000,000 keys rewritten in turn, ~0.5-1 s of the
        task at each barrier; now ~10 ms slices between batches). Between batches and while
        no checkpoint is being made, as :meth:`evict`: the checkpoint still holds exactly
        the state at its barrier (what is written early is the state then too; a key
        changed again is dirty again). Called once more than ``write_behind / 2`` are dirty,
        it writes them down to a quarter, in slices of at most a half unless more than
        ``write_behind`` would stay dirty: RocksDB's write holds the GIL throughout (~10 ms
        for 4,096 entries), and the upload thread waits for it."""
        self._writable()
        dirty = self.dirty  # emptied in place: operators hold the set
        wb = self.write_behind
        n = max(min(len(dirty) - wb // 4, wb // 2), len(dirty) - wb)
        keys = [dirty.pop() for _ in range(n)]
        batch = WriteBatch(raw_mode=True)
        if sum(t.write_values(batch, keys) for t in self.tables.values()):
            self.db.write(batch)
        behind, room = self._behind, self.cache_entries // 4 - len(self._behind)
        again = sum(1 for k in keys if k in behind)
        new = [k for k in keys if k not in behind][:max(0, room)]
        behind.update(new)
        self._behind_again += again
        self._behind_writes += again + len(new)

    def _pace_write_behind(self) -> None:
        """At a barrier: a key written behind and changed again before it is written twice
        or more (hot keys). After an interval where over a quarter of its writes were such
        second writes, write-behind pauses for 1, 2, 4... up to ``WRITE_BEHIND_PAUSE``
        intervals, then tries again."""
        self._checkpointing = True
        if self._behind_pause:
            self._behind_pause -= 1
        elif self._behind_writes:
            behind = self._behind
            again = self._behind_again + sum(1 for k in self.dirty if k in behind)
            self._behind_pause = write_behind_pause(self._behind_writes, again,
                                                    self._behind_paused)
            self._behind_paused = self._behind_pause
        self._behind = set()
        self._behind_writes = self._behind_again = 0

    def load(self, name: str, kind: str, entries: dict[Any, Any],
             deleted: list[Any] = ()) -> None:
        """Restore from the canonical format (a savepoint, or a memory-backend checkpoint):
        straight into RocksDB, around the cache."""
        table = self.table(name, kind)
        self._writable()
        table.drop_cache()
        batch = WriteBatch(raw_mode=True)
        encode, pack, handle = self.encode_key, self.pack, table._handle
        for k, v in entries.items():
            batch.put(encode(k), pack(v), handle)
        for k in deleted:
            batch.delete(encode(k), handle)
        self.db.write(batch)

    def load_state_file(self, storage: Any, handle: dict[str, Any],
                        key_groups: range) -> None:
        """Restore our key groups of a canonical state file (a savepoint, or a checkpoint of
        the memory backend) by bulk loading: each state's entries, with the file's bytes
        (keys prefixed by their key group, nothing decoded), are written sorted into SST
        files that RocksDB ingests. No write batch, no memtable to flush, and ingested into
        an empty database no compaction (a batch load of a 2 GB savepoint flushed and
        compacted it all)."""
        folder = os.path.join(self.instance_dir, f"load-{uuid.uuid4().hex[:8]}")
        runs: dict[str, SstRuns] = {}
        try:
            for kg, name, kind, entries, deleted in state.read_packed_keyed_state(
                    storage, handle, key_groups):
                self._check_cancelled()
                if name not in runs:
                    self.table(name, kind).drop_cache()
                    runs[name] = SstRuns(os.path.join(folder, str(len(runs))), self.options)
                prefix = kg_prefix(kg)
                runs[name].add([(prefix + k, v) for k, v in entries],
                               [prefix + k for k in deleted])
            _ingest(self.tables, [(name, r.finish()) for name, r in runs.items()])
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def freeze(self, reset_changes: bool = True) -> dict[str, tuple[str, dict[Any, Any]]]:
        """The whole state as dicts (materialised: for tests and small states only; the
        task snapshots with :meth:`checkpoint` and :meth:`savepoint_sections`)."""
        frozen = {}
        for name, t in self.tables.items():
            entries = dict(t.decoded_items())
            if name in self.expiring:
                entries = self.expiring[name].live(entries)[0]
            frozen[name] = (t.kind, entries)
        return frozen

    def freeze_delta(self) -> Any:
        raise NotImplementedError("the rocksdb backend checkpoints by SST files")

    def num_keys(self) -> int:
        return sum(len(t) for t in self.tables.values())

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self, checkpoint_id: int) -> LocalCheckpoint:
        """Synchronous part: the dirty entries in one batch; the RocksDB checkpoint is then
        made on a thread (see the module docstring), ``upload`` waits for it."""
        self._pace_write_behind()
        self.flush()
        path = os.path.join(self.base, f"chk-{checkpoint_id}-{self.instance}")
        shutil.rmtree(path, ignore_errors=True)
        local = LocalCheckpoint(checkpoint_id, path, dict(self.kinds), self.key_groups)
        self._creating = local
        cfs = [t._cf for t in self.tables.values()]
        threading.Thread(target=self._create, args=(local, cfs), daemon=True,
                         name=f"rocksdb-checkpoint-{checkpoint_id}").start()
        return local

    def _create(self, local: LocalCheckpoint, cfs: list[Any]) -> None:
        """On its own thread: flush the memtables (RocksDB waits without the GIL), then the
        checkpoint (its own flush finds nothing left to write: hard links only)."""
        try:
            for cf in cfs:
                cf.flush(True)
            # Memtables flushed, the checkpoint folder not made yet; the task goes on.
            faults.point("worker.during-rocksdb-checkpoint", self.label)
            Checkpoint(self.db).create_checkpoint(local.path)
        except Exception as err:  # noqa: BLE001 - the upload reports it (a declined checkpoint)
            local.error = err
        finally:
            local.created.set()

    def upload(self, storage: Any, local: LocalCheckpoint, private_prefix: str,
               shared_prefix: str) -> dict[str, Any]:
        """Asynchronous part: new SST files to ``shared_prefix``, small files to
        ``private_prefix``; the handle's ``rocksdb`` entry. Runs off the processing thread
        (uploads of one subtask run one at a time, in checkpoint order)."""
        local.wait_created()
        if local.error is not None:
            raise RuntimeError(f"the RocksDB checkpoint {local.checkpoint_id} failed: "
                               f"{local.error}") from local.error
        files, uploaded = [], 0
        for name in sorted(os.listdir(local.path)):
            path = os.path.join(local.path, name)
            if name.endswith(".sst"):
                known = self.uploaded.get(name)
                if known is not None and known["size"] == os.path.getsize(path):
                    files.append(known)
                    continue
                key = f"{shared_prefix}-{self.instance}-{name}"
            else:
                key = f"{private_prefix}/{name}"
            entry = {"name": name, "key": key, "size": os.path.getsize(path),
                     "sha256": _sha256_file(path)}
            _put_file(storage, key, path)
            uploaded += entry["size"]
            files.append(entry)
        # A file compacted away never comes back: remember only the live ones.
        self.uploaded = {f["name"]: f for f in files if f["name"].endswith(".sst")}
        self.prune_local_checkpoints(local.checkpoint_id)
        return {"format": FORMAT, "instance": self.instance,
                "checkpoint_id": local.checkpoint_id, "local": os.path.basename(local.path),
                "key_groups": [local.key_groups.start, local.key_groups.stop],
                "tables": local.tables, "files": files, "uploaded": uploaded,
                "state_size": sum(f["size"] for f in files)}

    def savepoint(self) -> LocalCheckpoint:
        """Synchronous part of a savepoint: a RocksDB checkpoint to iterate off the loop."""
        self.flush()
        path = os.path.join(self.instance_dir, f"sp-{uuid.uuid4().hex[:12]}")
        Checkpoint(self.db).create_checkpoint(path)
        local = LocalCheckpoint(0, path, dict(self.kinds), self.key_groups)
        local.created.set()
        return local

    def savepoint_sections(self, local: LocalCheckpoint,
                           ) -> Iterator[tuple[int, state.PackedSection]]:
        """The canonical sections of a savepoint's checkpoint, in key-group order; the
        folder is removed afterwards. Each key group of each state is read by one iterator
        bounded to it, and its keys (without their key-group prefix) and values go into the
        section as the bytes they are (``state.pack_section``): nothing decoded, except in
        TTL states, whose expired entries are left out."""
        try:
            with _opened(local.path) as db:
                cfs = [(name, kind, db.get_column_family(name))
                       for name, kind in local.tables.items()]
                heads = {name: _first_group(cf, 0) for name, _, cf in cfs}
                while any(h is not None for h in heads.values()):
                    kg = min(h for h in heads.values() if h is not None)
                    tables = []
                    for name, kind, cf in cfs:
                        if heads[name] != kg:
                            continue
                        n, keys, values = self._packed_group(name, cf, kg)
                        heads[name] = _first_group(cf, kg + 1)
                        if n:
                            tables.append((name, kind, n, keys, values))
                    if tables:
                        yield kg, state.pack_section(tables)
                        # One key group of the canonical file written, not all.
                        faults.point("worker.during-savepoint-write", self.label)
        finally:
            shutil.rmtree(local.path, ignore_errors=True)

    def _packed_group(self, name: str, cf: Any, kg: int) -> tuple[int, bytes, bytes]:
        """How many entries key group ``kg`` of a state has, their packed keys concatenated
        and their packed values concatenated (``state.pack_section``'s columns)."""
        bound = ReadOptions()
        bound.set_iterate_upper_bound(kg_prefix(kg + 1))
        items = cf.items(from_key=kg_prefix(kg), read_opt=bound)
        if name not in self.expiring:
            keys, values = [], []
            for k, v in items:
                keys.append(k[2:])
                values.append(v)
            return len(keys), b"".join(keys), b"".join(values)
        raw = {}
        decoded = {}
        for k, v in items:
            key = _unpack_key(k)
            raw[key] = k[2:]
            decoded[key] = _unpack_value(v)
        live = self.expiring[name].live(decoded)[0]
        pack = msgpack.Packer(use_bin_type=True).pack  # not the processing thread's
        return (len(live), b"".join([raw[k] for k in live]),
                b"".join([pack(v) for v in live.values()]))

    def drop_local(self, local: LocalCheckpoint) -> None:
        local.created.wait(CREATE_TIMEOUT_S)  # its thread may still write the folder
        shutil.rmtree(local.path, ignore_errors=True)

    # -- restore ---------------------------------------------------------------------------

    def restore(self, storage: Any, handles: list[dict[str, Any]],
                shared_prefix: str | None = None) -> None:
        """Open the state of ``handles`` (``rocksdb`` entries of any parallelism) for this
        subtask's key groups (see the module docstring). SST files already under
        ``shared_prefix`` (the job's own shared folder, when restoring its own checkpoint)
        are not uploaded again; those of another job id are (that job's files are deleted
        once this job has a checkpoint of its own)."""
        self._writable()
        own = self.key_groups
        parts = [h for h in handles
                 if max(h["key_groups"][0], own.start) < min(h["key_groups"][1], own.stop)]
        if not parts:
            return
        for name, kind in itertools.chain.from_iterable(p["tables"].items() for p in parts):
            self.table(name, kind)
        for t in self.tables.values():
            t.drop_cache()
        first = parts[0]
        if len(parts) == 1 and first["key_groups"][0] <= own.start \
                and own.stop <= first["key_groups"][1]:
            # One old database holds all our key groups: open it (clipped if it holds more).
            self._close_db()
            shutil.rmtree(self.db_path)
            self._fetch(storage, first, self.db_path)
            self._open(self.db_path)
            lo, hi = kg_prefix(own.start), kg_prefix(own.stop)
            if (first["key_groups"][0], first["key_groups"][1]) != (own.start, own.stop):
                faults.point("worker.before-rocksdb-clip", self.label)
                for t in self.tables.values():
                    t._cf.delete_range(b"\x00\x00", lo)
                    t._cf.delete_range(hi, kg_prefix(0xFFFF) + b"\xff")
            # Its files are in storage already (until compaction replaces them).
            if shared_prefix is not None:
                self.uploaded = {f["name"]: f for f in first["files"]
                                 if f["name"].endswith(".sst")
                                 and f["key"].startswith(shared_prefix)}
        else:
            for part in parts:
                self._copy_range(storage, part)
        self.restored()

    def restored(self) -> None:
        """After a restore: states small enough to fit in half the cache are loaded whole
        (their misses need no RocksDB read)."""
        for t in self.tables.values():
            t.fill()

    def _fetch(self, storage: Any, part: dict[str, Any], dest: str) -> None:
        """The files of checkpoint ``part`` into ``dest``, verified: hard links from the
        local checkpoint folder when it matches, else downloads."""
        os.makedirs(dest, exist_ok=True)
        local = os.path.join(self.base, part.get("local", "")) if part.get("local") else None
        for f in part["files"]:
            self._check_cancelled()
            target = os.path.join(dest, f["name"])
            mine = os.path.join(local, f["name"]) if local is not None else None
            if mine is not None and _matches(mine, f):
                if f["name"].endswith(".sst"):
                    os.link(mine, target)
                else:  # RocksDB may rewrite these: a copy, not a link
                    shutil.copyfile(mine, target)
            else:
                if mine is not None and os.path.exists(mine):
                    log.warning("%s: local file %s does not match %s (size or sha256): "
                                "downloading it", self.label, mine, f["key"])
                data = storage.get(f["key"])
                if len(data) != f["size"] or hashlib.sha256(data).hexdigest() != f["sha256"]:
                    raise CorruptStateError(f"{f['key']} does not match its checksum")
                with open(target, "wb") as out:
                    out.write(data)
            faults.point("worker.during-rocksdb-fetch", self.label)  # after each file

    def _copy_range(self, storage: Any, part: dict[str, Any]) -> None:
        """Copy our key groups out of an old database into ours (raw bytes, no decoding):
        read in key order into SST files that RocksDB ingests (no write batch, no flush)."""
        tmp = os.path.join(self.instance_dir, f"restore-{uuid.uuid4().hex[:8]}")
        try:
            self._fetch(storage, part, tmp)
            lo, hi = kg_prefix(self.key_groups.start), kg_prefix(self.key_groups.stop)
            written = []
            with _opened(tmp) as old:
                for i, name in enumerate(part["tables"]):
                    bound = ReadOptions()
                    bound.set_iterate_upper_bound(hi)
                    items = old.get_column_family(name).items(from_key=lo, read_opt=bound)
                    runs = SstRuns(os.path.join(tmp, f"copy-{i}"), self.options)
                    while chunk := list(itertools.islice(items, COPY_BATCH)):
                        self._check_cancelled()
                        runs.add(chunk)
                    written.append((name, runs.finish()))
            _ingest(self.tables, written)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class SstRuns:
    """SST files of one column family, written from batches of entries in any order for
    ``ingest_external_file``. Each batch is sorted in RocksDB's order (bytewise; a deletion
    is a ``None`` value). A file goes on while batches come in ascending key order (the key
    groups of a state file) up to ``limit`` bytes; a batch that starts at or before the
    file's last key (a later file of an incremental chain) starts a new *run*. :meth:`finish`
    returns the runs, each a list of files with disjoint, ascending key ranges (one ingest),
    to be ingested in order: an entry of a later run wins over an earlier one's."""

    def __init__(self, folder: str, options: Options, limit: int = SST_FILE_BYTES):
        self.folder, self.options, self.limit = folder, options, limit
        self.runs: list[list[str]] = []
        self._writer: Any = None
        self._last: bytes | None = None

    def add(self, puts: list[tuple[bytes, bytes]], deletes: Iterable[bytes] = ()) -> None:
        items: list[tuple[bytes, bytes | None]]
        if deletes:
            merged: dict[bytes, bytes | None] = dict(puts)
            merged.update(dict.fromkeys(deletes))  # deleted after its puts, as in a batch
            items = sorted(merged.items())
        else:
            items = sorted(puts)  # a no-op's cost when they come sorted (from rocksdb)
        if not items:
            return
        if self._last is None or items[0][0] <= self._last:
            self._close()
            self.runs.append([])
        if self._writer is None:
            os.makedirs(self.folder, exist_ok=True)
            path = os.path.join(self.folder, f"{sum(map(len, self.runs)):06d}.sst")
            self._writer = SstFileWriter(self.options)
            self._writer.open(path)
            self.runs[-1].append(path)
        writer = self._writer
        for k, v in items:
            if v is None:
                del writer[k]
            else:
                writer[k] = v
        self._last = items[-1][0]
        if writer.file_size() >= self.limit:
            self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.finish()
            self._writer = None

    def finish(self) -> list[list[str]]:
        self._close()
        return [run for run in self.runs if run]


class LocalCheckpoint:
    """A RocksDB checkpoint on local disk, waiting for its asynchronous part; ``created`` is
    set once its folder is complete (or its making failed: ``error``)."""

    __slots__ = ("checkpoint_id", "path", "tables", "key_groups", "created", "error")

    def __init__(self, checkpoint_id: int, path: str, tables: dict[str, str],
                 key_groups: range):
        self.checkpoint_id, self.path, self.tables = checkpoint_id, path, tables
        self.key_groups = key_groups
        self.created = threading.Event()
        self.error: Exception | None = None

    def wait_created(self) -> None:
        """Until its thread has made it (or failed: ``error``); a RuntimeError after
        ``CREATE_TIMEOUT_S`` (a hung disk fails the task rather than waiting for ever)."""
        if not self.created.wait(CREATE_TIMEOUT_S):
            raise RuntimeError(f"the RocksDB checkpoint {self.checkpoint_id} was not made "
                               f"within {CREATE_TIMEOUT_S:.0f} s")


def _matches(path: str, f: dict[str, Any]) -> bool:
    try:
        return os.path.getsize(path) == f["size"] and _sha256_file(path) == f["sha256"]
    except OSError:
        return False


def _put_file(storage: Any, key: str, path: str) -> None:
    with open(path, "rb") as f:
        put_file = getattr(storage, "put_file", None)
        if put_file is not None:
            put_file(key, f)
        else:
            storage.put(key, f.read())


def _ingest(tables: dict[str, RocksDBTable], written: list[tuple[str, list[list[str]]]],
            ) -> None:
    """Ingest ``SstRuns.finish()``'s runs of each state into its column family, in order;
    the files are moved (hard-linked), not copied."""
    ingest = IngestExternalFileOptions()
    ingest.set_move_files(True)
    for name, runs in written:
        for run in runs:
            tables[name]._cf.ingest_external_file(run, ingest)


def _first_group(cf: Any, kg: int) -> int | None:
    """The first key group from ``kg`` on with a key in column family ``cf``, or None."""
    for k in cf.keys(from_key=kg_prefix(kg)):
        return int.from_bytes(k[:2], "big")
    return None


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Any]:
    """A checkpoint folder opened read-only (its own instance: never our database)."""
    opt = Options(raw_mode=True)
    names = Rdict.list_cf(path, opt)
    db = Rdict(path, opt, column_families={n: Options(raw_mode=True) for n in names
                                           if n != DEFAULT_CF},
               access_type=AccessType.read_only())
    try:
        yield db
    finally:
        db.close()
