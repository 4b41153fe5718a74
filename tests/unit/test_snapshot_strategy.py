"""The snapshot strategies of the keyed state backends (snapshot_strategy.py and the
backends' own modules): what a snapshot holds is the state at the barrier, what it writes
restores to that state, incremental chains and their loss, and what a discarded snapshot
leaves behind."""

from __future__ import annotations

import os

import pytest

from streamjob import state
from streamjob.keygroups import key_group, key_group_range
from streamjob.memory_snapshot import IncrementalChain, MemorySnapshotStrategy
from streamjob.operators import KeyedStateBackend
from streamjob.rocksdb_backend import RocksDBKeyedStateBackend, subtask_dir
from streamjob.rocksdb_snapshot import RocksDBSnapshotStrategy
from streamjob.snapshot_strategy import NoKeyedState, SnapshotLocation
from streamjob.storage import LocalStorage

M = 128


def kg_of(key):
    return key_group(key, M)


def location(n: int, directory: str = "job/chk") -> SnapshotLocation:
    return SnapshotLocation.of("job", f"{directory}-{n}", "t1", 0, n, f"u{n}")


def memory(incremental: bool = False, max_deltas: int = 10) -> MemorySnapshotStrategy:
    backend = KeyedStateBackend(track_changes=incremental)
    backend.key_groups, backend.max_parallelism = range(M), M
    return MemorySnapshotStrategy(backend, kg_of, "t1[0]", incremental, max_deltas)


def restored_tables(storage, handle, strategy_of_backend) -> dict:
    """What a fresh memory backend holds after restoring ``handle``."""
    backend = KeyedStateBackend()
    strategy_of_backend(backend).restore(storage, handle, range(M), continue_chain=False)
    return backend.tables


def test_location_names_the_own_and_the_shared_file_alike():
    loc = SnapshotLocation.of("job", "job/chk-7", "t1", 2, 7, "abc")
    assert loc == SnapshotLocation("job/chk-7/t1/2-7-abc", "job/shared/t1/2-7-abc",
                                   "job/shared/t1/2")


def test_a_memory_snapshot_holds_the_state_at_the_barrier(tmp_path):
    storage, strategy = LocalStorage(tmp_path), memory()
    table = strategy.backend.table("count", "value")
    table.update({k: k for k in range(100)})
    snap = strategy.snapshot(1, savepoint=False)
    table[0] = "changed after the barrier"
    del table[1]
    handle = snap.upload(storage, location(1), {"splits": {"s": 3}})
    assert handle["key"] == "job/chk-1/t1/0-1-u1"
    assert snap.encoding == "thread" and snap.copied_bytes == 0
    assert snap.uploaded_bytes == handle["size"] == os.path.getsize(tmp_path / handle["key"])
    assert state.read_operator_state(storage, handle) == {"splits": {"s": 3}}
    restored = restored_tables(storage, handle, memory_of)
    assert restored["count"] == {k: k for k in range(100)}


def memory_of(backend):
    return MemorySnapshotStrategy(backend, kg_of, "t1[0]")


def test_incremental_checkpoints_chain_deltas_and_savepoints_stay_out(tmp_path):
    storage, strategy = LocalStorage(tmp_path), memory(incremental=True, max_deltas=1)
    backend = strategy.backend
    table = backend.table("count", "value")

    def put(**kv):
        for k, v in kv.items():
            table[k] = v
        backend.mark_dirty(kv)

    put(a=1, b=2)
    full = strategy.snapshot(1, savepoint=False).upload(storage, location(1), {})
    assert full["key"].startswith("job/shared/t1/") and "chain" not in full
    put(a=10)
    del table["b"]
    backend.mark_dirty(["b"])
    savepoint = strategy.snapshot(2, savepoint=True).upload(storage, location(2, "sp"), {})
    assert savepoint["key"].startswith("sp-2/t1/") and "chain" not in savepoint
    delta = strategy.snapshot(3, savepoint=False).upload(storage, location(3), {})
    assert [h["key"] for h in delta["chain"]] == [full["key"]]
    assert delta["state_size"] == full["size"] + delta["size"]
    assert restored_tables(storage, delta, memory_of)["count"] == {"a": 10}
    assert restored_tables(storage, savepoint, memory_of)["count"] == {"a": 10}
    # One delta is the most (max_deltas): the next one is full again, then a delta on it.
    put(c=3)
    full_again = strategy.snapshot(4, savepoint=False).upload(storage, location(4), {})
    assert "chain" not in full_again
    put(d=4)
    on_it = strategy.snapshot(5, savepoint=False).upload(storage, location(5), {})
    assert [h["key"] for h in on_it["chain"]] == [full_again["key"]]
    assert restored_tables(storage, on_it, memory_of)["count"] == {"a": 10, "c": 3, "d": 4}


