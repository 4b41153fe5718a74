"""openapi.yaml is a valid OpenAPI 3 document and matches the routes of api.py."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml

import streamjob
from streamjob.api import ApiServer

SPEC = yaml.safe_load((Path(streamjob.__file__).parent / "openapi.yaml").read_text())


def test_spec_is_valid_openapi():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(SPEC)


def test_api_docstring_names_the_document():
    import streamjob.api

    assert "openapi.yaml" in streamjob.api.__doc__


class FakeCoordinator:
    def __init__(self):
        self.history = [{"id": 1, "kind": "checkpoint", "status": "COMPLETED",
                         "triggered_at": 1.0, "timings": {"t0": []}}]

        class T:
            task_id, name = "t0", "Source: x"

        self.pipeline = type("P", (), {"tasks": [T()]})()
        self.failures = [{"reason": "lost worker 1 (pid 7)", "detected_at": 2.0, "attempt": 0,
                          "restarts": 1, "action": "restart", "exception": None}]

    def status(self):
        return {"state": "RUNNING", "savepoints": []}

    def tasks(self, window=None):
        return {"window_s": 10.0, "tasks": []}

    async def savepoint(self, stop=False):
        return {"path": "file:///sp", "id": 2, "size_bytes": 0}

    async def checkpoint(self):
        return {"path": "file:///c/chk-3", "id": 3, "size_bytes": 0, "duration_ms": 1.0,
                "kind": "checkpoint", "status": "COMPLETED"}


def test_every_documented_operation_is_served():
    server = ApiServer(FakeCoordinator(), "127.0.0.1", 0, "t")
    for path, ops in SPEC["paths"].items():
        concrete = re.sub(r"\{id\}", "1", path)
        for method in ops:
            code, _ = asyncio.run(server._route(method.upper(), concrete, b"{}"))
            assert code == 200, (method, path)
            assert str(code) in ops[method]["responses"]
            assert "401" in ops[method]["responses"]
    assert asyncio.run(server._route("GET", "/api/v1/undocumented", b""))[0] == 404
    assert asyncio.run(server._route("DELETE", "/api/v1/job", b""))[0] == 404
