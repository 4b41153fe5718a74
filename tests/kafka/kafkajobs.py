"""Pipelines of the Kafka tests (importable as tests.kafka.kafkajobs)."""

from __future__ import annotations

import json
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import KafkaSink, KafkaSource


def json_sum(args: dict[str, Any]) -> Pipeline:
    """JSON records ``{"n": int}`` -> ``n`` as text; undeserializable ones to ``dlq``."""
    p = Pipeline()
    (p.source(KafkaSource(args["input"], args["brokers"], bounded=True,
                          value_deserializer=json.loads, dead_letter_topic=args["dlq"]))
      .map(lambda r: str(r["n"]))
      .sink(KafkaSink(args["output"], args["brokers"])))
    return p


def _event_time(record: str) -> int:
    return int(record.split()[0])


def _word(record: str) -> str:
    return record.split()[1]


def _one(record: str) -> int:
    return 1


def event_windows(args: dict[str, Any]) -> Pipeline:
    """Records ``"<ts ms> <word>"``: per word, tumbling 1 s event-time windows counting
    records, written as ``"<window start> <word> <count>"``; watermarks from the source,
    per partition, idle after ``idle`` s."""
    p = Pipeline()
    (p.source(KafkaSource(args["input"], args["brokers"], event_time=_event_time,
                          idle_timeout=float(args.get("idle", 1.0)), watermark_interval=0.05))
      .key_by(_word)
      .window(1000)
      .sum(_one)
      .map(lambda w: f"{w[0]} {w[1]} {w[2]}")
      .sink(KafkaSink(args["output"], args["brokers"])))
    return p
