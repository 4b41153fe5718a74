"""A Kafka job on the real cluster: the broker (scripts/kafka_server.py) runs on this machine,
bound to the node's InternalIP; the operator runs the Kafka wordcount StreamJob (checkpoints in
MinIO) on an input topic of 4 partitions, a worker pod is deleted mid-run, the bounded job
finishes, and a ``read_committed`` consumer of the output topic sees every word ``w`` as
``w 1`` … ``w n``, each line exactly once."""
from __future__ import annotations

import pytest
from sjenv import (
    Jobs,
    helm_install,
    helm_uninstall,
    is_ready,
    s3_env,
    start_kafka,
    start_minio,
    storage_secret,
    wordcount_job,
)

from streamjob.examples.kafkawordcount import check_counts
from streamjob.examples.wordcount import word_of
from tests.kafka.topics import Topics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# ~40 s of input at RATE: long enough to lose a worker pod in the middle.
RECORDS, WORDS, RATE, PARTITIONS = 24_000, 60, 600, 4


@pytest.fixture(scope="module")
def servers(kube):
    minio = start_minio(kube.core)
    try:
        kafka = start_kafka(kube.core)
        try:
            yield minio, kafka
        finally:
            kafka.close()
    finally:
        minio.close()


@pytest.fixture(scope="module")
def kafka_jobs(kube, servers):
    from devcluster.testing import kubeconfig_path

    rel = helm_install(kube.core, kubeconfig_path(), kube.image, prefix="e2e-kafka")
    try:
        storage_secret(kube.core, rel.jobs_ns, "minio-creds", s3_env(servers[0]))
        yield Jobs(kube.api, rel.jobs_ns)
    finally:
        helm_uninstall(kube.core, rel)


def test_kafka_wordcount_survives_a_lost_worker_pod_and_commits_exactly_once(
        kafka_jobs, servers):
    jobs, (_, kafka) = kafka_jobs, servers
    topics = Topics(kafka.bootstrap)
    source, sink = topics.create(PARTITIONS, prefix="words"), topics.create(
        PARTITIONS, prefix="counts")
    word = word_of(WORDS)
    words = [word(i) for i in range(RECORDS)]
    topics.produce(source, words)

    name = "kafka-wordcount"
    body = wordcount_job(name, records=0, words=0, rate=0, interval="1s")
    body["spec"]["pipeline"] = "streamjob.examples.kafkawordcount:build"
    body["spec"]["args"] = {"brokers": kafka.bootstrap, "input": source, "output": sink,
                            "bounded": "true", "rate": RATE}
    jobs.create(body)

    jobs.wait_ready(name)
    jobs.wait(name, lambda b: (b.get("status", {}).get("lastCheckpoint") or {})
              .get("id", 0) >= 2, 90, "checkpointing")
    victim = sorted(p.metadata.name for p in jobs.live_pods(name, "worker"))[-1]
    jobs.core.delete_namespaced_pod(victim, jobs.ns)
    body = jobs.wait(name, lambda b: (b.get("status") or {}).get("restarts", 0) >= 1
                     and is_ready(b), 180, "recovered")
    assert body["status"].get("restoredFrom") is not None, body["status"]
    jobs.wait(name, lambda b: (b.get("status") or {}).get("phase") == "Finished", 420,
              "Finished")

    lines = topics.values(sink, lambda vs: len(vs) >= RECORDS, timeout=120)
    assert check_counts(lines, words) == {"lines": RECORDS, "duplicates": 0, "missing": 0,
                                          "unexpected": 0}
