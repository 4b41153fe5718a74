"""scripts/kafka up / status / down and the broker it starts, as a developer or .ci/run uses
them: real Apache Kafka, real transactions, a read_committed consumer."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from daemons import parse_exports
from kafka_server import broker_properties, java_major, new_cluster_id

from tests.kafka.topics import Topics

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka"


def _script(*args: str, env: dict[str, str], timeout: float = 180):
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_up_is_idempotent_status_reports_and_down_stops(tmp_path, kafka_server):
    # kafka_server: the jars are resolved once by the session fixture.
    state = tmp_path / "state.json"
    run_env = dict(os.environ, STREAMJOB_KAFKA_STATE=str(state),
                   STREAMJOB_KAFKA_DIR=str(tmp_path / "run"))
    assert _script("status", env=run_env).returncode == 1
    # Command substitution must not hang: the broker must not keep stdout open.
    up = _script("up", env=run_env)
    assert up.returncode == 0, up.stderr
    env = parse_exports(up.stdout)
    try:
        assert list(env) == ["KAFKA_BOOTSTRAP_SERVERS"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"].startswith("127.0.0.1:")
        topics = Topics(env["KAFKA_BOOTSTRAP_SERVERS"])
        topic = topics.create(partitions=2)
        topics.produce(topic, [b"a", b"b", b"c"])
        assert sorted(topics.values(topic, lambda vs: len(vs) >= 3)) == ["a", "b", "c"]

        again = _script("up", env=run_env, timeout=30)
        assert again.returncode == 0 and parse_exports(again.stdout) == env
        assert "already up" in again.stderr
        pid = json.loads(state.read_text())["pid"]
        status = _script("status", env=run_env, timeout=30)
        assert status.returncode == 0
        assert env["KAFKA_BOOTSTRAP_SERVERS"] in status.stdout and str(pid) in status.stdout
    finally:
        down = _script("down", env=run_env, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not state.exists() and not (tmp_path / "run").exists()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(
        f"/proc/{pid}/status").read_bytes().lower()
    assert _script("status", env=run_env, timeout=30).returncode == 1


def _transactional(bootstrap: str, tid: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid})
    producer.init_transactions(30)
    return producer


def test_read_committed_sees_committed_transactions_only(kafka):
    topic = kafka.create(partitions=3)
    producer = _transactional(kafka.bootstrap, f"t-{topic}")
    producer.begin_transaction()
    for i in range(6):
        producer.produce(topic, f"committed-{i}".encode(), partition=i % 3)
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"aborted", partition=0)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"still-open", partition=1)
    producer.flush(30)

    seen = kafka.values(topic, lambda vs: len(vs) >= 6)
    assert sorted(seen) == [f"committed-{i}" for i in range(6)]

    producer.commit_transaction(30)
    seen = kafka.values(topic, lambda vs: "still-open" in vs)
    assert sorted(seen) == sorted([f"committed-{i}" for i in range(6)] + ["still-open"])


def test_a_new_producer_with_the_same_transactional_id_aborts_the_open_transaction(kafka):
    # What a restored sink relies on: init_transactions fences the zombie and aborts its
    # transaction, so its records are never read.
    topic = kafka.create(partitions=1)
    tid = f"t-{topic}"
    zombie = _transactional(kafka.bootstrap, tid)
    zombie.begin_transaction()
    zombie.produce(topic, b"from-zombie")
    zombie.flush(30)
    successor = _transactional(kafka.bootstrap, tid)
    successor.begin_transaction()
    successor.produce(topic, b"from-successor")
    successor.commit_transaction(30)
    assert kafka.values(topic, lambda vs: len(vs) >= 1) == ["from-successor"]


def test_broker_restart_keeps_committed_data(fresh_kafka):
    topics = Topics(fresh_kafka.bootstrap)
    topic = topics.create(partitions=2)
    topics.produce(topic, [b"before"])
    fresh_kafka.kill()
    fresh_kafka.start()
    topics = Topics(fresh_kafka.bootstrap)
    topics.produce(topic, [b"after"])
    assert sorted(topics.values(topic, lambda vs: len(vs) >= 2)) == ["after", "before"]


def test_missing_topic_is_not_created_by_producing(kafka):
    topic = f"missing-{new_cluster_id()[:8].lower()}"
    with pytest.raises(RuntimeError, match="undelivered|UNKNOWN_TOPIC"):
        kafka.produce(topic, [b"x"], timeout=5)
    assert kafka.partitions(topic) == []


def test_broker_properties_for_one_node():
    props = broker_properties(address="10.1.2.3", port=9092, controller_port=9093,
                              data_dir=Path("/d"))
    assert props["advertised.listeners"] == "PLAINTEXT://10.1.2.3:9092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"


def test_java_major_parses_old_and_new_version_strings():
    assert java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert java_major('java version "1.8.0_392"') == 8
    assert java_major('openjdk version "21" 2023-09-19') == 21
    assert java_major("garbage") is None