class FailingStorage(LocalStorage):
    def put_file(self, key, f):
        raise OSError("storage is down")

    def put(self, key, data):
        raise OSError("storage is down")


def test_a_failed_upload_loses_the_chain_and_a_delta_taken_on_it_is_declined(tmp_path):
    strategy = memory(incremental=True)
    backend, storage = strategy.backend, LocalStorage(tmp_path)
    backend.table("count", "value")["a"] = 1
    backend.mark_dirty(["a"])
    strategy.snapshot(1, savepoint=False).upload(storage, location(1), {})
    backend.tables["count"]["a"] = 2
    backend.mark_dirty(["a"])
    failing = strategy.snapshot(2, savepoint=False)
    backend.tables["count"]["b"] = 3
    backend.mark_dirty(["b"])
    on_lost_base = strategy.snapshot(3, savepoint=False)  # a delta on checkpoint 2
    with pytest.raises(OSError, match="storage is down"):
        failing.upload(FailingStorage(tmp_path), location(2), {})
    with pytest.raises(RuntimeError, match="base of this delta was lost"):
        on_lost_base.upload(storage, location(3), {})
    full = strategy.snapshot(4, savepoint=False).upload(storage, location(4), {})
    assert "chain" not in full
    assert restored_tables(storage, full, memory_of)["count"] == {"a": 2, "b": 3}


def test_a_chain_restored_from_goes_on_with_deltas():
    chain = IncrementalChain(max_deltas=2)
    assert chain.next() == (False, 0)
    chain.continue_from({"key": "d1", "size": 5, "chain": [{"key": "full", "size": 50}]})
    assert chain.next() == (True, 0)
    assert chain.files == [{"key": "full", "size": 50}, {"key": "d1", "size": 5}]


def test_without_keyed_state_the_operator_state_is_inline(tmp_path):
    storage = LocalStorage(tmp_path)
    snap = NoKeyedState().snapshot(1, savepoint=False)
    handle = snap.upload(storage, location(1), {"splits": {"s": 1}})
    assert "inline" in handle and snap.uploaded_bytes == 0
    assert state.read_operator_state(storage, handle) == {"splits": {"s": 1}}
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def rocksdb(tmp_path):
    backend = RocksDBKeyedStateBackend(
        subtask_dir(str(tmp_path / "local"), "job", "t1", 0), key_group_range(0, 1, M), M,
        block_cache_mb=8, write_buffer_mb=4)
    yield backend
    backend.close()


def local_checkpoints(backend) -> list[str]:
    return sorted(n for n in os.listdir(backend.base) if n.startswith("chk-"))


def test_a_discarded_rocksdb_checkpoint_leaves_no_local_folder(rocksdb, tmp_path):
    strategy = RocksDBSnapshotStrategy(rocksdb)
    rocksdb.table("count", "value")["a"] = 1
    rocksdb.mark_dirty(["a"])
    snap = strategy.snapshot(1, savepoint=False)
    assert snap.local.created.wait(60)  # made on a thread of its own
    assert len(local_checkpoints(rocksdb)) == 1
    snap.discard()
    assert local_checkpoints(rocksdb) == []


def test_a_rocksdb_checkpoint_uploads_its_files_and_keeps_its_local_copy(rocksdb, tmp_path):
    storage, strategy = LocalStorage(tmp_path / "store"), RocksDBSnapshotStrategy(rocksdb)
    rocksdb.table("count", "value").update({k: k for k in range(50)})
    rocksdb.mark_dirty(range(50))
    snap = strategy.snapshot(1, savepoint=False)
    handle = snap.upload(storage, location(1), {"splits": {"s": 2}})
    snap.discard()  # after its upload: a no-op (local recovery keeps the folder)
    assert len(local_checkpoints(rocksdb)) == 1
    files = handle["rocksdb"]["files"]
    assert snap.uploaded_bytes == handle["rocksdb"]["uploaded"] == sum(f["size"] for f in files)
    assert any(f["key"].startswith("job/shared/t1/0-") for f in files)
    assert state.read_operator_state(storage, handle) == {"splits": {"s": 2}}


def test_a_rocksdb_savepoint_is_canonical(rocksdb, tmp_path):
    storage, strategy = LocalStorage(tmp_path / "store"), RocksDBSnapshotStrategy(rocksdb)
    rocksdb.table("count", "value").update({k: k for k in range(50)})
    rocksdb.mark_dirty(range(50))
    snap = strategy.snapshot(7, savepoint=True)
    handle = snap.upload(storage, location(7, "sp"), {})
    assert "rocksdb" not in handle and snap.uploaded_bytes == handle["size"]
    assert restored_tables(storage, handle, memory_of)["count"] == {k: k for k in range(50)}
