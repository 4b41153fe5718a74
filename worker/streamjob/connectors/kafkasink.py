"""A Kafka sink: exactly once with one Kafka transaction per subtask per checkpoint, or at
least once with an idempotent producer.

Exactly once (two-phase commit, as Flink's ``KafkaSink``):

- Records of an epoch (between two barriers) go into one open transaction. At barrier n the
  producer flushes, and the transaction also commits the offset ``n`` of the *marker group*
  ``<prefix>-<subtask>`` (on partition 0 of the output topic): pre-commit. When checkpoint n
  completes, the transactions of epochs up to n commit, in order.
- Transactional ids are ``<prefix>-<subtask>-<slot>`` (prefix ``streamjob-<job token>``):
  a subtask has at most :data:`SLOTS` transactions open at once (the current epoch and those
  waiting for their checkpoint), each in a slot whose producer is reused after its commit.
  More epochs waiting than that (checkpoints failing in a row) fails the job, which restores.
- The snapshot of checkpoint n holds, for every transaction pre-committed and not committed
  yet, its id, epoch, marker group and the offsets of its records per partition.

On restore from checkpoint n, the writer that takes over an old subtask (``old % p``):

1. fences: ``init_transactions`` on every slot id of its own subtask, of each old subtask
   handed to it, and on every id in the snapshot. That aborts whatever the crashed attempt
   left open and fences zombies (a producer of the old attempt can no longer commit).
2. closes: a transaction of the snapshot whose epoch is above the marker group's committed
   offset did not commit as a whole. For each, one transaction on its id writes an empty
   record (header ``streamjob.close``) to each of its partitions and the marker group's
   offset, then aborts. A broker that crashed after deciding a commit but before writing
   its markers can come back with the transaction finished in its coordinator and still
   open in the partitions (it skips markers for partitions without a leader while it
   starts): nothing ends it until the next transaction of the same producer id, whose
   commit would then make it visible too (after a re-produce: twice). The abort ends it
   now, on every partition, so what follows reads a settled log.
3. finishes the commit: for each of those transactions the writer waits until the last
   stable offset of each of its partitions is past its records, counts them with
   ``read_committed`` (the transaction's nonce in a ``streamjob.txn`` header tells them
   from other producers' records) and, for the partitions where none is visible, reads
   them back with ``read_uncommitted`` and produces them again, in one transaction that
   also sets the marker to the epoch. So an epoch that is visible is never produced again,
   and the marker makes this idempotent: a crash during the re-produce leaves the marker
   below the epoch, and the next restore does it again.

confluent-kafka cannot resume another producer's transaction by id (Flink does it by
reflection), so "commit on restore" re-produces instead: the output of a completed checkpoint
is never lost, and appears exactly once to ``read_committed`` consumers. Transactions of
epochs after n are aborted at step 1 and their records replayed by the restored job.

``transaction_timeout_ms`` must exceed the longest wait from a barrier to the commit (the
checkpoint interval plus its duration, plus a restart): the broker aborts transactions that
stay open longer; then the commit fails, the job restores, and step 2 re-produces them (so
nothing is lost, but it costs a restart). It must also be at most the broker's
``transaction.max.timeout.ms`` (15 minutes by default). A transaction the restore cannot
name (a slot of a subtask beyond the current parallelism that a crashed attempt left open)
holds back ``read_committed`` consumers until the broker's timeout aborts it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from streamjob import faults
from streamjob.connectors.filesink import job_token
from streamjob.connectors.kafkabase import (
    DEFAULT_TIMEOUT,
    KafkaConnectError,
    client_config,
    topic_partitions,
)

log = logging.getLogger("streamjob.kafka")

SLOTS = 8  # transactions a subtask may have open at once (see the module doc)
NONCE_HEADER = "streamjob.txn"
CLOSE_HEADER = "streamjob.close"  # the empty records of restore step 2 (always aborted)
GUARANTEES = ("exactly-once", "at-least-once")
STATE_VERSION = 1
SETTLE_TIMEOUTS = 3  # restore waits this many sink timeouts for a partition to settle


def transactional_id(prefix: str, subtask: int, slot: int) -> str:
    return f"{prefix}-{subtask}-{slot}"


def marker_group(prefix: str, subtask: int) -> str:
    return f"{prefix}-{subtask}"


def default_prefix(job_id: str) -> str:
    return f"streamjob-{job_token(job_id)}"


def to_finish(pending: list[dict[str, Any]], markers: dict[str, int]) -> list[dict[str, Any]]:
    """The pre-committed transactions of a snapshot that never committed: epoch above the
    committed marker of their group (-1: none), in epoch order."""
    return sorted((t for t in pending if t["epoch"] > markers.get(t["group"], -1)),
                  key=lambda t: (t["group"], t["epoch"]))


def fence_ids(prefix: str, subtask: int, pending: list[dict[str, Any]],
              old_subtasks: list[int] | None = None) -> list[str]:
    """Every transactional id a restored writer must fence: its own slots, then the slots of
    the old subtasks handed to it and the ids of the snapshot's transactions."""
    own = [transactional_id(prefix, subtask, k) for k in range(SLOTS)]
    old = {transactional_id(prefix, i, k) for i in old_subtasks or [] for k in range(SLOTS)}
    return own + sorted((old | {t["id"] for t in pending}) - set(own))


