"""The Kafka connectors' decisions, without a broker: which subtask reads which partition,
the transactional id scheme and what a restore must finish, lag, per-partition watermarks."""

from __future__ import annotations

import math

import pytest

from streamjob.connectors.base import assign_splits
from streamjob.connectors.kafkabase import KafkaConnectError
from streamjob.connectors.kafkasink import (
    SLOTS,
    KafkaSink,
    TransactionalWriter,
    _Slot,
    default_prefix,
    fence_ids,
    marker_group,
    to_finish,
    to_reproduce,
    transactional_id,
)
from streamjob.connectors.kafkasource import (
    KafkaSource,
    PartitionWatermarks,
    consumer_lag,
    discovered_owner,
    parse_split,
    split_id,
)
from streamjob.windows import IDLE, MIN_WATERMARK, WatermarkTracker


def test_eight_partitions_over_three_subtasks_each_read_by_exactly_one():
    splits = [split_id("words", p) for p in range(8)]
    owned = [assign_splits(splits, i, 3) for i in range(3)]
    assert owned == [["words:0", "words:3", "words:6"], ["words:1", "words:4", "words:7"],
                     ["words:2", "words:5"]]
    for p in (2, 5, 8, 11):  # rescale: every partition still has exactly one owner
        owners = [s for i in range(p) for s in assign_splits(splits, i, p)]
        assert sorted(owners) == sorted(splits)
    assert [assign_splits(splits, i, 11) for i in (8, 9, 10)] == [[], [], []]  # idle ones


def test_split_ids_round_trip_topic_names_with_colons():
    assert parse_split(split_id("a:b", 7)) == ("a:b", 7)


def test_a_discovered_partition_has_the_same_single_owner_in_every_reader():
    for p in (1, 3, 5):
        owners = {discovered_owner("words:8", p) for _ in range(3)}
        assert len(owners) == 1 and 0 <= owners.pop() < p


def test_start_positions_are_validated():
    with pytest.raises(ValueError, match="start must be"):
        KafkaSource("t", "b:1", start="newest")
    with pytest.raises(ValueError, match="group_id"):
        KafkaSource("t", "b:1", start="group")
    src = KafkaSource("t", "b:1", start=1_700_000_000_000, bounded=True)
    assert src.initial_position("t:0") == {"start": 1_700_000_000_000, "bounded": True}


def test_lag_is_records_between_position_and_high_watermark():
    assert consumer_lag(1000, 400) == 600
    assert consumer_lag(1000, 1000) == 0
    assert consumer_lag(5, 7) == 0  # position past the cached high watermark


def test_transactional_ids_derive_from_job_subtask_and_slot():
    prefix = default_prefix("wordcount-1a2b3c4d")
    assert prefix == default_prefix("wordcount-1a2b3c4d")  # a restored job finds its ids
    assert prefix != default_prefix("wordcount-ffffffff")  # another job never fences ours
    assert transactional_id(prefix, 2, 5) == f"{prefix}-2-5"
    assert marker_group(prefix, 2) == f"{prefix}-2"


def test_a_restored_writer_fences_its_slots_and_the_old_subtasks_handed_to_it():
    pending = [{"id": "old-4-0", "group": "old-4", "epoch": 9},
               {"id": "p-1-3", "group": "p-1", "epoch": 9}]
    ids = fence_ids("p", 1, pending)
    assert ids[:SLOTS] == [f"p-1-{k}" for k in range(SLOTS)]
    assert ids[SLOTS:] == ["old-4-0"]  # own slot 3 is fenced once
    # With the old subtasks' numbers, every slot of theirs: also those not in the snapshot
    # (a transaction a crash left open there would otherwise hold readers back).
    ids = fence_ids("p", 1, pending, old_subtasks=[1, 4])
    assert ids[SLOTS:] == ["old-4-0"] + [f"p-4-{k}" for k in range(SLOTS)]


def test_restore_finishes_exactly_the_transactions_above_their_marker():
    pending = [{"id": "p-0-0", "group": "p-0", "epoch": 7},
               {"id": "p-0-1", "group": "p-0", "epoch": 8},
               {"id": "p-1-0", "group": "p-1", "epoch": 8},
               {"id": "p-2-0", "group": "p-2", "epoch": 8}]
    # p-0 committed epoch 7 before the crash, p-1 committed 8, p-2 never committed anything
    redo = to_finish(pending, {"p-0": 7, "p-1": 8, "p-2": -1001})
    assert [(t["id"], t["epoch"]) for t in redo] == [("p-0-1", 8), ("p-2-0", 8)]
    assert to_finish(pending, {"p-0": 8, "p-1": 8, "p-2": 8}) == []


