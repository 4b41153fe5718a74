"""The operator end to end on the real cluster (issue 6, end-to-end tier).

`helm install` of helm/streamjob (image localhost/streamjob:dev, pull policy Never) → the
wordcount StreamJob with MinIO storage → Ready → checkpoints complete → switched to the RocksDB
state backend (an upgrade through a savepoint; SST files in MinIO) → a worker pod deleted →
Recovering → Ready → scale subresource 2 → 3 (what `kubectl scale` does) → Rescaling → Ready →
suspend, resume → Finished → the committed output in MinIO is exactly the expected set → delete
(finalizer released, owned objects gone); and an invalid manifest refused with its field named.
"""
from __future__ import annotations

import time

import pytest
from sjenv import (
    Jobs,
    PhaseRecorder,
    assert_committed_exactly_once,
    helm_install,
    helm_uninstall,
    is_ready,
    poll_until,
    s3_env,
    start_minio,
    storage_keys,
    storage_secret,
    wordcount_job,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# ~120-180 s of input at the pods' CPU limit: long enough for the backend switch, failover,
# rescale and suspend.
RECORDS, WORDS, RATE = 90_000, 100, 600
# Small caches (the pods have 384Mi); localDir off /tmp: a mount on the read-only root.
ROCKSDB = {"type": "rocksdb", "rocksdb": {"blockCacheMB": 16, "writeBufferMB": 8,
                                          "localDir": "/var/lib/streamjob-state",
                                          "localDirSizeLimit": "1Gi"}}


@pytest.fixture(scope="module")
def minio(kube):
    server = start_minio(kube.core)
    yield server
    server.close()


@pytest.fixture(scope="module")
def release(kube):
    from devcluster.testing import kubeconfig_path

    rel = helm_install(kube.core, kubeconfig_path(), kube.image)
    yield rel
    helm_uninstall(kube.core, rel)


@pytest.fixture(scope="module")
def jobs(kube, release, minio):
    storage_secret(kube.core, release.jobs_ns, "minio-creds", s3_env(minio))
    return Jobs(kube.api, release.jobs_ns)


def test_helm_release_runs_the_operator(kube, release):
    from kubernetes import client

    apps = client.AppsV1Api(kube.api)
    deps = apps.list_namespaced_deployment(release.system_ns).items
    assert len(deps) == 1
    assert deps[0].status.available_replicas == 1
    ext = client.ApiextensionsV1Api(kube.api)
    crd = ext.read_custom_resource_definition("streamjobs.streamjob.dev")
    assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)


@pytest.mark.parametrize("spec, field, words", [
    ({"parallelism": 5, "maxParallelism": 4}, "spec.parallelism", "maxParallelism"),
    ({"checkpoint": {"interval": "5 seconds"}}, "spec.checkpoint.interval", "should match"),
    ({"pipeline": "not a pipeline"}, "spec.pipeline", "should match"),
    ({"parallelism": 0}, "spec.parallelism", "greater than or equal to 1"),
])
def test_invalid_manifest_refused_naming_the_field(jobs, spec, field, words):
    from kubernetes.client.rest import ApiException

    body = wordcount_job("invalid", records=10, words=1, rate=0)
    body["spec"].update(spec)
    with pytest.raises(ApiException) as err:
        jobs.create(body)
    assert err.value.status == 422, err.value.body
    assert field in err.value.body and words in err.value.body, err.value.body


def test_max_parallelism_cannot_change(jobs):
    from kubernetes.client.rest import ApiException

    body = wordcount_job("immutable", records=10, words=1, rate=0)
    body["spec"]["state"] = "suspended"  # never runs: only the API server's rules matter here
    jobs.create(body)
    try:
        with pytest.raises(ApiException) as err:
            jobs.patch("immutable", {"spec": {"maxParallelism": 64}})
        assert err.value.status == 422
        assert "spec.maxParallelism" in err.value.body, err.value.body
    finally:
        jobs.delete("immutable")


