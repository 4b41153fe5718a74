"""Names and labels of everything the operator creates for a StreamJob (pure)."""

from __future__ import annotations

import hashlib

GROUP = "streamjob.dev"
VERSION = "v1alpha1"
PLURAL = "streamjobs"
KIND = "StreamJob"

LABEL_JOB = "streamjob.dev/job"
LABEL_ROLE = "streamjob.dev/role"
LABEL_SUBTASK = "streamjob.dev/subtask"
LABEL_REVISION = "streamjob.dev/revision"
LABEL_INCARNATION = "streamjob.dev/incarnation"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "streamjob-operator"
ANNOTATION_COORDINATOR = "streamjob.dev/coordinator-address"

ROLE_COORDINATOR = "coordinator"
ROLE_WORKER = "worker"

RPC_PORT = 6123
API_PORT = 8081

TOKEN_KEY = "token"


def fit(name: str, limit: int = 63) -> str:
    """``name`` cut to ``limit`` characters with a stable hash suffix when it is too long."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:limit - 9].rstrip('-')}-{digest}"


def service_name(job: str) -> str:
    return fit(f"{job}-coordinator")


def token_secret_name(job: str) -> str:
    return fit(f"{job}-api-token", 253)


def network_policy_name(job: str) -> str:
    return fit(f"{job}-coordinator", 253)


def pod_name(job: str, role: str, subtask: int | None, incarnation: int) -> str:
    if role == ROLE_COORDINATOR:
        return fit(f"{job}-coordinator-{incarnation}")
    return fit(f"{job}-worker-{subtask}-{incarnation}")


def job_labels(job: str) -> dict[str, str]:
    return {LABEL_JOB: job, LABEL_MANAGED_BY: MANAGED_BY, "app.kubernetes.io/name": "streamjob",
            "app.kubernetes.io/instance": job}


def pod_labels(job: str, role: str, subtask: int | None, revision: int,
               incarnation: int) -> dict[str, str]:
    labels = {**job_labels(job), LABEL_ROLE: role, LABEL_REVISION: str(revision),
              LABEL_INCARNATION: str(incarnation), "app.kubernetes.io/component": role}
    if subtask is not None:
        labels[LABEL_SUBTASK] = str(subtask)
    return labels


def worker_selector(job: str) -> str:
    """Label selector of the job's worker pods (the scale subresource's ``status.selector``)."""
    return f"{LABEL_JOB}={job},{LABEL_ROLE}={ROLE_WORKER}"


def coordinator_host(job: str, namespace: str) -> str:
    """DNS name of the coordinator Service inside the cluster."""
    return f"{service_name(job)}.{namespace}.svc"
