"""Fixtures for tests against a real Apache Kafka broker (scripts/kafka_server.py: KRaft, one
broker+controller node, resolved from Maven Central once and cached).

- ``kafka_server``: one broker for the whole session (``.bootstrap`` is ``127.0.0.1:<port>``).
- ``kafka``: :class:`tests.kafka.topics.Topics` on it: ``create(partitions)`` a fresh topic,
  ``produce(topic, values)``, ``read_committed(topic, until=..., timeout=...)``.
- ``fresh_kafka``: a broker of the test's own, for tests that stop, kill or restart it.

Other test folders get the session broker with::

    sys.path.insert(0, str(REPO / "scripts"))
    from kafka_server import kafka_session
    kafka_server = pytest.fixture(scope="session")(kafka_session)
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO / "scripts", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
try:
    import streamjob  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(REPO / "worker"))

from kafka_server import KafkaServer, kafka_session  # noqa: E402

from tests.kafka.topics import Topics  # noqa: E402

kafka_server = pytest.fixture(scope="session")(kafka_session)


@pytest.fixture
def kafka(kafka_server) -> Topics:
    return Topics(kafka_server.bootstrap)


@pytest.fixture
def fresh_kafka(tmp_path):
    """A broker of the test's own (stop/kill/start it freely); closed at the end."""
    server = KafkaServer(tmp_path / "kafka")
    server.start()
    try:
        yield server
    finally:
        server.close()


# Jobs run as real process trees (streamjob run), shared with tests/integration.
from tests.integration.conftest import run_job  # noqa: E402,F401
