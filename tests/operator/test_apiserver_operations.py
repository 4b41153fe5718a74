"""Issue 12 on a real kube-apiserver + etcd: every operation survives an operator restart,
exactly one replica acts, status writes are conditional, a savepoint of one job does not hold
up another, and the chart's RBAC answers SubjectAccessReviews as the matrix says.

The operator runs as real processes (``python -m streamjob_operator``) that the tests SIGKILL:
at a named step (the fault point ``operator.<type>.<step>``, right after the step was written
to status) or while a savepoint request is in flight. The only fakes are the kubelet (the test
patches pod status) and the coordinator's HTTP API (one fake server for every job).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import apiserver
import pytest
import rbac_matrix
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
SYSTEM = "sj-system"


# ------------------------------------------------------------------ the fake coordinator API
class Coordinators:
    """One fake coordinator API per job, at ``/<job>/api/v1/...``."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def job(self, name: str) -> dict[str, Any]:
        with self.lock:
            return self.jobs.setdefault(name, {
                "state": "CREATED", "parallelism": None, "attempt": 0, "restarts": 0,
                "restored_from": None, "last_checkpoint": None, "message": "",
                "savepoints": [], "hang": None, "refuse": None, "stopped": 0})

    def complete_savepoint(self, name: str, stop: bool) -> str:
        job = self.job(name)
        n = len(self.requests) + len(job["savepoints"])
        uri = f"s3://ckpt/jobs/{name}/savepoints/sp-{n}"
        job["savepoints"].append({"id": n, "path": uri, "completed_at": time.time(),
                                  "size_bytes": 1})
        if stop:
            job["state"] = "STOPPED"
            job["stopped"] += 1
        return uri

    def posts(self, name: str) -> list[dict[str, Any]]:
        return [body for job, body in self.requests if job == name]


def handler_for(coords: Coordinators) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except OSError:
                pass

        def _job(self) -> tuple[str, str]:
            _, name, rest = self.path.split("/", 2)
            return name, "/" + rest

        def do_GET(self) -> None:  # noqa: N802
            if len(self.headers.get("Authorization", "")) < 30:
                return self._send(401, {"error": "unauthorized"})
            name, _ = self._job()
            job = coords.job(name)
            self._send(200, {k: v for k, v in job.items()
                             if k not in ("hang", "refuse", "stopped")})

        def do_POST(self) -> None:  # noqa: N802
            name, _ = self._job()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            coords.requests.append((name, body))
            job = coords.job(name)
            if job["refuse"]:
                return self._send(409, {"error": job["refuse"]})
            if job["state"] != "RUNNING":           # what the runtime answers
                return self._send(409, {"error": f"job is {job['state']}, not RUNNING"})
            hang = job["hang"]
            if hang is not None:
                hang.wait(60)                 # the answer comes only when the test says so
                return self._send(503, {"error": "the test ended this request"})
            self._send(200, {"uri": coords.complete_savepoint(name, bool(body.get("stop")))})

    return Handler


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[apiserver.ApiServer]:
    server = apiserver.start(tmp_path_factory.mktemp("apiserver"), APISERVER, ETCD)
    try:
        kubectl(server, "apply", "-f", str(REPO / "crds" / "streamjob.dev_streamjobs.yaml"))
        kubectl(server, "wait", "--for=condition=Established",
                "crd/streamjobs.streamjob.dev", "--timeout=30s")
        for ns in (NS, SYSTEM):
            kubectl(server, "create", "namespace", ns)
            kubectl(server, "-n", ns, "create", "serviceaccount", "default")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def coords() -> Iterator[Coordinators]:
    coords = Coordinators()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(coords))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    coords.url = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    yield coords
    for job in coords.jobs.values():
        if job["hang"] is not None:
            job["hang"].set()
    httpd.shutdown()


def kubectl(server: apiserver.ApiServer, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "--kubeconfig", str(server.kubeconfig), *args],
                          input=stdin, capture_output=True, text=True, check=check, timeout=60)


