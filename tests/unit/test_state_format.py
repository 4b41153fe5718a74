import pytest

from streamjob import checkpoints as ckpt
from streamjob.keygroups import key_group, key_group_range
from streamjob.operators import KeyedStateBackend
from streamjob.state import (
    CorruptStateError,
    read_keyed_state,
    read_operator_state,
    write_snapshot,
)
from streamjob.storage import LocalStorage


class CountingStorage(LocalStorage):
    def __init__(self, root):
        super().__init__(root)
        self.ranged = []
        self.full_reads = 0

    def get_range(self, key, offset, length):
        self.ranged.append((offset, length))
        return super().get_range(key, offset, length)

    def get(self, key):
        self.full_reads += 1
        return super().get(key)


def backend_with(n):
    b = KeyedStateBackend()
    t = b.table("count", "value")
    m = b.table("seen", "map")
    for i in range(n):
        t[f"k{i}"] = i
        m[("t", i)] = {"x": i}
    return b


def test_snapshot_round_trip_by_key_group_ranges(tmp_path):
    storage = CountingStorage(tmp_path)
    b = backend_with(2000)
    handle = write_snapshot(storage, "job/chk-1/t1/0-x", b.freeze(), {"splits": {"0": 5}},
                            lambda k: key_group(k, 128))
    assert handle["size"] == storage.size("job/chk-1/t1/0-x")
    restored = KeyedStateBackend()
    for i in range(3):  # restore at parallelism 3 from one file
        for name, kind, entries, deleted in read_keyed_state(storage, handle,
                                                             key_group_range(i, 3, 128)):
            restored.load(name, kind, entries, deleted)
    assert restored.tables["count"] == b.tables["count"]
    assert restored.tables["seen"] == b.tables["seen"]  # tuple keys come back as tuples
    assert read_operator_state(storage, handle) == {"splits": {"0": 5}}
    assert storage.full_reads == 0  # only ranged reads


def test_a_subtask_reads_only_its_key_groups(tmp_path):
    storage = CountingStorage(tmp_path)
    handle = write_snapshot(storage, "s", backend_with(5000).freeze(), None,
                            lambda k: key_group(k, 128))
    mine = key_group_range(1, 4, 128)
    entries = [e for _, _, es, _ in read_keyed_state(storage, handle, mine) for e in es]
    assert entries and all(key_group(k, 128) in mine for k in entries)
    assert sum(length for _, length in storage.ranged) < handle["size"] / 3


def test_frozen_snapshot_does_not_see_later_updates(tmp_path):
    b = backend_with(10)
    frozen = b.freeze()
    b.tables["count"]["k1"] = 999
    b.tables["seen"][("t", 1)]["x"] = 999
    assert frozen["count"][1]["k1"] == 1
    assert frozen["seen"][1][("t", 1)] == {"x": 1}


def test_corruption_is_detected(tmp_path):
    storage = LocalStorage(tmp_path)
    handle = write_snapshot(storage, "s", backend_with(100).freeze(), None,
                            lambda k: key_group(k, 128))
    data = bytearray(storage.get("s"))
    data[20] ^= 0xFF
    storage.put("s", bytes(data))
    with pytest.raises(CorruptStateError):
        list(read_keyed_state(storage, handle, range(128)))


def test_small_operator_state_is_inline(tmp_path):
    storage = LocalStorage(tmp_path)
    handle = write_snapshot(storage, "s", {}, {"splits": {"1": 2}}, lambda k: 0)
    assert "inline" in handle and storage.list("") == []
    assert read_operator_state(storage, handle) == {"splits": {"1": 2}}


def test_metadata_checksum_and_latest_completed_skips_corrupt(tmp_path, caplog):
    storage = LocalStorage(tmp_path)
    for n in (1, 2, 3):
        body = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "checkpoint_id": n,
                "tasks": {}}
        storage.put(f"job/chk-{n}/_metadata", ckpt.encode_metadata(body))
    storage.put("job/chk-4/t0/0-abc", b"incomplete: no _metadata")
    storage.put("job/chk-3/_metadata", storage.get("job/chk-3/_metadata").replace(b"3", b"7"))
    assert ckpt.list_checkpoint_ids(storage, "job") == {1: True, 2: True, 3: True, 4: False}
    assert ckpt.latest_completed(storage, "job")["checkpoint_id"] == 2
    assert "skipping checkpoint 3" in caplog.text
    with pytest.raises(ckpt.CorruptMetadataError):
        ckpt.decode_metadata(b"\x80\x04pickle")


def test_incremental_chain_restores_the_full_state_and_uploads_only_changes(tmp_path):
    storage = LocalStorage(tmp_path)
    kg = lambda k: key_group(k, 128)  # noqa: E731
    b = KeyedStateBackend(track_changes=True)
    t = b.table("count", "value")
    for i in range(100_000):
        t[f"k{i}"] = i
    base = write_snapshot(storage, "shared/base", b.freeze(), None, kg)
    chain = [base]
    for step in range(3):
        changed = [f"k{i}" for i in range(step, 100_000, 100)]  # 1 % of the keys
        for k in changed:
            t[k] += 1
        b.mark_dirty(changed)
        t.pop("k7", None)
        b.mark_dirty(["k7"])
        delta = write_snapshot(storage, f"shared/d{step}", b.freeze_delta(), None, kg)
        assert delta["size"] < base["size"] * 0.03
        chain.append(delta)
    top = dict(chain[-1], chain=chain[:-1])
    restored = KeyedStateBackend()
    for name, kind, entries, deleted in read_keyed_state(storage, top, range(128)):
        restored.load(name, kind, entries, deleted)
    assert restored.tables["count"] == t
    assert "k7" not in restored.tables["count"]


