"""The coordinator's HTTP API (described in ``openapi.yaml`` next to this file).

Every request needs ``Authorization: Bearer <token>``; without it the answer is 401 and
nothing else. A deliberately small HTTP/1.1 server on asyncio: the API is a handful of JSON
routes and the coordinator must not pull in a web framework.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

log = logging.getLogger("streamjob.api")

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error"}


class ApiServer:
    def __init__(self, coordinator: Any, bind: str, port: int, token: str | None):
        if not token:
            raise ValueError("the coordinator API needs a token")
        self.coordinator = coordinator
        self.bind, self.port, self.token = bind, port, token
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.bind, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            head = request.decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in head[1:] if line)}
            length = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else b""
            auth = headers.get("authorization", "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
                status, payload = 401, {"error": "unauthorized"}
            else:
                status, payload = await self._route(method, target.split("?")[0], body)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError, ConnectionError):
            status, payload = 400, {"error": "bad request"}
        data = json.dumps(payload).encode()
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     "Connection: close\r\n\r\n".encode() + data)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        c = self.coordinator
        parts = [p for p in path.split("/") if p]
        if parts[:2] != ["api", "v1"]:
            return 404, {"error": "not found"}
        parts = parts[2:]
        if parts == ["job"] and method == "GET":
            return 200, c.status()
        if parts == ["checkpoints"] and method == "GET":
            return 200, {"checkpoints": [{k: v for k, v in h.items() if k != "timings"}
                                         for h in c.history]}
        if len(parts) == 2 and parts[0] == "checkpoints" and method == "GET":
            for h in c.history:
                if str(h["id"]) == parts[1]:
                    # Task names let a client label the per-subtask timings (t0, t1, ...).
                    return 200, {**h, "task_names": {t.task_id: t.name
                                                     for t in c.pipeline.tasks}}
            return 404, {"error": f"checkpoint {parts[1]} is not in the history"}
        if parts == ["savepoints"] and method == "POST":
            try:
                req = json.loads(body or b"{}")
                summary = await c.savepoint(stop=bool(req.get("stop")))
            except RuntimeError as err:
                return 409, {"error": str(err)}
            return 200, {"uri": summary["path"], "id": summary["id"],
                         "size_bytes": summary["size_bytes"]}
        if parts == ["savepoints"] and method == "GET":
            return 200, {"savepoints": c.status()["savepoints"]}
        return 404, {"error": "not found"}
