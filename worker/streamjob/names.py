"""The one home of names shared by the runtime and the operator (pure, no imports).

Kubernetes names and labels of a StreamJob's objects, the per-job Secret's keys, the ports,
and the exit codes that are a contract between processes. The operator
(``streamjob_operator.names``) and ``streamjob.kube_access`` import them from here.
"""

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

ROLE_COORDINATOR = "coordinator"
ROLE_WORKER = "worker"

RPC_PORT = 6123
API_PORT = 8081

#: keys of the per-job Secret ``<job>-api-token``: the coordinator API's bearer token (people,
#: the operator) and the data-plane token workers present to the coordinator (never the same)
TOKEN_KEY = "token"
WORKER_TOKEN_KEY = "worker-token"

#: exit codes of ``streamjob coordinator`` (the operator reads them from the pod's status)
EXIT_FINISHED = 0          # finished, or stopped with a savepoint
EXIT_FAILED = 2            # failed for good (restart strategy exhausted, bad pipeline, ...)
#: exit codes of ``streamjob worker``: 0 only after the coordinator's SHUTDOWN; any other
#: exit is restarted by whoever runs it (``streamjob run``, the operator)
EXIT_COORDINATOR_LOST = 3  # lost its coordinator
EXIT_WATCHDOG = 4          # its event loop was stuck past the cancel timeout
#: exit code of ``streamjob run`` (local supervisor) when the job failed
EXIT_RUN_FAILED = 1


def fit(name: str, limit: int = 63) -> str:
    """``name`` cut to ``limit`` characters with a stable hash suffix when it is too long."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:limit - 9].rstrip('-')}-{digest}"


def token_secret_name(job: str) -> str:
    return fit(f"{job}-api-token", 253)