def test_packed_sections_and_reads_are_the_bytes_of_decoded_ones(tmp_path):
    """A backend that keeps entries packed (rocksdb) writes and reads sections with the
    entries' bytes passed through: the same file and the same entries as decoded ones."""
    import msgpack

    from streamjob.state import pack_section, read_packed_keyed_state

    pack = msgpack.Packer(use_bin_type=True).pack
    entries = [("k", [1, "x"]), (("t", 2), {"a": 1.5, 3: b"\x00"}), (7, None), (-1, True)]
    decoded = [("count", "value", [k for k, _ in entries], [v for _, v in entries]),
               ("empty", "map", [], [])]
    packed = pack_section([(name, kind, len(ks), b"".join(map(pack, ks)),
                            b"".join(map(pack, vs)))
                           for name, kind, ks, vs in decoded])
    assert packed.blob == pack(decoded) and packed.keys == 4

    storage = LocalStorage(tmp_path)
    kg = lambda k: key_group(k, 128)  # noqa: E731
    b = KeyedStateBackend(track_changes=True)
    t, m = b.table("count", "value"), b.table("seen", "map")
    for i in range(500):
        t[f"k{i}"], m[("t", i)] = i, {"x": [i, 0.5]}
    base = write_snapshot(storage, "base", b.freeze(), None, kg)
    t["k1"] = -1
    del t["k2"]
    b.mark_dirty(["k1", "k2"])
    top = dict(write_snapshot(storage, "delta", b.freeze_delta(), None, kg), chain=[base])
    mine = key_group_range(1, 3, 128)
    want = [(n, kind, {pack(k): pack(v) for k, v in es.items()}, [pack(k) for k in gone])
            for n, kind, es, gone in read_keyed_state(storage, top, mine)]
    got = [(n, kind, dict(es), gone)
           for g, n, kind, es, gone in read_packed_keyed_state(storage, top, mine)]
    assert got == want
    everywhere = list(read_packed_keyed_state(storage, top, range(128)))
    assert [gone for _, n, _, _, gone in everywhere if gone and n == "count"] == [[pack("k2")]]
    assert {g for g, *_ in read_packed_keyed_state(storage, top, mine)} <= set(mine)


def test_a_read_refuses_a_malformed_section(tmp_path):
    import zlib

    import msgpack

    from streamjob.state import HEADER, read_packed_keyed_state

    storage = LocalStorage(tmp_path)
    malformed = {
        1: ([["count", "value", [["k"]]]],                # an entry without its value
            [["count", "value", [["k", 1]]], 5],          # not a table
            [["count", 1, [["k", 1]]]],                   # a kind that is no string
            [["count", "value", ["k"], [1]]]),            # version 2's columns
        2: ([["count", "value", ["k", "j"], [1]]],        # a key without its value
            [["count", "value", ["k"], [1]], 5],          # not a table
            [["count", 1, ["k"], [1]]],                   # a kind that is no string
            [["count", "value", [["k", 1]]]]),            # version 1's pairs
    }
    for version, sections in malformed.items():
        for section in sections:
            blob = msgpack.packb(section)
            storage.put("s", HEADER + blob)
            handle = {"format": version, "key": "s",
                      "key_groups": [[3, len(HEADER), len(blob), zlib.crc32(blob)]]}
            with pytest.raises(CorruptStateError):
                list(read_packed_keyed_state(storage, handle, range(128)))
            with pytest.raises(CorruptStateError):
                list(read_keyed_state(storage, handle, range(128)))
    blob = msgpack.packb([["count", "value", ["k"], [1]]])
    storage.put("s", HEADER + blob[:-1] + b"\x02")  # a bit flip: the crc32 finds it
    handle = {"format": 2, "key": "s",
              "key_groups": [[3, len(HEADER), len(blob), zlib.crc32(blob)]]}
    with pytest.raises(CorruptStateError, match="checksum"):
        list(read_packed_keyed_state(storage, handle, range(128)))
    with pytest.raises(CorruptStateError, match="format 3"):
        list(read_keyed_state(storage, dict(handle, format=3), range(128)))


def test_version_1_files_are_still_read(tmp_path):
    """A checkpoint or savepoint written before version 2 (``[key, value]`` pairs) restores
    on either backend: decoded, and with the packed bytes passed through."""
    import struct
    import zlib

    import msgpack

    from streamjob.state import read_packed_keyed_state

    pack = msgpack.Packer(use_bin_type=True).pack
    header = b"SJSNAP" + struct.pack("<H", 1)
    full = [["count", "value", [["a", 1], [["t", 2], [3, "x"]]]], ["seen", "map", []]]
    delta = [["count", "value", [["a", 5]], ["gone", ["t", 9]]]]
    handles = []
    for name, section in (("full", full), ("delta", delta)):
        blob = pack(section)
        storage = LocalStorage(tmp_path)
        storage.put(name, header + blob)
        handles.append({"format": 1, "key": name, "size": len(header) + len(blob),
                        "key_groups": [[7, len(header), len(blob), zlib.crc32(blob)]]})
    top = dict(handles[1], chain=[handles[0]])
    assert list(read_keyed_state(storage, top, range(128))) == [
        ("count", "value", {"a": 1, ("t", 2): [3, "x"]}, []), ("seen", "map", {}, []),
        ("count", "value", {"a": 5}, ["gone", ("t", 9)])]
    assert list(read_packed_keyed_state(storage, top, range(128))) == [
        (7, "count", "value", [(pack("a"), pack(1)), (pack(["t", 2]), pack([3, "x"]))], []),
        (7, "seen", "map", [], []),
        (7, "count", "value", [(pack("a"), pack(5))], [pack("gone"), pack(["t", 9])])]
    assert list(read_keyed_state(storage, handles[0], range(8, 128))) == []
