"""The Nexmark writer produces every event once to a real Kafka topic, keyed by its number,
and a missing topic is a clear error."""

from __future__ import annotations

import pytest

from streamjob.connectors.kafkabase import KafkaConnectError
from streamjob.nexmark import NexmarkGenerator, produce

EVENTS = 3000


def test_produce_writes_each_event_once_with_its_number_as_key(kafka):
    topic = kafka.create(partitions=2)
    assert produce(kafka.bootstrap, topic, EVENTS) == EVENTS
    records = kafka.read_committed(topic, until=lambda rs: len(rs) >= EVENTS)
    by_key = {int(r.key): r.value for r in records}
    assert len(records) == EVENTS and sorted(by_key) == list(range(EVENTS))
    lines = NexmarkGenerator().json_lines(range(EVENTS))
    assert [by_key[g].decode() for g in range(EVENTS)] == lines


def test_produce_to_a_missing_topic_says_so(kafka):
    with pytest.raises(KafkaConnectError, match="does not exist"):
        produce(kafka.bootstrap, "no-such-nexmark-topic", 10)
