"""Shared fixtures of the operator tests: a parsed job, StreamJob bodies, the import path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
for path in (REPO / "operator", REPO / "worker"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

pytest.importorskip("kopf", reason="the operator needs kopf: pip install -e '.[operator]'")
pytest.importorskip("kubernetes", reason="the operator needs the kubernetes client")


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


@pytest.fixture
def body() -> dict[str, Any]:
    return streamjob_body()
