import math
from operator import itemgetter

import pytest

from streamjob import Pipeline
from streamjob.channels import InputGate, Marker, Watermark
from streamjob.connectors import GeneratorSource, PrintSink
from streamjob.keygroups import key_group
from streamjob.pipeline import PipelineError
from streamjob.windows import (
    MAX_WATERMARK,
    MIN_WATERMARK,
    WatermarkGenerator,
    WatermarkStrategy,
    WatermarkTracker,
    WindowOperator,
    restored_floors,
)
from tests.unit.backends import each_backend, memory_only, new_backend  # noqa: F401


def test_tracker_is_the_minimum_over_channels_and_only_moves_forward():
    t = WatermarkTracker(3)
    assert t.update(0, 5000) is None          # channels 1 and 2 know nothing yet
    assert t.update(1, 7000) is None
    assert t.update(2, 6000) == 5000
    assert t.update(1, 9000) is None          # the minimum (channel 0) did not move
    assert t.update(0, 8000) == 6000
    assert t.update(0, 4000) is None          # a channel never goes back
    assert t.current == 6000


def test_tracker_finished_channels_do_not_hold_back_the_others():
    t = WatermarkTracker(2)
    assert t.update(0, MAX_WATERMARK) is None
    assert t.update(1, 1500) == 1500
    assert t.update(1, MAX_WATERMARK) == MAX_WATERMARK


def test_tracker_starts_at_a_restored_watermark():
    t = WatermarkTracker(2, current=5000)
    t.update(0, 3000)
    assert t.update(1, 4000) is None          # behind the restored watermark
    assert t.update(0, 6000) is None
    assert t.update(1, 7000) == 6000


def test_generator_emits_max_minus_bound_every_interval_and_a_final_watermark():
    g = WatermarkGenerator(WatermarkStrategy(itemgetter(0), max_out_of_orderness=2000,
                                             interval=1.0))
    assert g.next_watermark(0.0) is None      # nothing seen yet
    g.observe([(5000,), (4000,)])
    assert g.next_watermark(0.0) == 3000
    g.observe([(9000,)])
    assert g.next_watermark(0.5) is None      # interval not passed
    assert g.next_watermark(1.0) == 7000
    g.observe([(1000,)])                      # out of order: no step back
    assert g.next_watermark(5.0) is None
    assert g.finish() == MAX_WATERMARK
    assert g.finish() is None


def _sum_op(backend=None, size=1000):
    backend = backend or new_backend()
    backend.max_parallelism = 128
    return WindowOperator(backend, itemgetter(1), itemgetter(0), size, itemgetter(2),
                          lambda a, b: a + b), backend


def test_windows_fire_when_the_watermark_passes_their_end_and_are_cleared():
    op, backend = _sum_op()
    assert op.process_batch([(0, "a", 1), (999, "a", 2), (1000, "a", 4), (10, "b", 8)]) == []
    assert op.on_watermark(998) == []          # window [0, 1000) ends at 1000
    assert sorted(op.on_watermark(1000)) == [(0, "a", 3), (0, "b", 8)]
    assert backend.tables["window"] == {"a": {1000: 4}}
    assert op.on_watermark(MAX_WATERMARK) == [(1000, "a", 4)]
    assert backend.tables["window"] == {}


def test_late_records_are_dropped_and_counted():
    op, backend = _sum_op()
    op.process_batch([(100, "a", 1)])
    op.on_watermark(1500)
    op.process_batch([(200, "a", 5), (1200, "a", 7)])   # [0, 1000) already fired
    assert op.late_records == 1
    assert op.on_watermark(2000) == [(1000, "a", 7)]


def test_restored_state_fires_and_restored_watermark_keeps_fired_windows_closed():
    op, backend = _sum_op()
    op.process_batch([(100, "a", 1), (1100, "a", 2)])
    op.on_watermark(1000)
    frozen = backend.freeze()
    # A new subtask restores the state and the watermark its snapshot was taken at.
    op2, backend2 = _sum_op()
    for name, (kind, entries) in frozen.items():
        backend2.load(name, kind, entries)
    op2.restore_watermark({kg: 1000 for kg in range(128)})
    op2.process_batch([(900, "a", 50), (1500, "a", 3)])  # replay: [0, 1000) fired before
    assert op2.late_records == 1
    assert op2.on_watermark(MAX_WATERMARK) == [(1000, "a", 5)]


def test_after_a_rescale_lateness_is_per_key_group_until_the_highest_floor():
    # Old subtask 0 (key groups 0..63) was at 1000, old subtask 1 at 3000.
    floors = restored_floors([1000, 3000], range(0, 128), 128)
    assert floors[0] == 1000 and floors[127] == 3000
    op, _ = _sum_op()
    op.restore_watermark(floors)
    assert op.watermark == 1000
    low = next(k for k in (f"k{i}" for i in range(1000)) if key_group(k, 128) < 64)
    high = next(k for k in (f"k{i}" for i in range(1000)) if key_group(k, 128) >= 64)
    op.process_batch([(1500, low, 1), (1500, high, 1), (3500, high, 2)])
    assert op.late_records == 1                         # high's [1000, 2000) already fired
    assert op.on_watermark(MAX_WATERMARK) == [(1000, low, 1), (3000, high, 2)]


def test_restored_floors_keep_only_own_key_groups():
    assert restored_floors([None, 500], range(60, 70), 128) == {
        **{kg: MIN_WATERMARK for kg in range(60, 64)}, **{kg: 500 for kg in range(64, 70)}}


def test_gate_keeps_watermarks_in_order_and_out_of_in_flight_capture():
    async def go():
        gate = InputGate(2)
        await gate.put_batch(0, [1, 2])
        gate.put_watermark(0, 1000)
        await gate.put_batch(0, [3])
        gate.put_barrier(0, Marker(1, 0))
        assert gate.buffered_records({0}) == 3
        gate.start_capture(1, (0,))
        assert gate.take_capture(1) == {0: [[1, 2], [3]]}
        items = [gate.poll()[1] for _ in range(4)]
        assert items[0] == [1, 2] and type(items[1]) is Watermark
        assert items[1].timestamp == 1000 and items[2] == [3] and type(items[3]) is Marker

    import asyncio

    asyncio.run(go())


def test_window_needs_event_time_and_assign_timestamps_follows_the_source():
    p = Pipeline()
    with pytest.raises(PipelineError, match="assign_timestamps"):
        p.source(GeneratorSource(10)).key_by(str).window(1000)
    p = Pipeline()
    with pytest.raises(PipelineError, match="directly follow source"):
        p.source(GeneratorSource(10)).map(str).assign_timestamps(len)
    p = Pipeline()
    (p.source(GeneratorSource(10)).assign_timestamps(lambda g: g, 5)
      .key_by(lambda g: g % 3).window(1000).sum().map(str).sink(PrintSink()))
    p.validate()
    assert [t["input"] for t in p.describe()] == ["source", "keyed"]
    assert math.isinf(MAX_WATERMARK)
