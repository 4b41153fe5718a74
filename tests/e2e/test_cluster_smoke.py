"""Smoke tests of the e2e cluster: the things the operator relies on, against a real cluster."""
from __future__ import annotations

import queue
import threading
import time

import pytest

pytestmark = pytest.mark.e2e

SERVER = ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"]


def _fetch(url: str) -> list[str]:
    code = ("import sys, urllib.request; "
            "b = urllib.request.urlopen(sys.argv[1], timeout=10).read(); "
            "print('fetched', len(b), 'bytes')")
    return ["python3", "-c", code, url]


def test_image_runs_as_pod_as_non_root(kube, namespace):
    code = ("import os, shutil, streamjob; "
            "print('uid', os.getuid(), 'gid', os.getgid()); "
            "print('module', streamjob.__file__); "
            "print('command', shutil.which('streamjob'))")
    kube.pod(namespace, "image", ["python3", "-c", code])
    p = kube.wait_phase(namespace, "image", {"Succeeded", "Failed"})
    out = kube.logs(namespace, "image")
    assert p.status.phase == "Succeeded", out
    assert "uid 10001 gid 10001" in out
    assert "/site-packages/streamjob/__init__.py" in out
    assert "command /opt/streamjob/bin/streamjob" in out


def test_two_pods_reach_each_other_over_pod_network(kube, namespace):
    kube.pod(namespace, "server", SERVER, ports=[8080], readiness_port=8080)
    server = kube.wait_ready(namespace, "server")
    ip = server.status.pod_ip
    assert ip and ip != server.status.host_ip, "server must have its own pod IP"
    kube.pod(namespace, "client", _fetch(f"http://{ip}:8080/"))
    p = kube.wait_phase(namespace, "client", {"Succeeded", "Failed"})
    out = kube.logs(namespace, "client")
    assert p.status.phase == "Succeeded", out
    assert "fetched" in out
    assert p.status.pod_ip != ip


def test_service_clusterip_headless_and_dns(kube, namespace):
    c = kube.client
    kube.pod(namespace, "coord", SERVER, labels={"app": "coord"}, ports=[8080],
             readiness_port=8080)
    pod = kube.wait_ready(namespace, "coord")
    port = [c.V1ServicePort(port=80, target_port=8080, name="http")]
    kube.core.create_namespaced_service(namespace, c.V1Service(
        metadata=c.V1ObjectMeta(name="coord"),
        spec=c.V1ServiceSpec(selector={"app": "coord"}, ports=port)))
    kube.core.create_namespaced_service(namespace, c.V1Service(
        metadata=c.V1ObjectMeta(name="coord-headless"),
        spec=c.V1ServiceSpec(selector={"app": "coord"}, cluster_ip="None", ports=port)))
    code = ("import socket, sys, urllib.request\n"
            "ns, pod_ip = sys.argv[1], sys.argv[2]\n"
            "hl = socket.gethostbyname(f'coord-headless.{ns}.svc.cluster.local')\n"
            "assert hl == pod_ip, (hl, pod_ip)\n"
            "for url in [f'http://coord.{ns}.svc.cluster.local/', 'http://coord/',"
            " f'http://coord-headless:8080/']:\n"
            "    urllib.request.urlopen(url, timeout=10).read()\n"
            "    print('ok', url)\n")
    kube.pod(namespace, "client", ["python3", "-c", code, namespace, pod.status.pod_ip])
    p = kube.wait_phase(namespace, "client", {"Succeeded", "Failed"})
    out = kube.logs(namespace, "client")
    assert p.status.phase == "Succeeded", out
    assert out.count("ok ") == 3, out


