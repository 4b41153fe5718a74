"""State TTL: expiry on read, update types, incremental cleanup, snapshots without expired."""

from __future__ import annotations

import pytest

from streamjob.operators import KeyedContext
from streamjob.ttl import StateTtlConfig
from tests.unit.backends import each_backend, memory_only, new_backend  # noqa: F401


class Clock:
    def __init__(self, now: int = 0):
        self.now = now

    def __call__(self) -> int:
        return self.now


def _ctx(track_changes=False):
    clock = Clock(1_000_000)
    backend = new_backend(track_changes=track_changes)
    return KeyedContext(backend, clock=clock), backend, clock


def test_a_value_expires_ttl_after_its_last_write_and_reads_do_not_extend_it():
    ctx, _, clock = _ctx()
    s = ctx.value_state("v", "none", ttl=StateTtlConfig(2))
    ctx.key = "a"
    s.update("x")
    clock.now += 1500
    assert s.value() == "x"            # a read does not extend on_create_and_write
    clock.now += 499
    assert s.value() == "x"
    clock.now += 1
    assert s.value() == "none"         # 2 s after the write: invisible
    s.update("z")
    clock.now += 1999
    assert s.value() == "z"


def test_on_read_and_write_extends_the_life_on_every_read():
    ctx, _, clock = _ctx()
    s = ctx.value_state("v", 0, ttl=StateTtlConfig(
        1, update_type=StateTtlConfig.ON_READ_AND_WRITE))
    ctx.key = "a"
    s.update(7)
    for _ in range(5):
        clock.now += 900
        assert s.value() == 7
    clock.now += 1000
    assert s.value() == 0


def test_map_entries_expire_one_by_one():
    ctx, backend, clock = _ctx()
    m = ctx.map_state("m", ttl=StateTtlConfig(1))
    ctx.key = "a"
    m.put("old", 1)
    clock.now += 600
    m.put("new", 2)
    assert sorted(m.items()) == [("new", 2), ("old", 1)]
    clock.now += 400
    assert m.get("old") is None and "old" not in m and m.items() == [("new", 2)]
    clock.now += 600
    assert m.items() == [] and "a" not in backend.tables["m"]


def test_incremental_cleanup_removes_keys_that_are_never_read_again():
    ctx, backend, clock = _ctx()
    s = ctx.value_state("v", None, ttl=StateTtlConfig(1, cleanup_size=3))
    for i in range(30):
        ctx.key = f"k{i}"
        s.update(i)
    clock.now += 5000
    ctx.key = "fresh"
    for _ in range(12):           # 12 accesses x 3 entries: the whole table walked
        s.update(1)
    assert set(backend.tables["v"]) == {"fresh"}


def test_snapshots_leave_expired_entries_out_full_and_incremental():
    memory_only("incremental deltas are the memory backend's")
    ctx, backend, clock = _ctx(track_changes=True)
    v = ctx.value_state("v", None, ttl=StateTtlConfig(1, cleanup_size=0))
    m = ctx.map_state("m", ttl=StateTtlConfig(1, cleanup_size=0))
    ctx.key = "a"
    v.update("a1")
    m.put("x", 1)
    clock.now += 500
    ctx.key = "b"
    v.update("b1")
    m.put("y", 2)
    clock.now += 600                # a's entries expired, b's live
    frozen = backend.freeze(reset_changes=False)
    assert set(frozen["v"][1]) == {"b"} and set(frozen["m"][1]) == {"b"}
    delta = backend.freeze_delta()
    assert set(delta["v"][1]) == {"b"} and delta["v"][2] == ["a"]
    # A restore of the full snapshot never shows a's values.
    restored = new_backend()
    for name, (kind, entries) in frozen.items():
        restored.load(name, kind, entries)
    ctx2 = KeyedContext(restored, clock=clock)
    v2 = ctx2.value_state("v", None, ttl=StateTtlConfig(1))
    ctx2.key = "a"
    assert v2.value() is None
    ctx2.key = "b"
    assert v2.value() == "b1"
    clock.now += 500
    assert v2.value() is None        # the write time travelled with the value


def test_mutable_ttl_values_are_isolated_in_snapshots():
    ctx, backend, clock = _ctx()
    s = ctx.value_state("v", None, ttl=StateTtlConfig(10))
    ctx.key = "a"
    s.update([1])
    frozen = backend.freeze()
    lst = s.value()
    lst.append(2)
    s.update(lst)
    assert frozen["v"][1]["a"][0] == [1]


def test_config_is_checked():
    with pytest.raises(ValueError):
        StateTtlConfig(0)
    with pytest.raises(ValueError):
        StateTtlConfig(1, update_type="never")