def test_wordcount_heals_rescales_suspends_and_commits_exactly_once(jobs, minio):
    name = "wordcount"
    jobs.create(wordcount_job(name, records=RECORDS, words=WORDS, rate=RATE))
    rec = PhaseRecorder(jobs, name).start()
    try:
        _scenario(jobs, minio, name, rec)
    finally:
        rec.stop()
        print("phases:", [(round(t % 1000, 1), p, m) for t, p, m in rec.seen])


def _scenario(jobs: Jobs, minio, name: str, rec: PhaseRecorder) -> None:
    # Ready, with one coordinator and two worker pods, and checkpoints completing.
    body = jobs.wait_ready(name)
    assert body["status"]["parallelism"] == 2
    assert len(jobs.live_pods(name, "worker")) == 2
    assert len(jobs.live_pods(name, "coordinator")) == 1
    body = jobs.wait(name, lambda b: (b.get("status", {}).get("lastCheckpoint") or {})
                     .get("id", 0) >= 2, 60, "checkpointing")
    cp = body["status"]["lastCheckpoint"]
    assert cp["completedAt"] and cp.get("durationMs") is not None, cp

    # The RocksDB state backend (issue 17): a spec change, so an upgrade through a savepoint
    # (canonical: the memory backend's state restored into RocksDB).
    jobs.patch(name, {"spec": {"stateBackend": ROCKSDB}})
    body = jobs.wait(name, lambda b: is_ready(b) and ((b["status"].get("deployment") or {})
                                                      .get("stateBackend") == "rocksdb"),
                     180, "upgraded to rocksdb")
    assert "savepoint" in (body["status"]["deployment"].get("fromSavepoint") or ""), body["status"]
    for pod in jobs.live_pods(name, "worker"):
        [container] = pod.spec.containers
        mounts = {m.mount_path: m.name for m in container.volume_mounts}
        assert mounts == {"/tmp": "tmp", "/var/lib/streamjob-state": "state"}, mounts
        assert container.security_context.read_only_root_filesystem is True
        [state] = [v for v in pod.spec.volumes if v.name == "state"]
        assert state.empty_dir.size_limit == "1Gi"
    job_id = body["status"]["deployment"]["jobId"]
    assert poll_until(lambda: any(k.endswith(".sst") for k in storage_keys(
        minio, f"checkpoints/{job_id}/shared/")), 120, 1.0), "no SST file uploaded"
    _assert_not_finished(body)

    # A worker pod deleted → Recovering → Ready, restored from a completed checkpoint.
    victim = sorted(p.metadata.name for p in jobs.live_pods(name, "worker"))[-1]
    t_kill = time.time()
    jobs.core.delete_namespaced_pod(victim, jobs.ns)
    body = jobs.wait(name, lambda b: (b.get("status") or {}).get("restarts", 0) >= 1
                     and is_ready(b), 180, "recovered")
    assert "Recovering" in rec.phases(t_kill), rec.seen
    assert victim not in {p.metadata.name for p in jobs.live_pods(name)}
    assert len(jobs.live_pods(name, "worker")) == 2
    assert body["status"].get("restoredFrom") is not None, body["status"]
    assert any(victim in e for e in jobs.events(name)), jobs.events(name)
    _assert_not_finished(body)

    # The scale subresource (kubectl scale --replicas=3) → Rescaling → Ready at parallelism 3.
    assert jobs.read_scale(name)["status"]["replicas"] == 2
    t_scale = time.time()
    jobs.scale(name, 3)
    body = jobs.wait(name, lambda b: is_ready(b) and b["status"].get("parallelism") == 3
                     and "Rescaling" in rec.phases(t_scale), 240, "rescaled to 3")
    assert len(jobs.live_pods(name, "worker")) == 3
    assert jobs.read_scale(name)["status"]["replicas"] == 3
    assert (body["status"].get("deployment") or {}).get("parallelism") == 3, body["status"]
    _assert_not_finished(body)

    # Suspend: a savepoint, then no pods. Resume: from that savepoint, Ready again.
    jobs.patch(name, {"spec": {"state": "suspended"}})
    body = jobs.wait(name, lambda b: (b.get("status") or {}).get("phase") == "Suspended",
                     180, "Suspended")
    assert "savepoint" in body["status"]["message"], body["status"]
    assert poll_until(lambda: not jobs.pods(name), 60, 0.5), [
        p.metadata.name for p in jobs.pods(name)]
    jobs.patch(name, {"spec": {"state": "running"}})
    body = jobs.wait_ready(name)
    assert "savepoint" in (body["status"]["deployment"].get("fromSavepoint") or ""), body["status"]
    assert len(jobs.live_pods(name, "worker")) == 3

    # The bounded input runs out: Finished, and the committed output is exactly the expected set.
    body = jobs.wait(name, lambda b: (b.get("status") or {}).get("phase") == "Finished",
                     420, "Finished")
    assert_committed_exactly_once(minio, RECORDS, WORDS)

    # Delete: the finalizer runs, the StreamJob and everything it owns go away.
    jobs.delete(name)
    from kubernetes.client.rest import ApiException

    def gone() -> bool:
        try:
            jobs.get(name)
        except ApiException as err:
            assert err.status == 404
            return True
        return False

    assert poll_until(gone, 120, 0.5), jobs.get(name).get("metadata")
    assert poll_until(lambda: not _owned_left(jobs, name), 60, 1.0), _owned_left(jobs, name)