def to_reproduce(txn: dict[str, Any], visible: dict[int, int]) -> list[int]:
    """The partitions of a transaction whose records must be produced again: those where
    none of them is visible to ``read_committed`` readers. A transaction commits or aborts
    on a partition as a whole, so a part of its records visible there means the log is not
    what the snapshot says (records removed by retention): an error, never a guess."""
    out = []
    for partition, _first, _last, count in txn["ranges"]:
        seen = visible.get(partition, 0)
        if seen == 0:
            out.append(partition)
        elif seen != count:
            raise KafkaConnectError(
                f"the output of checkpoint {txn['epoch']} ({txn['id']}) in partition "
                f"{partition}: {seen} of its {count} record(s) are committed; cannot finish it")
    return out


def _encode(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


class KafkaSink:
    def __init__(self, topic: str, bootstrap: str, guarantee: str = "exactly-once",
                 key_fn: Callable[[Any], Any] | None = None,
                 serializer: Callable[[Any], bytes] = _encode,
                 transactional_id_prefix: str | None = None,
                 transaction_timeout_ms: int = 600_000, timeout: float = DEFAULT_TIMEOUT,
                 config: dict[str, Any] | None = None):
        if guarantee not in GUARANTEES:
            raise ValueError(f"guarantee must be one of {', '.join(GUARANTEES)}, "
                             f"got {guarantee!r}")
        self.topic, self.bootstrap, self.guarantee = topic, bootstrap, guarantee
        self.key_fn, self.serializer = key_fn, serializer
        self.prefix, self.transaction_timeout_ms = transactional_id_prefix, transaction_timeout_ms
        self.timeout, self.config = float(timeout), dict(config or {})

    def producer_config(self, extra: dict[str, Any]) -> dict[str, Any]:
        return client_config(self.bootstrap, {"enable.idempotence": True, "acks": "all",
                                              "linger.ms": 5, **self.config, **extra})

    def create_writer(self, subtask: int, job_id: str) -> Any:
        if self.guarantee == "at-least-once":
            return AtLeastOnceWriter(self)
        return TransactionalWriter(self, subtask, self.prefix or default_prefix(job_id))

    def recover(self, job_id: str, checkpoint_id: int | None) -> None:
        """Nothing here: the transactions to finish are in the restored snapshot, which the
        writers get (``TransactionalWriter.restore``) before they write anything."""

    def committed_after(self, job_id: str, checkpoint_id: int) -> list[str]:
        return []  # records in a topic cannot be moved aside; see docs/kafka.md

    def set_aside(self, job_id: str, checkpoint_id: int) -> str | None:
        return None


class _Writer:
    """Producing records (with a bounded local queue) and checking their delivery."""

    def __init__(self, sink: KafkaSink):
        self.sink = sink
        self.key_fn, self.serializer = sink.key_fn, sink.serializer

    def restore(self, states: list[dict[str, Any]]) -> None:
        topic_partitions(self.sink.bootstrap, [self.sink.topic], self.sink.timeout,
                         self.sink.config)

    def _produce(self, producer: Any, batch: list[Any], headers: Any = None) -> None:
        topic, key_fn, ser = self.sink.topic, self.key_fn, self.serializer
        for record in batch:
            value = ser(record)
            key = _encode(key_fn(record)) if key_fn is not None else None
            while True:
                try:
                    producer.produce(topic, value, key, headers=headers)
                    break
                except BufferError:  # local queue full: wait for deliveries
                    producer.poll(0.05)
        producer.poll(0)

    def _flush(self, producer: Any, errors: list[Any]) -> None:
        left = producer.flush(self.sink.timeout)
        if left:
            raise KafkaConnectError(f"{left} record(s) not delivered to {self.sink.topic} at "
                                    f"{self.sink.bootstrap} within {self.sink.timeout:g}s")
        if errors:
            raise KafkaConnectError(f"delivery to {self.sink.topic} at {self.sink.bootstrap} "
                                    f"failed: {errors[0]}")


class AtLeastOnceWriter(_Writer):
    """Idempotent producer; at each barrier every record sent so far is acknowledged, so a
    restore replays at most what came after the last checkpoint (duplicates, no gap)."""

    def __init__(self, sink: KafkaSink):
        from confluent_kafka import Producer

        super().__init__(sink)
        self.errors: list[Any] = []
        self.producer = Producer(sink.producer_config({"on_delivery": self._delivered}))

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(err)

    def write(self, batch: list[Any]) -> None:
        self._produce(self.producer, batch)

    def pre_commit(self, checkpoint_id: int) -> Callable[[], None]:
        return lambda: self._flush(self.producer, self.errors)

    def commit(self, checkpoint_id: int) -> None:
        pass

    def close(self) -> None:
        self.producer.flush(0)


class _Slot:
    """One transactional producer, reused for one transaction after another."""

    def __init__(self, sink: KafkaSink, txid: str):
        from confluent_kafka import Producer

        self.txid = txid
        self.nonce = b""
        self.ranges: dict[int, list[int]] = {}  # partition -> [first, last, count]
        self.errors: list[Any] = []
        self.unplaced = 0  # records delivered without an offset (see _delivered)
        self.producer = Producer(sink.producer_config({
            "transactional.id": txid, "on_delivery": self._delivered,
            "transaction.timeout.ms": sink.transaction_timeout_ms}))
        _init(self.producer, sink, txid)  # fences older producers of this id

    def _delivered(self, err: Any, msg: Any) -> None:
        """librdkafka's delivery report, called inside ``poll``, ``flush`` and the
        transaction calls on whichever thread makes them. It never raises: an exception
        here comes out of librdkafka's call in the middle of its work (older clients: a
        ``SystemError`` at the next report). What goes wrong is recorded instead, and the
        flush of the epoch (``pre_commit``, on the sink's thread) raises it."""
        try:
            if err is not None:
                self.errors.append(err)
                return
            partition, offset = msg.partition(), msg.offset()
            if offset is None:
                # Delivered at an unknown offset: librdkafka reports so a retried batch that
                # the broker had written already (DUPLICATE_SEQUENCE_NUMBER, or acknowledged
                # by a later batch), e.g. while a broker restarts.
                self.unplaced += 1
                return
            r = self.ranges.get(partition)
            if r is None:
                self.ranges[partition] = [offset, offset, 1]
            else:
                r[0], r[1], r[2] = min(r[0], offset), max(r[1], offset), r[2] + 1
        except Exception as exc:  # noqa: BLE001 - never into librdkafka (see above)
            self.errors.append(f"unreadable delivery report: {exc!r}")

    def begin(self) -> None:
        self.nonce, self.ranges, self.errors, self.unplaced = os.urandom(8), {}, [], 0
        self.producer.begin_transaction()


def _init(producer: Any, sink: KafkaSink, txid: str) -> None:
    from confluent_kafka import KafkaException

    try:
        producer.init_transactions(sink.timeout)
    except KafkaException as err:
        raise KafkaConnectError(f"cannot start transactions ({txid}) at {sink.bootstrap} "
                                f"within {sink.timeout:g}s: {err}") from None


class TransactionalWriter(_Writer):
    def __init__(self, sink: KafkaSink, subtask: int, prefix: str):
        super().__init__(sink)
        self.subtask, self.prefix = subtask, prefix
        self.group = marker_group(prefix, subtask)
        self.free: list[_Slot] = []
        self.used: set[int] = set()  # slot numbers taken by the current and pending epochs
        self.slot_of: dict[str, int] = {}
        self.current: _Slot | None = None
        self.pending: dict[int, _Slot] = {}  # epoch (checkpoint id) -> pre-committed
        self.lock = threading.Lock()
        self._group_metadata: dict[str, Any] = {}
        self.restored = False

    # -- restore: fence, then finish what a crash interrupted -----------------------------

    def restore(self, states: list[dict[str, Any]]) -> None:
        super().restore(states)
        pending = [t for s in states for t in s.get("pending", [])]
        old = sorted({s["subtask"] for s in states if "subtask" in s})
        ids = fence_ids(self.prefix, self.subtask, pending, old)
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            slots = dict(zip(ids, pool.map(lambda i: _Slot(self.sink, i), ids), strict=True))
            markers = self._markers({t["group"] for t in pending})
            redo = to_finish(pending, markers)
            # Step 2 before the log is read: see the module doc.
            list(pool.map(lambda t: self._close(slots[t["id"]], t), redo))
        for t in redo:
            partitions = to_reproduce(t, visible_records(self.sink, t))
            self._reproduce(slots[t["id"]], t, partitions)
        own = {transactional_id(self.prefix, self.subtask, k): k for k in range(SLOTS)}
        self.free = [slots[i] for i in own]
        self.slot_of = own
        self.restored = True
        if pending or redo:
            log.warning("kafka sink %d: fenced %d transactional ids, finished %d "
                        "transaction(s) of completed checkpoints in %.2fs (epochs %s, "
                        "markers %s)", self.subtask, len(ids), len(redo),
                        time.monotonic() - t0, [t["epoch"] for t in pending], markers)

    def _close(self, slot: _Slot, txn: dict[str, Any]) -> None:
        """Restore step 2: end whatever of ``txn`` a broker crash left open (module doc)."""
        from confluent_kafka import KafkaException

        slot.begin()
        for partition, *_ in txn["ranges"]:
            slot.producer.produce(self.sink.topic, b"", None, partition=partition,
                                  headers=[(CLOSE_HEADER, txn["nonce"])])
        try:
            self._flush(slot.producer, slot.errors)  # the partitions join the transaction
            self._send_marker(slot, txn["group"], txn["epoch"])
            slot.producer.abort_transaction(self.sink.timeout)
        except KafkaException as err:
            raise KafkaConnectError(f"cannot close {txn['id']} (epoch {txn['epoch']}) at "
                                    f"{self.sink.bootstrap}: {err}") from None

    def _markers(self, groups: set[str]) -> dict[str, int]:
        from confluent_kafka import Consumer, TopicPartition

        out = {}
        for group in sorted(groups):
            # read_uncommitted: the group's committed offsets only, without waiting for
            # "stable" offsets (librdkafka's read_committed consumers ask the broker to hold
            # the answer while any transaction with offsets for the group is open). After
            # the fencing every transaction of our ids has finished, so committed is final.
            c = Consumer(client_config(self.sink.bootstrap, {
                "group.id": group, "enable.auto.commit": False,
                "isolation.level": "read_uncommitted"}))
            try:
                got = c.committed([TopicPartition(self.sink.topic, 0)], timeout=self.sink.timeout)
                out[group] = got[0].offset
            except Exception as err:  # noqa: BLE001 - KafkaException, a timeout
                raise KafkaConnectError(f"cannot read the commit marker of {group} at "
                                        f"{self.sink.bootstrap} within "
                                        f"{self.sink.timeout:g}s: {err}") from None
            finally:
                c.close()
        return out

    def _reproduce(self, slot: _Slot, txn: dict[str, Any], partitions: list[int]) -> None:
        """Produce again, in one transaction with the marker, the records ``txn`` has in
        ``partitions`` (none visible there; see the module doc, step 3). With no partition
        (every record visible) the transaction only moves the marker."""
        records = read_transaction(self.sink, txn, partitions)
        slot.begin()
        for key, value, headers, ts, partition in records:
            slot.producer.produce(self.sink.topic, value, key, partition=partition,
                                  timestamp=ts, headers=headers)
            slot.producer.poll(0)
        self._flush(slot.producer, slot.errors)
        self._send_marker(slot, txn["group"], txn["epoch"])
        _commit(slot, self.sink)
        log.warning("kafka sink %d: re-produced %d record(s) of %s (epoch %d) in partitions "
                    "%s", self.subtask, len(records), txn["id"], txn["epoch"], partitions)

    def _send_marker(self, slot: _Slot, group: str, epoch: int) -> None:
        from confluent_kafka import Consumer, TopicPartition

        meta = self._group_metadata.get(group)
        if meta is None:
            c = Consumer(client_config(self.sink.bootstrap, {"group.id": group}))
            meta = self._group_metadata[group] = c.consumer_group_metadata()
            c.close()
        slot.producer.send_offsets_to_transaction(
            [TopicPartition(self.sink.topic, 0, epoch)], meta, self.sink.timeout)

    # -- epochs ---------------------------------------------------------------------------

    def _begin(self) -> _Slot:
        if not self.restored:
            self.restore([])  # a fresh start: fence our ids all the same
        with self.lock:
            if not self.free:
                raise RuntimeError(f"{SLOTS} Kafka transactions of subtask {self.subtask} are "
                                   f"waiting for their checkpoints to complete; checkpoints "
                                   f"are failing (restarting from the last completed one)")
            slot = self.free.pop(0)
        slot.begin()
        return slot

    def write(self, batch: list[Any]) -> None:
        if self.current is None:
            self.current = self._begin()
        self._produce(self.current.producer, batch, [(NONCE_HEADER, self.current.nonce)])

    def pre_commit(self, checkpoint_id: int) -> Callable[[], dict[str, Any]]:
        slot, self.current = self.current, None

        def finish() -> dict[str, Any]:
            if slot is not None:
                self._flush(slot.producer, slot.errors)
                if slot.unplaced:
                    # The snapshot must name where every record is (restore step 3 reads
                    # them back): fail the staging; the restore aborts the transaction and
                    # the epoch is written again.
                    raise KafkaConnectError(
                        f"{slot.unplaced} record(s) of checkpoint {checkpoint_id} were "
                        f"delivered to {self.sink.topic} without an offset (a retried send "
                        f"the broker had written already); restoring to write them again")
                self._send_marker(slot, self.group, checkpoint_id)
                with self.lock:
                    self.pending[checkpoint_id] = slot
            with self.lock:
                return {"version": STATE_VERSION, "subtask": self.subtask, "pending": [
                    {"id": s.txid, "group": self.group, "epoch": n, "nonce": s.nonce,
                     "ranges": [[p, *r] for p, r in sorted(s.ranges.items())]}
                    for n, s in sorted(self.pending.items())]}

        return finish

    def commit(self, checkpoint_id: int) -> None:
        with self.lock:
            ready = sorted(n for n in self.pending if n <= checkpoint_id)
        for n in ready:
            slot = self.pending[n]
            faults.point("sink.before-commit")
            _commit(slot, self.sink)
            faults.point("sink.during-commit")
            with self.lock:
                del self.pending[n]
                self.free.append(slot)

    def close(self) -> None:
        # Open transactions stay open: the next restore fences (aborts) them or, for those
        # of completed checkpoints, produces their records again.
        for slot in [*self.free, *self.pending.values(),
                     *([self.current] if self.current else [])]:
            slot.producer.flush(0)


def _commit(slot: _Slot, sink: KafkaSink) -> None:
    """``commit_transaction``, called again on a retriable error (a timeout, a coordinator
    moving): librdkafka then resumes the same commit, whose outcome is unknown until it
    answers. Any other error, or no answer within three timeouts, fails the job; the
    restore then reads the outcome from the log (module doc, steps 2 and 3)."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + SETTLE_TIMEOUTS * sink.timeout
    while True:
        try:
            slot.producer.commit_transaction(sink.timeout)
            return
        except KafkaException as exc:
            err = exc.args[0]
            if not err.retriable() or time.monotonic() > deadline:
                raise
            log.warning("kafka sink: commit of %s: %s; retrying", slot.txid, err.str())


def visible_records(sink: KafkaSink, txn: dict[str, Any]) -> dict[int, int]:
    """Per partition of ``txn``: how many of its records ``read_committed`` readers see,
    once the partition's last stable offset is past them (no transaction open before its
    last record, so the answer is final)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer(client_config(sink.bootstrap, {
        "group.id": f"{txn['group']}-reader", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True}))
    out: dict[int, int] = {}
    wait = SETTLE_TIMEOUTS * sink.timeout
    try:
        for partition, first, last, _count in txn["ranges"]:
            tp = TopicPartition(sink.topic, partition)
            deadline = time.monotonic() + wait
            # read_committed: the "high" offset is the last stable offset.
            while c.get_watermark_offsets(tp, timeout=sink.timeout)[1] <= last:
                if time.monotonic() > deadline:
                    raise KafkaConnectError(
                        f"{sink.topic}[{partition}] at {sink.bootstrap}: a transaction is "
                        f"still open before offset {last} after {wait:g}s (the output of "
                        f"checkpoint {txn['epoch']}, {txn['id']}, cannot be checked)")
                time.sleep(0.1)  # polling the broker's answer, bounded by the deadline
            c.assign([TopicPartition(sink.topic, partition, first)])
            seen, deadline = 0, time.monotonic() + wait
            while True:
                if time.monotonic() > deadline:
                    raise KafkaConnectError(f"cannot read {sink.topic}[{partition}] at "
                                            f"{sink.bootstrap} within {wait:g}s")
                m = c.poll(0.2)
                if m is None:
                    continue
                if m.partition() != partition:  # left over from the previous assignment
                    continue
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        break
                    continue
                if m.offset() > last:
                    break
                if (NONCE_HEADER, txn["nonce"]) in (m.headers() or []):
                    seen += 1
            out[partition] = seen
    finally:
        c.close()
    return out


