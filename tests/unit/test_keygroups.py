import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamjob.keygroups import (
    KeyRouter,
    key_group,
    key_group_range,
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
