"""Reach the coordinator API of a StreamJob running in Kubernetes, without a public port.

``streamjob checkpoints --kube NAMESPACE/NAME`` uses this: with the credentials of KUBECONFIG
(or the pod's service account), it finds the job's running coordinator pod by the labels the
operator puts on it, reads the API token from the per-job Secret the operator creates, and
forwards a local port to the pod's API port through the API server (``pods/portforward``,
``kubernetes.stream.portforward``: no kubectl, no Service of type LoadBalancer/NodePort).

The caller needs ``get`` on ``secrets``, ``list`` on ``pods`` and ``create`` on
``pods/portforward`` in the job's namespace. Names and labels come from
``streamjob.names``, which the operator imports too.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

from streamjob.names import (  # noqa: E402
    API_PORT,
    LABEL_INCARNATION,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_REVISION,
    LABEL_ROLE,
    MANAGED_BY,
    ROLE_COORDINATOR,
    TOKEN_KEY,
    token_secret_name,
)


class KubeAccessError(Exception):
    """The job's coordinator cannot be reached through the Kubernetes API (message says why)."""


def parse_target(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` -> (namespace, name)."""
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise KubeAccessError(f"--kube wants NAMESPACE/NAME, not {text!r}")
    return namespace, name


def coordinator_selector(job: str) -> str:
    return f"{LABEL_JOB}={job},{LABEL_ROLE}={ROLE_COORDINATOR},{LABEL_MANAGED_BY}={MANAGED_BY}"


def _int_label(labels: dict[str, str], key: str) -> int:
    try:
        return int(labels.get(key, "-1"))
    except ValueError:
        return -1


def pick_coordinator(pods: list[Any], job: str) -> str:
    """The name of the running coordinator pod of the newest revision and incarnation."""
    running = [p for p in pods if p.status is not None and p.status.phase == "Running"
               and p.metadata.deletion_timestamp is None]
    if not running:
        seen = ", ".join(f"{p.metadata.name} ({p.status.phase if p.status else '?'})"
                         for p in pods) or "none"
        raise KubeAccessError(f"job {job!r} has no running coordinator pod (coordinator pods: "
                              f"{seen})")
    best = max(running, key=lambda p: (_int_label(p.metadata.labels or {}, LABEL_REVISION),
                                       _int_label(p.metadata.labels or {}, LABEL_INCARNATION)))
    return best.metadata.name


# ---------------------------------------------------------------------------- forwarding

def _pump(a: socket.socket, b: Any) -> None:
    """Copy bytes both ways between ``a`` and ``b`` until one side closes."""
    try:
        while True:
            readable, _, _ = select.select([a, b], [], [], 60)
            if not readable:
                continue
            for src in readable:
                dst = b if src is a else a
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
    except OSError:
        return


class PortForwarder:
    """A local TCP port whose every connection is a fresh stream to the pod (like kubectl's).

    ``open_stream()`` returns a connected socket-like object (``recv``/``sendall``/``fileno``/
    ``close``) to the remote port, and an optional object with ``close()`` to release with it.
    """

    def __init__(self, open_stream: Callable[[], tuple[Any, Any]]) -> None:
        self.open_stream = open_stream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.error: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name="streamjob-port-forward")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PortForwarder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        handle = None
        try:
            remote, handle = self.open_stream()
        except Exception as err:  # reported by the caller when its request fails  # noqa: BLE001
            self.error = str(err)
            log.debug("port-forward failed", exc_info=True)
            conn.close()
            return
        try:
            _pump(conn, remote)
            error = getattr(handle, "error", None)
            if error:
                self.error = str(error)
        finally:
            for thing in (conn, remote, handle):
                if thing is not None:
                    with contextlib.suppress(Exception):
                        thing.close()


# ---------------------------------------------------------------------------- the cluster

def load_api() -> Any:
    """A CoreV1Api for KUBECONFIG (or ~/.kube/config), else the in-cluster service account."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise KubeAccessError("--kube needs the kubernetes Python client: "
                              "pip install kubernetes") from None
    try:
        config.load_kube_config()
    except Exception as kube_err:  # noqa: BLE001 - no kubeconfig: maybe inside a pod
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise KubeAccessError(f"no Kubernetes credentials: {kube_err}") from None
    return client.CoreV1Api()


def _api_error(err: Exception, what: str) -> KubeAccessError:
    status = getattr(err, "status", None)
    reason = getattr(err, "reason", None) or str(err)
    return KubeAccessError(f"{what}: {status} {reason}".replace("None ", ""))


def read_token(api: Any, namespace: str, job: str) -> str:
    secret = token_secret_name(job)
    try:
        body = api.read_namespaced_secret(secret, namespace)
    except Exception as err:  # noqa: BLE001 - ApiException and transport errors alike
        if getattr(err, "status", None) == 404:
            raise KubeAccessError(f"no Secret {namespace}/{secret}: is {namespace}/{job} a "
                                  "StreamJob the operator has deployed?") from None
        raise _api_error(err, f"cannot read Secret {namespace}/{secret}") from None
    value = (body.data or {}).get(TOKEN_KEY)
    if not value:
        raise KubeAccessError(f"Secret {namespace}/{secret} has no {TOKEN_KEY!r} key")
    return base64.b64decode(value).decode()


def find_coordinator(api: Any, namespace: str, job: str) -> str:
    try:
        pods = api.list_namespaced_pod(namespace, label_selector=coordinator_selector(job)).items
    except Exception as err:  # noqa: BLE001
        raise _api_error(err, f"cannot list pods in {namespace}") from None
    return pick_coordinator(list(pods), job)


def pod_stream(api: Any, namespace: str, pod: str, port: int) -> Callable[[], tuple[Any, Any]]:
    """``open_stream`` for :class:`PortForwarder`: one API-server port-forward per connection."""
    from kubernetes import client
    from kubernetes.stream import portforward

    # portforward() swaps the client's call_api while it connects: give it its own client,
    # and connect one stream at a time
    forward_api = client.CoreV1Api(client.ApiClient(api.api_client.configuration))
    lock = threading.Lock()

    class Handle:
        def __init__(self, pf: Any) -> None:
            self.pf = pf

        @property
        def error(self) -> str | None:           # what the kubelet said about the port
            return self.pf.error(port)

        def close(self) -> None:
            self.pf.close()

    def open_stream() -> tuple[Any, Any]:
        with lock:
            pf = portforward(forward_api.connect_get_namespaced_pod_portforward, pod, namespace,
                             ports=str(port))
        sock = pf.socket(port)
        sock.setblocking(True)
        return sock, Handle(pf)

    return open_stream


@contextlib.contextmanager
def coordinator_api(target: str, api: Any = None) -> Iterator[tuple[str, str, PortForwarder]]:
    """(base URL, token, forwarder) of the coordinator API of ``NAMESPACE/NAME``."""
    namespace, job = parse_target(target)
    api = api if api is not None else load_api()
    token = read_token(api, namespace, job)
    pod = find_coordinator(api, namespace, job)
    log.debug("forwarding to %s/%s:%s", namespace, pod, API_PORT)
    with PortForwarder(pod_stream(api, namespace, pod, API_PORT)) as fwd:
        yield fwd.url, token, fwd
