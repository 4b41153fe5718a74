"""KafkaSink against a broker killed in the middle of a commit (a real broker, SIGKILL).

The broker is killed the moment its transaction coordinator has written the commit decision
(``PrepareCommit`` in ``__transaction_state``), before it writes the transaction's markers:
the client never hears how its commit ended. A single-node broker coming back from that skips
the markers (it finds no partition leader while it starts) and counts the transaction as
finished, which leaves its records open in the partitions until the next transaction of the
same producer id ends them. The restored sink must still give ``read_committed`` readers
every record of the completed checkpoint exactly once, and the next epoch's records too.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from streamjob.connectors.kafkasink import KafkaSink

pytestmark = pytest.mark.integration

TRIES = 8  # the broker leaves the transaction open in some restarts, not all


def txn_log_sizes(data_dir: Path) -> dict[Path, int]:
    return {f: f.stat().st_size for f in data_dir.glob("logs/__transaction_state-*/*.log")}


def kill_at_commit_decision(server, writer, epoch: int, timeout: float = 60) -> None:
    """Commit ``epoch`` on a thread and SIGKILL the broker as soon as the coordinator's log
    grows (the only writer is this test's producer, so that is the commit decision)."""
    before = txn_log_sizes(server.data_dir)
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            writer.commit(epoch)
        except BaseException as err:  # noqa: BLE001 - the broker dies under it: expected
            errors.append(err)

    thread = threading.Thread(target=commit, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while txn_log_sizes(server.data_dir) == before:
        assert time.monotonic() < deadline, "the commit never reached the coordinator's log"
    server.kill()


def left_open(bootstrap: str, topic: str, txid: str) -> bool:
    """Whether the broker came back with the crashed transaction finished in its coordinator
    yet open in the partitions: a new producer of the id may start (the coordinator allows
    that only once the transaction is finished) while a partition's last stable offset is
    below its end (nothing else writes to the topic)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    Producer({"bootstrap.servers": bootstrap, "transactional.id": txid}).init_transactions(60)
    ends = {}
    for isolation in ("read_uncommitted", "read_committed"):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "check",
                      "isolation.level": isolation})
        ends[isolation] = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                           for p in range(8)]
        c.close()
    return ends["read_committed"] != ends["read_uncommitted"]


def crash_in_commit_then_restore(server, kafka) -> bool:
    """One round on a fresh topic: epoch 1 pre-committed, the broker killed at its commit
    decision and restarted, a restored writer finishes checkpoint 1 and writes epoch 2 with
    the same slot (the same producer id) as the crashed transaction. Asserts that
    ``read_committed`` readers see both epochs exactly once; returns whether the broker had
    left the crashed transaction open."""
    topic = kafka.create(8, prefix="crash")
    sink = KafkaSink(topic, server.bootstrap, key_fn=str)
    job = f"crash-{uuid.uuid4().hex[:8]}"
    first, second = [f"a{i}" for i in range(400)], [f"b{i}" for i in range(400)]
    writer = sink.create_writer(0, job)
    writer.restore([])
    writer.write(first)
    state = writer.pre_commit(1)()
    kill_at_commit_decision(server, writer, 1)
    server.start()
    was_open = left_open(server.bootstrap, topic, state["pending"][0]["id"])

    restored = sink.create_writer(0, job)
    restored.restore([state])
    restored.write(second)
    restored.pre_commit(2)()
    restored.commit(2)
    restored.close()
    got = kafka.values(topic, until=lambda v: len(v) >= len(first) + len(second), timeout=120)
    assert sorted(got) == sorted(first + second), f"transaction left open: {was_open}"
    return was_open


def test_commit_decided_then_broker_killed_is_finished_once_on_restore(fresh_kafka):
    from tests.kafka.topics import Topics

    kafka = Topics(fresh_kafka.bootstrap)
    for tries in range(1, TRIES + 1):
        if crash_in_commit_then_restore(fresh_kafka, kafka):
            print(f"transaction left open by the broker in round {tries}")
            return
    # Every round checked the output; none hit the broker's open-transaction case.
    pytest.skip(f"in {TRIES} broker kills at a commit decision the broker never left the "
                "transaction open (it does in about one restart of four)")
