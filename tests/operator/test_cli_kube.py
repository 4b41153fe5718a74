"""``streamjob checkpoints --kube NAMESPACE/NAME`` without a cluster: names and labels agree
with the operator's, the coordinator pod is chosen right, the port forwarder carries HTTP, and
the command works end to end against a fake API server client and a fake coordinator."""

from __future__ import annotations

import base64
import copy
import json
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiException, V1ObjectMeta, V1Pod, V1PodStatus, V1Secret

from streamjob import kube_access as ka
from streamjob.cli import main
from streamjob_operator import builders, names
from streamjob_operator.config import Settings
from streamjob_operator.model import Deployment, parse_job

ENTRY = json.loads((Path(__file__).resolve().parents[1] / "unit/data/checkpoint_entry.json")
                   .read_text())
TOKEN = "s3cret-token"


# ---------------------------------------------------------------- names and labels

def test_names_and_labels_match_the_operators():
    for const in ("LABEL_JOB", "LABEL_ROLE", "LABEL_REVISION", "LABEL_INCARNATION",
                  "LABEL_MANAGED_BY", "MANAGED_BY", "ROLE_COORDINATOR", "API_PORT",
                  "TOKEN_KEY"):
        assert getattr(ka, const) == getattr(names, const), const
    for job in ("wc", "a" * 40, "b" * 300):
        assert ka.token_secret_name(job) == names.token_secret_name(job)


def test_the_selector_selects_the_operators_coordinator_pod_and_not_its_workers(body):
    dep = Deployment(revision=2, parallelism=2, job_id="uid-1", spec_hash="h")
    job = parse_job(body)
    coordinator = builders.coordinator_pod(job, dep, 1, Settings())
    worker = builders.worker_pod(job, dep, 0, 1, "10.0.0.1", Settings())
    wanted = dict(kv.split("=") for kv in ka.coordinator_selector("wc").split(","))
    assert wanted.items() <= coordinator.metadata.labels.items()
    assert not wanted.items() <= worker.metadata.labels.items()
    api_port = next(p for p in coordinator.spec.containers[0].ports if p.name == "api")
    assert api_port.container_port == ka.API_PORT


def test_parse_target():
    assert ka.parse_target("jobs/wc") == ("jobs", "wc")
    for bad in ("wc", "/wc", "jobs/", "a/b/c"):
        with pytest.raises(ka.KubeAccessError):
            ka.parse_target(bad)


def pod(name: str, phase: str, revision: int, incarnation: int,
        deleting: bool = False) -> V1Pod:
    return V1Pod(metadata=V1ObjectMeta(
        name=name, labels={names.LABEL_REVISION: str(revision),
                           names.LABEL_INCARNATION: str(incarnation)},
        deletion_timestamp="2025-01-01T00:00:00Z" if deleting else None),
        status=V1PodStatus(phase=phase))


def test_pick_the_running_coordinator_of_the_newest_revision_and_incarnation():
    pods = [pod("wc-coordinator-0", "Running", 1, 0), pod("wc-coordinator-1", "Failed", 2, 1),
            pod("wc-coordinator-2", "Running", 2, 2), pod("wc-coordinator-3", "Running", 2, 3,
                                                          deleting=True),
            pod("wc-coordinator-4", "Pending", 3, 4)]
    assert ka.pick_coordinator(pods, "wc") == "wc-coordinator-2"
    with pytest.raises(ka.KubeAccessError, match="wc-coordinator-4 \\(Pending\\)"):
        ka.pick_coordinator([pods[-1]], "wc")
    with pytest.raises(ka.KubeAccessError, match="none"):
        ka.pick_coordinator([], "wc")


# ---------------------------------------------------------------- a fake coordinator API

