"""The rocksdb keyed state backend: the write-back cache, checkpoints by SST file, restore at
the same and at another parallelism, local recovery, corruption, canonical savepoints."""

from __future__ import annotations

import os
import shutil

import pytest

from streamjob import checkpoints as ckpt
from streamjob import state
from streamjob.keygroups import key_group, key_group_range
from streamjob.operators import CountOperator, KeyedContext, KeyedStateBackend
from streamjob.rocksdb_backend import (
    WRITE_BEHIND_PAUSE,
    RocksDBKeyedStateBackend,
    SstRuns,
    subtask_dir,
    write_behind_pause,
)
from streamjob.storage import LocalStorage, NotFoundError

M = 128


class CountingStorage(LocalStorage):
    """Real local storage that counts whole-object reads (downloads)."""

    def __init__(self, root):
        super().__init__(root)
        self.gets = 0

    def get(self, key):
        self.gets += 1
        return super().get(key)


@pytest.fixture
def opened():
    backends = []
    yield backends
    for b in backends:
        b.close()


def rocks(tmp_path, opened, subtask=0, p=1, name="t1", **kw):
    b = RocksDBKeyedStateBackend(subtask_dir(str(tmp_path / "local"), "job", name, subtask),
                                 key_group_range(subtask, p, M), M, block_cache_mb=8,
                                 write_buffer_mb=4, **kw)
    opened.append(b)
    return b


def fill(backend, keys, start=0):
    """Counts (value state) and a map state per key, through the operators' interface."""
    ctx = KeyedContext(backend)
    count, seen = ctx.value_state("count", 0), ctx.map_state("seen")
    for i, k in enumerate(keys, start):
        ctx.key = k
        count.update(count.value() + 1)
        seen.put(i % 3, [k, i])
    return ctx


def contents(backend):
    return {name: dict(t.decoded_items()) for name, t in backend.tables.items()}


def checkpoint(backend, storage, cid, job="job", subtask=0):
    local = backend.checkpoint(cid)
    return backend.upload(storage, local, f"{job}/chk-{cid}/t1/{subtask}-x-rocksdb",
                          f"{job}/shared/t1/{subtask}")


def test_the_cache_stays_within_its_bound_and_loses_no_update(tmp_path, opened):
    backend = rocks(tmp_path, opened, cache_entries=500)
    op = CountOperator(backend, lambda r: r)
    keys = [f"k{i}" for i in range(3000)]
    for _ in range(5):
        for i in range(0, len(keys), 700):
            op.process_batch(keys[i:i + 700])
            backend.trim()  # the task trims between batches
            assert dict.__len__(backend.tables["count"]) <= 500
    assert contents(backend)["count"] == {k: 5 for k in keys}
    assert len(backend.tables["count"]) == 3000


def test_write_behind_leaves_the_barrier_its_bound_and_the_checkpoint_exact(tmp_path,
                                                                             opened):
    storage = LocalStorage(tmp_path / "store")
    backend = rocks(tmp_path, opened, cache_entries=1600)
    assert backend.write_behind == 100
    op = CountOperator(backend, lambda r: r)
    keys = [f"k{i}" for i in range(1000)]
    op.process_batch(keys)
    backend.trim()
    assert len(backend.dirty) == 1000  # no checkpoint yet: nothing written behind
    checkpoint(backend, storage, 1)
    for i in range(0, 1000, 40):  # every key changed once, 40 per batch
        op.process_batch(keys[i:i + 40])
        backend.trim()
        assert len(backend.dirty) <= 100
    at_barrier = contents(backend)
    assert at_barrier["count"] == dict.fromkeys(keys, 2)
    assert backend.flush() <= 100  # the barrier's synchronous write
    part = checkpoint(backend, storage, 2)
    op.process_batch(keys[:500])  # after the barrier: not in the checkpoint
    backend.trim()
    restored = rocks(tmp_path, opened, name="t2")
    restored.restore(storage, [part])
    assert contents(restored) == at_barrier


