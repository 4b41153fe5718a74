"""The operator on the e2e cluster: helm release, MinIO reachable from pods, StreamJob helpers.

Used by tests/e2e/test_operator_e2e.py and bench/k8s_recovery.py.

MinIO runs on this machine (scripts/minio_server.py), bound to the node's InternalIP: pods reach
the node's own address (traffic to a local address is delivered, not forwarded, so the cluster's
STREAMJOB-GUARD chain does not apply), and so does this process. The bridge gateway (10.244.0.1)
would not do: the host's own traffic to it leaves through `lo` and the guard rejects it.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO / "scripts", REPO / "worker", REPO / "operator"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

GROUP, VERSION, PLURAL = "streamjob.dev", "v1alpha1", "streamjobs"
LABEL_JOB = "streamjob.dev/job"
LABEL_ROLE = "streamjob.dev/role"


def helm_binary() -> str:
    out = subprocess.run(["bash", str(REPO / "helm" / "build-helm.sh")], check=True,
                         stdout=subprocess.PIPE, text=True, timeout=3600)
    return out.stdout.strip().splitlines()[-1]


def node_ip(core) -> str:
    node = core.list_node().items[0]
    return next(a.address for a in node.status.addresses if a.type == "InternalIP")


def start_minio(core):
    """A MinioServer bound to the node's InternalIP (reachable from pods and from here)."""
    from minio_server import MinioServer

    return MinioServer(address=node_ip(core)).start()


def start_kafka(core):
    """A KafkaServer (scripts/kafka_server.py) listening on and advertising the node's
    InternalIP, so pods and this process reach the same broker address."""
    from kafka_server import KafkaServer

    return KafkaServer(address=node_ip(core)).start()


def s3_env(server) -> dict[str, str]:
    return {k: v for k, v in server.env.items()
            if k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}



def poll_until(condition, timeout: float, interval: float = 0.3) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (checked every
    ``interval``)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class Release:
    name: str
    system_ns: str
    jobs_ns: str
    helm: str
    kubeconfig: str


def create_namespace(core, name: str) -> None:
    from kubernetes import client

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        if core.list_namespaced_service_account(
                name, field_selector="metadata.name=default").items:
            return
        time.sleep(0.2)


CRD_PATH = REPO / "crds" / "streamjob.dev_streamjobs.yaml"


def apply_crd(api_client, path: Path = CRD_PATH, timeout: float = 30) -> None:
    """Create or replace the StreamJob CRD with this checkout's. `helm install` leaves a CRD
    that exists alone (Helm never upgrades what is in a chart's crds/), so a cluster that saw
    an older chart would keep the older schema without this."""
    import yaml
    from kubernetes import client

    api = client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load(path.read_text())
    name = body["metadata"]["name"]
    try:
        current = api.read_custom_resource_definition(name)
    except client.ApiException as err:
        if err.status != 404:
            raise
        api.create_custom_resource_definition(body)
    else:
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        api.replace_custom_resource_definition(name, body)

    def established() -> bool:
        conditions = api.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    if not poll_until(established, timeout):
        raise RuntimeError(f"CRD {name} not Established within {timeout:g}s")


def helm_install(core, kubeconfig: str, image: str, *, prefix: str = "e2e",
                 extra: tuple[str, ...] = ()) -> Release:
    """`helm install` of helm/streamjob into a fresh namespace, watching a second fresh one,
    with this checkout's CRD applied first."""
    apply_crd(core.api_client)
    suffix = uuid.uuid4().hex[:6]
    rel = Release(name=f"sj{suffix}", system_ns=f"{prefix}-sys-{suffix}",
                  jobs_ns=f"{prefix}-jobs-{suffix}", helm=helm_binary(), kubeconfig=kubeconfig)
    create_namespace(core, rel.jobs_ns)
    repo, _, tag = image.rpartition(":")
    cmd = [rel.helm, "install", rel.name, str(REPO / "helm" / "streamjob"),
           "--kubeconfig", kubeconfig, "-n", rel.system_ns, "--create-namespace",
           "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
           "--set", "image.pullPolicy=Never", "--set", f"watchNamespaces={{{rel.jobs_ns}}}",
           "--set", "pollInterval=1", "--wait", "--timeout", "180s", *extra]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"helm install failed ({r.returncode}):\n{r.stdout}")
    return rel


