"""The pure builders: pods, Service, Secret and NetworkPolicy of one StreamJob."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import ApiClient
from sj_bodies import streamjob_body

from streamjob.manifest import parse_manifest
from streamjob_operator import builders, names
from streamjob_operator.config import Settings
from streamjob_operator.model import Deployment, InvalidSpec, parse_job

SETTINGS = Settings(default_image="streamjob:default", operator_namespace="streamjob-system",
                    operator_pod_labels={"app.kubernetes.io/name": "streamjob-operator"})
DEP = Deployment(revision=3, parallelism=2, job_id="uid-1-r3",
                 from_savepoint="s3://ckpt/jobs/uid-1/savepoints/sp-7", spec_hash="h")


def plain(obj):
    return ApiClient().sanitize_for_serialization(obj)


def env_of(pod: dict) -> dict[str, dict]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def test_coordinator_pod_runs_the_coordinator_command_from_the_savepoint(body):
    pod = plain(builders.coordinator_pod(parse_job(body), DEP, 4, SETTINGS, owner=body))
    c = pod["spec"]["containers"][0]
    assert c["command"] + c["args"] == [
        "streamjob", "coordinator", "--job-id", "uid-1-r3", "--port", "6123",
        "--api-port", "8081", "--bind", "0.0.0.0",
        "--from-savepoint", "s3://ckpt/jobs/uid-1/savepoints/sp-7"]
    assert pod["metadata"]["name"] == "wc-coordinator-4"
    assert pod["metadata"]["labels"][names.LABEL_ROLE] == "coordinator"
    assert pod["metadata"]["labels"][names.LABEL_REVISION] == "3"
    assert {p["containerPort"] for p in c["ports"]} == {6123, 8081}
    assert c["readinessProbe"]["tcpSocket"]["port"] == 6123


def test_coordinator_manifest_env_is_the_job_at_the_rolled_out_parallelism(body):
    body["spec"]["parallelism"] = 5                   # spec says 5, the rollout is at 2
    pod = plain(builders.coordinator_pod(parse_job(body), DEP, 0, SETTINGS))
    manifest = parse_manifest(json.loads(env_of(pod)["STREAMJOB_MANIFEST"]["value"]))
    assert manifest.spec.parallelism == 2
    assert manifest.metadata.name == "wc" and manifest.metadata.uid == "uid-1"


def test_api_token_and_storage_credentials_are_secret_references_never_values(body):
    for pod in (builders.coordinator_pod(parse_job(body), DEP, 0, SETTINGS),
                builders.worker_pod(parse_job(body), DEP, 1, 0, "wc-coordinator.jobs.svc",
                                    SETTINGS)):
        env = env_of(plain(pod))
        for key in builders.STORAGE_KEYS:
            assert "value" not in env[key]
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "minio-creds"
            assert env[key]["valueFrom"]["secretKeyRef"]["key"] == key
    token = env_of(plain(builders.coordinator_pod(parse_job(body), DEP, 0, SETTINGS)))[
        "STREAMJOB_API_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "wc-api-token", "key": "token"}


def test_workers_and_coordinator_share_a_data_plane_token_that_is_not_the_api_token(body):
    job = parse_job(body)
    for pod in (builders.coordinator_pod(job, DEP, 0, SETTINGS),
                builders.worker_pod(job, DEP, 1, 0, "x", SETTINGS)):
        env = env_of(plain(pod))
        assert env["STREAMJOB_WORKER_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "wc-api-token", "key": "worker-token"}
    worker_env = env_of(plain(builders.worker_pod(job, DEP, 1, 0, "x", SETTINGS)))
    assert "STREAMJOB_API_TOKEN" not in worker_env          # workers cannot call the API


def test_no_storage_secret_means_no_credential_env():
    job = parse_job(streamjob_body(storageSecret=None))
    env = env_of(plain(builders.worker_pod(job, DEP, 0, 0, "x", SETTINGS)))
    assert not set(builders.STORAGE_KEYS) & set(env)


def test_worker_pod_runs_subtask_i_and_advertises_its_pod_ip(body):
    pod = plain(builders.worker_pod(parse_job(body), DEP, 1, 2, "wc-coordinator.jobs.svc",
                                    SETTINGS, owner=body))
    c = pod["spec"]["containers"][0]
    assert c["command"] + c["args"] == [
        "streamjob", "worker", "--coordinator", "wc-coordinator.jobs.svc:6123", "--index", "1",
        "--bind", "0.0.0.0", "--advertise", "$(POD_IP)"]
    assert env_of(pod)["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert pod["metadata"]["name"] == "wc-worker-1-2"
    labels = pod["metadata"]["labels"]
    assert (labels[names.LABEL_JOB], labels[names.LABEL_ROLE], labels[names.LABEL_SUBTASK]) == (
        "wc", "worker", "1")


def test_pods_are_non_root_without_capabilities_or_escalation(body):
    for pod in (builders.coordinator_pod(parse_job(body), DEP, 0, SETTINGS),
                builders.worker_pod(parse_job(body), DEP, 0, 0, "x", SETTINGS)):
        spec = plain(pod)["spec"]
        assert spec["restartPolicy"] == "Never"
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = spec["containers"][0]["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["privileged"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        # the one writable path: /tmp (also $HOME), an emptyDir
        assert spec["containers"][0]["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
        assert spec["volumes"] == [{"name": "tmp", "emptyDir": {}}]
        assert env_of(plain(pod))["HOME"]["value"] == "/tmp"


def test_pods_get_resources_and_image_from_the_spec(body):
    c = plain(builders.worker_pod(parse_job(body), DEP, 0, 0, "x", SETTINGS))["spec"][
        "containers"][0]
    assert c["image"] == "localhost/streamjob:dev"
    assert c["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert c["resources"]["limits"]["memory"] == "512Mi"
    job = parse_job(streamjob_body(image=None, resources=None))
    c = plain(builders.worker_pod(job, DEP, 0, 0, "x", SETTINGS))["spec"]["containers"][0]
    assert c["image"] == "streamjob:default" and "resources" not in c


def test_everything_is_owned_by_the_streamjob(body):
    job = parse_job(body)
    objs = [builders.coordinator_pod(job, DEP, 0, SETTINGS, owner=body),
            builders.worker_pod(job, DEP, 0, 0, "x", SETTINGS, owner=body),
            builders.coordinator_service(job, owner=body),
            builders.token_secret(job, "t0ken", "w0rker", owner=body),
            builders.network_policy(job, SETTINGS, owner=body)]
    for obj in objs:
        refs = plain(obj)["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                         "name": "wc", "uid": "uid-1", "controller": True,
                         "blockOwnerDeletion": True}]
        assert plain(obj)["metadata"]["namespace"] == "jobs"


def test_service_selects_the_coordinator_on_rpc_and_api_ports(body):
    svc = plain(builders.coordinator_service(parse_job(body)))
    assert svc["metadata"]["name"] == "wc-coordinator"
    assert svc["spec"]["selector"] == {names.LABEL_JOB: "wc", names.LABEL_ROLE: "coordinator"}
    assert {(p["name"], p["port"]) for p in svc["spec"]["ports"]} == {("rpc", 6123),
                                                                      ("api", 8081)}


def test_token_secret_holds_the_api_token_and_a_different_worker_token(body):
    secret = plain(builders.token_secret(parse_job(body), "s3cr3t", "w0rker"))
    assert secret["stringData"] == {"token": "s3cr3t", "worker-token": "w0rker"}
    assert secret["metadata"]["name"] == "wc-api-token"
    with pytest.raises(ValueError):
        builders.token_secret(parse_job(body), "same", "same")


def test_the_api_token_is_derived_from_the_operator_key_so_no_secret_is_read():
    from streamjob_operator.reconcile import api_token

    keyed = Settings(token_key="k" * 32)
    assert api_token(keyed, "uid-1") == api_token(keyed, "uid-1")
    assert api_token(keyed, "uid-1") != api_token(keyed, "uid-2")
    assert api_token(Settings(token_key="other"), "uid-1") != api_token(keyed, "uid-1")
    assert api_token(Settings(), "uid-1") is None


def test_network_policy_admits_only_the_jobs_pods_and_the_operator(body):
    policy = plain(builders.network_policy(parse_job(body), SETTINGS))
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {names.LABEL_JOB: "wc"}}
    assert spec["policyTypes"] == ["Ingress"]
    same_job, operator = spec["ingress"]
    assert same_job == {"from": [{"podSelector": {"matchLabels": {names.LABEL_JOB: "wc"}}}]}
    assert operator["ports"] == [{"port": 8081, "protocol": "TCP"}]
    peer = operator["from"][0]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "streamjob-system"}}
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name":
                                                   "streamjob-operator"}}


def test_long_job_names_still_give_valid_dns_labels():
    name = "a" * 45
    assert len(names.service_name(name)) <= 63
    assert len(names.pod_name(name, "worker", 123, 99)) <= 63
    assert names.fit("x" * 80) == names.fit("x" * 80)          # stable
    assert names.fit("x" * 80) != names.fit("x" * 79 + "y")


def test_job_metrics_port_adds_the_flag_a_named_port_and_a_rule_for_the_monitoring_namespace(
        body):
    job = parse_job(body)
    assert all(r.get("ports") != [{"port": 9249, "protocol": "TCP"}] for r in
               plain(builders.network_policy(job, SETTINGS))["spec"]["ingress"])
    settings = Settings(default_image="streamjob:default", job_metrics_port=9249,
                        monitoring_namespace="monitoring")
    for pod in (builders.coordinator_pod(job, DEP, 1, settings),
                builders.worker_pod(job, DEP, 0, 1, "10.0.0.9", settings)):
        c = plain(pod)["spec"]["containers"][0]
        args = c["command"] + c["args"]
        assert args[args.index("--metrics-port") + 1] == "9249"
        assert {"name": "metrics", "containerPort": 9249} in c["ports"]
    rules = plain(builders.network_policy(job, settings))["spec"]["ingress"]
    assert {"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"port": 9249, "protocol": "TCP"}]} in rules   # only from monitoring
    assert len(rules) == 3
    assert all(r.get("from") for r in rules)                    # no rule admits any peer
    unnamed = Settings(default_image="streamjob:default", job_metrics_port=9249)
    assert len(plain(builders.network_policy(job, unnamed))["spec"]["ingress"]) == 2
    plain_worker = plain(builders.worker_pod(job, DEP, 0, 1, "10.0.0.9", SETTINGS))
    assert "--metrics-port" not in plain_worker["spec"]["containers"][0]["args"]


def test_the_coordinator_is_told_the_job_ids_of_the_revisions_it_supersedes(body):
    pod = plain(builders.coordinator_pod(parse_job(body), DEP, 0, SETTINGS))
    assert env_of(pod)["STREAMJOB_SUPERSEDED_JOB_IDS"]["value"] == "uid-1,uid-1-r1,uid-1-r2"
    first = Deployment(revision=1, parallelism=2, job_id="uid-1")
    pod = plain(builders.coordinator_pod(parse_job(body), first, 0, SETTINGS))
    assert "STREAMJOB_SUPERSEDED_JOB_IDS" not in env_of(pod)  # rev 1's only id is its own


def test_superseded_job_ids_are_every_earlier_revisions_id_but_the_current_one():
    # a revision that reused its predecessor's id (restart, last-state upgrade) keeps it
    assert names.superseded_job_ids("u", 4, "u-r3") == ["u", "u-r1", "u-r2"]
    assert names.superseded_job_ids("u", 3, "u-r3") == ["u", "u-r1", "u-r2"]
    assert names.superseded_job_ids("u", 2, "u") == ["u-r1"]
    assert names.superseded_job_ids("", 5, "x") == []
    many = names.superseded_job_ids("u", 100, "u-r100")
    assert len(many) == names.MAX_SUPERSEDED and many[-1] == "u-r99"  # newest kept


# --- spec.stateBackend: rocksdb workers get a volume at localDir and memory for the cache

def rocksdb_body(**rocksdb):
    return streamjob_body(stateBackend={"type": "rocksdb", "rocksdb": rocksdb},
                          resources={"cpu": "500m", "memory": "1Gi"})


def volumes_of(pod: dict) -> tuple[dict[str, dict], dict[str, str]]:
    """Volumes by name, and the container's mount paths by volume name."""
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert len({m["mountPath"] for m in mounts}) == len(mounts)      # one mount per path
    return ({v["name"]: v for v in pod["spec"]["volumes"]},
            {m["name"]: m["mountPath"] for m in mounts})


