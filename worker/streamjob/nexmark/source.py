"""Nexmark events as a streamjob source, and written once to files or to Kafka.

:class:`NexmarkSource` is a :class:`~streamjob.connectors.GeneratorSource` whose records are
Nexmark events: event number g is ``NexmarkGenerator(config).events([g])[0]``. Like every
generator source it is split into interleaved splits whose positions are checkpointed, so a
restore regenerates exactly the events after the checkpoint, at any parallelism.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamjob.connectors.generator import GeneratorSource
from streamjob.nexmark.generator import NexmarkConfig, NexmarkGenerator

BATCH = 20_000  # events generated per numpy batch when writing


class NexmarkSource(GeneratorSource):
    """``events`` Nexmark events as dicts (``form="dict"``) or as their JSON text
    (``form="json"``); ``rate`` limits the wall-clock events/s (0: as fast as possible)."""

    def __init__(self, events: int, config: NexmarkConfig | None = None, rate: float = 0,
                 splits: int = 128, form: str = "dict"):
        if form not in ("dict", "json"):
            raise ValueError(f"form must be 'dict' or 'json', got {form!r}")
        gen = NexmarkGenerator(config)
        make = gen.events if form == "dict" else gen.json_lines
        super().__init__(events, fn=lambda g: make([g])[0], rate=rate, splits=splits,
                         batch_fn=make)
        self.generator = gen


def json_batches(events: int, config: NexmarkConfig | None = None,
                 start: int = 0) -> Iterator[list[str]]:
    """The JSON text of events ``start .. events - 1`` in order, a batch at a time."""
    gen = NexmarkGenerator(config)
    for lo in range(start, events, BATCH):
        yield gen.json_lines(range(lo, min(events, lo + BATCH)))


def write_file(path: str | os.PathLike[str], events: int,
               config: NexmarkConfig | None = None) -> int:
    """Write events 0 .. events - 1 as JSON lines (one event a line, in event-number order,
    so in event-time order) to ``path``, atomically (a temporary name, then a rename).
    Returns the bytes written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    size = 0
    with open(tmp, "w", encoding="ascii") as f:
        for batch in json_batches(events, config):
            text = "\n".join(batch) + "\n"
            f.write(text)
            size += len(text)
    os.replace(tmp, path)
    return size


def produce(brokers: str, topic: str, events: int, config: NexmarkConfig | None = None,
            timeout: float = 60.0, extra: dict[str, Any] | None = None) -> int:
    """Send events 0 .. events - 1 to Kafka ``topic`` (JSON text values, keyed by event
    number so a re-run overwrites nothing and a compacted topic keeps one of each), then
    flush. Raises if the broker does not take them all within ``timeout`` seconds."""
    from confluent_kafka import Producer

    from streamjob.connectors.kafkabase import client_config, topic_partitions

    topic_partitions(brokers, [topic], extra=extra)  # a clear error for a missing topic
    producer = Producer(client_config(brokers, {"linger.ms": 20, "compression.type": "lz4",
                                                **(extra or {})}))
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None and len(errors) < 5:
            errors.append(str(err))

    g = 0
    for batch in json_batches(events, config):
        for line in batch:
            while True:
                try:
                    producer.produce(topic, line.encode(), str(g).encode(),
                                     on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let it drain
                    producer.poll(0.1)
            g += 1
        producer.poll(0)
    left = producer.flush(timeout)
    if left or errors:
        raise RuntimeError(f"Kafka at {brokers}: {left} of {events} Nexmark events not "
                           f"delivered to {topic!r} within {timeout:g}s"
                           + (f"; first errors: {'; '.join(errors)}" if errors else ""))
    return events