def delete_jobs(api_client, ns: str, timeout: float = 60) -> None:
    """Delete every StreamJob of ``ns`` while the operator still runs (its finalizer); strip the
    finalizer of any left after ``timeout``, so that the namespace can go."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)
    try:
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
    except client.ApiException:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]:
            return
        time.sleep(0.5)
    for item in custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]:
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL,
                                              item["metadata"]["name"],
                                              {"metadata": {"finalizers": None}})


def helm_uninstall(core, rel: Release) -> None:
    delete_jobs(core.api_client, rel.jobs_ns)
    subprocess.run([rel.helm, "uninstall", rel.name, "--kubeconfig", rel.kubeconfig,
                    "-n", rel.system_ns, "--wait", "--timeout", "60s"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    for ns in (rel.jobs_ns, rel.system_ns):
        try:
            core.delete_namespace(ns)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


def storage_secret(core, ns: str, name: str, env: dict[str, str]) -> None:
    from kubernetes import client

    core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name), type="Opaque", string_data=env))


def wordcount_job(name: str, *, records: int, words: int, rate: float, parallelism: int = 2,
                  bucket: str = "bucket", secret: str = "minio-creds",
                  interval: str = "2s", cpu: str = "300m") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "StreamJob",
        "metadata": {"name": name},
        "spec": {
            "pipeline": "streamjob.examples.wordcount:build",
            "args": {"records": records, "words": words, "rate": rate,
                     "output": f"s3://{bucket}/out"},
            "storage": f"s3://{bucket}/checkpoints",
            "storageSecret": secret,
            "parallelism": parallelism,
            "checkpoint": {"interval": interval},
            "resources": {"cpu": cpu, "memory": "384Mi"},
        },
    }


class Jobs:
    """StreamJob calls on one namespace."""

    def __init__(self, api_client, ns: str):
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.ns = ns

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name,
                                                          body)

    def scale(self, name: str, replicas: int) -> dict[str, Any]:
        """What `kubectl scale sj/NAME --replicas=N` does: a patch of the scale subresource."""
        return self.custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": {"replicas": replicas}})

    def read_scale(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object_scale(GROUP, VERSION, self.ns, PLURAL,
                                                              name)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def pods(self, name: str, role: str | None = None) -> list:
        sel = f"{LABEL_JOB}={name}" + (f",{LABEL_ROLE}={role}" if role else "")
        return self.core.list_namespaced_pod(self.ns, label_selector=sel).items

    def live_pods(self, name: str, role: str | None = None) -> list:
        return [p for p in self.pods(name, role) if p.metadata.deletion_timestamp is None]

    def wait(self, name: str, pred, timeout: float, what: str) -> dict[str, Any]:
        body: dict[str, Any] = {}

        def check() -> bool:
            nonlocal body
            body = self.get(name)
            return pred(body)

        if not poll_until(check, timeout):
            raise AssertionError(f"StreamJob {self.ns}/{name} not {what} after {timeout:.0f} "
                                 f"s: status={body.get('status')} "
                                 f"events={self.events(name)[-10:]}")
        return body

    def wait_ready(self, name: str, timeout: float = 240) -> dict[str, Any]:
        return self.wait(name, is_ready, timeout, "Ready")

    def events(self, name: str) -> list[str]:
        ev = self.core.list_namespaced_event(self.ns,
                                             field_selector=f"involvedObject.name={name}")
        return [f"{e.reason}: {e.message}" for e in ev.items]


def condition(body: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return None


def is_ready(body: dict[str, Any]) -> bool:
    c = condition(body, "Ready")
    return bool(c and c.get("status") == "True"
                and c.get("observedGeneration") == body["metadata"]["generation"])


@dataclass
class PhaseRecorder:
    """Polls a StreamJob's status in a thread; keeps every (time, phase, message) change."""

    jobs: Jobs
    name: str
    period: float = 0.2
    seen: list[tuple[float, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PhaseRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            try:
                st = self.jobs.status(self.name)
            except Exception:  # noqa: BLE001 - gone or a blip; keep polling
                st = {}
            cur = (st.get("phase") or "", st.get("message") or "")
            if cur != last:
                self.seen.append((time.time(), *cur))
                last = cur
            self._stop.wait(self.period)

    def phases(self, since: float = 0.0) -> list[str]:
        out: list[str] = []
        for t, phase, _ in self.seen:
            if t >= since and (not out or out[-1] != phase):
                out.append(phase)
        return out


def storage_keys(server, prefix: str, bucket: str = "bucket") -> list[str]:
    """The object keys under s3://bucket/prefix."""
    from streamjob.s3storage import S3Storage

    return list(S3Storage.from_uri(f"s3://{bucket}", env=server.env).list(prefix))


def committed_lines(server, bucket: str = "bucket", folder: str = "out") -> Counter[str]:
    """Every line of the committed ``part-*`` objects under s3://bucket/folder/."""
    from streamjob.s3storage import S3Storage

    storage = S3Storage.from_uri(f"s3://{bucket}", env=server.env)
    seen: Counter[str] = Counter()
    for key in storage.list(f"{folder}/"):
        if key.rsplit("/", 1)[-1].startswith("part-"):
            seen.update(ln for ln in storage.get(key).decode().splitlines() if ln)
    return seen


def expected_lines(records: int, words: int) -> set[str]:
    from streamjob.examples.wordcount import expected_counts

    return {f"{w} {i}" for w, n in expected_counts(records, words).items()
            for i in range(1, n + 1)}


def assert_committed_exactly_once(server, records: int, words: int) -> None:
    """The wordcount's committed output in MinIO is exactly the expected set of lines: none
    twice, none missing, none unexpected."""
    seen = committed_lines(server)
    expected = expected_lines(records, words)
    duplicates = {ln: c for ln, c in seen.items() if c > 1}
    missing = expected - seen.keys()
    unexpected = seen.keys() - expected
    assert not duplicates, f"{len(duplicates)} duplicated lines, e.g. {list(duplicates)[:5]}"
    assert not missing, f"{len(missing)} missing lines, e.g. {sorted(missing)[:5]}"
    assert not unexpected, f"{len(unexpected)} unexpected lines, e.g. {sorted(unexpected)[:5]}"
    assert sum(seen.values()) == records
