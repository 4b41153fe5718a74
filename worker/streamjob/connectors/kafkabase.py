"""What the Kafka source and sink share: the client configuration and the one clear error for
an unreachable broker or a missing topic (always within a timeout, never a hang)."""

from __future__ import annotations

from typing import Any

DEFAULT_TIMEOUT = 10.0  # seconds to reach the broker before giving up with a clear error


class KafkaConnectError(RuntimeError):
    """The broker cannot be reached, or a topic the job names does not exist."""


def client_config(bootstrap: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap,
                            # an unreachable broker is reported by our own timeouts
                            "log_level": 3}
    conf.update(extra or {})
    return conf


def topic_partitions(bootstrap: str, topics: list[str], timeout: float = DEFAULT_TIMEOUT,
                     extra: dict[str, Any] | None = None) -> dict[str, int]:
    """Number of partitions of each topic; :class:`KafkaConnectError` naming the bootstrap
    servers and the topic when the broker does not answer within ``timeout`` or a topic is
    missing. Reads the metadata of all topics, so that asking never auto-creates one."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(bootstrap, extra))
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as err:
        raise KafkaConnectError(
            f"Kafka at {bootstrap} did not answer within {timeout:g}s (topic(s) "
            f"{', '.join(topics)}): {err.args[0] if err.args else err}; is the broker "
            f"running and is the address right?") from None
    out: dict[str, int] = {}
    for topic in topics:
        t = meta.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            raise KafkaConnectError(f"Kafka topic {topic!r} does not exist at {bootstrap}; "
                                    f"create it first (kafka-topics --create --topic {topic})")
        out[topic] = len(t.partitions)
    return out
