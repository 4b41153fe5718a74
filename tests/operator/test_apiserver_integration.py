"""The operator against a real kube-apiserver + etcd (no kubelet), with kopf.testing.KopfRunner.

Without a kubelet nothing runs, so the test plays the kubelet (it patches pod status) and the
coordinator (a fake HTTP API on 127.0.0.1). Everything else is real: the CRD's validation and
defaults, RBAC-less admin access, kopf's watches, finalizers, the scale subresource.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import apiserver
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
APISERVER, ETCD = apiserver.find_binaries()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(APISERVER is None or ETCD is None, reason=(
        f"needs kube-apiserver (found: {APISERVER}) and etcd (found: {ETCD}): run "
        "`scripts/cluster up` once (caches the binaries under ~/.cache/streamjob/) or set "
        "KUBE_APISERVER/ETCD")),
]
NS = "jobs"


class FakeCoordinator(BaseHTTPRequestHandler):
    state: dict[str, Any] = {}
    savepoints: list[dict[str, Any]] = []
    tasks: dict[str, Any] = {}  # what GET /api/v1/tasks answers

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if not self.headers.get("Authorization", "").startswith("Bearer ") or \
                len(self.headers["Authorization"]) < 30:
            return self._send(401, {"message": "unauthorized"})
        if self.path.startswith("/api/v1/tasks"):
            return self._send(200, dict(self.tasks))
        self._send(200, dict(self.state))

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.savepoints.append(body)
        self._send(200, {"uri": f"s3://ckpt/jobs/x/savepoints/sp-{len(self.savepoints)}"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[apiserver.ApiServer]:
    server = apiserver.start(tmp_path_factory.mktemp("apiserver"), APISERVER, ETCD)
    try:
        os.environ["KUBECONFIG"] = str(server.kubeconfig)
        # the kubernetes client read $KUBECONFIG when it was imported; kopf's login uses it
        from kubernetes.config import kube_config
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(server.kubeconfig)
        kubectl(server, "apply", "-f", str(REPO / "crds" / "streamjob.dev_streamjobs.yaml"))
        kubectl(server, "wait", "--for=condition=Established",
                "crd/streamjobs.streamjob.dev", "--timeout=30s")
        kubectl(server, "create", "namespace", NS)
        # no controller-manager: the default ServiceAccount that pod admission wants
        kubectl(server, "-n", NS, "create", "serviceaccount", "default")
        yield server
    finally:
        server.stop()


def kubectl(server: apiserver.ApiServer, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "--kubeconfig", str(server.kubeconfig), *args],
                          input=stdin, capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture(scope="module")
def coordinator() -> Iterator[type[FakeCoordinator]]:
    FakeCoordinator.state = {"state": "CREATED", "parallelism": None, "attempt": 0,
                             "restarts": 0, "restored_from": None, "last_checkpoint": None,
                             "message": ""}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeCoordinator)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    FakeCoordinator.url = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    yield FakeCoordinator
    httpd.shutdown()


@pytest.fixture(scope="module")
def operator(cluster: apiserver.ApiServer, coordinator: type[FakeCoordinator]) -> Iterator[None]:
    from kopf.testing import KopfRunner

    os.environ["STREAMJOB_OPERATOR_POLL_INTERVAL"] = "1"
    from streamjob_operator import main
    from streamjob_operator.config import Settings

    main.SETTINGS = Settings(api_url=coordinator.url, poll_interval=1,  # type: ignore[attr-defined]
                             operator_namespace=NS, savepoint_timeout=20)
    with KopfRunner(["run", "--standalone", "--namespace", NS, "-m", "streamjob_operator.main"],
                    timeout=60) as runner:
        # No start-up wait: kopf lists every StreamJob when its watch starts, so objects a
        # test creates before then are handled too; tests wait for their own conditions.
        yield
    assert runner.exception is None or isinstance(runner.exception, SystemExit), runner.output


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def job(cluster: apiserver.ApiServer, name: str) -> dict[str, Any]:
    return json.loads(kubectl(cluster, "-n", NS, "get", "sj", name, "-o", "json").stdout)


def pods(cluster: apiserver.ApiServer, name: str) -> dict[str, dict[str, Any]]:
    out = kubectl(cluster, "-n", NS, "get", "pods", "-l", f"streamjob.dev/job={name}",
                  "-o", "json").stdout
    return {p["metadata"]["name"]: p for p in json.loads(out)["items"]}


def play_kubelet(cluster: apiserver.ApiServer, name: str, phase: str = "Running",
                 exit_code: int | None = None) -> None:
    status: dict[str, Any] = {"phase": phase, "podIP": "127.0.0.1"}
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "x", "image": "i", "imageID": "", "ready": False,
                                        "restartCount": 0, "state": {"terminated": {
                                            "exitCode": exit_code, "reason": "Error"}}}]
    kubectl(cluster, "-n", NS, "patch", "pod", name, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}))


def run_all(cluster: apiserver.ApiServer, job_name: str) -> None:
    for name, pod in pods(cluster, job_name).items():
        if pod.get("status", {}).get("phase") == "Pending" and \
                not pod["metadata"].get("deletionTimestamp"):
            play_kubelet(cluster, name)


MANIFEST = """
apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {name: wc, namespace: jobs}
spec:
  pipeline: streamjob.examples.wordcount:build
  storage: s3://ckpt/jobs
  storageSecret: minio-creds
  parallelism: 2
  checkpoint: {interval: 2s}