class Operator:
    """``python -m streamjob_operator`` as its own process, killed with SIGKILL."""

    def __init__(self, cluster: apiserver.ApiServer, coords: Coordinators, workdir: Path,
                 name: str = "op", faults: str = "", **env: str) -> None:
        self.log = workdir / f"{name}-{time.monotonic_ns()}.log"
        base = {
            "KUBECONFIG": str(cluster.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO / "worker"), str(REPO / "operator")]),
            "POD_NAME": name,
            "STREAMJOB_OPERATOR_API_URL": coords.url + "/{name}",  # type: ignore[attr-defined]
            "STREAMJOB_OPERATOR_NAMESPACES": NS,
            "STREAMJOB_OPERATOR_NAMESPACE": SYSTEM,
            "STREAMJOB_OPERATOR_POLL_INTERVAL": "1",
            "STREAMJOB_OPERATOR_SAVEPOINT_TIMEOUT": "30",
            "STREAMJOB_OPERATOR_ROLLOUT_TIMEOUT": "60",
            "STREAMJOB_OPERATOR_HEALTH_PORT": "0",
            "STREAMJOB_OPERATOR_TOKEN_KEY": "k" * 40,
            "PYTHONWARNINGS": "ignore::Warning",   # insecure-skip-tls-verify of the test server
            "STREAMJOB_FAULTS_DIR": str(workdir / f"faults-{name}-{time.monotonic_ns()}"),
        }
        if faults:
            base["STREAMJOB_FAULTS"] = faults
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamjob_operator"], env={**os.environ, **base, **env},
            stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def operators(cluster, coords, tmp_path) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def start(**kw: Any) -> Operator:
        op = Operator(cluster, coords, tmp_path, **kw)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 45,
             ops: list[Operator] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    logs = "\n".join(op.text()[-3000:] for op in ops or [])
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{logs}")


