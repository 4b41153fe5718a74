"""Names and labels of everything the operator creates for a StreamJob (pure)."""

from __future__ import annotations

from streamjob.names import (  # the one home of shared names (runtime module)
    API_PORT,
    EXIT_FAILED,
    EXIT_FINISHED,
    GROUP,
    KIND,
    LABEL_INCARNATION,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_REVISION,
    LABEL_ROLE,
    LABEL_SUBTASK,
    MANAGED_BY,
    PLURAL,
    ROLE_COORDINATOR,
    ROLE_WORKER,
    RPC_PORT,
    TOKEN_KEY,
    VERSION,
    WORKER_TOKEN_KEY,
    fit,
    token_secret_name,
)

__all__ = ["API_PORT", "EXIT_FAILED", "EXIT_FINISHED", "GROUP", "KIND", "LABEL_INCARNATION",
           "LABEL_JOB", "LABEL_MANAGED_BY", "LABEL_REVISION", "LABEL_ROLE", "LABEL_SUBTASK",
           "MANAGED_BY", "PLURAL", "ROLE_COORDINATOR", "ROLE_WORKER", "RPC_PORT", "TOKEN_KEY",
           "VERSION", "WORKER_TOKEN_KEY", "fit", "token_secret_name"]

ANNOTATION_COORDINATOR = "streamjob.dev/coordinator-address"
ANNOTATION_SAVEPOINT_ON_DELETE = "streamjob.dev/savepoint-on-delete"
LEASE_NAME = "streamjob-operator"


def service_name(job: str) -> str:
    return fit(f"{job}-coordinator")


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


#: at most this many superseded job ids are handed to a coordinator (each revision's
#: coordinator cleans all of its predecessors, so older ones are normally gone already)
MAX_SUPERSEDED = 32


def revision_job_id(uid: str, revision: int) -> str:
    """Job id (checkpoint prefix) of a revision that starts from a savepoint: one with no
    checkpoints yet. The first revision's job id is the StreamJob's uid itself."""
    return f"{uid}-r{revision}"


def superseded_job_ids(uid: str, revision: int, current: str) -> list[str]:
    """Every job id an earlier revision of the StreamJob ``uid`` may have used, newest last,
    without ``current`` (revisions that reused a job id share its checkpoints)."""
    if not uid:
        return []
    ids = [uid] + [revision_job_id(uid, r) for r in range(1, revision)]
    return [i for i in ids if i != current][-MAX_SUPERSEDED:]