def test_write_behind_pauses_after_an_interval_of_hot_keys(tmp_path, opened):
    storage = LocalStorage(tmp_path / "store")
    backend = rocks(tmp_path, opened, cache_entries=1600)
    op = CountOperator(backend, lambda r: r)
    hot = [f"h{i}" for i in range(300)]

    def interval(rounds=3):
        for _ in range(rounds):
            for i in range(0, 300, 60):
                op.process_batch(hot[i:i + 60])
                backend.trim()

    checkpoint(backend, storage, 1)
    interval()  # written behind, changed again, written behind again...
    assert len(backend.dirty) <= 100
    checkpoint(backend, storage, 2)  # most of what was written behind changed again
    interval()
    assert len(backend.dirty) == 300  # paused: each hot key written once, at the barrier
    checkpoint(backend, storage, 3)
    interval()
    assert len(backend.dirty) <= 100  # tried again
    checkpoint(backend, storage, 4)  # hot again: paused twice as long
    for cid in (5, 6):
        interval()
        assert len(backend.dirty) == 300
        checkpoint(backend, storage, cid)
    interval()
    assert len(backend.dirty) <= 100
    assert contents(backend)["count"] == dict.fromkeys(hot, 18)


def test_write_behind_pause():
    assert write_behind_pause(1000, 250, 0) == 0  # a quarter changed again: fine
    assert write_behind_pause(1000, 251, 0) == 1
    assert write_behind_pause(1000, 900, 1) == 2
    assert write_behind_pause(1000, 900, 4) == 8
    assert write_behind_pause(1000, 900, WRITE_BEHIND_PAUSE) == WRITE_BEHIND_PAUSE
    assert write_behind_pause(1000, 10, 8) == 0  # cold again: no pause


def test_table_behaves_like_a_dict(tmp_path, opened):
    backend = rocks(tmp_path, opened)
    t = backend.table("v", "value")
    t["a"], t[("x", 1)], t[7] = 1, [1, 2], {"m": 1}
    backend.mark_dirty(["a", ("x", 1), 7])  # what every writer does (ctx.touch)
    assert t.get("a") == 1 and t.get("nope", 5) == 5 and "a" in t and "nope" not in t
    assert t[("x", 1)] == [1, 2]
    with pytest.raises(KeyError):
        t["nope"]
    assert t.pop("a") == 1 and t.pop("a", None) is None and "a" not in t
    del t[7]
    with pytest.raises(KeyError):
        del t[7]
    assert t.setdefault("s", 3) == 3 and t.setdefault("s", 4) == 3
    backend.mark_dirty(["s"])
    assert dict(t.items()) == {("x", 1): [1, 2], "s": 3} and len(t) == 2 and bool(t)
    t.backend.flush()
    t.drop_cache()  # from disk now
    assert t[("x", 1)] == [1, 2] and "a" not in t and sorted(map(str, t)) == ["('x', 1)", "s"]


def test_keys_are_prefixed_by_their_key_group(tmp_path, opened):
    backend = rocks(tmp_path, opened)
    fill(backend, ["a", "b", ("t", 3)])
    backend.flush()
    raw = list(backend.tables["count"]._cf.keys())
    assert sorted(raw) == raw
    assert {int.from_bytes(k[:2], "big") for k in raw} == {key_group(k, M)
                                                          for k in ["a", "b", ("t", 3)]}


def test_every_kind_of_key_is_prefixed_by_the_key_group_the_router_gives_it(tmp_path,
                                                                             opened):
    class Word(str):
        pass

    backend = rocks(tmp_path, opened)
    # (msgpack packs integers from -2**63 to 2**64 - 1)
    keys = ["", "a", "é", Word("a"), 0, 1, -1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1,
            True, False, 1.5, b"x", None, ("t", 3), ("t", (1, "u"))]
    keys += [i * 7919 for i in range(2000)] + [f"w{i}" for i in range(2000)]
    for k in keys:
        backend._encoded.clear()
        first = backend.encode_key(k)
        assert int.from_bytes(first[:2], "big") == key_group(k, M), k
        assert backend.encode_key(k) == first  # memoised: the same bytes


def test_checkpoint_restores_the_same_state_and_uploads_only_new_files(tmp_path, opened):
    storage = CountingStorage(tmp_path / "store")
    backend = rocks(tmp_path, opened)
    keys = [f"k{i}" for i in range(20_000)]
    fill(backend, keys)
    first = checkpoint(backend, storage, 1)
    ssts = [f for f in first["files"] if f["name"].endswith(".sst")]
    assert ssts and all(f["key"].startswith("job/shared/t1/0-") for f in ssts)
    assert first["uploaded"] == first["state_size"]
    fill(backend, keys[:100])  # 0.5 % of the keys change
    second = checkpoint(backend, storage, 2)
    assert second["uploaded"] < second["state_size"] / 5  # only the new SST files
    assert {f["key"] for f in ssts} <= {f["key"] for f in second["files"]}
    handle = {"format": 1, "rocksdb": second}
    assert {f["key"] for f in second["files"]} == ckpt.handle_keys(handle)

    expected = contents(backend)
    backend.close()
    shutil.rmtree(tmp_path / "local")  # another node: nothing local, download
    restored = rocks(tmp_path, opened)
    restored.restore(storage, [second])
    assert contents(restored) == expected
    assert storage.gets == len(second["files"])


