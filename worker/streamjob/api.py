"""The coordinator's HTTP API (described in ``openapi.yaml`` next to this file).

Every request needs ``Authorization: Bearer <token>``; without it the answer is 401 and
nothing else. Served by ``aiohttp.web``. The token is checked in a middleware before any
body is read; a body (only ``POST /api/v1/savepoints`` has one) is at most
``STREAMJOB_API_MAX_BODY`` bytes (64 KiB, larger is refused with 413 before it is read) and
must arrive within ``STREAMJOB_API_TIMEOUT`` seconds (10), which is also how long a
connection may sit without sending a request; at most ``STREAMJOB_API_MAX_CONNECTIONS`` (64)
connections are open at once (more are closed on arrival). ``/ui/`` serves the dashboard
(``dashboard.py``: HTML pages, read-only) behind the same token. Errors are JSON
``{"error": reason, "message": reason}``: the CLI reads ``error``, the operator ``message``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from streamjob.wire import setting

log = logging.getLogger("streamjob.api")

MAX_BODY = int(setting("STREAMJOB_API_MAX_BODY", 64 * 1024))
TIMEOUT = setting("STREAMJOB_API_TIMEOUT", 10.0)
MAX_CONNECTIONS = int(setting("STREAMJOB_API_MAX_CONNECTIONS", 64))


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason, "message": reason}, status=status)


async def _refuse(request: web.Request, status: int, reason: str) -> web.StreamResponse:
    """Answer and hang up: a body the client may still be sending is never read."""
    response = _error(status, reason)
    response.force_close()
    if request.can_read_body and not request.content.is_eof():
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()  # no lingering read of the rest of the body
    return response


def max_alignment_ms(entry: dict[str, Any]) -> float | None:
    """The longest alignment of any subtask in a history entry (None: no timings)."""
    aligns = [t.get("alignment_ms", 0.0) for subtasks in (entry.get("timings") or {}).values()
              for t in subtasks if t]
    return max(aligns) if aligns else None


def history_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """A history entry without its per-subtask timings, with the longest alignment."""
    out = {k: v for k, v in entry.items() if k != "timings"}
    out["alignment_ms"] = max_alignment_ms(entry)
    return out


class _OneLine(logging.LoggerAdapter):
    """aiohttp logs malformed requests with a traceback over many lines; one line is enough."""

    def log(self, level: int, msg: Any, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        if exc_info is True:
            exc_info = sys.exc_info()[1]
        if isinstance(exc_info, BaseException):
            text += f": {type(exc_info).__name__}: {exc_info}"
        self.logger.log(level, "%s", " ".join(text.split())[:300])

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, exc_info=exc_info)


class _Refused(asyncio.Protocol):
    """A connection beyond the cap: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted from accept to close (aiohttp's own
    list of connections misses those accepted in the same loop iteration)."""

    def __init__(self, inner: Any, server: ApiServer):
        self.inner, self.server = inner, server
        server.open_connections += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open_connections -= 1
        self.inner.connection_lost(exc)


class ApiServer:
    def __init__(self, coordinator: Any, bind: str, port: int, token: str | None,
                 max_body: int | None = None, timeout: float | None = None,
                 max_connections: int | None = None):
        if not token:
            raise ValueError("the coordinator API needs a token")
        self.coordinator = coordinator
        self.bind, self.port, self.token = bind, port, token
        self.max_body = MAX_BODY if max_body is None else max_body
        self.timeout = TIMEOUT if timeout is None else timeout
        self.max_connections = MAX_CONNECTIONS if max_connections is None else max_connections
        self._expected = f"Bearer {token}".encode()
        self.runner: web.AppRunner | None = None
        self.server: asyncio.AbstractServer | None = None
        self.open_connections = 0

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=self.max_body)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self.runner = web.AppRunner(
            app, handle_signals=False, access_log=None,
            logger=_OneLine(logging.getLogger("streamjob.api"), {}),
            keepalive_timeout=self.timeout,  # also closes a connection that sends nothing
            lingering_time=min(self.timeout, 2.0), max_line_size=8190, max_field_size=8190)
        await self.runner.setup()
        http = self.runner.server
        assert http is not None

        def protocol() -> asyncio.BaseProtocol:
            if self.open_connections >= self.max_connections:
                return _Refused()
            return _Counted(http(), self)

        self.server = await asyncio.get_running_loop().create_server(
            protocol, self.bind, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # Before anything of the body is read: the token, then the declared size.
        auth = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(auth, self._expected):
            return await _refuse(request, 401, "unauthorized")
        if request.content_length is not None and request.content_length > self.max_body:
            return await _refuse(request, 413, f"request body above {self.max_body} bytes")
        try:
            return await handler(request)
        except web.HTTPException as err:
            return await _refuse(request, err.status, err.reason)
        except TimeoutError:
            return await _refuse(request, 408, f"request body not received within "
                                                f"{self.timeout:g} s")
        except Exception as err:  # noqa: BLE001 - one line, the API stays up
            log.warning("%s %s failed: %s: %s", request.method, request.path,
                        type(err).__name__, err)
            return _error(500, f"{type(err).__name__}: {err}")

    async def _handle(self, request: web.Request) -> web.Response:
        body = b""
        if request.can_read_body:
            async with asyncio.timeout(self.timeout):
                body = await request.read()  # at most client_max_size, else 413
        if request.path == "/ui" or request.path.startswith("/ui/"):
            return self._dashboard(request)
        status, payload = await self._route(request.method, request.path, body,
                                            request.query)
        if status >= 400 and "error" in payload:
            return _error(status, payload["error"])
        return web.json_response(payload, status=status)

    def _dashboard(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _error(405, "the dashboard is read-only")
        from streamjob import dashboard

        page = dashboard.render(self.coordinator, request.path)
        return web.Response(text=page.body, status=page.status, content_type=page.content_type,
                            headers=dashboard.SECURITY_HEADERS)

    async def _route(self, method: str, path: str, body: bytes,
                     query: Mapping[str, str] | None = None) -> tuple[int, Any]:
        c = self.coordinator
        parts = [p for p in path.split("/") if p]
        if parts[:2] != ["api", "v1"]:
            return 404, {"error": "not found"}
        parts = parts[2:]
        if parts == ["job"] and method == "GET":
            return 200, c.status()
        if parts == ["tasks"] and method == "GET":
            raw = (query or {}).get("window")
            try:
                window = None if raw is None else float(raw)
            except ValueError:
                return 400, {"error": f"window must be a number of seconds, got {raw[:40]!r}"}
            return 200, c.tasks(window)
        if parts == ["checkpoints"] and method == "GET":
            return 200, {"checkpoints": [history_summary(h) for h in c.history]}
        if len(parts) == 2 and parts[0] == "checkpoints" and method == "GET":
            for h in c.history:
                if str(h["id"]) == parts[1]:
                    # Task names let a client label the per-subtask timings (t0, t1, ...).
                    return 200, {**h, "task_names": {t.task_id: t.name
                                                     for t in c.pipeline.tasks}}
            return 404, {"error": f"checkpoint {parts[1]} is not in the history"}
        if parts == ["checkpoints"] and method == "POST":
            try:
                summary = await c.checkpoint()
            except (RuntimeError, OSError) as err:   # not running, aborted, storage down
                return 409, {"error": str(err)}
            return 200, {k: summary[k] for k in ("id", "path", "size_bytes", "duration_ms")}
        if parts == ["savepoints"] and method == "POST":
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                return 400, {"error": "the body is not JSON"}
            if not isinstance(req, dict):
                return 400, {"error": "the body is not a JSON object"}
            try:
                summary = await c.savepoint(stop=bool(req.get("stop")))
            except RuntimeError as err:
                return 409, {"error": str(err)}
            return 200, {"uri": summary["path"], "id": summary["id"],
                         "size_bytes": summary["size_bytes"]}
        if parts == ["failures"] and method == "GET":
            return 200, {"failures": c.failures}
        if parts == ["savepoints"] and method == "GET":
            return 200, {"savepoints": c.status()["savepoints"]}
        return 404, {"error": "not found"}