def test_memory_backend_pods_have_only_the_tmp_volume(body):
    for pod in (builders.coordinator_pod(parse_job(body), DEP, 0, SETTINGS),
                builders.worker_pod(parse_job(body), DEP, 0, 0, "x", SETTINGS)):
        volumes, mounts = volumes_of(plain(pod))
        assert volumes == {"tmp": {"name": "tmp", "emptyDir": {}}}
        assert mounts == {"tmp": "/tmp"}


@pytest.mark.parametrize(("local_dir", "mount"), [
    ("/tmp/streamjob-state", "/tmp/streamjob-state"),      # the default: over /tmp
    ("/tmp/state/", "/tmp/state"),                         # normalised
    ("/var/lib/streamjob", "/var/lib/streamjob"),          # elsewhere on the read-only root
])
def test_rocksdb_workers_get_an_empty_dir_at_local_dir_with_its_size_limit(local_dir, mount):
    job = parse_job(rocksdb_body(localDir=local_dir, localDirSizeLimit="20Gi"))
    volumes, mounts = volumes_of(plain(builders.worker_pod(job, DEP, 1, 0, "x", SETTINGS)))
    assert mounts == {"tmp": "/tmp", builders.STATE_VOLUME: mount}
    assert volumes[builders.STATE_VOLUME]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert volumes["tmp"]["emptyDir"] == {}
    # the coordinator holds no keyed state: no state volume there
    volumes, mounts = volumes_of(plain(builders.coordinator_pod(job, DEP, 0, SETTINGS)))
    assert mounts == {"tmp": "/tmp"}