"""


def test_invalid_manifests_are_refused_with_the_field_named(cluster):
    bad = MANIFEST.replace("parallelism: 2", "parallelism: 2\n  maxParallelism: 1")
    result = kubectl(cluster, "apply", "-f", "-", stdin=bad, check=False)
    assert result.returncode != 0
    assert "spec.parallelism must not exceed spec.maxParallelism" in result.stderr
    result = kubectl(cluster, "apply", "-f", "-", check=False,
                     stdin=MANIFEST.replace("interval: 2s", "interval: soon"))
    assert "spec.checkpoint.interval" in result.stderr


AUTOSCALED = """
apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {name: auto, namespace: jobs}
spec:
  pipeline: streamjob.examples.wordcount:build
  storage: s3://ckpt/jobs
  parallelism: 2
  state: suspended
  autoscaler: {enabled: true, minParallelism: 1, maxParallelism: 4}
"""


def test_autoscaler_settings_are_validated_and_kubectl_scale_is_refused_while_on(cluster):
    for change, message in [
        ("minParallelism: 1, maxParallelism: 4", "minParallelism: 5, maxParallelism: 4"),
        ("maxParallelism: 4}", "maxParallelism: 4, targetUtilization: 1.5}"),
        ("maxParallelism: 4}", "maxParallelism: 4, targetUtilization: 0}"),
        ("maxParallelism: 4}", "maxParallelism: 200}"),
    ]:
        result = kubectl(cluster, "apply", "-f", "-", check=False,
                         stdin=AUTOSCALED.replace(change, message))
        assert result.returncode != 0, message
        assert "spec.autoscaler" in result.stderr, result.stderr
    kubectl(cluster, "apply", "-f", "-", stdin=AUTOSCALED)
    spec = job(cluster, "auto")["spec"]["autoscaler"]
    assert spec["targetUtilization"] == 0.7 and spec["stabilization"] == "10s"  # defaults
    # kubectl scale (the scale subresource) and a plain edit are both refused while on
    result = kubectl(cluster, "-n", NS, "scale", "sj", "auto", "--replicas=3", check=False)
    assert result.returncode != 0
    assert "cannot change while spec.autoscaler.enabled" in result.stderr, result.stderr
    result = kubectl(cluster, "-n", NS, "patch", "sj", "auto", "--type=merge", "-p",
                     json.dumps({"spec": {"parallelism": 3}}), check=False)
    assert "cannot change while spec.autoscaler.enabled" in result.stderr, result.stderr
    # turning it off in the same edit is the way to set a parallelism by hand
    kubectl(cluster, "-n", NS, "patch", "sj", "auto", "--type=merge", "-p", json.dumps(
        {"spec": {"parallelism": 3, "autoscaler": {"enabled": False}}}))
    assert job(cluster, "auto")["spec"]["parallelism"] == 3
    kubectl(cluster, "-n", NS, "scale", "sj", "auto", "--replicas=1")
    assert job(cluster, "auto")["spec"]["parallelism"] == 1
    kubectl(cluster, "-n", NS, "delete", "sj", "auto", "--wait=false")


def test_job_lifecycle_on_a_real_api_server(cluster, coordinator, operator):
    timings: dict[str, float] = {}
    kubectl(cluster, "apply", "-f", "-", stdin=MANIFEST)
    wait_for("3 pods", lambda: len(pods(cluster, "wc")) == 3)
    body = job(cluster, "wc")
    assert "streamjob.dev/finalizer" in body["metadata"]["finalizers"]
    assert body["status"]["phase"] == "Pending" and body["status"]["parallelism"] == 2
    for pod in pods(cluster, "wc").values():
        (ref,) = pod["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == ("StreamJob", "wc",
                                                         body["metadata"]["uid"])
    svc = json.loads(kubectl(cluster, "-n", NS, "get", "svc", "wc-coordinator", "-o",
                             "json").stdout)
    assert svc["spec"]["selector"]["streamjob.dev/role"] == "coordinator"
    kubectl(cluster, "-n", NS, "get", "secret", "wc-api-token")
    kubectl(cluster, "-n", NS, "get", "networkpolicy", "wc-coordinator")

    # the pods run and the coordinator reports RUNNING -> Ready
    run_all(cluster, "wc")
    coordinator.state.update(state="RUNNING", parallelism=2, last_checkpoint={
        "id": 4, "completed_at": time.time(), "duration_ms": 12, "size_bytes": 2048})
    kubectl(cluster, "-n", NS, "wait", "--for=condition=Ready", "sj/wc", "--timeout=20s")
    assert job(cluster, "wc")["status"]["lastCheckpoint"]["id"] == 4
    table = kubectl(cluster, "-n", NS, "get", "sj").stdout
    assert "Running" in table and "LAST CHECKPOINT" in table

    # a deleted worker is replaced within seconds; Recovering until the coordinator restored
    victim, victim_pod = next((n, p) for n, p in pods(cluster, "wc").items() if "worker-1" in n)
    start = time.monotonic()
    kubectl(cluster, "-n", NS, "delete", "pod", victim, "--wait=false")
    # (without a kubelet the pod vanishes at once, so its name may be reused; its uid is not)
    wait_for("replacement", lambda: any(
        n.startswith("wc-worker-1-") and p["metadata"]["uid"] != victim_pod["metadata"]["uid"]
        for n, p in pods(cluster, "wc").items()))
    timings["worker deleted -> replacement pod created"] = time.monotonic() - start
    wait_for("Recovering", lambda: job(cluster, "wc")["status"]["phase"] == "Recovering")
    run_all(cluster, "wc")
    coordinator.state.update(attempt=1, restored_from=4)
    wait_for("Running again", lambda: job(cluster, "wc")["status"]["phase"] == "Running")
    assert "restored from checkpoint 4" in job(cluster, "wc")["status"]["message"]

    # a worker whose container fails is replaced too
    victim = next(n for n in pods(cluster, "wc") if "worker-0" in n)
    start = time.monotonic()
    play_kubelet(cluster, victim, "Failed", exit_code=1)
    wait_for("replacement", lambda: len([n for n in pods(cluster, "wc")
                                         if n.startswith("wc-worker-0-")]) == 2)
    timings["worker failed -> replacement pod created"] = time.monotonic() - start
    run_all(cluster, "wc")
    coordinator.state.update(attempt=2)
    wait_for("Running again", lambda: job(cluster, "wc")["status"]["phase"] == "Running")

    # kubectl scale -> stop with savepoint -> 3 workers from the savepoint
    kubectl(cluster, "-n", NS, "scale", "sj/wc", "--replicas=3")
    wait_for("3 new workers", lambda: len([p for p in pods(cluster, "wc").values()
                                           if p["metadata"]["labels"]["streamjob.dev/role"] ==
                                           "worker" and p["metadata"]["labels"][
                                               "streamjob.dev/revision"] == "2"]) == 3)
    assert coordinator.savepoints[-1] == {"stop": True}
    assert job(cluster, "wc")["status"]["phase"] == "Rescaling"
    new_coord = next(p for p in pods(cluster, "wc").values()
                     if p["metadata"]["labels"]["streamjob.dev/role"] == "coordinator"
                     and p["metadata"]["labels"]["streamjob.dev/revision"] == "2")
    args = new_coord["spec"]["containers"][0]["args"]
    assert args[args.index("--from-savepoint") + 1].endswith("sp-1")
    wait_for("old pods gone", lambda: all(p["metadata"]["labels"]["streamjob.dev/revision"] ==
                                          "2" for p in pods(cluster, "wc").values()))
    run_all(cluster, "wc")
    coordinator.state.update(parallelism=3)
    wait_for("Running at 3", lambda: job(cluster, "wc")["status"]["phase"] == "Running")
    scale = json.loads(kubectl(cluster, "-n", NS, "get", "--raw",
                               f"/apis/streamjob.dev/v1alpha1/namespaces/{NS}/streamjobs/wc/"
                               "scale").stdout)
    assert scale["status"]["replicas"] == 3

    # suspend (savepoint, no pods), resume (from it)
    kubectl(cluster, "-n", NS, "patch", "sj", "wc", "--type=merge",
            "-p", '{"spec": {"state": "suspended"}}')
    wait_for("Suspended", lambda: job(cluster, "wc")["status"]["phase"] == "Suspended")
    wait_for("no pods", lambda: not pods(cluster, "wc"))
    assert coordinator.savepoints[-1] == {"stop": True}
    kubectl(cluster, "-n", NS, "patch", "sj", "wc", "--type=merge",
            "-p", '{"spec": {"state": "running"}}')
    wait_for("pods back", lambda: len(pods(cluster, "wc")) == 4)
    coord = next(p for p in pods(cluster, "wc").values()
                 if p["metadata"]["labels"]["streamjob.dev/role"] == "coordinator")
    args = coord["spec"]["containers"][0]["args"]
    assert args[args.index("--from-savepoint") + 1].endswith("sp-2")

    # events tell the story; nothing in status, events or pods carries a credential value
    events = kubectl(cluster, "-n", NS, "get", "events", "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Recovering", "Rescaling", "Running", "Suspended"} <= reasons
    token = kubectl(cluster, "-n", NS, "get", "secret", "wc-api-token", "-o",
                    "jsonpath={.data.token}").stdout
    assert token and token not in events and token not in json.dumps(job(cluster, "wc"))

    # deletion: the finalizer is released and the pods go
    kubectl(cluster, "-n", NS, "delete", "sj", "wc", "--wait=false")
    try:
        wait_for("job gone", lambda: kubectl(cluster, "-n", NS, "get", "sj", "wc",
                                             check=False).returncode != 0, timeout=45)
    except AssertionError:
        print(json.dumps(job(cluster, "wc")["metadata"], indent=1))
        raise
    wait_for("pods gone", lambda: not pods(cluster, "wc"))
    Path(os.environ.get("STREAMJOB_TIMINGS", "/tmp/streamjob-operator-timings.yaml")).write_text(
        yaml.safe_dump({k: round(v, 2) for k, v in timings.items()}))
    for what, seconds in timings.items():
        assert seconds < 5, f"{what} took {seconds:.1f}s"


def busy_tasks(p: int, busy: float) -> dict[str, Any]:
    """GET /api/v1/tasks of a running two-task job at 10k records/s, its keyed task ``busy``."""
    def task(tid: str, inputs: list[str], ratio: float) -> dict[str, Any]:
        subs = [{"index": i, "records_in_per_s": 10_000 / p, "records_out_per_s": 10_000 / p,
                 "busy_ratio": ratio, "backpressured_ratio": 0.0, "idle_ratio": 1 - ratio,
                 "backlog": None if inputs else 0,
                 "backlog_growth_per_s": None if inputs else 0.0} for i in range(p)]
        return {"id": tid, "name": tid, "inputs": inputs, "parallelism": p,
                "busy_ratio": ratio, "backlog": None if inputs else 0,
                "backlog_growth_per_s": None if inputs else 0.0, "subtasks": subs}
    return {"window_s": 1, "state": "RUNNING", "checkpoint_in_progress": False,
            "restoring": False, "tasks": [task("t0", [], 0.01), task("t1", ["t0"], busy)]}


def test_the_autoscaler_rescales_a_busy_job_by_itself(cluster, coordinator, operator):
    coordinator.state.update(state="CREATED", parallelism=None, attempt=0, restored_from=None,
                             last_checkpoint=None, savepoints=[])
    coordinator.tasks = busy_tasks(1, 0.99)
    before = len(coordinator.savepoints)
    manifest = AUTOSCALED.replace("name: auto,", "name: busy,").replace(
        "  state: suspended\n", "").replace("parallelism: 2", "parallelism: 1").replace(
        "maxParallelism: 4}", "maxParallelism: 4, metricsWindow: 1s, stabilization: 0s, "
        "scaleUpCooldown: 0s}")
    kubectl(cluster, "apply", "-f", "-", stdin=manifest)
    wait_for("2 pods", lambda: len(pods(cluster, "busy")) == 2)
    run_all(cluster, "busy")
    coordinator.state.update(state="RUNNING", parallelism=1)
    # nobody touches it: 10k/s at 1 subtask busy 0.99 (+0.01) needs 1.0 / 0.7 -> 2
    wait_for("the autoscaler's rescale", lambda: len(coordinator.savepoints) > before, 30)
    assert coordinator.savepoints[-1] == {"stop": True}
    status = wait_for("status.autoscaler", lambda: (job(cluster, "busy")["status"].get(
        "autoscaler") or {}).get("lastScale") and job(cluster, "busy")["status"])
    auto = status["autoscaler"]
    assert auto["target"] == 2 and auto["recommended"] == 2
    assert auto["lastScale"]["reason"].startswith("task t1 busy 0.99 at 1 subtask; needs 1.4")
    assert auto["lastScale"]["metrics"]["t1"]["busy"] == 0.99
    wait_for("2 workers of revision 2", lambda: len([
        p for p in pods(cluster, "busy").values()
        if p["metadata"]["labels"]["streamjob.dev/role"] == "worker"
        and p["metadata"]["labels"]["streamjob.dev/revision"] == "2"]) == 2)
    events = kubectl(cluster, "-n", NS, "get", "events", "--field-selector",
                     "reason=Autoscaled", "-o", "json").stdout
    (event,) = [e for e in json.loads(events)["items"]
                if e["involvedObject"]["name"] == "busy"]
    assert event["message"].startswith("parallelism 1 -> 2: task t1 busy 0.99")
    table = kubectl(cluster, "-n", NS, "get", "sj", "busy").stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert row[header.index("RECOMMENDED")] == "2"
    kubectl(cluster, "-n", NS, "delete", "sj", "busy", "--wait=false")


def test_the_e2e_fixture_replaces_an_older_crd_with_this_checkouts(cluster, tmp_path):
    """tests/e2e/sjenv.apply_crd (the e2e helm install runs it first): a cluster that holds an
    older StreamJob CRD gets this checkout's schema (helm never upgrades CRDs)."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    import sjenv
    from kubernetes import config

    crd = yaml.safe_load((REPO / "crds" / "streamjob.dev_streamjobs.yaml").read_text())
    old = json.loads(json.dumps(crd))
    spec = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["autoscaler"]
    spec["x-kubernetes-validations"] = spec["x-kubernetes-validations"][:1]  # (the others
    # are about spec.autoscaler)
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    api_client = config.new_client_from_config(str(cluster.kubeconfig))
    sjenv.apply_crd(api_client, tmp_path / "old.yaml")

    def stored() -> dict[str, Any]:
        out = kubectl(cluster, "get", "crd", "streamjobs.streamjob.dev", "-o", "json").stdout
        return json.loads(out)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"]["spec"]["properties"]

    assert "autoscaler" not in stored()
    sjenv.apply_crd(api_client)
    assert "autoscaler" in stored()
