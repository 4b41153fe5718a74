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
