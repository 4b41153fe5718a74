"""StreamJob bodies for the operator tests (a uniquely named module: several test folders
have a conftest.py, so tests import helpers from here, not from ``conftest``)."""

from __future__ import annotations

from typing import Any


def streamjob_body(name: str = "wc", namespace: str = "jobs", uid: str = "uid-1",
                   generation: int = 1, status: dict[str, Any] | None = None,
                   **spec: Any) -> dict[str, Any]:
    """A StreamJob as the API server returns it (defaults applied the way the CRD does)."""
    base = {"pipeline": "streamjob.examples.wordcount:build", "storage": "s3://ckpt/jobs",
            "parallelism": 2, "maxParallelism": 128, "storageSecret": "minio-creds",
            "image": "localhost/streamjob:dev", "resources": {"cpu": "500m", "memory": "512Mi"},
            "state": "running", "upgradeMode": "savepoint"}
    base.update(spec)
    return {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": name, "namespace": namespace, "uid": uid,
                         "generation": generation},
            "spec": base, "status": status or {}}
