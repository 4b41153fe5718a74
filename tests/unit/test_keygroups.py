import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamjob.keygroups import (
    KeyGroupOf,
    KeyRouter,
    key_group,
    key_group_range,
    keys_of,
    operator_index,
    stable_bytes,
)


def flink_range(i: int, p: int, m: int) -> tuple[int, int]:
    """KeyGroupRangeAssignment.computeKeyGroupRangeForOperatorIndex, written as Flink does."""
    start = (i * m + p - 1) // p
    end = ((i + 1) * m - 1) // p
    return start, end


@pytest.mark.parametrize(("p", "m"), [(1, 128), (128, 128), (3, 128), (7, 10), (5, 32768),
                                      (2, 128), (4, 128), (127, 128)])
def test_ranges_match_flinks_formula_and_cover_every_key_group_once(p, m):
    covered = []
    for i in range(p):
        r = key_group_range(i, p, m)
        assert (r.start, r.stop - 1) == flink_range(i, p, m)
        assert r.start == math.ceil(i * m / p)
        assert r.stop - 1 == math.floor(((i + 1) * m - 1) / p)
        covered += list(r)
    assert covered == list(range(m))


def test_p_equal_m_gives_one_key_group_each():
    assert [list(key_group_range(i, 8, 8)) for i in range(8)] == [[i] for i in range(8)]


@given(st.integers(1, 300), st.data())
def test_operator_index_is_the_inverse_of_the_range(m, data):
    p = data.draw(st.integers(1, m))
    for kg in range(m):
        assert kg in key_group_range(operator_index(kg, p, m), p, m)


def test_parallelism_above_max_parallelism_is_refused():
    with pytest.raises(ValueError, match="above maxParallelism"):
        key_group_range(0, 200, 128)


def test_murmur3_reference_vectors():
    # murmur3_x86_32, seed 0 (the reference implementation's published vectors)
    import mmh3

    assert mmh3.hash(b"", 0, signed=False) == 0
    assert mmh3.hash(b"hello", 0, signed=False) == 0x248BFA47
    assert key_group("hello", 1 << 32) == 0x248BFA47


def test_key_groups_are_stable_across_processes():
    import subprocess
    import sys

    code = "from streamjob.keygroups import key_group; print(key_group('w42', 128), " \
           "key_group(('a', 7), 128), key_group(12345, 128))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout
            for seed in (1, 2, 3)}
    assert len(outs) == 1
    assert outs.pop().split() == [str(key_group("w42", 128)), str(key_group(("a", 7), 128)),
                                  str(key_group(12345, 128))]


def test_stable_bytes_refuses_objects_without_a_stable_form():
    with pytest.raises(TypeError):
        stable_bytes(object())


def test_router_agrees_with_the_ranges():
    router = KeyRouter(3, 128)
    for key in [f"k{i}" for i in range(500)]:
        assert key_group(key, 128) in key_group_range(router.target(key), 3, 128)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.integers()),
                max_size=60),
       st.integers(min_value=1, max_value=5))
def test_partition_sends_each_record_to_its_keys_subtask_in_order(records, p):
    router = KeyRouter(p, 128)
    for _ in range(2):  # first with an empty cache, then with every key cached
        buckets = router.partition(records, lambda r: r[0])
        assert len(buckets) == p
        for j, bucket in enumerate(buckets):
            assert bucket == [r for r in records if router.target(r[0]) == j]


def test_partition_routes_keys_evicted_from_a_full_cache():
    router = KeyRouter(2, 128, cache_limit=4)
    records = [f"k{i}" for i in range(50)]
    buckets = router.partition(records, str)
    assert sorted(buckets[0] + buckets[1]) == sorted(records)
    assert all(key_group(k, 128) in key_group_range(j, 2, 128)
               for j, bucket in enumerate(buckets) for k in bucket)


def test_partition_lets_a_failing_key_function_fail():
    router = KeyRouter(2, 128)
    router.partition([{"user": "a"}], lambda r: r["user"])
    with pytest.raises(KeyError, match="user"):
        router.partition([{"user": "a"}, {"name": "b"}], lambda r: r["user"])


class Upper(str):
    """A string whose ``str()`` is another string: not its own key under ``key_by(str)``."""

    def __str__(self) -> str:
        return self.upper()


def test_keys_of_string_records_under_str_are_the_records_themselves():
    records = ["w1", "w2", "w1"]
    assert keys_of(records, str) is records
    assert keys_of((5, 7), int) == (5, 7)
    assert keys_of([b"a"], bytes) == [b"a"]


def test_keys_of_calls_the_key_function_on_any_other_record():
    assert keys_of([1, "a", 2.5], str) == ["1", "a", "2.5"]
    assert keys_of(["a", 1], str) == ["a", "1"]
    assert keys_of([Upper("w1"), "w2"], str) == ["W1", "w2"]
    assert keys_of([True, 3], int) == [1, 3]
    assert keys_of([("a", 1)], lambda r: r[0]) == ["a"]
    assert keys_of([], str) == []


