"""KafkaSource and KafkaSink on a real Apache Kafka broker, inside real ``streamjob run``
process trees: kills of workers and of the coordinator, a crash between checkpoint
completion and the Kafka commit, stop-with-savepoint and restarts at other parallelisms.
A ``read_committed`` consumer of the output topic must see the wordcount property exactly:
``w 1`` ... ``w n`` once each for a word seen n times (no duplicate, no gap), and must be able
to read to the end (no transaction left open)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest

from streamjob.examples.kafkawordcount import check_counts
from tests.integration.conftest import PYPATH

pytestmark = pytest.mark.integration

WORDCOUNT = "streamjob.examples.kafkawordcount:build"
VOCAB = 300


def words(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.randrange(VOCAB)}" for _ in range(n)]


def fill(kafka, n: int, partitions: int = 8, seed: int = 1) -> tuple[str, str, list[str]]:
    """An input topic holding ``n`` words spread over ``partitions``, an empty output topic."""
    src, out = kafka.create(partitions, prefix="words"), kafka.create(partitions, prefix="counts")
    ws = words(n, seed)
    kafka.produce(src, ws, keys=[str(g) for g in range(n)])
    return src, out, ws


def start(run_job, kafka, src: str, out: str, p: int, name: str = "kwc", extra=None,
          env=None, restart=None, **args):
    return run_job(WORDCOUNT, name=name, parallelism=p, extra=extra, env=env, restart=restart,
                   args={"brokers": kafka.bootstrap, "input": src, "output": out,
                         "bounded": True, **args})


def assert_exactly_once(kafka, out: str, ws: list[str]) -> dict[str, int]:
    expected_lines = len(ws)
    lines = kafka.values(out, until=lambda v: len(v) >= expected_lines, timeout=120)
    result = check_counts(lines, ws)
    assert result == {"lines": len(ws), "duplicates": 0, "missing": 0, "unexpected": 0}
    return result


def running_with_checkpoint(s: dict) -> bool:
    return s.get("state") == "RUNNING" and s.get("last_checkpoint") is not None


def savepoint(job, stop: bool = True) -> str:
    out = subprocess.run([sys.executable, "-m", "streamjob", "savepoint", job.name,
                          *(["--stop"] if stop else [])], cwd=job.cwd,
                         env=dict(job.env, PYTHONPATH=PYPATH), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_clean_bounded_run_finishes_and_commits_every_count_once(run_job, kafka):
    from confluent_kafka import Consumer, TopicPartition

    src, out, ws = fill(kafka, 20_000)
    group = f"wc-{uuid.uuid4().hex[:6]}"
    job = start(run_job, kafka, src, out, 3, rate=10_000, group=group)
    # Lag per partition in the job status (from the workers' readers) while it runs.
    lag = job.wait_for(lambda s: len(s.get("source_lag") or {}) == 8, what="lag of 8 "
                       "partitions")["source_lag"]
    assert set(lag) == {f"{src}:{p}" for p in range(8)}
    assert all(isinstance(v, int) and v >= 0 for v in lag.values())
    assert job.wait() == 0, job.output()
    assert job.status()["state"] == "FINISHED"
    assert job.status()["records_in"] == 20_000
    assert_exactly_once(kafka, out, ws)
    # The group's offsets were committed after checkpoints (monitoring): at the end offsets.
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group})
    try:
        committed = c.committed([TopicPartition(src, p) for p in range(8)], timeout=10)
        ends = [c.get_watermark_offsets(TopicPartition(src, p), timeout=10)[1]
                for p in range(8)]
    finally:
        c.close()
    assert [tp.offset for tp in committed] == ends


def test_killed_workers_and_coordinator_at_p3_on_8_partitions_keep_exactly_once(run_job, kafka):
    rng = random.Random(os.environ.get("SEED", 3))
    n = 80_000
    src, out, ws = fill(kafka, n)
    job = start(run_job, kafka, src, out, 3, rate=8000)
    job.wait_for(running_with_checkpoint, what="first checkpoint")
    for kill in range(2):
        os.kill(rng.choice(job.workers()), signal.SIGKILL)
        job.wait_for(lambda s, k=kill: s.get("restarts", 0) >= k + 1 and
                     running_with_checkpoint(s), what=f"running again after kill {kill + 1}")
    old = job.coordinator()
    os.kill(old, signal.SIGKILL)
    job.wait_for(lambda s: s.get("coordinator", {}).get("pid") not in (None, old)
                 and s.get("state") == "RUNNING", what="a new coordinator running")
    assert job.wait() == 0, job.output()
    assert job.status()["state"] == "FINISHED"
    assert_exactly_once(kafka, out, ws)


@pytest.mark.parametrize("rule", ["sink.before-commit=kill,skip=3",
                                  "coordinator.after-metadata=kill,skip=3"])
def test_output_of_a_completed_checkpoint_left_in_an_open_transaction_is_committed_on_restore(
        run_job, kafka, tmp_path, rule):
    """The crash comes after checkpoint n completed and before its transactions committed:
    the restore fences the open transaction (aborting it) and produces its records again,
    once."""
    src, out, ws = fill(kafka, 30_000)
    env = {"STREAMJOB_FAULTS": rule, "STREAMJOB_FAULTS_DIR": str(tmp_path / "faults")}
    job = start(run_job, kafka, src, out, 3, rate=6000, env=env)
    assert job.wait() == 0, job.output()
    assert "fault injected" in job.output()
    assert_exactly_once(kafka, out, ws)
    assert "re-produced" in job.output()  # the path under test was taken


def test_stop_with_savepoint_then_resume_at_p5_then_p2_is_exactly_once(run_job, kafka):
    n = 60_000
    src, out, ws = fill(kafka, n)
    job = start(run_job, kafka, src, out, 3, name="sp3", rate=8000)
    job.wait_for(lambda s: running_with_checkpoint(s) and s.get("records_in", 0) > n // 5,
                 what="a fifth read")
    uri = savepoint(job)
    assert job.wait() == 0, job.output()
    assert job.status()["state"] == "STOPPED"

    # p=5 on 8 partitions: three subtasks read one partition, two read two
    job5 = start(run_job, kafka, src, out, 5, name="sp5", rate=8000,
                 extra=["--from-savepoint", uri])
    job5.wait_for(lambda s: running_with_checkpoint(s) and
                  s.get("records_in", 0) > 2000, what="p=5 running with a checkpoint")
    uri2 = savepoint(job5)
    assert job5.wait() == 0, job5.output()

    job2 = start(run_job, kafka, src, out, 2, name="sp2", extra=["--from-savepoint", uri2])
    assert job2.wait() == 0, job2.output()
    assert job2.status()["state"] == "FINISHED"
    assert_exactly_once(kafka, out, ws)


def test_more_subtasks_than_partitions_idle_ones_do_not_stall_checkpoints(run_job, kafka):
    src, out, ws = fill(kafka, 5000, partitions=2)
    job = start(run_job, kafka, src, out, 4, bounded=False)
    # Unbounded: it runs until stopped. Subtasks 2 and 3 own no partition, yet checkpoints
    # complete (their barriers flow) and every count is committed.
    assert_exactly_once(kafka, out, ws)
    job.wait_for(lambda s: (s.get("last_checkpoint") or {}).get("id", 0) >= 3,
                 what="checkpoints with idle subtasks")
    savepoint(job)
    assert job.wait() == 0, job.output()


def test_at_least_once_loses_nothing_across_kills(run_job, kafka):
    n = 40_000
    src, out, ws = fill(kafka, n)
    job = start(run_job, kafka, src, out, 3, rate=8000, guarantee="at-least-once")
    job.wait_for(running_with_checkpoint, what="first checkpoint")
    os.kill(job.workers()[1], signal.SIGKILL)
    job.wait_for(lambda s: s.get("restarts", 0) >= 1 and s.get("state") == "RUNNING",
                 what="the restart")
    assert job.wait() == 0, job.output()
    lines = kafka.values(out, until=lambda v: len(v) >= n, timeout=120)
    result = check_counts(lines, ws)
    assert result["missing"] == 0 and result["unexpected"] == 0, result


def test_missing_topic_is_one_clear_error_naming_bootstrap_and_topic(run_job, kafka):
    out = kafka.create(1, prefix="counts")
    missing = f"no-such-{uuid.uuid4().hex[:6]}"
    job = run_job(WORDCOUNT, name="missing", parallelism=1, restart={"maxAttempts": 1},
                  args={"brokers": kafka.bootstrap, "input": missing, "output": out})
    assert job.wait(120) != 0
    message = job.status()["message"]
    assert f"Kafka topic {missing!r} does not exist at {kafka.bootstrap}" in message, message


def test_unreachable_broker_fails_within_the_timeout_with_a_clear_error(run_job, kafka):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    job = run_job(WORDCOUNT, name="unreachable", parallelism=1, restart={"maxAttempts": 1},
                  args={"brokers": dead, "input": "words", "output": "counts"})
    t0 = time.monotonic()
    assert job.wait(120) != 0
    message = job.status()["message"]
    assert f"Kafka at {dead} did not answer within" in message and "words" in message, message
    assert time.monotonic() - t0 < 100  # bounded: never hangs


def test_undeserializable_records_are_counted_and_go_to_the_dead_letter_topic(run_job, kafka):
    src, out, dlq = (kafka.create(2, prefix=p) for p in ("json", "sums", "dlq"))
    good = [f'{{"n": {i}}}' for i in range(100)]
    bad = ["not json", "{broken", "\xff"]
    kafka.produce(src, good[:50] + bad + good[50:])
    job = run_job("tests.kafka.kafkajobs:json_sum", name="json", parallelism=2,
                  args={"brokers": kafka.bootstrap, "input": src, "output": out, "dlq": dlq})
    assert job.wait() == 0, job.output()
    assert sorted(int(v) for v in kafka.values(out)) == list(range(100))
    assert sorted(kafka.values(dlq, until=lambda v: len(v) >= 3)) == sorted(bad)
    assert "cannot deserialize" in job.output()


def test_a_silent_partition_and_a_subtask_without_partitions_do_not_stall_windows(run_job,
                                                                                  kafka):
    """p=3 on 2 partitions: subtask 2 owns none; partition 1 never gets a record. The job is
    unbounded (no end-of-input watermark), yet the windows up to the data's event time fire."""
    src, out = kafka.create(2, prefix="events"), kafka.create(1, prefix="windows")
    kafka.produce(src, [f"{ts} a" for ts in range(4500)], partition=0)
    job = run_job("tests.kafka.kafkajobs:event_windows", name="ev", parallelism=3,
                  args={"brokers": kafka.bootstrap, "input": src, "output": out, "idle": 1.0})
    expected = {f"{start} a 1000" for start in (0, 1000, 2000, 3000)}
    got = kafka.values(out, until=lambda v: expected <= set(v), timeout=90)
    assert job.proc.poll() is None  # still running: fired by watermarks, not by the end
    assert sorted(got) == sorted(expected)  # each once; the window at 4000 is still open
    savepoint(job)
    assert job.wait() == 0, job.output()