def job(cluster, name: str) -> dict[str, Any]:
    out = kubectl(cluster, "-n", NS, "get", "sj", name, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def status(cluster, name: str) -> dict[str, Any]:
    return job(cluster, name).get("status") or {}


def pods(cluster, name: str) -> dict[str, dict[str, Any]]:
    out = kubectl(cluster, "-n", NS, "get", "pods", "-l", f"streamjob.dev/job={name}",
                  "-o", "json").stdout
    return {p["metadata"]["name"]: p for p in json.loads(out)["items"]}


def play_kubelet(cluster, pod: str, phase: str = "Running", exit_code: int | None = None,
                 message: str = "") -> None:
    st: dict[str, Any] = {"phase": phase, "podIP": "127.0.0.1"}
    if exit_code is not None:
        st["containerStatuses"] = [{"name": "x", "image": "i", "imageID": "", "ready": False,
                                    "restartCount": 0, "state": {"terminated": {
                                        "exitCode": exit_code, "reason": "Error",
                                        "message": message}}}]
    kubectl(cluster, "-n", NS, "patch", "pod", pod, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": st}))


def run_pending(cluster, name: str) -> None:
    for pod_name, pod in pods(cluster, name).items():
        if (pod.get("status") or {}).get("phase", "Pending") == "Pending" and \
                not pod["metadata"].get("deletionTimestamp"):
            play_kubelet(cluster, pod_name)


def exit_all(cluster, name: str, code: int = 0, coordinator_message: str = "") -> None:
    """The coordinator stopped with its savepoint: every pod of the job exits (the
    coordinator with ``coordinator_message`` as its termination message)."""
    for pod_name, pod in pods(cluster, name).items():
        if (pod.get("status") or {}).get("phase") in ("Pending", "Running", None):
            is_coordinator = pod["metadata"]["labels"]["streamjob.dev/role"] == "coordinator"
            play_kubelet(cluster, pod_name, "Succeeded" if code == 0 else "Failed", code,
                         coordinator_message if is_coordinator else "")


def revision_pods(cluster, name: str, revision: int, role: str | None = None) -> list[str]:
    return sorted(n for n, p in pods(cluster, name).items()
                  if p["metadata"]["labels"]["streamjob.dev/revision"] == str(revision)
                  and (role is None or p["metadata"]["labels"]["streamjob.dev/role"] == role)
                  and not p["metadata"].get("deletionTimestamp"))


def coordinator_args(cluster, name: str, revision: int) -> list[str]:
    (pod,) = [p for p in pods(cluster, name).values()
              if p["metadata"]["labels"]["streamjob.dev/revision"] == str(revision)
              and p["metadata"]["labels"]["streamjob.dev/role"] == "coordinator"][-1:]
    return pod["spec"]["containers"][0]["args"]


def events(cluster, name: str) -> list[tuple[str, str]]:
    out = kubectl(cluster, "-n", NS, "get", "events", "-o", "json").stdout
    return [(e["type"], e["reason"]) for e in json.loads(out)["items"]
            if e["involvedObject"].get("name") == name]


def event_messages(cluster, name: str) -> list[str]:
    out = kubectl(cluster, "-n", NS, "get", "events", "-o", "json").stdout
    return [e.get("message") or "" for e in json.loads(out)["items"]
            if e["involvedObject"].get("name") == name]


def create_job(cluster, coords: Coordinators, name: str, parallelism: int = 2,
               annotations: dict[str, str] | None = None) -> None:
    coords.job(name)
    manifest = {
        "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations or {}},
        "spec": {"pipeline": "streamjob.examples.wordcount:build", "storage": "s3://ckpt/jobs",
                 "parallelism": parallelism, "checkpoint": {"interval": "2s"}}}
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(manifest))


def bring_up(cluster, coords: Coordinators, name: str, ops: list[Operator],
             parallelism: int = 2, **kw: Any) -> None:
    """Create the job and make it Running (pods run, the coordinator reports RUNNING)."""
    create_job(cluster, coords, name, parallelism, **kw)
    wait_for("pods", lambda: len(pods(cluster, name)) == parallelism + 1, ops=ops)
    run_pending(cluster, name)
    coords.job(name).update(state="RUNNING", parallelism=parallelism)
    wait_for("Running", lambda: status(cluster, name).get("phase") == "Running", ops=ops)


def new_revision_runs(cluster, coords: Coordinators, name: str, parallelism: int,
                      ops: list[Operator]) -> None:
    """Play the kubelet and the new coordinator of whatever revision status points at."""
    def settled() -> bool:
        st = status(cluster, name)
        rev = (st.get("deployment") or {}).get("revision")
        run_pending(cluster, name)
        if rev and len(revision_pods(cluster, name, rev)) == st["deployment"]["parallelism"] + 1:
            coords.job(name).update(state="RUNNING", parallelism=st["deployment"]["parallelism"])
        return st.get("phase") == "Running" and not st.get("operation") \
            and st.get("parallelism") == parallelism
    wait_for(f"Running at {parallelism}", settled, timeout=60, ops=ops)


def scale(cluster, name: str, replicas: int) -> None:
    kubectl(cluster, "-n", NS, "scale", f"sj/{name}", f"--replicas={replicas}")


def hang_savepoints(coords: Coordinators, name: str) -> threading.Event:
    event = threading.Event()
    coords.job(name)["hang"] = event
    return event


def release(coords: Coordinators, name: str) -> None:
    hang = coords.job(name)["hang"]
    coords.job(name)["hang"] = None
    if hang is not None:
        hang.set()


# ------------------------------------------------------------------ 1. restarts mid-operation
@pytest.mark.parametrize("what", ["exited", "exited-told", "still-up", "never-taken"])
def test_rescale_operator_killed_while_the_savepoint_is_in_flight(cluster, coords, operators,
                                                                   what):
    """The reported bug: the operator killed while the stop-savepoint is in flight. Before the
    fix: "exited" (the savepoint completed, the coordinator exited 0) ended Finished at 2 with
    no savepoint; "never-taken" (the request died with the operator, the job ran on) ended
    "rescaled 2 -> 3 from savepoint None" while it ran at 2. Now the job ends at 3, after a
    rollback with a Warning when the savepoint's path is lost; "exited-told": the coordinator
    named its savepoint in its termination message, so the rescale goes forward from it."""
    coordinator_exited = what == "exited"
    name = f"rs-flight-{what}"
    op = operators(name="a")
    bring_up(cluster, coords, name, [op])
    hang_savepoints(coords, name)
    scale(cluster, name, 3)
    wait_for("savepoint asked", lambda: coords.posts(name), ops=[op])
    assert status(cluster, name)["operation"]["step"] == "savepoint-requested"
    op.kill()
    release(coords, name)
    taken = None
    if what != "never-taken":
        taken = coords.complete_savepoint(name, stop=True)   # the savepoint did complete
    if coordinator_exited:
        exit_all(cluster, name, 0)
    if what == "exited-told":
        exit_all(cluster, name, 0, json.dumps({"state": "STOPPED", "savepoint": taken}))
    op = operators(name="b")
    if coordinator_exited:
        # back at 2 from the latest checkpoint, with a Warning; then the rescale again, to 3
        wait_for("rolled back", lambda: ("Warning", "RescaleRolledBack") in events(
            cluster, name), ops=[op])
        assert status(cluster, name)["phase"] != "Finished"
    new_revision_runs(cluster, coords, name, 3, [op])
    st = status(cluster, name)
    assert st["message"].startswith("rescaled 2 -> 3 from savepoint s3://")
    assert len(revision_pods(cluster, name, st["deployment"]["revision"], "worker")) == 3
    # never claimed a rescale that did not happen
    assert not [m for m in event_messages(cluster, name) if "savepoint None" in m]
    if what in ("still-up", "exited-told"):  # forward from the savepoint taken before the kill
        assert st["deployment"]["fromSavepoint"] == taken
        assert ("Warning", "RescaleRolledBack") not in events(cluster, name)
        assert len(coords.posts(name)) == 1


@pytest.mark.parametrize("step", ["savepoint-requested", "savepoint-taken", "pods-started"])
def test_rescale_operator_killed_at_each_step_ends_at_the_new_parallelism(cluster, coords,
                                                                         operators, step):
    name = f"rs-{step}"
    op = operators(name="a", faults=f"operator.rescale.{step}=kill")
    bring_up(cluster, coords, name, [op])
    scale(cluster, name, 3)
    wait_for("the operator died at the step", lambda: op.proc.poll() is not None, ops=[op])
    assert status(cluster, name)["operation"]["step"] == step
    if coords.job(name)["stopped"]:
        exit_all(cluster, name, 0)
    op = operators(name="b")
    new_revision_runs(cluster, coords, name, 3, [op])
    assert len([b for b in coords.posts(name) if b.get("stop")]) == 1   # one stop-savepoint


def test_rescale_operator_killed_while_rolling_back_ends_at_the_old_parallelism(
        cluster, coords, operators):
    name = "rs-rollback"
    op = operators(name="a", faults="operator.rescale.rolling-back=kill")
    bring_up(cluster, coords, name, [op])
    scale(cluster, name, 3)
    wait_for("new revision", lambda: len(revision_pods(cluster, name, 2)) == 4, ops=[op])
    coord = revision_pods(cluster, name, 2, "coordinator")[0]
    play_kubelet(cluster, coord, "Failed", 2, "cannot restore")
    wait_for("the operator died", lambda: op.proc.poll() is not None, ops=[op])
    op = operators(name="b")
    new_revision_runs(cluster, coords, name, 2, [op])
    assert ("Warning", "RescaleFailed") in events(cluster, name)
    assert status(cluster, name)["failedRescale"] == 3


@pytest.mark.parametrize("step", ["savepoint-requested", "savepoint-taken", "pods-stopped"])
def test_suspend_operator_killed_at_each_step_ends_suspended(cluster, coords, operators, step):
    name = f"su-{step}"
    op = operators(name="a", faults=f"operator.suspend.{step}=kill")
    bring_up(cluster, coords, name, [op])
    kubectl(cluster, "-n", NS, "patch", "sj", name, "--type=merge",
            "-p", '{"spec": {"state": "suspended"}}')
    wait_for("the operator died at the step", lambda: op.proc.poll() is not None, ops=[op])
    if coords.job(name)["stopped"]:
        exit_all(cluster, name, 0)
    op = operators(name="b")
    wait_for("Suspended, no pods", lambda: status(cluster, name).get("phase") == "Suspended"
             and not status(cluster, name).get("operation") and not pods(cluster, name),
             ops=[op])
    assert status(cluster, name)["resumeFrom"].startswith("s3://")


@pytest.mark.parametrize("step", ["savepoint-requested", "savepoint-taken", "pods-started"])
def test_upgrade_operator_killed_at_each_step_ends_upgraded(cluster, coords, operators, step):
    name = f"up-{step}"
    op = operators(name="a", faults=f"operator.upgrade.{step}=kill")
    bring_up(cluster, coords, name, [op])
    kubectl(cluster, "-n", NS, "patch", "sj", name, "--type=merge",
            "-p", '{"spec": {"args": {"words": 7}}}')
    wait_for("the operator died at the step", lambda: op.proc.poll() is not None, ops=[op])
    if coords.job(name)["stopped"]:
        exit_all(cluster, name, 0)
    op = operators(name="b")
    new_revision_runs(cluster, coords, name, 2, [op])
    st = status(cluster, name)
    args = coordinator_args(cluster, name, st["deployment"]["revision"])
    assert args[args.index("--from-savepoint") + 1].startswith("s3://ckpt/jobs/" + name)
    assert len([b for b in coords.posts(name) if b.get("stop")]) == 1


def test_final_savepoint_operator_killed_in_flight_then_deleted(cluster, coords, operators):
    name = "sod-flight"
    op = operators(name="a")
    bring_up(cluster, coords, name, [op],
             annotations={"streamjob.dev/savepoint-on-delete": "true"})
    hang_savepoints(coords, name)
    kubectl(cluster, "-n", NS, "delete", "sj", name, "--wait=false")
    wait_for("final savepoint asked", lambda: coords.posts(name), ops=[op])
    assert status(cluster, name)["operation"]["type"] == "savepoint-on-delete"
    op.kill()
    release(coords, name)
    coords.complete_savepoint(name, stop=True)
    op = operators(name="b")
    wait_for("FinalSavepoint event", lambda: ("Normal", "FinalSavepoint") in events(
        cluster, name), ops=[op])
    wait_for("job gone", lambda: not job(cluster, name), ops=[op])
    assert len(coords.posts(name)) == 1


# ------------------------------------------------------------------ 2. one replica acts
def lease_holder(cluster) -> str | None:
    out = kubectl(cluster, "-n", SYSTEM, "get", "lease", "streamjob-operator", "-o", "json",
                  check=False)
    return json.loads(out.stdout)["spec"].get("holderIdentity") if out.returncode == 0 \
        else None


def test_two_replicas_one_acts_and_the_other_takes_over_when_it_dies(cluster, coords,
                                                                     operators):
    env = {"STREAMJOB_OPERATOR_LEADER_ELECTION": "true",
           "STREAMJOB_OPERATOR_LEASE_DURATION": "4", "STREAMJOB_OPERATOR_LEASE_RENEW": "1"}
    a = operators(name="op-a", **env)
    wait_for("a holds the lease", lambda: lease_holder(cluster) == "op-a", ops=[a])
    b = operators(name="op-b", **env)
    wait_for("b waits", lambda: "waits for the lease" in b.text(), ops=[b])
    name = "leader"
    bring_up(cluster, coords, name, [a, b])
    assert "created Pod" in a.text() and "created Pod" not in b.text()
    assert lease_holder(cluster) == "op-a"
    a.kill()
    start = time.monotonic()
    wait_for("b takes over", lambda: lease_holder(cluster) == "op-b", timeout=30, ops=[b])
    took = time.monotonic() - start
    assert took < 4 + 1 + 5, took
    victim, uid = next((n, p["metadata"]["uid"]) for n, p in pods(cluster, name).items()
                       if "worker-1" in n)
    kubectl(cluster, "-n", NS, "delete", "pod", victim, "--wait=false")
    wait_for("b replaces the pod", lambda: "created Pod" in b.text() and any(
        n.startswith(f"{name}-worker-1-") and p["metadata"]["uid"] != uid
        for n, p in pods(cluster, name).items()), ops=[b])
    # a process that cannot renew stops acting: b exits when its lease is taken from it
    kubectl(cluster, "-n", SYSTEM, "patch", "lease", "streamjob-operator", "--type=merge",
            "-p", '{"spec": {"holderIdentity": "someone-else", "renewTime": "'
            + time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() + 60)) + '"}}')
    wait_for("b stops", lambda: b.proc.poll() is not None, timeout=20, ops=[b])
    assert b.proc.returncode == 3
    kubectl(cluster, "-n", SYSTEM, "delete", "lease", "streamjob-operator")


