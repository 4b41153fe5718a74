"""``python -m streamjob_operator``: run the operator (settings from STREAMJOB_OPERATOR_*).

With ``STREAMJOB_OPERATOR_LEADER_ELECTION=true`` (the chart's default) the process first waits
for the Lease (see ``leader``): a waiting replica answers its liveness probe but does nothing
else; the holder runs kopf and stops at once if it cannot renew the lease.
"""

from __future__ import annotations

import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf

log = logging.getLogger("streamjob_operator")

#: exit code of an operator that lost its lease (Kubernetes restarts it as a waiting replica)
EXIT_LOST_LEASE = 3


def setup_logging(level: str) -> None:
    """One handler on the root logger (kopf's); every line is printed once."""
    kopf.configure(verbose=level == "DEBUG")
    root = logging.getLogger()
    kopf_handlers = [h for h in root.handlers if type(h).__name__ == "_KopfStreamHandler"]
    root.handlers[:] = kopf_handlers[-1:] or root.handlers[:1]
    root.setLevel(level)


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def _standby_health(port: int) -> ThreadingHTTPServer | None:
    """/healthz of a replica that waits for the lease (kopf serves it once it runs)."""
    if not port:
        return None
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("0.0.0.0", port), _Healthy)
    threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    return server


def main() -> None:
    from streamjob_operator import kube, names
    from streamjob_operator import main as handlers
    from streamjob_operator.leader import LeaderElector

    settings = handlers.SETTINGS
    setup_logging(settings.log_level)
    if settings.metrics_port:
        from streamjob_operator.metrics import METRICS

        METRICS.serve(settings.metrics_port)
    elector = None
    if settings.leader_election:
        elector = LeaderElector(kube.api_client(), settings.operator_namespace or "default",
                                names.LEASE_NAME, duration=settings.lease_duration,
                                renew_every=settings.lease_renew)
        health = _standby_health(settings.health_port)
        elector.acquire()
        if health is not None:
            health.shutdown()
            health.server_close()
        log.info("%s holds the lease: acting", elector.me)

        def lost() -> None:
            log.error("lease lost: stopping at once so that only one replica acts")
            logging.shutdown()
            os._exit(EXIT_LOST_LEASE)

        elector.keep(on_lost=lost)
    try:
        kopf.run(standalone=True, clusterwide=settings.clusterwide,
                 namespaces=list(settings.namespaces) if not settings.clusterwide else None,
                 liveness_endpoint=(f"http://0.0.0.0:{settings.health_port}/healthz"
                                    if settings.health_port else None))
    finally:
        if elector is not None:
            elector.release()


if __name__ == "__main__":
    main()
