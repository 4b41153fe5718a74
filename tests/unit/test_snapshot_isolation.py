"""Issue 11, item 2: a frozen snapshot never changes after the barrier."""

from __future__ import annotations

from streamjob.operators import (
    KeyedContext,
    KeyedStateBackend,
    ReduceOperator,
    copy_value,
)


def _ctx(track: bool = False) -> tuple[KeyedStateBackend, KeyedContext]:
    backend = KeyedStateBackend(track_changes=track)
    return backend, KeyedContext(backend)


def test_list_value_appended_after_freeze_does_not_leak_into_the_snapshot():
    backend, ctx = _ctx()
    last = ctx.value_state("last", [])
    ctx.key = "k"
    values = last.value()
    values.append(1)
    last.update(values)
    frozen = backend.freeze()
    values = last.value()          # the live list
    values.append(2)               # a post-barrier record
    last.update(values)
    assert frozen["last"] == ("value", {"k": [1]})
    assert last.value() == [1, 2]


def test_dict_value_and_nested_containers_are_isolated():
    backend, ctx = _ctx()
    st = ctx.value_state("d")
    ctx.key = "k"
    st.update({"n": 1, "seen": [1], "t": (1, [2])})
    frozen = backend.freeze()
    v = st.value()
    v["n"] = 2
    v["seen"].append(2)
    v["t"][1].append(3)
    st.update(v)
    assert frozen["d"][1]["k"] == {"n": 1, "seen": [1], "t": (1, [2])}


def test_map_state_values_that_are_lists_are_isolated():
    backend, ctx = _ctx()
    m = ctx.map_state("m")
    ctx.key = "k"
    m.put("a", [1])
    frozen = backend.freeze()
    m.get("a").append(2)
    assert frozen["m"][1]["k"] == {"a": [1]}


def test_mutable_default_is_not_shared_between_keys():
    backend, ctx = _ctx()
    st = ctx.value_state("l", [])
    ctx.key = "a"
    v = st.value()
    v.append(1)
    st.update(v)
    ctx.key = "b"
    assert st.value() == []


def test_delta_snapshot_is_isolated_too():
    backend, ctx = _ctx(track=True)
    st = ctx.value_state("l", [])
    ctx.key = "k"
    v = st.value()
    v.append(1)
    st.update(v)
    delta = backend.freeze_delta()
    v = st.value()
    v.append(2)
    st.update(v)
    assert delta["l"][1] == {"k": [1]}


def test_reduce_that_mutates_its_accumulator_in_place_is_isolated():
    backend = KeyedStateBackend()

    def append(acc, x):
        acc.append(x[1])
        return acc

    op = ReduceOperator(backend, lambda r: r[0], append)
    op.process_batch([["k", [0]]])          # first record is the accumulator itself
    op.process_batch([["k", 1]])
    frozen = backend.freeze()
    op.process_batch([["k", 2]])
    assert frozen["reduce"][1]["k"] == ["k", [0], 1]


def test_restored_list_values_are_isolated():
    backend, ctx = _ctx()
    backend.load("l", "value", {"k": [1]})
    st = ctx.value_state("l", [])
    frozen = backend.freeze()
    ctx.key = "k"
    st.value().append(2)
    assert frozen["l"][1]["k"] == [1]


def test_plain_tables_are_shallow_copies_and_copy_value_shares_immutables():
    backend, ctx = _ctx()
    st = ctx.value_state("n", 0)
    ctx.key = "k"
    st.update((1, "a"))
    assert "n" not in backend.mutable  # tuples of immutables cost nothing at freeze
    t = (1, "x")
    assert copy_value(t) is t
    assert copy_value([t])[0] is t


def test_a_table_without_containers_left_goes_back_to_the_cheap_copy():
    backend, ctx = _ctx()
    backend.load("acc", "value", {"k": [1, 2]})   # tuples come back from storage as lists
    st = ctx.value_state("acc")
    assert "acc" in backend.mutable
    ctx.key = "k"
    st.update((1, 3))
    frozen = backend.freeze()
    assert frozen["acc"][1] == {"k": (1, 3)}
    assert "acc" not in backend.mutable
    st.update([4])                                 # a container again: flagged again
    frozen = backend.freeze()
    st.value().append(5)
    assert frozen["acc"][1] == {"k": [4]}