# ------------------------------------------------------------------ 3. conditional writes
def test_a_status_write_from_a_stale_read_meets_a_conflict(cluster, coords):
    from kubernetes import client, config

    from streamjob_operator import kube

    create_job(cluster, coords, "cas")
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    kube.api_client.cache_clear()
    old = kube.api_client
    kube.api_client = lambda: api  # type: ignore[assignment]
    try:
        body = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "streamjob.dev", "v1alpha1", NS, "streamjobs", "cas")
        stale = body["metadata"]["resourceVersion"]
        fresh = kube.patch_status(NS, "cas", {"message": "first"}, stale)
        assert fresh and fresh != stale
        with pytest.raises(kube.Conflict):
            kube.patch_status(NS, "cas", {"message": "second, from a stale read"}, stale)
        assert status(cluster, "cas")["message"] == "first"
        assert kube.patch_status(NS, "cas", {"message": "third"}, fresh)
    finally:
        kube.api_client = old  # type: ignore[assignment]
        kubectl(cluster, "-n", NS, "delete", "sj", "cas", "--wait=false")


# ------------------------------------------------------------------ 4. no job waits for another
def test_a_hanging_savepoint_of_one_job_does_not_delay_another_job(cluster, coords, operators):
    op = operators(name="a")
    bring_up(cluster, coords, "slow", [op])
    bring_up(cluster, coords, "fast", [op])
    hang_savepoints(coords, "slow")
    scale(cluster, "slow", 3)
    wait_for("slow's savepoint asked", lambda: coords.posts("slow"), ops=[op])
    victim, uid = next((n, p["metadata"]["uid"]) for n, p in pods(cluster, "fast").items()
                       if "worker-0" in n)
    start = time.monotonic()
    kubectl(cluster, "-n", NS, "delete", "pod", victim, "--wait=false")
    # (without a kubelet the pod vanishes at once, so its name may be reused; its uid is not)
    wait_for("fast's pod replaced", lambda: any(
        n.startswith("fast-worker-0-") and p["metadata"]["uid"] != uid
        for n, p in pods(cluster, "fast").items()), ops=[op])
    took = time.monotonic() - start
    # and its other reconciles go on: the replacement runs, the job is Running again
    run_pending(cluster, "fast")
    coords.job("fast")["attempt"] = 1
    wait_for("fast Running", lambda: status(cluster, "fast").get("phase") == "Running",
             ops=[op])
    assert status(cluster, "slow")["operation"]["step"] == "savepoint-requested"
    assert took < 5, took
    release(coords, "slow")


