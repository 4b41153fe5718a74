"""A Kafka source: topic partitions are the source splits, offsets live in checkpoints.

Split ``"<topic>:<partition>"`` k (topics in the order given, partitions ascending) belongs
to subtask ``k % p`` like every split (:func:`streamjob.connectors.base.assign_splits`). A
split's position is ``{"offset": next offset to read, "end": stop offset or None}``; the
reader ``assign()``s exactly its partitions at those offsets (never ``subscribe()``: the
consumer group does not decide who reads what). On restore and rescale the positions travel
with the checkpoint, so a partition moves to its new subtask with its offset. The consumer
group's offsets are committed only after a checkpoint completes, and only for monitoring
(``group_id`` given): they are never read back, except by ``start="group"`` on a fresh start.

A position not yet resolved is ``{"start": ...}`` (``earliest``, ``latest``, ``group``, or a
timestamp in ms); the reader resolves it to an offset when it is created, and the first
checkpoint freezes it. ``bounded=True`` stops each partition at the end offset it had when
the job started (Flink's ``setBounded(OffsetsInitializer.latest())``): that end offset is part
of the position, so a restore stops at the same place and the job finishes, commits and exits.

New partitions: the splits of a job are fixed when an attempt starts (``split_ids`` is read
at every deploy, so partitions added meanwhile are picked up at the next restore). While the
job runs, each reader also lists the topics every ``discovery_interval`` seconds and starts
reading, from the earliest offset, each new partition whose owner is
``crc32(split) % p``: all readers decide alike without talking to each other, and the new
partition's position is in the next checkpoint, from where the usual ``k % p`` takes over.

Event time (``event_time="kafka"`` for the record timestamp, or a function of the
deserialized record, in ms): watermarks are kept per partition (largest timestamp minus
``max_out_of_orderness``) and combined by minimum; a partition without records for
``idle_timeout`` seconds does not hold the minimum back, and a reader whose partitions are
all idle (or that owns none) marks its output idle (:data:`streamjob.windows.IDLE`), so
downstream windows are not stalled by it.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable
from typing import Any

from streamjob.connectors.kafkabase import (
    DEFAULT_TIMEOUT,
    KafkaConnectError,
    client_config,
    topic_partitions,
)
from streamjob.windows import IDLE, MIN_WATERMARK, WatermarkStrategy

log = logging.getLogger("streamjob.kafka")

STARTS = ("earliest", "latest", "group")
_TOPIC_GONE = (3, 29)  # UNKNOWN_TOPIC_OR_PART, TOPIC_AUTHORIZATION_FAILED


def split_id(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def parse_split(split: str) -> tuple[str, int]:
    topic, _, partition = split.rpartition(":")
    return topic, int(partition)


def discovered_owner(split: str, parallelism: int) -> int:
    """Owner of a partition found while the job runs: the same answer in every reader."""
    return zlib.crc32(split.encode()) % parallelism


def consumer_lag(high: int, position: int) -> int:
    """Records of a partition not read yet (``high`` is its high watermark offset)."""
    return max(0, high - position)


def utf8(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


class PartitionWatermarks:
    """Per-partition watermarks combined by minimum, with idle partitions left out.

    ``observe`` notes a record's event time on its partition; ``current`` is the minimum over
    partitions that had a record within ``idle_timeout`` seconds (a partition that never had
    one counts as active, holding the minimum at its start, until ``idle_timeout`` after the
    reader started), :data:`IDLE` when every partition is idle or there is none. Pure logic:
    the caller passes the clock."""

    def __init__(self, splits: list[str], max_out_of_orderness: int, idle_timeout: float,
                 now: float):
        self.bound, self.idle_timeout = max_out_of_orderness, idle_timeout
        self.max_ts: dict[str, float] = {s: MIN_WATERMARK for s in splits}
        self.active_at: dict[str, float] = {s: now for s in splits}

    def add(self, split: str, now: float) -> None:
        self.max_ts.setdefault(split, MIN_WATERMARK)
        self.active_at.setdefault(split, now)

    def observe(self, split: str, timestamp: float, now: float) -> None:
        if timestamp > self.max_ts[split]:
            self.max_ts[split] = timestamp
        self.active_at[split] = now

    def current(self, now: float) -> float:
        active = [ts for s, ts in self.max_ts.items()
                  if now - self.active_at[s] < self.idle_timeout]
        if not active:
            return IDLE
        low = min(active)
        return low if low == MIN_WATERMARK else low - self.bound


class KafkaSource:
    def __init__(self, topics: str | list[str], bootstrap: str, start: str | int = "earliest",
                 bounded: bool = False, group_id: str | None = None, rate: float = 0,
                 value_deserializer: Callable[[bytes | None], Any] = utf8,
                 event_time: str | Callable[[Any], int] | None = None,
                 max_out_of_orderness: int = 0, idle_timeout: float = 5.0,
                 watermark_interval: float = 0.2, dead_letter_topic: str | None = None,
                 discovery_interval: float = 10.0, timeout: float = DEFAULT_TIMEOUT,
                 config: dict[str, Any] | None = None):
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("KafkaSource needs at least one topic")
        if not (start in STARTS or (isinstance(start, int) and not isinstance(start, bool)
                                    and start >= 0)):
            raise ValueError(f"start must be one of {', '.join(STARTS)} or a timestamp in ms, "
                             f"got {start!r}")
        if start == "group" and not group_id:
            raise ValueError('start="group" needs a group_id')
        if event_time is not None and event_time != "kafka" and not callable(event_time):
            raise ValueError('event_time must be "kafka", a function of the record, or None')
        self.bootstrap, self.start, self.bounded = bootstrap, start, bool(bounded)
        self.rate = float(rate)  # records/s for the whole job (tests, demos); 0: no limit
        self.group_id, self.value_deserializer = group_id, value_deserializer
        self.event_time, self.max_out_of_orderness = event_time, int(max_out_of_orderness)
        self.idle_timeout, self.watermark_interval = float(idle_timeout), watermark_interval
        self.dead_letter_topic, self.discovery_interval = dead_letter_topic, discovery_interval
        self.timeout, self.config = float(timeout), dict(config or {})
        # For windows: the pipeline reads the records' event time with this function.
        self.watermarks = (WatermarkStrategy(event_time, self.max_out_of_orderness,
                                             watermark_interval)
                           if callable(event_time) else None)

    def partitions(self) -> dict[str, int]:
        return topic_partitions(self.bootstrap, self.topics, self.timeout, self.config)

    def split_ids(self) -> list[str]:
        counts = self.partitions()
        return [split_id(t, p) for t in self.topics for p in range(counts[t])]

    def initial_position(self, split: str) -> dict[str, Any]:
        return {"start": self.start, "bounded": self.bounded}

    def create_reader(self, positions: dict[str, Any], subtask: int = 0, parallelism: int = 1,
                      split_ids: list[str] | None = None) -> KafkaReader:
        """``split_ids``: every split of the job when the attempt started (those of other
        subtasks too): only partitions outside it are new to discovery."""
        return KafkaReader(self, positions, subtask, parallelism,
                           list(positions) if split_ids is None else split_ids)


class KafkaReader:
    def __init__(self, source: KafkaSource, positions: dict[str, Any], subtask: int,
                 parallelism: int, split_ids: list[str]):
        from confluent_kafka import Consumer

        self.source, self.subtask, self.p = source, subtask, parallelism
        self.consumer = Consumer(client_config(source.bootstrap, {
            "group.id": source.group_id or "streamjob",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",  # only where retention removed our offset
            "enable.partition.eof": True,
            **source.config}))
        self.pos: dict[str, dict[str, Any]] = {}
        self.by_tp: dict[tuple[str, int], str] = {}
        self.done: set[str] = set()
        self.bad_records = 0
        self.transient_errors = 0
        self.dead_letter = None
        now = time.monotonic()
        self.watermarks = (PartitionWatermarks([], source.max_out_of_orderness,
                                               source.idle_timeout, now)
                           if source.event_time is not None else None)
        self.emitted: float = MIN_WATERMARK
        self.idle = False
        self.emitted_at = -math.inf
        self.next_discovery = now + source.discovery_interval
        self.known: set[str] = set(split_ids) | set(positions)  # owned here or elsewhere
        self._assign(positions)

    # -- splits -------------------------------------------------------------------------

    def _resolve(self, split: str, position: dict[str, Any]) -> dict[str, Any]:
        """A concrete ``{"offset", "end"}`` for a position (a no-op if it is concrete)."""
        if "start" not in position:
            return {"offset": int(position["offset"]), "end": position.get("end")}
        from confluent_kafka import TopicPartition

        topic, partition = parse_split(split)
        tp = TopicPartition(topic, partition)
        timeout = self.source.timeout
        try:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=timeout)
            start = position["start"]
            if start == "earliest":
                offset = low
            elif start == "latest":
                offset = high
            elif start == "group":
                committed = self.consumer.committed([tp], timeout=timeout)[0].offset
                offset = committed if committed >= 0 else low
            else:
                found = self.consumer.offsets_for_times(
                    [TopicPartition(topic, partition, int(start))], timeout=timeout)[0].offset
                offset = found if found >= 0 else high
        except Exception as err:  # noqa: BLE001 - KafkaException, a timeout
            raise KafkaConnectError(f"cannot read the offsets of {split} at "
                                    f"{self.source.bootstrap} within {timeout:g}s: "
                                    f"{err}") from None
        return {"offset": int(offset), "end": int(high) if position.get("bounded") else None}

    def _assign(self, positions: dict[str, Any]) -> None:
        from confluent_kafka import TopicPartition

        tps = []
        for split, position in sorted(positions.items()):
            pos = self.pos[split] = self._resolve(split, position)
            topic, partition = parse_split(split)
            self.by_tp[(topic, partition)] = split
            if self.watermarks is not None:
                self.watermarks.add(split, time.monotonic())
            if pos["end"] is not None and pos["offset"] >= pos["end"]:
                self.done.add(split)
                continue
            tps.append(TopicPartition(topic, partition, pos["offset"]))
        if tps:
            self.consumer.incremental_assign(tps)

    def _discover(self) -> None:
        """Start reading partitions added while the job runs (see the module doc)."""
        try:
            counts = self.source.partitions()
        except KafkaConnectError as err:
            log.warning("kafka source: partition discovery failed: %s", err)
            return
        for t in self.source.topics:
            for p in range(counts[t]):
                split = split_id(t, p)
                if split in self.known:
                    continue
                if discovered_owner(split, self.p) == self.subtask:
                    try:
                        # This client learns of new partitions only on a metadata refresh
                        # (every 5 minutes by default): ask for one now.
                        self.consumer.list_topics(t, timeout=self.source.timeout)
                        self._assign({split: {"start": "earliest", "bounded": False}})
                    except Exception as err:  # noqa: BLE001 - no metadata yet: next time
                        self.pos.pop(split, None)
                        log.info("kafka source %d: %s; next time", self.subtask, err)
                        continue
                    log.info("kafka source %d: reading new partition %s", self.subtask, split)
                self.known.add(split)

    def positions(self) -> dict[str, Any]:
        return {s: dict(p) for s, p in self.pos.items()}

    # -- records --------------------------------------------------------------------------

    def poll(self, max_records: int) -> list[Any] | None:
        now = time.monotonic()
        if not self.source.bounded and now >= self.next_discovery:
            self.next_discovery = now + self.source.discovery_interval
            self._discover()
        if len(self.done) == len(self.pos) and (self.source.bounded or not self.pos):
            if self.source.bounded:
                return None
            time.sleep(0.02)  # owns no partition: nothing to read, stay cheap
            return []
        msgs = self.consumer.consume(max_records, 0)
        if not msgs:
            msgs = self.consumer.consume(max_records, 0.02)
        return self._records(msgs, time.monotonic())

    def _records(self, msgs: list[Any], now: float) -> list[Any]:
        from confluent_kafka import KafkaError

        out: list[Any] = []
        deserialize, pos, by_tp = self.source.value_deserializer, self.pos, self.by_tp
        event_time, wms = self.source.event_time, self.watermarks
        for m in msgs:
            err = m.error()
            split = by_tp.get((m.topic(), m.partition()))
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if split is not None:
                        self._at_end_of_partition(split, m.offset())
                    continue
                if err.fatal() or err.code() in _TOPIC_GONE:
                    raise KafkaConnectError(f"Kafka at {self.source.bootstrap}, topic "
                                            f"{m.topic()}: {err.str()}")
                # Transient (a broker restarting): the client reconnects and resumes at our
                # position; checkpoints and the sink's timeouts bound how long we wait.
                self.transient_errors += 1
                if self.transient_errors <= 5 or self.transient_errors % 100 == 0:
                    log.warning("kafka source %d: %s (%d so far)", self.subtask, err.str(),
                                self.transient_errors)
                continue
            if split is None or split in self.done:
                continue
            p = pos[split]
            offset = m.offset()
            if p["end"] is not None and offset >= p["end"]:
                self._finish_split(split)
                continue
            p["offset"] = offset + 1
            try:
                record = deserialize(m.value())
            except Exception as exc:  # noqa: BLE001 - user code on untrusted bytes
                self._bad_record(m, exc)
                continue
            out.append(record)
            if wms is not None:
                ts = m.timestamp()[1] if event_time == "kafka" else event_time(record)
                wms.observe(split, ts, now)
            if p["end"] is not None and p["offset"] >= p["end"]:
                self._finish_split(split)
        return out

    def _at_end_of_partition(self, split: str, offset: int) -> None:
        p = self.pos[split]
        if offset > p["offset"]:
            p["offset"] = offset  # past transaction markers: nothing left before it
        if p["end"] is not None and p["offset"] >= p["end"] - 1:
            # Offsets between the last record and the end are transaction markers.
            self._finish_split(split)

    def _finish_split(self, split: str) -> None:
        from confluent_kafka import TopicPartition

        if split in self.done:
            return
        self.done.add(split)
        topic, partition = parse_split(split)
        self.consumer.incremental_unassign([TopicPartition(topic, partition)])

    def _bad_record(self, m: Any, exc: Exception) -> None:
        """Undeserializable: counted, logged (the first few), sent to the dead-letter topic
        if there is one (at least once: a replay sends it again); never silent."""
        self.bad_records += 1
        if self.bad_records <= 5:
            log.warning("kafka source: cannot deserialize %s[%d]@%d: %s: %s", m.topic(),
                        m.partition(), m.offset(), type(exc).__name__, exc)
        topic = self.source.dead_letter_topic
        if topic is None:
            return
        if self.dead_letter is None:
            from confluent_kafka import Producer

            self.dead_letter = Producer(client_config(self.source.bootstrap,
                                                      {"enable.idempotence": True}))
        headers = [("streamjob.source", f"{m.topic()}:{m.partition()}:{m.offset()}".encode()),
                   ("streamjob.error", f"{type(exc).__name__}: {exc}"[:500].encode())]
        self.dead_letter.produce(topic, m.value(), m.key(), headers=headers)
        self.dead_letter.poll(0)

    # -- event time, lag, group offsets ----------------------------------------------------

    def watermark(self, now: float) -> float | None:
        """The reader's watermark if it changed and ``watermark_interval`` has passed:
        the minimum over active partitions, or :data:`IDLE` (once, until active again)."""
        if self.watermarks is None or now - self.emitted_at < self.source.watermark_interval:
            return None
        wm = self.watermarks.current(now)
        if math.isnan(wm):
            if self.idle:
                return None
            self.idle = True
        elif not self.idle and wm <= self.emitted:
            return None
        else:
            self.idle, self.emitted = False, max(wm, self.emitted)
        self.emitted_at = now
        return wm

    def lag(self) -> dict[str, int]:
        """Per owned partition: records between the read position and the high watermark
        (as of the last fetch; nothing for partitions not fetched yet)."""
        from confluent_kafka import TopicPartition

        out = {}
        for split, p in list(self.pos.items()):  # also read by the metrics thread
            topic, partition = parse_split(split)
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True)
            except Exception:  # noqa: BLE001 - not known yet
                continue
            if high >= 0:
                out[split] = consumer_lag(high, p["offset"])
        return out

    def notify_checkpoint_complete(self, checkpoint_id: int, positions: dict[str, Any]) -> None:
        """Commit the checkpoint's offsets to the consumer group (monitoring only)."""
        if not self.source.group_id:
            return
        from confluent_kafka import TopicPartition

        offsets = [TopicPartition(*parse_split(s), int(p["offset"]))
                   for s, p in positions.items() if "offset" in p]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except Exception as err:  # noqa: BLE001 - monitoring: never fails the job
                log.warning("kafka source: committing group offsets failed: %s", err)

    def close(self) -> None:
        if self.dead_letter is not None:
            self.dead_letter.flush(self.source.timeout)
        self.consumer.close()