def test_local_recovery_reuses_local_files_that_match(tmp_path, opened):
    storage = CountingStorage(tmp_path / "store")
    backend = rocks(tmp_path, opened)
    fill(backend, [f"k{i}" for i in range(5000)])
    part = checkpoint(backend, storage, 1)
    expected = contents(backend)
    # A second attempt of the same subtask while the first is still open (they overlap).
    again = rocks(tmp_path, opened)
    again.restore(storage, [part])
    assert contents(again) == expected
    assert storage.gets == 0  # every file came from the local checkpoint
    assert again.db_path != backend.db_path
    fill(again, ["new"])  # each attempt writes its own database
    assert "new" not in backend.tables["count"]


def test_checkpoints_after_changes_spread_over_all_keys_upload_only_what_changed(tmp_path,
                                                                                 opened):
    """Every flushed file overlaps every key; a compaction that rewrote the database between
    two checkpoints (leveled compaction did, every few checkpoints) uploads all of it again."""
    storage = LocalStorage(tmp_path / "store")
    backend = rocks(tmp_path, opened)
    keys = [f"k{i}" for i in range(20_000)]
    fill(backend, keys)
    state_size = checkpoint(backend, storage, 1)["state_size"]
    uploads = []
    for cid in range(2, 14):
        fill(backend, keys[cid::100])  # 1 % of the keys, spread over all of them
        uploads.append(checkpoint(backend, storage, cid)["uploaded"])
    assert max(uploads) < state_size / 5, [u / state_size for u in uploads]


def test_a_restored_database_uploads_only_files_its_own_job_does_not_have(tmp_path, opened):
    storage = LocalStorage(tmp_path / "store")
    backend = rocks(tmp_path, opened)
    fill(backend, [f"k{i}" for i in range(5000)])
    part = checkpoint(backend, storage, 1)
    own = rocks(tmp_path, opened)
    own.restore(storage, [part], "job/shared/")  # its own checkpoint: files reused
    fill(own, ["new"])
    assert checkpoint(own, storage, 2)["uploaded"] < part["uploaded"] / 2
    other = rocks(tmp_path, opened)
    other.restore(storage, [part], "another-job/shared/")  # a new job id: uploads its own
    fill(other, ["new"])
    again = checkpoint(other, storage, 3, job="another-job")
    assert again["uploaded"] >= part["uploaded"]
    assert all(f["key"].startswith("another-job/") for f in again["files"])


def test_a_dead_attempts_folder_is_removed(tmp_path, opened):
    first = rocks(tmp_path, opened)
    stale = first.instance_dir
    first._close_db()
    first._lock.close()  # as if its process died: nobody holds the lock
    rocks(tmp_path, opened)
    assert not os.path.exists(stale)


def checkpoint_without_local_files(tmp_path, opened, storage) -> dict:
    """A checkpoint of 3,000 keys in ``storage``, its database closed and its local folder
    gone (a restore must download every file)."""
    backend = rocks(tmp_path, opened)
    fill(backend, [f"k{i}" for i in range(3000)])
    part = checkpoint(backend, storage, 1)
    backend.close()
    shutil.rmtree(tmp_path / "local")
    return part