# ------------------------------------------------------------------ 5. RBAC
def _helm() -> str | None:
    cache = Path(os.environ.get("STREAMJOB_CACHE", Path.home() / ".cache" / "streamjob"))
    built = sorted(cache.glob("helm-*/helm"))
    return os.environ.get("HELM") or (str(built[-1]) if built else None)


@pytest.fixture(scope="module")
def chart_rbac(cluster) -> str:
    """The chart's ServiceAccount and RBAC (watching NS, released in SYSTEM), applied."""
    if _helm() is None:
        pytest.skip("no helm binary (helm/build-helm.sh)")
    out = subprocess.run([_helm(), "template", "rel", str(REPO / "helm" / "streamjob"),
                          "-n", SYSTEM, "--set", f"watchNamespaces={{{NS}}}"],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] in (
        "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    kubectl(cluster, "apply", "-f", "-", stdin="\n---\n".join(yaml.safe_dump(d) for d in docs))
    return "rel-streamjob"


def test_rbac_matrix_by_subject_access_review_with_the_charts_rbac(cluster, chart_rbac):
    user = f"system:serviceaccount:{SYSTEM}:{chart_rbac}"
    wrong = []
    for verb, group, resource, name, ns_key, allowed in rbac_matrix.MATRIX:
        resource_name, _, sub = resource.partition("/")
        attrs: dict[str, Any] = {"verb": verb, "group": group, "resource": resource_name}
        if sub:
            attrs["subresource"] = sub
        if name:
            attrs["name"] = name
        namespace = {"jobs": NS, "system": SYSTEM}.get(ns_key, ns_key)
        if namespace:
            attrs["namespace"] = namespace
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user, "groups": ["system:serviceaccounts",
                                                    f"system:serviceaccounts:{SYSTEM}",
                                                    "system:authenticated"],
                           "resourceAttributes": attrs}}
        answer = json.loads(kubectl(cluster, "create", "-f", "-", "-o", "json",
                                    stdin=json.dumps(review)).stdout)
        if bool(answer["status"].get("allowed")) is not allowed:
            wrong.append((verb, group, resource, name, namespace, allowed))
    assert wrong == []


