"""Window join and interval join on small hand-checked inputs, and on random interleavings of
both inputs against a brute-force reference."""

from __future__ import annotations

import math
import random
from collections import Counter
from operator import itemgetter

import pytest

from streamjob import Pipeline
from streamjob.connectors import GeneratorSource, PrintSink
from streamjob.joins import IntervalJoinFunction, WindowJoinFunction
from streamjob.operators import CoProcessOperatorFactory
from streamjob.pipeline import PipelineError
from streamjob.windows import (
    EventTimeSessionWindows,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
)
from tests.unit.backends import (  # noqa: F401
    as_stored,
    each_backend,
    memory_only,
    new_backend,
)

TS = (itemgetter(1), itemgetter(1))


def pair(a, b):
    return (a[2], b[2])


def operator(function):
    backend = new_backend()
    backend.key_groups, backend.max_parallelism = range(128), 128
    op = CoProcessOperatorFactory(function, (itemgetter(0), itemgetter(0))).create(backend)
    return op, backend


def empty(backend) -> bool:
    return not any(backend.tables.values())


def test_tumbling_window_join_pairs_each_window_when_the_watermark_passes_its_end():
    op, backend = operator(WindowJoinFunction(pair, TumblingEventTimeWindows(10), TS))
    op.process_batch([("k", 1, "a1"), ("k", 5, "a2"), ("k", 12, "a3"), ("j", 3, "ja")])
    op.process_batch2([("k", 7, "b1"), ("k", 15, "b2"), ("k", 25, "b3"), ("j", 30, "jb")])
    assert op.on_watermark(9) == []
    assert op.on_watermark(10) == [("a1", "b1"), ("a2", "b1")]  # j's window has no right
    assert op.on_watermark(19) == []
    assert op.on_watermark(20) == [("a3", "b2")]
    op.process_batch2([("k", 18, "too late")])  # its only window fired
    assert op.fn.late_records == 1
    assert op.on_watermark(math.inf) == []  # windows with one side only emit nothing
    assert empty(backend)


def test_sliding_window_join_pairs_within_every_window_they_share():
    op, backend = operator(WindowJoinFunction(pair, SlidingEventTimeWindows(10, 5), TS))
    op.process_batch([("k", 7, "a")])       # windows [5, 15) and [0, 10)
    op.process_batch2([("k", 3, "b"), ("k", 12, "c")])  # [0, 10), [-5, 5); [10, 20), [5, 15)
    assert Counter(op.on_watermark(math.inf)) == Counter([("a", "b"), ("a", "c")])
    assert empty(backend)


def test_interval_join_emits_on_the_second_record_and_cleans_up_on_the_watermark():
    op, backend = operator(IntervalJoinFunction(pair, -2, 3, TS))  # right in [l - 2, l + 3]
    assert op.process_batch2([("k", 7, "r7"), ("k", 8, "r8")]) == []
    assert op.process_batch([("k", 10, "L")]) == [("L", "r8")]       # 7 < 10 - 2
    assert op.process_batch2([("k", 13, "r13"), ("k", 14, "r14")]) == [("L", "r13")]
    left, right = backend.tables["join/left"], backend.tables["join/right"]
    op.on_watermark(10)  # r7, r8 can meet no left any more (a left at 11 or later is beyond)
    assert set(right["k"]) == {13, 14} and set(left["k"]) == {10}
    op.on_watermark(13)  # L can meet no right any more
    assert "k" not in left
    assert op.process_batch([("k", 12, "late")]) == [] and op.fn.late_records == 1
    assert op.process_batch([("k", 14, "L2")]) == [("L2", "r13"), ("L2", "r14")]
    assert op.process_batch([("j", 14, "other key")]) == []
    op.on_watermark(math.inf)
    assert empty(backend)


def brute_interval(lefts, rights, lower, upper):
    return Counter((a[2], b[2]) for a in lefts for b in rights
                   if a[0] == b[0] and a[1] + lower <= b[1] <= a[1] + upper)


def brute_window(lefts, rights, size, slide):
    """Pairs per window [s, s + size), s a multiple of slide, holding both timestamps."""
    def windows(ts):
        return {s for s in range(-size, 200, slide) if s <= ts < s + size}

    return Counter((a[2], b[2]) for a in lefts for b in rights if a[0] == b[0]
                   for _ in windows(a[1]) & windows(b[1]))


def records(rng, side, n):
    return [(rng.choice("xyz"), rng.randrange(0, 60), f"{side}{i}") for i in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_joins_match_the_brute_force_reference_in_any_interleaving(seed):
    rng = random.Random(seed)
    lefts, rights = records(rng, "a", 40), records(rng, "b", 40)
    for make, reference in (
            (lambda: IntervalJoinFunction(pair, -4, 7, TS),
             brute_interval(lefts, rights, -4, 7)),
            (lambda: IntervalJoinFunction(pair, 2, 9, TS), brute_interval(lefts, rights, 2, 9)),
            (lambda: WindowJoinFunction(pair, TumblingEventTimeWindows(10), TS),
             brute_window(lefts, rights, 10, 10)),
            (lambda: WindowJoinFunction(pair, SlidingEventTimeWindows(12, 4), TS),
             brute_window(lefts, rights, 12, 4))):
        op, backend = operator(make())
        out, a, b = [], list(lefts), list(rights)
        while a or b:  # random batches of each side, in random order
            if a and (not b or rng.random() < 0.5):
                out += op.process_batch([a.pop(0) for _ in range(min(len(a),
                                                                     rng.randint(1, 5)))])
            else:
                out += op.process_batch2([b.pop(0) for _ in range(min(len(b),
                                                                      rng.randint(1, 5)))])
        out += op.on_watermark(math.inf)
        assert Counter(out) == reference
        assert empty(backend)


def test_join_api_errors_say_what_is_missing():
    p = Pipeline()
    a = p.source(GeneratorSource(1)).key_by(str)
    b = p.source(GeneratorSource(1)).key_by(str)
    with pytest.raises(PipelineError, match="needs event time on both sides"):
        a.interval_join(b).between(0, 5).apply(pair)
    with pytest.raises(PipelineError, match="lower <= upper"):
        a.interval_join(b).between(5, 0)
    with pytest.raises(PipelineError, match="needs .window"):
        a.join(b).apply(pair, timestamps=TS)
    with pytest.raises(PipelineError, match="window size must be a positive"):
        a.join(b).window(0)
    with pytest.raises(PipelineError, match="tumbling or sliding windows, not Event"):
        a.join(b).window(EventTimeSessionWindows(10))
    q = Pipeline()
    a = q.source(GeneratorSource(1)).assign_timestamps(int).key_by(str)
    b = q.source(GeneratorSource(1)).assign_timestamps(int).key_by(str)
    a.join(b).window(10).apply(pair).sink(PrintSink())
    q.validate()
    assert q.tasks[2].steps[0].kind == "co_keyed"


def test_a_snapshot_of_waiting_records_does_not_change_with_later_records():
    op, backend = operator(WindowJoinFunction(pair, TumblingEventTimeWindows(10), TS))
    op.process_batch([("k", 1, "a1")])
    frozen = backend.freeze()
    op.process_batch([("k", 2, "a2")])  # appended in place to the same window's list
    assert frozen["join/left"] == ("map", as_stored({"k": {0: [("k", 1, "a1")]}}))
    assert backend.tables["join/left"]["k"][0] == [("k", 1, "a1"), ("k", 2, "a2")]
