"""Kafka wordcount: words from a topic, a keyed running count, ``<word> <count>`` lines to
another topic, exactly once.

Args: ``brokers`` (bootstrap servers, default ``$KAFKA_BOOTSTRAP_SERVERS``), ``input``,
``output`` (topic names), ``bounded`` (true: stop at the end offsets seen when the job starts,
then commit and exit), ``guarantee`` (exactly-once | at-least-once), ``start`` (earliest |
latest | group | a timestamp in ms), ``discovery`` (seconds between looks for new
partitions), ``rate`` (records/s, 0: no limit). Each output line is keyed by its word, so
all the counts of a word are in one partition, in order.
"""

from __future__ import annotations

import os
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import KafkaSink, KafkaSource


def truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def word_of_line(line: str) -> str:
    return line.split(" ", 1)[0]


def _format(kv: tuple[str, int]) -> str:
    return f"{kv[0]} {kv[1]}"


def build(args: dict[str, Any]) -> Pipeline:
    brokers = str(args.get("brokers") or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""))
    if not brokers:
        raise ValueError("kafka wordcount: set --arg brokers=HOST:PORT (or "
                         "KAFKA_BOOTSTRAP_SERVERS)")
    start = args.get("start", "earliest")
    start = int(start) if str(start).isdigit() else str(start)
    p = Pipeline()
    (p.source(KafkaSource(str(args.get("input", "words")), brokers, start=start,
                          bounded=truthy(args.get("bounded", False)),
                          rate=float(args.get("rate", 0)),
                          discovery_interval=float(args.get("discovery", 10)),
                          group_id=args.get("group") or None), "Source: kafka")
      .flat_map(str.split, "Split")
      .key_by(str)
      .count()
      .map(_format, "Format")
      .sink(KafkaSink(str(args.get("output", "counts")), brokers,
                      guarantee=str(args.get("guarantee", "exactly-once")),
                      key_fn=word_of_line), "Sink: kafka"))
    return p


def check_counts(lines: list[str], words: list[str]) -> dict[str, int]:
    """Compare output lines with what exactly-once must produce for the input ``words``:
    counts of ``duplicates`` (a line seen twice), ``missing`` and ``unexpected`` lines."""
    from collections import Counter

    seen = Counter(lines)
    expected = {f"{w} {i}" for w, n in Counter(words).items() for i in range(1, n + 1)}
    return {"lines": len(lines),
            "duplicates": sum(c - 1 for c in seen.values() if c > 1),
            "missing": len(expected - seen.keys()),
            "unexpected": len(seen.keys() - expected)}


def read_topic(bootstrap: str, topic: str, committed: bool = True,
               timeout: float = 60.0) -> list[str]:
    """Every record of ``topic`` up to its current end (``read_committed`` unless told
    otherwise), as text; a clear error if the end is not reached within ``timeout``."""
    import time

    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from streamjob.connectors.kafkabase import topic_partitions

    n = topic_partitions(bootstrap, [topic])[topic]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "streamjob-check",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": "read_committed" if committed else "read_uncommitted"})
    try:
        ends = {}
        for p in range(n):
            ends[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        c.assign([TopicPartition(topic, p, 0) for p in range(n)])
        out: list[str] = []
        open_parts = {p for p in range(n) if ends[p] > 0}
        deadline = time.monotonic() + timeout
        while open_parts:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(open_parts)} did not reach "
                                   f"their end within {timeout:g}s (an open transaction?)")
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    if m.offset() >= ends[m.partition()]:
                        open_parts.discard(m.partition())
                    continue
                raise RuntimeError(m.error().str())
            out.append(m.value().decode())
            if m.offset() + 1 >= ends[m.partition()]:
                open_parts.discard(m.partition())
        return out
    finally:
        c.close()


def produce_words(bootstrap: str, source: str, sink: str, records: int, words: int = 1000,
                  partitions: int = 8) -> None:
    """Create the two topics (if missing) and write ``records`` words to ``source``."""
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from streamjob.examples.wordcount import word_of

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(source, partitions, 1),
                                     NewTopic(sink, partitions, 1)]).values():
        try:
            fut.result(30)
        except KafkaException as err:
            if "already exists" not in str(err):
                raise
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "enable.idempotence": True})
    word = word_of(words)
    for g in range(records):
        while True:
            try:
                producer.produce(source, word(g).encode(), partition=g % partitions)
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(60):
        raise RuntimeError(f"not every word reached {source} at {bootstrap}")


def main(argv: list[str]) -> int:
    """``produce INPUT OUTPUT RECORDS`` or ``check INPUT OUTPUT``, on
    ``$KAFKA_BOOTSTRAP_SERVERS``."""
    import json

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if len(argv) < 3 or argv[0] not in ("produce", "check") or not bootstrap:
        print("usage: KAFKA_BOOTSTRAP_SERVERS=HOST:PORT python -m "
              "streamjob.examples.kafkawordcount produce INPUT OUTPUT RECORDS | "
              "check INPUT OUTPUT")
        return 2
    if argv[0] == "produce":
        produce_words(bootstrap, argv[1], argv[2], int(argv[3]))
        print(f"{argv[3]} words in {argv[1]} at {bootstrap}")
        return 0
    words = [w for line in read_topic(bootstrap, argv[1]) for w in line.split()]
    result = check_counts(read_topic(bootstrap, argv[2]), words)
    print(json.dumps(result))
    return 0 if result["duplicates"] == result["missing"] == result["unexpected"] == 0 else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