def test_the_operator_does_its_work_with_nothing_but_the_charts_rbac(cluster, coords, operators,
                                                                     chart_rbac, tmp_path):
    """The operator as the chart's ServiceAccount (a real token from the TokenRequest API):
    lease, deploy, failover, rescale, final savepoint, delete; no request is forbidden."""
    kubectl(cluster, "-n", SYSTEM, "delete", "lease", "streamjob-operator", "--ignore-not-found")
    token = kubectl(cluster, "-n", SYSTEM, "create", "token", chart_rbac,
                    "--duration=1h").stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    kubeconfig = tmp_path / "sa-kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    op = operators(name="op-rbac", KUBECONFIG=str(kubeconfig),
                   STREAMJOB_OPERATOR_LEADER_ELECTION="true",
                   STREAMJOB_OPERATOR_LEASE_DURATION="4", STREAMJOB_OPERATOR_LEASE_RENEW="1")
    name = "rbac"
    bring_up(cluster, coords, name, [op],
             annotations={"streamjob.dev/savepoint-on-delete": "true"})
    victim, uid = next((n, p["metadata"]["uid"]) for n, p in pods(cluster, name).items()
                       if "worker-0" in n)
    kubectl(cluster, "-n", NS, "delete", "pod", victim, "--wait=false")
    wait_for("replaced", lambda: any(n.startswith(f"{name}-worker-0-")
                                     and p["metadata"]["uid"] != uid
                                     for n, p in pods(cluster, name).items()), ops=[op])
    run_pending(cluster, name)
    coords.job(name)["attempt"] = 1
    wait_for("Running", lambda: status(cluster, name).get("phase") == "Running", ops=[op])
    scale(cluster, name, 3)
    new_revision_runs(cluster, coords, name, 3, [op])
    kubectl(cluster, "-n", NS, "delete", "sj", name, "--wait=false")
    wait_for("job gone", lambda: not job(cluster, name), ops=[op])
    assert ("Normal", "FinalSavepoint") in events(cluster, name)
    text = op.text()
    assert "Forbidden" not in text and " 403" not in text, text[-3000:]