def _assert_not_finished(body) -> None:
    assert body["status"]["phase"] != "Finished", (
        "the input ran out before the scenario was through; raise RECORDS or lower RATE")


def _owned_left(jobs: Jobs, name: str) -> list[str]:
    from kubernetes import client

    sel = f"streamjob.dev/job={name}"
    net = client.NetworkingV1Api(jobs.core.api_client)
    return ([f"pod/{p.metadata.name}" for p in jobs.pods(name)]
            + [f"service/{s.metadata.name}" for s in
               jobs.core.list_namespaced_service(jobs.ns, label_selector=sel).items]
            + [f"secret/{s.metadata.name}" for s in
               jobs.core.list_namespaced_secret(jobs.ns, label_selector=sel).items]
            + [f"networkpolicy/{n.metadata.name}" for n in
               net.list_namespaced_network_policy(jobs.ns, label_selector=sel).items])


def test_a_rocksdb_worker_pod_with_the_default_local_dir_writes_there_and_nowhere_else(
        kube, namespace):
    """The worker pod the operator builds for the default localDir (/tmp/streamjob-state, an
    emptyDir mounted over the /tmp emptyDir) on the real node: non-root, RocksDB opens in
    localDir, /tmp is writable, the root filesystem is not."""
    from streamjob_operator import builders
    from streamjob_operator.config import Settings
    from streamjob_operator.model import Deployment, parse_job

    job = parse_job({
        "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
        "metadata": {"name": "probe", "namespace": namespace, "uid": "u1"},
        "spec": {"pipeline": "m:f", "storage": "s3://b/p", "parallelism": 1,
                 "stateBackend": {"type": "rocksdb", "rocksdb": {
                     "blockCacheMB": 16, "writeBufferMB": 8, "localDirSizeLimit": "64Mi"}},
                 "resources": {"cpu": "100m", "memory": "384Mi"}}})
    pod = builders.worker_pod(job, Deployment(job_id="u1"), 0, 0, "x", Settings(
        default_image=kube.image, default_pull_policy="IfNotPresent"))
    [c] = pod.spec.containers
    c.env = [e for e in c.env if e.value_from is None or e.value_from.field_ref is not None]
    c.command, c.args = ["/bin/sh", "-c"], [
        "id -u && touch /tmp/streamjob-state/a /tmp/b && python3 -c 'import rocksdict; "
        "d = rocksdict.Rdict(\"/tmp/streamjob-state/db\"); d[b\"k\"] = b\"v\"; "
        "print(d[b\"k\"].decode()); d.close()' && if touch /c 2>/dev/null; then echo ROOT-RW; "
        "fi"]
    kube.core.create_namespaced_pod(namespace, pod)
    done = kube.wait_phase(namespace, pod.metadata.name, ("Succeeded", "Failed"))
    logs = kube.core.read_namespaced_pod_log(pod.metadata.name, namespace)
    assert done.status.phase == "Succeeded", logs
    assert logs.split() == ["10001", "v"], logs
