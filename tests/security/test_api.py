"""The coordinator API on aiohttp (item 2 of issue 12): every route the CLI and the operator
use still answers with the same shapes; the token is checked first; errors carry the
reason as both ``error`` (the CLI reads it) and ``message`` (the operator reads it);
malformed HTTP is one log line. In-process server on loopback, with a fake coordinator."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

import streamjob
from streamjob.api import ApiServer
from streamjob.cli import api_call
from streamjob.manifest import ManifestError
from streamjob_operator.coordinator import CoordinatorClient, CoordinatorUnavailable

SPEC = yaml.safe_load((Path(streamjob.__file__).parent / "openapi.yaml").read_text())
TOKEN = "t0ken"


class FakeCoordinator:
    def __init__(self):
        self.history = [{"id": 1, "kind": "checkpoint", "status": "COMPLETED",
                         "triggered_at": 1.0, "timings": {"t0": []}}]
        self.failures: list[dict] = []
        self.refuse: str | None = None

        class T:
            task_id, name = "t0", "Source: x"

        self.pipeline = type("P", (), {"tasks": [T()]})()

    def status(self):
        return {"state": "RUNNING", "savepoints": [], "message": "running", "attempt": 1}

    def tasks(self, window=None):
        return {"window_s": window or 10.0, "state": "RUNNING", "tasks": []}

    async def savepoint(self, stop=False):
        if self.refuse:
            raise RuntimeError(self.refuse)
        return {"path": "file:///sp", "id": 2, "size_bytes": 0}

    async def checkpoint(self):
        if self.refuse:
            raise RuntimeError(self.refuse)
        return {"path": "file:///c/chk-3", "id": 3, "size_bytes": 0, "duration_ms": 1.0}


@pytest.fixture
def api():
    loop = asyncio.new_event_loop()
    fake = FakeCoordinator()
    server = ApiServer(fake, "127.0.0.1", 0, TOKEN)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    yield f"http://127.0.0.1:{server.port}", fake, server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


def _raw(base: str, method: str, path: str, token: str | None, body: bytes | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_every_documented_route_answers_over_http_and_needs_the_token(api):
    base, _, _ = api
    for path, ops in SPEC["paths"].items():
        concrete = path.replace("{id}", "1")
        for method in ops:
            body = b"{}" if method == "post" else None
            assert _raw(base, method.upper(), concrete, TOKEN, body)[0] == 200, (method, path)
            for token in (None, "wrong", TOKEN + "x"):
                assert _raw(base, method.upper(), concrete, token, body) == (
                    401, {"error": "unauthorized", "message": "unauthorized"})


def test_the_dashboard_needs_the_token_too(api):
    base, _, _ = api
    for path in ("/ui", "/ui/", "/ui/config", "/ui/checkpoints/1", "/ui/static/dashboard.js"):
        for token in (None, "wrong", TOKEN + "x"):
            assert _raw(base, "GET", path, token) == (
                401, {"error": "unauthorized", "message": "unauthorized"}), (path, token)


def test_clients_of_the_cli_and_the_operator(api):
    base, fake, _ = api
    assert api_call(base, TOKEN, "GET", "/api/v1/checkpoints")["checkpoints"][0]["id"] == 1
    assert "timings" in api_call(base, TOKEN, "GET", "/api/v1/checkpoints/1")
    assert api_call(base, TOKEN, "POST", "/api/v1/savepoints", {"stop": False})["uri"]
    client = CoordinatorClient(base, TOKEN)
    assert client.job().state == "RUNNING"
    assert client.savepoint(stop=True, timeout=30) == "file:///sp"
    # A refusal keeps its reason in both clients.
    fake.refuse = "a savepoint is already in progress"
    with pytest.raises(ManifestError, match="already in progress"):
        api_call(base, TOKEN, "POST", "/api/v1/savepoints", {"stop": True})
    with pytest.raises(CoordinatorUnavailable, match="already in progress"):
        client.savepoint(stop=True, timeout=30)


def test_errors_carry_error_and_message(api):
    base, _, _ = api
    assert _raw(base, "GET", "/api/v1/checkpoints/99", TOKEN) == (
        404, {"error": "checkpoint 99 is not in the history",
              "message": "checkpoint 99 is not in the history"})
    code, payload = _raw(base, "GET", "/nowhere", TOKEN)
    assert code == 404 and payload["error"] == payload["message"] == "not found"
    code, payload = _raw(base, "POST", "/api/v1/savepoints", TOKEN, b"{not json")
    assert code == 400 and payload["error"] == payload["message"]
    code, payload = _raw(base, "POST", "/api/v1/savepoints", TOKEN, b"x" * (65 * 1024))
    assert code == 413 and payload["error"] == payload["message"]


def test_malformed_http_is_one_log_line(api, caplog):
    base, _, server = api
    with caplog.at_level(logging.DEBUG):
        for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n",
                     b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
                     b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            s.sendall(junk)
            while s.recv(65536):
                pass
            s.close()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert _raw(base, "GET", "/api/v1/job", TOKEN)[0] == 200


def test_half_sent_body_gets_408_within_the_timeout():
    async def scenario():
        server = ApiServer(FakeCoordinator(), "127.0.0.1", 0, TOKEN, timeout=1)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST /api/v1/savepoints HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer " + TOKEN.encode() +
                         b"\r\nContent-Length: 100\r\n\r\n{")
            answer = await asyncio.wait_for(reader.read(), 30)  # until the server hangs up
            writer.close()
            return answer
        finally:
            await server.stop()

    answer = asyncio.run(scenario())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["message"] == "request body not received within 1 s"
