"""End-to-end fixtures: a real Kubernetes cluster (scripts/cluster, or any $KUBECONFIG).

Tests here talk to the API server with the `kubernetes` Python client. The cluster comes from
$KUBECONFIG if set (e.g. a kind cluster from kind-config.yaml), else `scripts/cluster up` is run
once per session and left running. The project's image is $STREAMJOB_IMAGE
(default localhost/streamjob:dev), which must already be on the node.
"""
from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))

from devcluster.testing import image_ref, kubeconfig_path  # noqa: E402


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


class Kube:
    """Small helpers over the kubernetes client for the smoke tests."""

    def __init__(self, kubeconfig: str):
        from kubernetes import client, config

        self.client = client
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.image = image_ref()

    def pod(self, ns: str, name: str, command: list[str], *, labels=None, restart="Never",
            ports=(), readiness_port=None, grace=2, image=None):
        c = self.client
        container = c.V1Container(
            name="main", image=image or self.image, image_pull_policy="IfNotPresent",
            command=command,
            ports=[c.V1ContainerPort(container_port=p) for p in ports] or None,
            readiness_probe=c.V1Probe(
                tcp_socket=c.V1TCPSocketAction(port=readiness_port), period_seconds=1)
            if readiness_port else None,
            security_context=c.V1SecurityContext(
                allow_privilege_escalation=False, run_as_non_root=True,
                capabilities=c.V1Capabilities(drop=["ALL"])))
        body = c.V1Pod(
            metadata=c.V1ObjectMeta(name=name, labels=labels or {}),
            spec=c.V1PodSpec(containers=[container], restart_policy=restart,
                             termination_grace_period_seconds=grace,
                             automount_service_account_token=False))
        return self.core.create_namespaced_pod(ns, body)

    def wait_pod(self, ns: str, name: str, pred, timeout: float = 180, what: str = ""):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            p = self.core.read_namespaced_pod(name, ns)
            if pred(p):
                return p
            time.sleep(0.5)
        p = self.core.read_namespaced_pod(name, ns)
        ev = self.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
        raise AssertionError(f"pod {ns}/{name} not {what} after {timeout}s: "
                             f"phase={p.status.phase} statuses={p.status.container_statuses} "
                             f"events={[e.message for e in ev.items]}")

    def wait_phase(self, ns, name, phases, timeout=180):
        return self.wait_pod(ns, name, lambda p: p.status.phase in phases, timeout, str(phases))

    def wait_ready(self, ns, name, timeout=180):
        def ready(p):
            return any(cnd.type == "Ready" and cnd.status == "True"
                       for cnd in (p.status.conditions or []))
        return self.wait_pod(ns, name, ready, timeout, "Ready")

    def logs(self, ns, name):
        return self.core.read_namespaced_pod_log(name, ns, container="main")


@pytest.fixture(scope="session")
def kube() -> Kube:
    return Kube(kubeconfig_path())


@pytest.fixture
def namespace(kube):
    from kubernetes import client

    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # pods need the namespace's default ServiceAccount before they are admitted
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        if kube.core.list_namespaced_service_account(
                name, field_selector="metadata.name=default").items:
            break
        time.sleep(0.2)
    yield name
    kube.core.delete_namespace(name)  # returns at once; the namespace controller cleans up
