"""``streamjob ui``: a local proxy to a job's dashboard that holds the API token.

The coordinator serves the dashboard (``/ui/``) and its JSON API behind a bearer token that a
browser cannot send by itself. This proxy listens on 127.0.0.1 only, adds the token to every
request it forwards, and forwards only what the dashboard reads: GET (and HEAD) of ``/ui/...``
and ``/api/v1/...``; anything else (a savepoint POST, another path) is refused here, so the
proxy gives read access, like ``kubectl proxy`` gives what its user may do.

Where the coordinator is comes from ``resolve()`` at each request: for a local job it re-reads
the run's status (a restarted coordinator has a new port); for ``--kube`` it is the local end
of the API-server port-forward (``kube_access``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web

log = logging.getLogger("streamjob.uiproxy")

#: headers of the coordinator's answer that reach the browser
PASSED_HEADERS = ("Content-Type", "Content-Security-Policy", "X-Content-Type-Options",
                  "Referrer-Policy", "Cache-Control")
TIMEOUT = 30.0


class UiProxy:
    def __init__(self, resolve: Callable[[], tuple[str, str]], port: int = 0,
                 bind: str = "127.0.0.1") -> None:
        self.resolve = resolve
        self.bind, self.port = bind, port
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}/"

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.bind, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/":
            raise web.HTTPFound("/ui/")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="streamjob ui is read-only\n")
        if not (path == "/ui" or path.startswith(("/ui/", "/api/v1/"))):
            return web.Response(status=404, text="not a dashboard path\n")
        try:
            base, token = self.resolve()
        except Exception as err:  # noqa: BLE001 - the job is gone or restarting: say so
            return web.Response(status=503, text=f"{err}\n")
        assert self.session is not None
        try:
            async with self.session.request(
                    request.method, base.rstrip("/") + request.path_qs,
                    headers={"Authorization": f"Bearer {token}"},
                    allow_redirects=False) as upstream:
                body = await upstream.read()
                headers = {k: upstream.headers[k] for k in PASSED_HEADERS
                           if k in upstream.headers}
                return web.Response(status=upstream.status, body=body, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as err:
            return web.Response(status=502, text=f"cannot reach the coordinator at {base}: "
                                                 f"{type(err).__name__}: {err}\n")


def serve(resolve: Callable[[], tuple[str, str]], port: int, announce: Callable[[str], None],
          open_browser: bool = False) -> int:
    """Run the proxy until interrupted; ``announce`` gets the address once it listens."""

    async def main() -> None:
        proxy = UiProxy(resolve, port)
        await proxy.start()
        announce(proxy.url)
        if open_browser:
            import webbrowser

            webbrowser.open(proxy.url)
        try:
            await asyncio.Event().wait()  # until Ctrl-C / SIGTERM
        finally:
            await proxy.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0
