"""Pure builders of the Kubernetes objects of one StreamJob (``kubernetes.client`` models).

Nothing here talks to a server: each function takes the parsed job and returns an object that
``kube`` sends. Storage credentials are referenced by Secret key, never copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client as k8s

from streamjob.manifest import StreamJob
from streamjob_operator import names, statebackend
from streamjob_operator.config import Settings
from streamjob_operator.model import Deployment, manifest_text

STORAGE_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
#: the worker volume at ``spec.stateBackend.rocksdb.localDir`` (rocksdb backend)
STATE_VOLUME = "state"


def _owned(obj: Any, owner: Mapping[str, Any] | None) -> Any:
    if owner is not None:
        kopf.adopt(obj, owner=owner)  # type: ignore[arg-type]
    return obj


def _security_context(settings: Settings) -> tuple[k8s.V1PodSecurityContext,
                                                   k8s.V1SecurityContext]:
    pod = k8s.V1PodSecurityContext(
        run_as_non_root=True, run_as_user=settings.run_as_user,
        run_as_group=settings.run_as_user, fs_group=settings.run_as_user,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"))
    container = k8s.V1SecurityContext(
        run_as_non_root=True, allow_privilege_escalation=False, privileged=False,
        read_only_root_filesystem=True,    # writable: /tmp and a rocksdb localDir (emptyDirs)
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"))
    return pod, container


def _resources(job: StreamJob, role: str) -> k8s.V1ResourceRequirements | None:
    res = job.spec.resources
    cpu, memory = (res.cpu, res.memory) if res is not None else (None, None)
    limits = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    requests = dict(limits)
    if role == names.ROLE_WORKER and memory is None and statebackend.uses_rocksdb(job):
        # no memory given: at least request what the block cache and write buffers take,
        # so the scheduler does not place the worker where that does not fit (no limit)
        requests["memory"] = f"{statebackend.memory_floor_mib(job)}Mi"
    if not requests:
        return None
    return k8s.V1ResourceRequirements(requests=requests, limits=limits or None)


def _volumes(job: StreamJob, role: str) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """``/tmp`` (an emptyDir: the one writable path of the read-only root filesystem) and, in
    workers of a rocksdb job, an emptyDir of its own at ``localDir`` (its ``sizeLimit`` bounds
    the state files alone). ``localDir: /tmp`` is the ``/tmp`` volume itself (one mount per
    path); a ``localDir`` under ``/tmp`` is mounted over it."""
    tmp = k8s.V1EmptyDirVolumeSource()
    volumes = [k8s.V1Volume(name="tmp", empty_dir=tmp)]
    mounts = [k8s.V1VolumeMount(name="tmp", mount_path=statebackend.TMP)]
    if role != names.ROLE_WORKER or not statebackend.uses_rocksdb(job):
        return volumes, mounts
    path = statebackend.local_dir(job)
    size_limit = job.spec.state_backend.rocksdb.local_dir_size_limit
    if path == statebackend.TMP:
        tmp.size_limit = size_limit
    else:
        volumes.append(k8s.V1Volume(name=STATE_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(
            size_limit=size_limit)))
        mounts.append(k8s.V1VolumeMount(name=STATE_VOLUME, mount_path=path))
    return volumes, mounts


def _storage_env(job: StreamJob) -> list[k8s.V1EnvVar]:
    secret = job.spec.storage_secret
    if not secret:
        return []
    return [k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(
        secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key,
                                               optional=key == "AWS_ENDPOINT_URL")))
            for key in STORAGE_KEYS]


def _manifest_env(job: StreamJob, dep: Deployment) -> k8s.V1EnvVar:
    return k8s.V1EnvVar(name="STREAMJOB_MANIFEST", value=manifest_text(job, dep.parallelism))


def _downward_env() -> list[k8s.V1EnvVar]:
    def field(name: str, path: str) -> k8s.V1EnvVar:
        return k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(
            field_ref=k8s.V1ObjectFieldSelector(field_path=path)))
    return [field("POD_IP", "status.podIP"), field("POD_NAME", "metadata.name"),
            field("POD_NAMESPACE", "metadata.namespace"),
            k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
            k8s.V1EnvVar(name="HOME", value="/tmp")]


def _pod(job: StreamJob, settings: Settings, *, role: str, subtask: int | None,
         dep: Deployment, incarnation: int, command: list[str], env: list[k8s.V1EnvVar],
         ports: list[k8s.V1ContainerPort], annotations: dict[str, str] | None,
         readiness: k8s.V1Probe | None, owner: Mapping[str, Any] | None) -> k8s.V1Pod:
    name = job.metadata.name
    pod_sc, container_sc = _security_context(settings)
    volumes, mounts = _volumes(job, role)
    container = k8s.V1Container(
        name=role, image=job.spec.image or settings.default_image,
        image_pull_policy=job.spec.image_pull_policy or settings.default_pull_policy,
        command=command[:1], args=command[1:], env=_downward_env() + env, ports=ports,
        resources=_resources(job, role), security_context=container_sc,
        termination_message_policy="FallbackToLogsOnError", readiness_probe=readiness,
        volume_mounts=mounts)
    pod = k8s.V1Pod(
        api_version="v1", kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=names.pod_name(name, role, subtask, incarnation),
            namespace=job.metadata.namespace,
            labels=names.pod_labels(name, role, subtask, dep.revision, incarnation),
            annotations=annotations or None),
        spec=k8s.V1PodSpec(
            containers=[container], restart_policy="Never", security_context=pod_sc,
            automount_service_account_token=False, enable_service_links=False,
            termination_grace_period_seconds=10 if role == names.ROLE_COORDINATOR else 5,
            volumes=volumes))
    return _owned(pod, owner)


def _worker_token_env(job: StreamJob) -> k8s.V1EnvVar:
    """Workers present this data-plane token to the coordinator; other pods cannot join the
    job. It is not the API token: a worker (or whoever reads its environment) cannot call the
    coordinator API, and people with the API token are not workers."""
    return k8s.V1EnvVar(name="STREAMJOB_WORKER_TOKEN", value_from=k8s.V1EnvVarSource(
        secret_key_ref=k8s.V1SecretKeySelector(
            name=names.token_secret_name(job.metadata.name), key=names.WORKER_TOKEN_KEY)))


def _metrics(settings: Settings, command: list[str],
             ports: list[k8s.V1ContainerPort]) -> None:
    """Prometheus metrics on ``settings.job_metrics_port`` (a port named ``metrics``), if set."""
    if settings.job_metrics_port:
        command += ["--metrics-port", str(settings.job_metrics_port)]
        ports.append(k8s.V1ContainerPort(name="metrics", container_port=settings.job_metrics_port))


def coordinator_pod(job: StreamJob, dep: Deployment, incarnation: int, settings: Settings,
                    owner: Mapping[str, Any] | None = None) -> k8s.V1Pod:
    """The coordinator pod of revision ``dep.revision`` (restarting from ``dep.from_savepoint``)."""
    command = ["streamjob", "coordinator", "--job-id", dep.job_id,
               "--port", str(names.RPC_PORT), "--api-port", str(names.API_PORT),
               "--bind", "0.0.0.0"]
    if dep.from_savepoint:
        command += ["--from-savepoint", dep.from_savepoint]
    env = [
        _manifest_env(job, dep),
        k8s.V1EnvVar(name="STREAMJOB_API_TOKEN", value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(
                name=names.token_secret_name(job.metadata.name), key=names.TOKEN_KEY))),
        _worker_token_env(job),
    ] + _storage_env(job)
    superseded = names.superseded_job_ids(job.metadata.uid or "", dep.revision, dep.job_id)
    if superseded:
        # checkpoints of earlier revisions: deleted after this one's first checkpoint
        env.append(k8s.V1EnvVar(name="STREAMJOB_SUPERSEDED_JOB_IDS", value=",".join(superseded)))
    ports = [k8s.V1ContainerPort(name="rpc", container_port=names.RPC_PORT),
             k8s.V1ContainerPort(name="api", container_port=names.API_PORT)]
    _metrics(settings, command, ports)
    readiness = k8s.V1Probe(tcp_socket=k8s.V1TCPSocketAction(port=names.RPC_PORT),
                            period_seconds=1, failure_threshold=3)
    return _pod(job, settings, role=names.ROLE_COORDINATOR, subtask=None, dep=dep,
                incarnation=incarnation, command=command, env=env, ports=ports,
                annotations=None, readiness=readiness, owner=owner)


def worker_pod(job: StreamJob, dep: Deployment, subtask: int, incarnation: int,
               coordinator_address: str, settings: Settings,
               owner: Mapping[str, Any] | None = None) -> k8s.V1Pod:
    """Worker pod ``subtask`` (runs subtask ``subtask`` of every operator of the pipeline)."""
    command = ["streamjob", "worker", "--coordinator", f"{coordinator_address}:{names.RPC_PORT}",
               "--index", str(subtask), "--bind", "0.0.0.0", "--advertise", "$(POD_IP)"]
    ports: list[k8s.V1ContainerPort] = []
    _metrics(settings, command, ports)
    return _pod(job, settings, role=names.ROLE_WORKER, subtask=subtask, dep=dep,
                incarnation=incarnation, command=command,
                env=[_manifest_env(job, dep), _worker_token_env(job)] + _storage_env(job),
                ports=ports,
                annotations={names.ANNOTATION_COORDINATOR: coordinator_address},
                readiness=None, owner=owner)


def coordinator_service(job: StreamJob, owner: Mapping[str, Any] | None = None) -> k8s.V1Service:
    """ClusterIP Service in front of the coordinator (RPC for workers, API for the operator)."""
    name = job.metadata.name
    svc = k8s.V1Service(
        api_version="v1", kind="Service",
        metadata=k8s.V1ObjectMeta(name=names.service_name(name), namespace=job.metadata.namespace,
                                  labels=names.job_labels(name)),
        spec=k8s.V1ServiceSpec(
            type="ClusterIP",
            selector={names.LABEL_JOB: name, names.LABEL_ROLE: names.ROLE_COORDINATOR},
            ports=[k8s.V1ServicePort(name="rpc", port=names.RPC_PORT, target_port="rpc"),
                   k8s.V1ServicePort(name="api", port=names.API_PORT, target_port="api")]))
    return _owned(svc, owner)


def token_secret(job: StreamJob, token: str, worker_token: str,
                 owner: Mapping[str, Any] | None = None) -> k8s.V1Secret:
    """The per-job Secret: the coordinator API's bearer token (key ``token``: people, the
    operator) and the data-plane token of the workers (key ``worker-token``)."""
    if token == worker_token:
        raise ValueError("the API token and the workers' token must differ")
    name = job.metadata.name
    secret = k8s.V1Secret(
        api_version="v1", kind="Secret", type="Opaque",
        metadata=k8s.V1ObjectMeta(name=names.token_secret_name(name),
                                  namespace=job.metadata.namespace, labels=names.job_labels(name)),
        string_data={names.TOKEN_KEY: token, names.WORKER_TOKEN_KEY: worker_token})
    return _owned(secret, owner)


def network_policy(job: StreamJob, settings: Settings,
                   owner: Mapping[str, Any] | None = None) -> k8s.V1NetworkPolicy:
    """Only this job's pods reach its pods; the operator reaches the coordinator API.

    With job metrics on, their port is open to pods of the monitoring namespace only
    (``settings.monitoring_namespace``; without one, to no other pod).
    """
    name = job.metadata.name
    same_job = k8s.V1NetworkPolicyPeer(pod_selector=k8s.V1LabelSelector(
        match_labels={names.LABEL_JOB: name}))
    operator_peer = k8s.V1NetworkPolicyPeer(
        pod_selector=k8s.V1LabelSelector(match_labels=settings.operator_pod_labels or None),
        namespace_selector=k8s.V1LabelSelector(match_labels={
            "kubernetes.io/metadata.name": settings.operator_namespace})
        if settings.operator_namespace else None)
    ingress = [
        k8s.V1NetworkPolicyIngressRule(_from=[same_job]),
        k8s.V1NetworkPolicyIngressRule(_from=[operator_peer], ports=[
            k8s.V1NetworkPolicyPort(port=names.API_PORT, protocol="TCP")]),
    ]
    if settings.job_metrics_port and settings.monitoring_namespace:
        ingress.append(k8s.V1NetworkPolicyIngressRule(
            _from=[k8s.V1NetworkPolicyPeer(namespace_selector=k8s.V1LabelSelector(
                match_labels={"kubernetes.io/metadata.name": settings.monitoring_namespace}))],
            ports=[k8s.V1NetworkPolicyPort(port=settings.job_metrics_port, protocol="TCP")]))
    policy = k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1", kind="NetworkPolicy",
        metadata=k8s.V1ObjectMeta(name=names.network_policy_name(name),
                                  namespace=job.metadata.namespace, labels=names.job_labels(name)),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels={names.LABEL_JOB: name}),
            policy_types=["Ingress"], ingress=ingress))
    return _owned(policy, owner)