def test_pod_deletion_seen_by_watch_within_a_second(kube, namespace):
    from kubernetes import watch

    kube.pod(namespace, "victim", ["sleep", "3600"], grace=1)
    kube.wait_phase(namespace, "victim", {"Running"})
    rv = kube.core.list_namespaced_pod(namespace).metadata.resource_version
    events: queue.Queue = queue.Queue()
    w = watch.Watch()

    def watch_pods():
        try:
            for ev in w.stream(kube.core.list_namespaced_pod, namespace, resource_version=rv,
                               timeout_seconds=60):
                events.put((time.monotonic(), ev["type"], ev["object"]))
        except Exception:  # noqa: BLE001 - the stream is cut when the test stops it
            pass

    t = threading.Thread(target=watch_pods, daemon=True)
    t.start()
    # The watch is connected once it sees a change we make: label the pod, wait for that
    # event, and drop whatever came before it.
    kube.core.patch_namespaced_pod("victim", namespace,
                                   {"metadata": {"labels": {"watched": "yes"}}})
    deadline = time.monotonic() + 60
    while True:
        _, _typ, seen = events.get(timeout=max(0.1, deadline - time.monotonic()))
        if (seen.metadata.labels or {}).get("watched") == "yes":
            break
    while not events.empty():
        events.get_nowait()
    t_delete = time.monotonic()
    kube.core.delete_namespaced_pod("victim", namespace)
    first_at, typ, obj = events.get(timeout=5)
    latency = first_at - t_delete
    assert obj.metadata.name == "victim"
    assert typ == "DELETED" or obj.metadata.deletion_timestamp is not None, typ
    print(f"pod deletion seen by the watch {latency * 1000:.0f} ms after the delete call")
    assert latency < 1.0, f"deletion seen after {latency:.3f}s"
    # ... and the kubelet finishes the deletion: the DELETED event follows.
    deadline = time.monotonic() + 60
    while typ != "DELETED":
        _, typ, obj = events.get(timeout=max(0.1, deadline - time.monotonic()))
    w.stop()


def test_container_nonzero_exit_reported_in_pod_status(kube, namespace):
    kube.pod(namespace, "fails", ["sh", "-c", "echo about to fail; exit 3"])
    p = kube.wait_phase(namespace, "fails", {"Succeeded", "Failed"})
    assert p.status.phase == "Failed"
    term = p.status.container_statuses[0].state.terminated
    assert term is not None
    assert term.exit_code == 3
    assert term.reason == "Error"
    assert "about to fail" in kube.logs(namespace, "fails")


def test_pod_reaches_api_server_in_cluster_with_rbac(kube, namespace):
    """What the operator does from inside a pod: the `kubernetes` Service, a projected
    service-account token and RBAC (the default account may read pods only once bound)."""
    c = kube.client
    rbac = c.RbacAuthorizationV1Api(kube.api)
    rbac.create_namespaced_role_binding(namespace, c.V1RoleBinding(
        metadata=c.V1ObjectMeta(name="default-view"),
        role_ref=c.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                             name="view"),
        subjects=[c.RbacV1Subject(kind="ServiceAccount", name="default", namespace=namespace)]))
    code = ("import sys\n"
            "from kubernetes import client, config\n"
            "config.load_incluster_config()\n"
            "v1 = client.CoreV1Api()\n"
            "names = [p.metadata.name for p in v1.list_namespaced_pod(sys.argv[1]).items]\n"
            "print('pods', names)\n"
            "try:\n"
            "    v1.list_namespaced_secret(sys.argv[1])\n"
            "    print('secrets readable')\n"
            "except client.ApiException as e:\n"
            "    print('secrets forbidden', e.status)\n")
    body = c.V1Pod(
        metadata=c.V1ObjectMeta(name="incluster"),
        spec=c.V1PodSpec(restart_policy="Never", termination_grace_period_seconds=2,
                         containers=[c.V1Container(name="main", image=kube.image,
                                                   image_pull_policy="IfNotPresent",
                                                   command=["python3", "-c", code, namespace])]))
    kube.core.create_namespaced_pod(namespace, body)
    p = kube.wait_phase(namespace, "incluster", {"Succeeded", "Failed"})
    out = kube.logs(namespace, "incluster")
    assert p.status.phase == "Succeeded", out
    assert "'incluster'" in out
    assert "secrets forbidden 403" in out