def test_local_dir_tmp_is_the_tmp_volume_itself_with_the_size_limit():
    job = parse_job(rocksdb_body(localDir="/tmp", localDirSizeLimit="5Gi"))
    volumes, mounts = volumes_of(plain(builders.worker_pod(job, DEP, 0, 0, "x", SETTINGS)))
    assert mounts == {"tmp": "/tmp"}
    assert volumes == {"tmp": {"name": "tmp", "emptyDir": {"sizeLimit": "5Gi"}}}


def test_without_a_size_limit_the_state_volume_is_unbounded():
    job = parse_job(rocksdb_body())
    volumes, mounts = volumes_of(plain(builders.worker_pod(job, DEP, 0, 0, "x", SETTINGS)))
    assert mounts[builders.STATE_VOLUME] == "/tmp/streamjob-state"
    assert volumes[builders.STATE_VOLUME]["emptyDir"] == {}


def test_rocksdb_workers_stay_non_root_read_only_and_without_capabilities():
    job = parse_job(rocksdb_body(localDir="/var/lib/streamjob"))
    pod = plain(builders.worker_pod(job, DEP, 0, 0, "x", SETTINGS))
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert "add" not in sc["capabilities"]
    # fsGroup makes the emptyDir writable for the non-root user
    assert pod["spec"]["securityContext"]["fsGroup"] == SETTINGS.run_as_user
    assert pod["spec"]["securityContext"]["runAsUser"] == SETTINGS.run_as_user