def test_only_partitions_where_no_record_of_the_epoch_is_visible_are_produced_again():
    txn = {"id": "p-0-1", "epoch": 8, "ranges": [[0, 10, 19, 10], [3, 5, 5, 1], [6, 0, 4, 5]]}
    # Committed on partition 3 before the broker crashed, aborted (or closed) on 0 and 6.
    assert to_reproduce(txn, {0: 0, 3: 1}) == [0, 6]
    assert to_reproduce(txn, {0: 10, 3: 1, 6: 5}) == []  # all visible: never again
    with pytest.raises(RuntimeError, match="4 of its 10 record"):
        to_reproduce(txn, {0: 4})  # part of a partition: the log is not what we wrote


def test_partition_watermarks_are_the_minimum_of_active_partitions():
    wm = PartitionWatermarks(["t:0", "t:1"], max_out_of_orderness=100, idle_timeout=5.0,
                             now=0.0)
    assert wm.current(0.1) == MIN_WATERMARK  # t:1 has no record yet: it holds back
    wm.observe("t:0", 10_000, 1.0)
    wm.observe("t:1", 4_000, 1.0)
    assert wm.current(1.0) == 3_900
    wm.observe("t:0", 12_000, 5.5)
    assert wm.current(5.5) == 3_900  # t:1 active 4.5 s ago: still counts
    assert wm.current(6.5) == 11_900  # t:1 idle: left out
    wm.observe("t:1", 5_000, 7.0)
    assert wm.current(7.0) == 4_900  # active again: back in (downstream never goes back)
    assert math.isnan(wm.current(20.0))  # all idle


def test_a_reader_without_partitions_is_idle_at_once():
    assert math.isnan(PartitionWatermarks([], 0, 5.0, now=0.0).current(0.0))


def test_idle_channels_do_not_hold_back_the_minimum():
    t = WatermarkTracker(3)
    assert t.update(0, 1_000) is None
    assert t.update(2, IDLE) is None  # channels 0 and 1 remain; 1 has nothing yet
    assert t.update(1, 2_000) == 1_000
    assert t.update(0, 5_000) == 2_000
    assert t.update(1, IDLE) == 5_000  # only channel 0 is active
    assert t.update(2, 3_000) is None  # back, behind: the watermark does not go back
    assert t.update(0, IDLE) is None
    assert t.update(2, 6_000) == 6_000
    assert math.isnan(t.update(2, IDLE))  # every input idle: the subtask's output is idle
    assert t.update(1, IDLE) is None  # already idle: nothing new


class _Delivered:
    """A delivery report's message, as librdkafka hands it to ``on_delivery``."""

    def __init__(self, partition: int, offset: int | None):
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int | None:
        return self._offset


class _BrokerlessProducer:
    """Stands in for the slot's producer: the test drives the delivery reports itself."""

    def begin_transaction(self) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 0


def _slot_without_broker() -> _Slot:
    slot = _Slot.__new__(_Slot)
    slot.txid, slot.producer = "streamjob-test-0-0", _BrokerlessProducer()
    slot.begin()
    return slot


def test_a_delivery_report_without_an_offset_never_raises_into_librdkafka():
    # librdkafka reports a retried batch the broker had already written (error
    # DUPLICATE_SEQUENCE_NUMBER, or acknowledged by a later batch) as delivered with offset
    # -1, which confluent-kafka turns into None. An exception out of the callback is raised
    # inside poll/flush (or, with older clients, a SystemError at the next report).
    slot = _slot_without_broker()
    slot._delivered(None, _Delivered(0, 5))
    slot._delivered(None, _Delivered(0, None))
    slot._delivered(None, _Delivered(0, 7))
    slot._delivered(None, _Delivered(1, None))
    assert slot.ranges == {0: [5, 7, 2]}
    assert slot.errors == []


def test_an_epoch_with_a_record_of_unknown_offset_fails_its_staging_so_it_is_written_again():
    # The snapshot must name the offsets of every record of a pre-committed transaction
    # (restore step 3 reads them back): without them the epoch cannot be pre-committed.
    sink = KafkaSink("out", "127.0.0.1:1")
    writer = TransactionalWriter(sink, 0, "streamjob-test")
    writer.restored = True
    writer.current = slot = _slot_without_broker()
    slot._delivered(None, _Delivered(3, 10))
    slot._delivered(None, _Delivered(3, None))
    with pytest.raises(KafkaConnectError, match="1 record.* without an offset"):
        writer.pre_commit(4)()
    assert writer.pending == {}  # not pre-committed: the restore aborts it, the job replays


def test_a_delivery_report_that_cannot_be_read_is_an_error_of_the_epoch_not_of_librdkafka():
    class Broken(_Delivered):
        def partition(self) -> int:
            raise RuntimeError("message object gone")

    slot = _slot_without_broker()
    slot._delivered(None, Broken(0, 1))  # no exception into librdkafka's poll or flush
    assert len(slot.errors) == 1 and "message object gone" in str(slot.errors[0])
    writer = TransactionalWriter(KafkaSink("out", "127.0.0.1:1"), 0, "streamjob-test")
    writer.restored, writer.current = True, slot
    with pytest.raises(KafkaConnectError, match="message object gone"):
        writer.pre_commit(1)()