def read_transaction(sink: KafkaSink, txn: dict[str, Any],
                     partitions: list[int] | None = None) -> list[tuple[Any, ...]]:
    """The records of an aborted transaction: ``(key, value, headers, timestamp, partition)``
    in offset order per partition, from the ranges and nonce of the snapshot (only those in
    ``partitions`` if given)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer(client_config(sink.bootstrap, {
        "group.id": f"{txn['group']}-reader", "enable.auto.commit": False,
        "isolation.level": "read_uncommitted", "enable.partition.eof": True}))
    out: list[tuple[Any, ...]] = []
    try:
        for partition, first, last, count in txn["ranges"]:
            if partitions is not None and partition not in partitions:
                continue
            c.assign([TopicPartition(sink.topic, partition, first)])
            found: list[tuple[Any, ...]] = []
            deadline = time.monotonic() + sink.timeout
            offset = first - 1
            while offset < last:
                if time.monotonic() > deadline:
                    break
                m = c.poll(0.2)
                if m is None or m.partition() != partition:
                    continue
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        break
                    continue
                offset = m.offset()
                if offset > last:
                    break
                headers = m.headers() or []
                if (NONCE_HEADER, txn["nonce"]) in headers:
                    found.append((m.key(), m.value(), headers, m.timestamp()[1], partition))
            if len(found) != count:
                raise KafkaConnectError(
                    f"the output of checkpoint {txn['epoch']} ({txn['id']}) cannot be "
                    f"committed: {len(found)} of its {count} record(s) in {sink.topic}"
                    f"[{partition}] are left (topic retention removed them?)")
            out += found
    finally:
        c.close()
    return out