@pytest.mark.parametrize("local_dir", ["/", "/opt", "/opt/streamjob/x", "/proc/x", "/etc",
                                       "/usr/local/state", "/dev/shm"])
def test_a_local_dir_that_would_hide_the_system_or_the_venv_is_refused(local_dir):
    with pytest.raises(InvalidSpec, match="spec.stateBackend.rocksdb.localDir"):
        parse_job(rocksdb_body(localDir=local_dir))
    parse_job(streamjob_body(stateBackend={"type": "memory", "rocksdb": {"localDir": local_dir}}))


def test_worker_memory_below_block_cache_and_write_buffers_is_refused():
    # 256 (process) + 256 (block cache) + 2 x 64 (write buffers) = 640 Mi
    with pytest.raises(InvalidSpec, match=r"spec.resources.memory 512Mi .* 640Mi"):
        parse_job(streamjob_body(stateBackend={"type": "rocksdb"},
                                 resources={"cpu": "500m", "memory": "512Mi"}))
    parse_job(streamjob_body(stateBackend={"type": "rocksdb"},
                             resources={"cpu": "500m", "memory": "640Mi"}))
    parse_job(streamjob_body(stateBackend={"type": "rocksdb",
                                           "rocksdb": {"blockCacheMB": 64, "writeBufferMB": 16}},
                             resources={"memory": "0.5Gi"}))


def test_rocksdb_workers_without_memory_request_the_cache_and_buffers():
    job = parse_job(streamjob_body(stateBackend={"type": "rocksdb",
                                                 "rocksdb": {"blockCacheMB": 128}},
                                   resources={"cpu": "500m"}))
    worker = plain(builders.worker_pod(job, DEP, 0, 0, "x", SETTINGS))
    assert worker["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "500m"}}
    coordinator = plain(builders.coordinator_pod(job, DEP, 0, SETTINGS))
    assert coordinator["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "500m"}, "limits": {"cpu": "500m"}}
    job = parse_job(streamjob_body(stateBackend={"type": "rocksdb"}, resources={
        "cpu": "1", "memory": "2Gi"}))
    worker = plain(builders.worker_pod(job, DEP, 0, 0, "x", SETTINGS))
    assert worker["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
