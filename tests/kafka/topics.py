"""Test-side Kafka helpers: create topics, produce input, read what a job committed.

Used by tests/kafka, tests/e2e and bench/kafka.py against a real broker
(scripts/kafka_server.py). Reading is always ``isolation.level=read_committed``: a record of an
open or aborted transaction is never seen, as a downstream consumer of a job would see it.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import NamedTuple


class Record(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


class Topics:
    """Topics on one broker (``bootstrap`` is ``host:port``)."""

    def __init__(self, bootstrap: str):
        from confluent_kafka.admin import AdminClient

        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})

    def create(self, partitions: int = 1, name: str | None = None, *,
               prefix: str = "t", timeout: float = 30) -> str:
        """Create a topic (a fresh unique name unless ``name`` is given); return its name."""
        from confluent_kafka.admin import NewTopic

        name = name or f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout)
        # The metadata of a new topic reaches the broker's cache a moment after creation.
        deadline = time.monotonic() + timeout
        while len(self.partitions(name)) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} has no {partitions} partitions after"
                                   f" {timeout:.0f} s")
            time.sleep(0.1)
        return name

    def partitions(self, topic: str) -> list[int]:
        meta = self.admin.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        return sorted(meta.partitions)

    def produce(self, topic: str, values: Iterable[bytes | str], *,
                keys: Iterable[bytes | str | None] | None = None,
                partition: int | None = None, timeout: float = 60) -> int:
        """Write ``values`` (with ``keys`` if given; keyless values spread over partitions by
        the client) and wait until the broker acknowledged all; return how many."""
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 5})
        errors: list[str] = []

        def delivered(err, _msg):
            if err is not None:
                errors.append(str(err))

        n = 0
        keys_it = iter(keys) if keys is not None else None
        for value in values:
            kw = {} if partition is None else {"partition": partition}
            key = next(keys_it) if keys_it is not None else None
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=delivered, **kw)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
            n += 1
        left = producer.flush(timeout)
        if left or errors:
            raise RuntimeError(f"producing to {topic} on {self.bootstrap}: {left} undelivered,"
                               f" errors {errors[:3]}")
        return n

    def read_committed(self, topic: str, until: Callable[[list[Record]], bool] | None = None,
                       *, timeout: float = 60) -> list[Record]:
        """Read the topic from the beginning with ``read_committed`` until ``until(records)``
        holds and every partition has been read to its end (so the answer holds everything
        committed so far, duplicates included). Raises ``TimeoutError`` with what was read."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        deadline = time.monotonic() + timeout
        parts = self.partitions(topic)
        while not parts:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} not found on {self.bootstrap}")
            time.sleep(0.2)
            parts = self.partitions(topic)
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest"})
        try:
            consumer.assign([TopicPartition(topic, p, -2) for p in parts])  # -2: beginning
            records: list[Record] = []
            at_end: set[int] = set()
            while True:
                for msg in consumer.consume(1000, timeout=0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_end.add(msg.partition())
                            continue
                        raise RuntimeError(f"reading {topic}: {err}")
                    at_end.discard(msg.partition())
                    records.append(Record(msg.partition(), msg.offset(), msg.key(),
                                          msg.value(), msg.timestamp()[1]))
                if len(at_end) == len(parts) and (until is None or until(records)):
                    return records
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{topic}: condition not met after {timeout:.0f} s; read"
                        f" {len(records)} committed records, last {records[-5:]}")
                # New partitions (a topic grown by a test) are read too.
                if len(now := self.partitions(topic)) > len(parts):
                    parts = now
                    consumer.assign([TopicPartition(topic, p, -2) for p in parts])
                    records, at_end = [], set()
        finally:
            consumer.close()

    def values(self, topic: str, until: Callable[[list[str]], bool] | None = None, *,
               timeout: float = 60) -> list[str]:
        """``read_committed`` as decoded values."""
        def cond(recs: list[Record]) -> bool:
            return until is None or until([r.value.decode() for r in recs])

        return [r.value.decode() for r in self.read_committed(topic, cond, timeout=timeout)]