def test_partition_of_a_subclass_routes_by_what_the_key_function_returns():
    router = KeyRouter(4, 128)
    records = [Upper(f"w{i}") for i in range(40)]
    buckets = router.partition(records, str)
    assert all(router.target(str(r)) == j for j, bucket in enumerate(buckets) for r in bucket)
    assert sorted(r for b in buckets for r in b) == sorted(records)


def test_partition_returns_lists_that_later_batches_leave_alone():
    router = KeyRouter(2, 128)
    first = router.partition([f"k{i}" for i in range(20)], str)
    copy = [list(b) for b in first]
    router.partition([f"k{i}" for i in range(20, 40)], str)
    assert first == copy


def test_partition_after_a_key_that_cannot_be_hashed_starts_from_empty_buckets():
    router = KeyRouter(2, 128)
    router.partition(["a", "b", "c"], str)  # cached: the next batch takes the fast path
    with pytest.raises(TypeError):
        router.partition([("a", 1), ("b", 2), (["unhashable"], 3)], lambda r: r[0])
    records = ["c", "b", "a"]
    buckets = router.partition(records, str)
    assert sorted(buckets[0] + buckets[1]) == sorted(records)
    assert all(router.target(r) == j for j, bucket in enumerate(buckets) for r in bucket)


def test_running_count_counts_by_key_with_and_without_the_identity_shortcut():
    from streamjob.operators import CountOperator, KeyedStateBackend

    op = CountOperator(KeyedStateBackend(), str)
    assert op.process_batch(["a", "b", "a"]) == [("a", 1), ("b", 1), ("a", 2)]
    assert op.process_batch(("a", 7)) == [("a", 3), ("7", 1)]
    assert op.process_batch([Upper("b"), "B"]) == [("B", 1), ("B", 2)]


@pytest.mark.parametrize("keys", [
    [f"w{i}" for i in range(500)] + ["", "é", "日本語", "x" * 1000],  # all str: hashed at once
    [1, "a", 2.5, ("t", 3), b"b", None, True, -7],                    # mixed: one by one
    [],
])
def test_key_groups_of_many_keys_are_those_of_each_key(keys):
    for m in (128, 7, 32768):
        of = KeyGroupOf(m)
        assert of.many(list(keys)) == [key_group(k, m) for k in keys] == [of(k) for k in keys]


def test_a_str_key_without_utf8_form_is_refused_not_hashed():
    # mmh3 5.3 crashes the process on such a str; both paths must raise as stable_bytes does.
    with pytest.raises(UnicodeEncodeError):
        KeyGroupOf(128).many(["ok", "\ud800"])
    with pytest.raises(UnicodeEncodeError):
        KeyGroupOf(128)("\ud800")


def test_equal_keys_of_different_types_keep_their_own_key_groups():
    # True == 1 == 1.0 in Python, but their stable bytes (and key groups) differ: a memo of
    # one must not answer for another, in any order.
    keys = [1, True, 1.0, ("t", 1), ("t", True), 0, False]
    for order in (keys, keys[::-1]):
        of = KeyGroupOf(128)
        assert [of(k) for k in order] == [key_group(k, 128) for k in order]
    assert len({key_group(k, 128) for k in (1, True, 1.0)}) == 3


def test_key_groups_of_a_table_follow_its_changes_between_snapshots():
    """of_table() remembers a table's keys and hashes only the keys added since; any other
    change (a key removed, a key replaced by an equal one of another type) is seen."""
    m = 32768  # above 255: the remembered key groups need two bytes
    of = KeyGroupOf(m)
    table = {f"k{i}": i for i in range(2000)}

    def check(t):
        assert list(of.of_table("count", dict(t))) == [key_group(k, m) for k in t]

    check(table)
    check(table)                     # unchanged
    table.update({i: i for i in range(50)})
    check(table)                     # keys added at the end (of other types too)
    del table["k5"]
    table["k5"] = 0                  # removed and added again: now last
    check(table)
    table = {True: 1, "x": 2}
    check(table)
    table = {1: 1, "x": 2}           # 1 == True, same place: not the same key
    check(table)
    check({})
    check({"k1": 1})
    assert list(of.of_table("other", {"a": 1})) == [key_group("a", m)]


def test_a_full_snapshot_with_remembered_key_groups_is_the_same_file(tmp_path):
    import io

    from streamjob.state import encode_snapshot_to

    of = KeyGroupOf(128)
    table = {f"k{i}": i for i in range(3000)}
    for step in range(4):
        table.update({f"n{step}-{i}": i for i in range(100)})  # keys added: only they hashed
        if step == 2:
            table.pop("k7")  # a key removed: all hashed again
            table["k7"] = -1
        with_memory, without = io.BytesIO(), io.BytesIO()
        encode_snapshot_to(with_memory, {"t": ("value", dict(table))}, None, of)
        encode_snapshot_to(without, {"t": ("value", dict(table))}, None,
                           lambda k: key_group(k, 128))
        assert with_memory.getvalue() == without.getvalue()
