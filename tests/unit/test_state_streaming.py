"""Issue 11, item 8: a state file is written section by section, never whole in memory."""

from __future__ import annotations

import os
import tracemalloc

from streamjob import state
from streamjob.keygroups import KeyGroupOf, key_group
from streamjob.storage import LocalStorage


def _frozen(n: int, size: int) -> dict:
    return {"t": ("value", {f"k{i}": "x" * size + str(i) for i in range(n)})}


def test_streamed_file_is_byte_for_byte_the_encoded_one(tmp_path):
    frozen = _frozen(2000, 50)
    kg = lambda k: key_group(k, 128)  # noqa: E731
    data, handle = state.encode_snapshot(frozen, {"splits": {"0": 5}}, kg)
    s = LocalStorage(tmp_path)
    written = state.write_snapshot(s, "a/b", frozen, {"splits": {"0": 5}}, kg)
    assert s.get("a/b") == data
    assert {k: v for k, v in written.items() if k != "key"} == handle
    got = {}
    for _name, _kind, entries, _deleted in state.read_keyed_state(s, written, range(128)):
        got.update(entries)
    assert got == frozen["t"][1]
    assert state.read_operator_state(s, written) == {"splits": {"0": 5}}


def test_a_released_copy_is_emptied_and_writes_the_same_bytes(tmp_path):
    # release=True (the runtime's own frozen copy): its tables are taken out as they are
    # grouped, so that each is freed before the file is packed; the file is the same.
    kg = lambda k: key_group(k, 128)  # noqa: E731
    frozen = {**_frozen(2000, 10), "m": ("map", {("t", i): {"x": i} for i in range(300)})}
    data, handle = state.encode_snapshot(dict(frozen), {"splits": {}}, kg)
    s = LocalStorage(tmp_path)
    given = dict(frozen)
    written = state.write_snapshot(s, "a/b", given, {"splits": {}}, kg, release=True)
    assert given == {} and s.get("a/b") == data and written["keys"] == 2300
    assert {k: v for k, v in written.items() if k != "key"} == handle


def test_key_groups_placed_all_at_once_write_the_same_bytes():
    # KeyGroupOf.many (a snapshot's keys at once) against one call per key: same file, for a
    # full snapshot and for a delta with deleted keys, str keys and others.
    for table in ({f"k{i}": i for i in range(3000)}, {i: str(i) for i in range(3000)}):
        for frozen in ({"t": ("value", table)},
                       {"t": ("value", table, list(table)[:100] + ["gone", 12345])}):
            one_by_one = state.encode_snapshot(frozen, None, lambda k: key_group(k, 128))
            assert state.encode_snapshot(frozen, None, KeyGroupOf(128)) == one_by_one


def test_peak_memory_of_a_big_snapshot_is_far_below_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "SPOOL_BYTES", 1 << 20)
    frozen = _frozen(50_000, 400)
    kg = lambda k: key_group(k, 128)  # noqa: E731
    s = LocalStorage(tmp_path)
    tracemalloc.start()
    try:
        handle = state.write_snapshot(s, "big", frozen, None, kg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = os.path.getsize(tmp_path / "big")
    assert handle["size"] == size > 20_000_000
    assert peak < size / 2, (peak, size)


def test_a_failed_put_file_leaves_no_temp_file(tmp_path):
    import io

    import pytest

    from streamjob.storage import StorageError

    class Broken(io.BytesIO):
        def read(self, *a):
            raise OSError(5, "Input/output error")

    s = LocalStorage(tmp_path)
    with pytest.raises(StorageError, match="Input/output"):
        s.put_file("x/y", Broken(b"abc"))
    assert [f for _, _, fs in os.walk(tmp_path) for f in fs] == []


def test_restore_reads_are_bounded_per_span(tmp_path, monkeypatch):
    frozen = _frozen(20_000, 100)
    kg = lambda k: key_group(k, 128)  # noqa: E731
    s = LocalStorage(tmp_path)
    handle = state.write_snapshot(s, "f", frozen, None, kg)
    reads = []
    real = s.get_range
    monkeypatch.setattr(s, "get_range", lambda k, o, n: reads.append(n) or real(k, o, n))
    monkeypatch.setattr(state, "SPAN_BYTES", 100_000)
    got = {}
    for _name, _kind, entries, _deleted in state.read_keyed_state(s, handle, range(128)):
        got.update(entries)
    assert got == frozen["t"][1]
    biggest_section = max(e[2] for e in handle["key_groups"])
    assert len(reads) > 1 and max(reads) <= max(100_000, biggest_section)
    assert state._spans([[0, 8, 10], [1, 18, 10], [2, 28, 10]], limit=20) == [
        [[0, 8, 10], [1, 18, 10]], [[2, 28, 10]]]