def test_broker_killed_and_restarted_mid_run_keeps_exactly_once(run_job, fresh_kafka):
    from tests.kafka.topics import Topics

    kafka = Topics(fresh_kafka.bootstrap)
    n = 60_000
    src, out, ws = fill(kafka, n)
    job = start(run_job, kafka, src, out, 3, rate=6000, restart={"maxAttempts": 50})
    job.wait_for(lambda s: running_with_checkpoint(s) and s.get("records_in", 0) > n // 4,
                 what="a quarter read")
    fresh_kafka.kill()
    fresh_kafka.start()
    assert job.wait(300) == 0, job.output()
    assert job.status()["state"] == "FINISHED"
    assert_exactly_once(kafka, out, ws)


def test_partitions_added_while_running_are_discovered_and_read_once(run_job, kafka):
    from confluent_kafka.admin import NewPartitions

    src, out = kafka.create(2, prefix="words"), kafka.create(4, prefix="counts")
    first, later = words(1000, seed=5), words(1500, seed=6)
    kafka.produce(src, first, keys=[str(g) for g in range(1000)])
    job = start(run_job, kafka, src, out, 3, bounded=False, discovery=0.5)
    kafka.values(out, until=lambda v: len(v) >= 1000, timeout=90)
    kafka.admin.create_partitions([NewPartitions(src, 5)])[src].result(30)
    for part in (2, 3, 4):
        kafka.produce(src, later[(part - 2) * 500:(part - 1) * 500], partition=part)
    assert_exactly_once(kafka, out, first + later)
    assert job.proc.poll() is None
    savepoint(job)
    assert job.wait() == 0, job.output()