class FakeCoordinatorApi(BaseHTTPRequestHandler):
    savepoint_requests: list[Any] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}" or \
                self.path != "/api/v1/savepoints":
            self.send_response(401)
            self.end_headers()
            return
        self.savepoint_requests.append(request)
        data = json.dumps({"uri": "s3://b/ck/uid-1/savepoints/sp-9", "id": 9,
                           "size_bytes": 1234}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        if self.path == "/api/v1/checkpoints":
            summary = {k: v for k, v in ENTRY.items() if k != "timings"}
            body: Any = {"checkpoints": [summary]}
        elif self.path == f"/api/v1/checkpoints/{ENTRY['id']}":
            body = copy.deepcopy(ENTRY)
        elif self.path == "/api/v1/job":
            # `streamjob savepoint` reads the job's checkpoint timeout to know how long to wait.
            body = {"name": "wc", "checkpoint_timeout_s": 120.0}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def coordinator():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCoordinatorApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class Closer:
    def __init__(self) -> None:
        self.closed = False
        self.error: str | None = None

    def close(self) -> None:
        self.closed = True


def test_port_forwarder_carries_several_http_requests(coordinator):
    handles: list[Closer] = []

    def open_stream():
        handles.append(Closer())
        return socket.create_connection(coordinator.server_address), handles[-1]

    with ka.PortForwarder(open_stream) as fwd:
        for _ in range(3):
            req = urllib.request.Request(fwd.url + "/api/v1/checkpoints",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert json.loads(resp.read())["checkpoints"][0]["id"] == ENTRY["id"]
    assert len(handles) == 3                              # one stream per connection
    for _ in range(50):
        if all(h.closed for h in handles):
            break
        threading.Event().wait(0.05)
    assert all(h.closed for h in handles)


# ---------------------------------------------------------------- the command

class FakeCoreV1:
    """What ``checkpoints --kube`` asks the API server (CoreV1Api's methods it uses)."""

    def __init__(self, pods: list[V1Pod], token: str | None = TOKEN) -> None:
        self.pods, self.token = pods, token
        self.calls: list[tuple[str, str, str]] = []

    def read_namespaced_secret(self, name: str, namespace: str) -> V1Secret:
        self.calls.append(("secret", namespace, name))
        if self.token is None:
            raise ApiException(status=404, reason="Not Found")
        return V1Secret(data={"token": base64.b64encode(self.token.encode()).decode()})

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        self.calls.append(("pods", namespace, label_selector))
        return type("List", (), {"items": self.pods})()


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch, coordinator):
    api = FakeCoreV1([pod("wc-coordinator-1", "Running", 1, 1)])
    forwarded: list[tuple[str, str, int]] = []

    def pod_stream(api_: Any, namespace: str, pod_name: str, port: int):
        forwarded.append((namespace, pod_name, port))
        return lambda: (socket.create_connection(coordinator.server_address), None)

    monkeypatch.setattr(ka, "load_api", lambda: api)
    monkeypatch.setattr(ka, "pod_stream", pod_stream)
    api.forwarded = forwarded  # type: ignore[attr-defined]
    return api


def test_history_table_of_a_job_in_kubernetes(kube, capsys):
    assert main(["checkpoints", "--kube", "jobs/wc"]) == 0
    out = capsys.readouterr().out
    assert str(ENTRY["id"]) in out and "COMPLETED" in out.upper()
    assert ("secret", "jobs", "wc-api-token") in kube.calls
    assert ("pods", "jobs", ka.coordinator_selector("wc")) in kube.calls
    assert kube.forwarded == [("jobs", "wc-coordinator-1", 8081)]


def test_timeline_json_and_svg_of_a_job_in_kubernetes(kube, capsys, tmp_path):
    out_file = tmp_path / "t.svg"
    assert main(["checkpoints", "--kube", "jobs/wc", "--id", str(ENTRY["id"]),
                 "--out", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert "t0[0]" in text and "t1[1]" in text
    assert out_file.read_text().lstrip().startswith("<")
    assert main(["checkpoints", "--kube", "jobs/wc", "--id", str(ENTRY["id"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["timings"] == ENTRY["timings"]


def test_savepoint_of_a_job_in_kubernetes(kube, capsys):
    FakeCoordinatorApi.savepoint_requests.clear()
    assert main(["savepoint", "--kube", "jobs/wc"]) == 0
    assert main(["savepoint", "--kube", "jobs/wc", "--stop"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == ["s3://b/ck/uid-1/savepoints/sp-9"] * 2
    assert "savepoint 9 (1234 bytes)" in out.err
    assert FakeCoordinatorApi.savepoint_requests == [{"stop": False}, {"stop": True}]
    assert kube.forwarded == [("jobs", "wc-coordinator-1", 8081)] * 2
    assert main(["savepoint", "wc", "--kube", "jobs/wc"]) == 2
    assert "not both" in capsys.readouterr().err


def test_kube_errors_are_one_line_messages(kube, monkeypatch, capsys):
    kube.token = None
    assert main(["checkpoints", "--kube", "jobs/wc"]) == 2
    assert "no Secret jobs/wc-api-token" in capsys.readouterr().err
    kube.token = TOKEN
    kube.pods = [pod("wc-coordinator-1", "Pending", 1, 1)]
    assert main(["checkpoints", "--kube", "jobs/wc"]) == 2
    assert "no running coordinator pod" in capsys.readouterr().err
    assert main(["checkpoints", "wc", "--kube", "jobs/wc"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["checkpoints", "--kube", "wc"]) == 2
    assert "NAMESPACE/NAME" in capsys.readouterr().err


def test_a_failing_port_forward_is_reported(kube, monkeypatch, capsys):
    kube.pods = [pod("wc-coordinator-1", "Running", 1, 1)]

    def refused() -> Any:
        raise ApiException(status=403, reason="pods/portforward is forbidden")

    monkeypatch.setattr(ka, "pod_stream", lambda *a: refused)
    assert main(["checkpoints", "--kube", "jobs/wc"]) == 2
    err = capsys.readouterr().err
    assert "through the port-forward" in err and "forbidden" in err


def test_the_local_path_still_asks_for_a_name(capsys):
    assert main(["checkpoints"]) == 2
    assert "--kube NAMESPACE/NAME" in capsys.readouterr().err


def test_pod_stream_opens_one_api_server_port_forward_per_connection(monkeypatch):
    """pod_stream with kubernetes.stream.portforward replaced: the arguments it is given."""
    import kubernetes.stream

    seen: list[tuple[Any, ...]] = []

    class FakePF:
        def __init__(self) -> None:
            self.a, self.b = socket.socketpair()
            self.closed = False

        def socket(self, port: int) -> Any:
            assert port == 8081
            return self.a

        def error(self, port: int) -> str | None:
            return None

        def close(self) -> None:
            self.closed = True

    def fake_portforward(method, name, namespace, ports):
        seen.append((method.__name__, name, namespace, ports))
        return FakePF()

    monkeypatch.setattr(kubernetes.stream, "portforward", fake_portforward)
    from kubernetes import client

    api = client.CoreV1Api(client.ApiClient(client.Configuration()))
    open_stream = ka.pod_stream(api, "jobs", "wc-coordinator-1", 8081)
    sock, handle = open_stream()
    assert seen == [("connect_get_namespaced_pod_portforward", "wc-coordinator-1", "jobs",
                     "8081")]
    assert handle.error is None
    handle.close()
    assert handle.pf.closed
    sock.close()
