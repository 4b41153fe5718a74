"""Typed views of the StreamJob at the edge: its parsed spec and the status the operator keeps.

``status.deployment`` is the operator's memory of what it rolled out (revision, parallelism,
savepoint, spec hash). A restarted operator reads it back and carries on from there.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from streamjob.manifest import ManifestError, StreamJob, StreamJobSpec, parse_manifest
from streamjob_operator import statebackend
from streamjob_operator.operation import Operation


class InvalidSpec(ValueError):
    """The StreamJob's spec cannot run; the message names the field."""


class _Camel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


class Deployment(_Camel):
    """One rollout of the job: pods of one revision share parallelism and restore point."""
    revision: int = 1
    parallelism: int = 1
    job_id: str = Field("", alias="jobId")
    from_savepoint: str | None = Field(None, alias="fromSavepoint")
    spec_hash: str = Field("", alias="specHash")
    started_at: float = Field(0.0, alias="startedAt")
    coordinator_crashes: int = Field(0, alias="coordinatorCrashes")
    #: ``spec.stateBackend.type`` of this rollout (status written before the field existed:
    #: memory, the only backend then)
    state_backend: str = Field("memory", alias="stateBackend")


class Savepoint(_Camel):
    path: str
    at: str
    reason: str
    nonce: int | None = None


class AutoscalerStatus(_Camel):
    """``status.autoscaler``: what the autoscaler decided last and remembers (see
    ``autoscaler.py``); ``target`` is the parallelism it scaled the job to (the operator
    rolls it out like a spec change), ``recommended`` what it would choose now."""
    target: int | None = None
    recommended: int | None = None
    last_decision: dict[str, Any] | None = Field(None, alias="lastDecision")
    last_scale: dict[str, Any] | None = Field(None, alias="lastScale")
    memory: dict[str, Any] | None = None


class JobStatus(_Camel):
    phase: str | None = None
    message: str = ""
    deployment: Deployment | None = None
    #: the multi-step operation in flight (see ``operation``): written before each step acts
    operation: Operation | None = None
    #: a refused savepoint postpones rescale/upgrade/savepointNonce until then (epoch s)
    postponed_until: float | None = Field(None, alias="postponedUntil")
    #: parallelism whose rescale failed and was rolled back; not retried until spec changes
    failed_rescale: int | None = Field(None, alias="failedRescale")
    observed_savepoint_nonce: int | None = Field(None, alias="observedSavepointNonce")
    observed_restart_nonce: int | None = Field(None, alias="observedRestartNonce")
    last_savepoint: Savepoint | None = Field(None, alias="lastSavepoint")
    savepoints: list[Savepoint] = Field(default_factory=list)
    recovering_since_attempt: int | None = Field(None, alias="recoveringSinceAttempt")
    attempt: int | None = None
    restarts: int = 0
    autoscaler: AutoscalerStatus | None = None

    @classmethod
    def from_body(cls, status: Any) -> JobStatus:
        return cls.model_validate(dict(status or {}))


def parse_job(body: Any) -> StreamJob:
    """The typed StreamJob of a kopf body (or dict), or InvalidSpec naming the field."""
    metadata = body.get("metadata") or {}
    data = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: metadata.get(k) for k in ("name", "namespace", "uid") if metadata.get(k)},
        "spec": dict(body.get("spec") or {}),
    }
    try:
        job = parse_manifest(json.loads(json.dumps(data)))
    except ManifestError as err:
        raise InvalidSpec(str(err)) from None
    problem = statebackend.problem(job)
    if problem:
        raise InvalidSpec(problem)
    return job


#: spec fields whose change is an upgrade of the running pods (not a rescale or lifecycle knob)
UPGRADE_FIELDS = ("pipeline", "args", "image", "imagePullPolicy", "storageSecret", "resources",
                  "checkpoint", "storage", "restartStrategy", "maxParallelism")


def spec_hash(spec: StreamJobSpec) -> str:
    """A short hash of the fields whose change needs new pods (see :data:`UPGRADE_FIELDS`).

    ``stateBackend`` counts only when it is rocksdb: the hash of a job on the memory backend
    stays what it was before the field existed (an operator upgrade restarts no job), and the
    rocksdb settings of a job on the memory backend change nothing.
    """
    data = spec.model_dump(by_alias=True, mode="json")
    relevant = {k: data.get(k) for k in UPGRADE_FIELDS}
    if spec.state_backend.type != "memory":
        relevant["stateBackend"] = data["stateBackend"]
    text = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def manifest_text(job: StreamJob, parallelism: int) -> str:
    """The manifest handed to the coordinator, at the parallelism being rolled out."""
    data = job.model_dump(by_alias=True, mode="json", exclude={"status"})
    data["spec"]["parallelism"] = parallelism
    data["metadata"] = {k: v for k, v in data["metadata"].items() if v is not None}
    return json.dumps(data, sort_keys=True)