def test_a_corrupt_or_missing_sst_file_is_not_restored(tmp_path, opened):
    storage = LocalStorage(tmp_path / "store")
    part = checkpoint_without_local_files(tmp_path, opened, storage)
    sst = next(f for f in part["files"] if f["name"].endswith(".sst"))
    path = storage._path(sst["key"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(state.CorruptStateError):
        rocks(tmp_path, opened).restore(storage, [part])
    path.unlink()
    with pytest.raises(NotFoundError):
        rocks(tmp_path, opened).restore(storage, [part])


@pytest.mark.parametrize("old_p, new_p", [(2, 3), (2, 4), (3, 2), (2, 1)])
def test_restore_at_another_parallelism_moves_exactly_the_key_groups(tmp_path, opened,
                                                                     old_p, new_p):
    storage = LocalStorage(tmp_path / "store")
    keys = [f"k{i}" for i in range(4000)] + [("t", i) for i in range(500)]
    parts, expected = [], {}
    for i in range(old_p):
        kgs = key_group_range(i, old_p, M)
        b = rocks(tmp_path, opened, i, old_p, name="old")
        fill(b, [k for k in keys if key_group(k, M) in kgs])
        for name, entries in contents(b).items():
            expected.setdefault(name, {}).update(entries)
        parts.append(checkpoint(b, storage, 1, subtask=i))
    got: dict = {}
    for j in range(new_p):
        b = rocks(tmp_path, opened, j, new_p, name="new")
        b.restore(storage, parts)
        mine = key_group_range(j, new_p, M)
        for name, entries in contents(b).items():
            assert all(key_group(k, M) in mine for k in entries), name
            got.setdefault(name, {}).update(entries)
    assert got == expected


def test_savepoints_are_canonical_both_ways(tmp_path, opened):
    storage = LocalStorage(tmp_path / "store")
    backend = rocks(tmp_path, opened)
    fill(backend, [f"k{i}" for i in range(3000)] + [("t", 1)])
    expected = contents(backend)
    # rocksdb -> canonical file -> memory backend at parallelism 2
    handle = state.write_snapshot_sections(storage, "job/sp/t1/0",
                                           backend.savepoint_sections(backend.savepoint()),
                                           {"splits": {}})
    assert not [n for n in os.listdir(backend.instance_dir) if n.startswith("sp-")]
    memory: dict = {}
    for j in range(2):
        for name, _kind, entries, _deleted in state.read_keyed_state(
                storage, handle, key_group_range(j, 2, M)):
            memory.setdefault(name, {}).update(entries)
    assert memory == expected
    # memory -> canonical file -> rocksdb
    mem = KeyedStateBackend()
    for name, entries in expected.items():
        mem.table(name, backend.kinds[name]).update(entries)
    handle = state.write_snapshot(storage, "job/sp/t1/1", mem.freeze(), None,
                                  lambda k: key_group(k, M))
    again = rocks(tmp_path, opened, name="t2")
    for name, kind, entries, deleted in state.read_keyed_state(storage, handle, range(M)):
        again.load(name, kind, entries, deleted)
    assert contents(again) == expected
    # memory file -> rocksdb by bulk load, at parallelism 3: exactly the key groups
    got: dict = {}
    for j in range(3):
        part = rocks(tmp_path, opened, j, 3, name="t3")
        part.load_state_file(storage, handle, part.key_groups)
        for name, entries in contents(part).items():
            assert all(key_group(k, M) in part.key_groups for k in entries), name
            assert not set(entries) & set(got.get(name, {}))
            got.setdefault(name, {}).update(entries)
    assert got == expected


def test_ttl_clean_up_walks_a_large_state_a_chunk_at_a_time(tmp_path, opened):
    from streamjob.ttl import WALK_CHUNK, StateTtlConfig

    class Clock:
        now = 0

        def __call__(self):
            return self.now

    backend, clock = rocks(tmp_path, opened), Clock()
    ctx = KeyedContext(backend, clock=clock)
    s = ctx.value_state("v", None, ttl=StateTtlConfig(1, cleanup_size=500))
    keys = [f"k{i}" for i in range(3 * WALK_CHUNK)]
    for k in keys:
        ctx.key = k
        s.update(1)
    clock.now = 5000  # every entry expired; each access checks 500 more keys
    ctx.key = "fresh"
    walked = []
    for _ in range(len(keys) // 500 + 2):
        s.update(2)
        walked.append(len(backend.expiring["v"]._walk))
    assert max(walked) <= WALK_CHUNK  # never the whole table's keys at once
    assert dict(backend.tables["v"].decoded_items()).keys() == {"fresh"}


def _decoded_sections(backend):
    """The canonical sections of ``backend`` built from decoded entries in key order (what
    savepoints wrote before their bytes were passed through), expired TTL entries out."""
    by_kg: dict = {}
    for name, t in backend.tables.items():
        entries = dict(t.decoded_items())
        if name in backend.expiring:
            entries = backend.expiring[name].live(entries)[0]
        for k in sorted(entries, key=backend.encode_key):
            keys, values = by_kg.setdefault(key_group(k, M), {}).setdefault(name, ([], []))
            keys.append(k)
            values.append(entries[k])
    return [(kg, [(name, backend.kinds[name], ks, vs) for name, (ks, vs) in tables.items()])
            for kg, tables in sorted(by_kg.items())]


def test_a_savepoint_is_byte_for_byte_the_file_of_its_decoded_entries(tmp_path, opened):
    from streamjob.ttl import StateTtlConfig

    class Clock:
        now = 1_000_000

        def __call__(self):
            return self.now

    storage = LocalStorage(tmp_path / "store")
    backend = rocks(tmp_path, opened)
    ctx = fill(backend, [f"k{i}" for i in range(2000)] + [("t", i, 0.5) for i in range(300)]
               + list(range(-50, 50)) + [b"\x00raw"])
    clock = Clock()
    ctx.clock = clock
    ttl = ctx.value_state("ttl", None, ttl=StateTtlConfig(1, cleanup_size=0))
    for i in range(300):
        ctx.key = f"k{i}"
        ttl.update({"i": i, "f": 1.25})
        if i == 149:
            clock.now += 600
    clock.now += 500  # the first 150 expired, the others live
    expected = _decoded_sections(backend)
    assert sum(len(ks) for _, secs in expected for n, _, ks, _ in secs if n == "ttl") == 150
    handle = state.write_snapshot_sections(storage, "sp/packed",
                                           backend.savepoint_sections(backend.savepoint()),
                                           {"splits": {}})
    decoded = state.write_snapshot_sections(storage, "sp/decoded", iter(expected),
                                            {"splits": {}})
    assert storage.get("sp/packed") == storage.get("sp/decoded")
    assert handle["keys"] == decoded["keys"] == 2401 * 2 + 150


def test_sst_runs_sort_each_batch_and_start_a_run_where_keys_go_back(tmp_path, opened):
    big = os.urandom(10_000)  # over a block, incompressible: the file's size grows by it
    runs = SstRuns(str(tmp_path / "sst"), rocks(tmp_path, opened).options, limit=5_000)
    runs.add([(b"\x00\x03b", b"1"), (b"\x00\x03a", b"2")])    # unsorted: sorted
    runs.add([(b"\x00\x04a", big), (b"\x00\x04b", big)])       # after: same file
    runs.add([])                                                  # nothing: no file
    runs.add([(b"\x00\x05a", b"5"), (b"\x00\x05b", b"3")])     # over the limit: a file
    runs.add([(b"\x00\x03a", b"4")], [b"\x00\x05a"])           # back: a new run
    files = runs.finish()
    assert [len(run) for run in files] == [2, 1]
    assert all(os.path.exists(f) for run in files for f in run)
    # Ingested run after run, the later run wins (the put and the deletion).
    target = rocks(tmp_path, opened, name="t2")
    t = target.table("s", "value")
    from rocksdict import IngestExternalFileOptions
    for run in files:
        t._cf.ingest_external_file(run, IngestExternalFileOptions())
    assert dict(t._cf.items()) == {b"\x00\x03a": b"4", b"\x00\x03b": b"1",
                                   b"\x00\x04a": big, b"\x00\x04b": big,
                                   b"\x00\x05b": b"3"}


def test_a_memory_checkpoint_chain_bulk_loads_as_a_batch_load_does(tmp_path, opened):
    storage = LocalStorage(tmp_path / "store")
    kg = lambda k: key_group(k, M)  # noqa: E731
    mem = KeyedStateBackend(track_changes=True)
    t, m = mem.table("count", "value"), mem.table("seen", "map")
    for i in range(3000):
        t[f"k{i}"], m[("t", i)] = i, {"x": i}
    chain = [state.write_snapshot(storage, "base", mem.freeze(), None, kg)]
    for step in range(2):
        changed = [f"k{i}" for i in range(step, 3000, 7)]
        for k in changed:
            t[k] = t.get(k, 0) + 1
        gone = [f"k{i}" for i in range(step + 1, 3000, 11)]
        for k in gone:
            t.pop(k, None)
        t[f"new{step}"] = step
        mem.mark_dirty([*changed, *gone, f"new{step}"])
        chain.append(state.write_snapshot(storage, f"d{step}", mem.freeze_delta(), None, kg))
    top = dict(chain[-1], chain=chain[:-1])
    bulk = rocks(tmp_path, opened, name="bulk")
    bulk.load_state_file(storage, top, range(M))
    batch = rocks(tmp_path, opened, name="batch")
    for name, kind, entries, deleted in state.read_keyed_state(storage, top, range(M)):
        batch.load(name, kind, entries, deleted)
    assert contents(bulk) == contents(batch) == {"count": dict(t), "seen": dict(m)}
    assert bulk.kinds == {"count": "value", "seen": "map"}
    # The base landed below the memtable and level 0: nothing there for compaction to merge.
    assert bulk.db.property_int_value("rocksdb.num-files-at-level0") == 0
    assert not [n for n in os.listdir(bulk.instance_dir) if n.startswith("load-")]


def test_a_cancelled_restore_stops_at_its_next_file(tmp_path, opened):
    from streamjob.rocksdb_backend import RestoreCancelled

    storage = CountingStorage(tmp_path / "store")
    part = checkpoint_without_local_files(tmp_path, opened, storage)
    cancelled = rocks(tmp_path, opened)
    cancelled.cancelled = True  # the worker's cancel, from the event loop
    with pytest.raises(RestoreCancelled):
        cancelled.restore(storage, [part])
    assert storage.gets == 0


@pytest.fixture
def held(monkeypatch):
    """The RocksDB checkpoint is made only once the test sets this event (the thread that
    makes it waits first), so a test can act while it is being made."""
    import threading

    from streamjob import rocksdb_backend

    gate = threading.Event()
    make = rocksdb_backend.RocksDBKeyedStateBackend._create

    def gated(self, local, cfs):
        gate.wait(60)
        make(self, local, cfs)

    monkeypatch.setattr(rocksdb_backend.RocksDBKeyedStateBackend, "_create", gated)
    monkeypatch.setattr(rocksdb_backend, "CREATE_TIMEOUT_S", 2.0)  # a wrong wait fails fast
    yield gate
    gate.set()


def test_a_checkpoint_holds_the_state_at_its_barrier_while_the_task_goes_on(tmp_path, opened,
                                                                            held):
    storage = LocalStorage(tmp_path / "store")
    backend = rocks(tmp_path, opened, cache_entries=1000)
    keys = [f"k{i}" for i in range(3000)]
    fill(backend, keys)
    backend.trim()
    at_barrier = contents(backend)
    local = backend.checkpoint(1)
    # The task goes on while the checkpoint is made: no write reaches RocksDB, so trimming
    # neither waits (it would fail after CREATE_TIMEOUT_S) nor changes the checkpoint.
    op = CountOperator(backend, lambda r: r)
    for i in range(0, 1500, 300):
        op.process_batch(keys[i:i + 300])
        backend.trim()
    assert not local.created.is_set()
    assert 1000 < dict.__len__(backend.tables["count"]) <= 2000  # up to twice the bound
    held.set()
    part = backend.upload(storage, local, "job/chk-1/t1/0-x-rocksdb", "job/shared/t1/0")
    op.process_batch(keys[1500:2400])  # over twice the bound: written back now
    backend.trim()
    assert dict.__len__(backend.tables["count"]) <= 1000
    assert contents(backend)["count"] == {k: 1 + (i < 2400) for i, k in enumerate(keys)}
    backend.close()
    shutil.rmtree(tmp_path / "local")  # restored from storage
    restored = rocks(tmp_path, opened)
    restored.restore(storage, [part])
    assert contents(restored) == at_barrier


def test_a_write_while_a_checkpoint_is_made_waits_for_it_and_fails_if_it_never_is(
        tmp_path, opened, held):
    backend = rocks(tmp_path, opened)
    fill(backend, ["a", "b"])
    local = backend.checkpoint(1)
    fill(backend, ["c"])
    with pytest.raises(RuntimeError, match="not made within"):
        dict(backend.tables["count"].items())  # flushes first: a write
    held.set()
    assert local.created.wait(30)
    assert dict(backend.tables["count"].items()) == {"a": 1, "b": 1, "c": 1}


def test_a_checkpoint_that_could_not_be_made_is_declined_and_the_state_goes_on(
        tmp_path, opened, held):
    storage = LocalStorage(tmp_path / "store")
    backend = rocks(tmp_path, opened)
    fill(backend, ["a"])
    local = backend.checkpoint(1)
    os.makedirs(local.path)  # RocksDB refuses to make a checkpoint into an existing folder
    held.set()
    with pytest.raises(RuntimeError, match="checkpoint 1 failed"):
        backend.upload(storage, local, "job/chk-1/t1/0-x-rocksdb", "job/shared/t1/0")
    fill(backend, ["a", "b"])
    part = checkpoint(backend, storage, 2)
    backend.close()
    restored = rocks(tmp_path, opened)
    restored.restore(storage, [part])
    assert contents(restored)["count"] == {"a": 2, "b": 1}
