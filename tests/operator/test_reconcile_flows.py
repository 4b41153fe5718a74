"""Whole reconcile flows against an in-memory API and a fake coordinator (no server).

These drive ``reconcile`` exactly as the kopf handlers do and check pods, status and events:
deploy, failover, rescale via savepoint (and its rollback), suspend/resume, savepointNonce,
finish and failure.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes.client import ApiClient
from sj_bodies import streamjob_body

from streamjob_operator import kube, reconcile
from streamjob_operator.config import Settings
from streamjob_operator.coordinator import CoordinatorUnavailable, JobView

SETTINGS = Settings(api_url="http://fake:8081", rollout_timeout=60)


def merge(target: dict, patch: dict) -> dict:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class FakeCoordinator:
    def __init__(self) -> None:
        self.state = "RUNNING"
        self.attempt = 0
        self.parallelism: int | None = None
        self.reachable = True
        self.savepoints: list[bool] = []
        self.savepoint_fails = False

    def job(self) -> JobView:
        if not self.reachable:
            raise CoordinatorUnavailable("connection refused")
        return JobView(state=self.state, parallelism=self.parallelism, attempt=self.attempt,
                       restored_from=3, last_checkpoint={"id": 3, "completed_at": 1.7e9,
                                                         "duration_ms": 42.0, "size_bytes": 10})

    def savepoint(self, stop: bool, timeout: float) -> str:
        if self.savepoint_fails or not self.reachable:
            raise CoordinatorUnavailable("savepoint declined")
        self.savepoints.append(stop)
        return f"s3://ckpt/jobs/uid-1/savepoints/sp-{len(self.savepoints)}"


class FakeCluster:
    def __init__(self, body: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        self.body = body
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.others: list[str] = []
        self.coordinator = FakeCoordinator()
        monkeypatch.setattr(kube, "get_job", lambda ns, name: copy.deepcopy(self.body))
        monkeypatch.setattr(kube, "patch_status", self.patch_status)
        monkeypatch.setattr(kube, "list_pods", self.list_pods)
        monkeypatch.setattr(kube, "create", self.create)
        monkeypatch.setattr(kube, "delete_pod", self.delete_pod)
        monkeypatch.setattr(kube, "read_secret_key", lambda *a: "tok")
        monkeypatch.setattr(reconcile.Reconciler, "client",
                            lambda rec, pods=None: self.coordinator)

    # --- fake API
    def patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        merge(self.body.setdefault("status", {}), status)

    def list_pods(self, ns: str, job: str) -> list[Any]:
        from kubernetes.client import V1Pod
        return [ApiClient()._ApiClient__deserialize(copy.deepcopy(p), V1Pod)
                for p in self.pods.values()]

    def create(self, obj: Any) -> bool:
        data = ApiClient().sanitize_for_serialization(obj)
        if obj.kind != "Pod":
            self.others.append(f"{obj.kind}/{obj.metadata.name}")
            return True
        if data["metadata"]["name"] in self.pods:
            return False
        data["status"] = {"phase": "Pending"}
        self.pods[data["metadata"]["name"]] = data
        return True

    def delete_pod(self, ns: str, name: str, grace_seconds: int | None = None) -> bool:
        return self.pods.pop(name, None) is not None

    # --- what the kubelet would do
    def run_all(self) -> None:
        for pod in self.pods.values():
            if pod["status"]["phase"] == "Pending":
                pod["status"] = {"phase": "Running", "podIP": "10.0.0.1"}

    def terminate(self, name: str, exit_code: int, message: str = "") -> None:
        phase = "Succeeded" if exit_code == 0 else "Failed"
        self.pods[name]["status"] = {"phase": phase, "containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "message": message}}}]}

    # --- views
    @property
    def status(self) -> dict[str, Any]:
        return self.body.get("status") or {}

    def names(self, role: str | None = None) -> list[str]:
        return sorted(n for n, p in self.pods.items()
                      if role is None or p["metadata"]["labels"]["streamjob.dev/role"] == role)

    def args(self, name: str) -> list[str]:
        c = self.pods[name]["spec"]["containers"][0]
        return c["command"] + c["args"]

    def reconcile(self) -> None:
        reconcile.reconcile("jobs", "wc", SETTINGS,
                            emit=lambda body, t, reason, msg: self.events.append((t, reason, msg)))

    def update_spec(self, **spec: Any) -> None:
        self.body["spec"].update(spec)
        self.body["metadata"]["generation"] += 1


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    return FakeCluster(streamjob_body(), monkeypatch)


def running(cluster: FakeCluster) -> FakeCluster:
    cluster.reconcile()
    cluster.run_all()
    cluster.coordinator.parallelism = cluster.status["parallelism"]
    cluster.reconcile()
    assert cluster.status["phase"] == "Running"
    return cluster


def test_create_deploys_pods_support_objects_and_pending_status(cluster):
    cluster.reconcile()
    assert cluster.names() == ["wc-coordinator-0", "wc-worker-0-0", "wc-worker-1-0"]
    assert sorted(cluster.others) == ["NetworkPolicy/wc-coordinator", "Secret/wc-api-token",
                                      "Service/wc-coordinator"]
    status = cluster.status
    assert status["phase"] == "Pending" and status["parallelism"] == 2
    assert status["observedGeneration"] == 1
    assert status["selector"] == "streamjob.dev/job=wc,streamjob.dev/role=worker"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"


def test_reconciling_twice_changes_nothing(cluster):
    cluster.coordinator.reachable = False
    cluster.reconcile()
    before = (copy.deepcopy(cluster.pods), copy.deepcopy(cluster.status))
    cluster.reconcile()
    assert (cluster.pods, cluster.status) == before


def test_running_job_reports_ready_and_its_last_checkpoint(cluster):
    running(cluster)
    status = cluster.status
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "Progressing": "False", "Degraded": "False"}
    assert status["lastCheckpoint"] == {"id": 3, "completedAt": "2023-11-14T22:13:20Z",
                                        "durationMs": 42, "sizeBytes": 10}
    assert status["restoredFrom"] == 3


def test_killed_worker_is_replaced_and_the_job_recovers_when_the_coordinator_restored(cluster):
    running(cluster)
    cluster.terminate("wc-worker-1-0", 137)
    cluster.reconcile()
    assert "wc-worker-1-1" in cluster.pods
    assert cluster.status["phase"] == "Recovering" and cluster.status["restarts"] == 1
    assert "wc-worker-1-0 failed (exit 137)" in cluster.status["message"]
    assert ("Warning", "Recovering") == cluster.events[-1][:2]
    cluster.run_all()
    cluster.reconcile()                       # coordinator has not restored yet: still Recovering
    assert cluster.status["phase"] == "Recovering"
    cluster.coordinator.attempt = 1
    cluster.reconcile()
    assert cluster.status["phase"] == "Running"
    assert "restored from checkpoint 3" in cluster.status["message"]


def test_deleted_coordinator_is_recreated_and_counted(cluster):
    running(cluster)
    cluster.terminate("wc-coordinator-0", 1)
    cluster.reconcile()
    assert "wc-coordinator-1" in cluster.pods
    assert cluster.status["deployment"]["coordinatorCrashes"] == 1
    assert cluster.status["phase"] == "Recovering"


def test_coordinator_crashing_more_than_max_attempts_fails_the_job(cluster):
    cluster.body["spec"]["restartStrategy"] = {"maxAttempts": 1}
    running(cluster)
    cluster.terminate("wc-coordinator-0", 1)
    cluster.reconcile()
    cluster.run_all()
    cluster.terminate("wc-coordinator-1", 1)
    cluster.reconcile()
    assert cluster.status["phase"] == "Failed"
    assert "more than restartStrategy.maxAttempts=1" in cluster.status["message"]
    assert cluster.names("worker") == []


def test_rescale_takes_a_stop_savepoint_and_restarts_at_the_new_parallelism(cluster):
    running(cluster)
    cluster.update_spec(parallelism=3)
    cluster.reconcile()
    assert cluster.coordinator.savepoints == [True]
    assert cluster.status["phase"] == "Rescaling"
    assert cluster.names("worker") == ["wc-worker-0-1", "wc-worker-1-1", "wc-worker-2-0"]
    coord = cluster.args("wc-coordinator-1")
    assert coord[coord.index("--from-savepoint") + 1] == "s3://ckpt/jobs/uid-1/savepoints/sp-1"
    assert coord[coord.index("--job-id") + 1] == "uid-1-r2"   # no older checkpoint can win
    assert cluster.status["parallelism"] == 3
    cluster.run_all()
    cluster.coordinator.parallelism = 3
    cluster.reconcile()
    assert cluster.status["phase"] == "Running"
    assert cluster.status["message"] == ("rescaled 2 -> 3 from savepoint "
                                         "s3://ckpt/jobs/uid-1/savepoints/sp-1")
    assert "rescale" not in cluster.status


def test_a_failed_rescale_rolls_back_to_the_old_parallelism_from_the_same_savepoint(cluster):
    running(cluster)
    cluster.update_spec(parallelism=3)
    cluster.reconcile()
    cluster.run_all()
    cluster.terminate("wc-coordinator-1", 2, "cannot restore: key groups do not fit\n")
    cluster.reconcile()
    assert cluster.status["phase"] == "Rescaling"
    assert cluster.status["parallelism"] == 2 and cluster.status["failedRescale"] == 3
    coord = cluster.args("wc-coordinator-2")
    assert coord[coord.index("--from-savepoint") + 1] == "s3://ckpt/jobs/uid-1/savepoints/sp-1"
    assert cluster.names("worker") == ["wc-worker-0-2", "wc-worker-1-2"]
    cluster.run_all()
    cluster.coordinator.parallelism = 2
    cluster.reconcile()
    assert cluster.status["phase"] == "Running"
    assert cluster.status["message"].startswith("rescale to 3 failed; running at 2 again")
    cluster.reconcile()                                   # and it does not retry the same 3
    assert cluster.coordinator.savepoints == [True]


def test_rescale_waits_when_the_savepoint_fails(cluster):
    running(cluster)
    cluster.coordinator.savepoint_fails = True
    cluster.update_spec(parallelism=3)
    with pytest.raises(reconcile.Retry):
        cluster.reconcile()
    assert cluster.status["phase"] == "Running" and cluster.status["parallelism"] == 2
    assert "postponed" in cluster.status["message"]
    assert cluster.names("worker") == ["wc-worker-0-0", "wc-worker-1-0"]


def test_suspend_takes_a_savepoint_and_removes_pods_and_resume_restores_it(cluster):
    running(cluster)
    cluster.update_spec(state="suspended")
    cluster.reconcile()
    assert cluster.pods == {} and cluster.status["phase"] == "Suspended"
    assert cluster.status["lastSavepoint"]["path"].endswith("sp-1")
    cluster.update_spec(state="running")
    cluster.reconcile()
    assert cluster.status["phase"] == "Pending"
    coord = cluster.args("wc-coordinator-0")
    assert coord[coord.index("--from-savepoint") + 1].endswith("sp-1")


def test_savepoint_nonce_takes_one_savepoint_and_lists_it(cluster):
    running(cluster)
    cluster.update_spec(savepointNonce=1)
    cluster.reconcile()
    cluster.reconcile()
    assert cluster.coordinator.savepoints == [False]
    assert [s["nonce"] for s in cluster.status["savepoints"]] == [1]
    assert cluster.status["phase"] == "Running"


def test_restart_nonce_replaces_every_pod(cluster):
    running(cluster)
    cluster.update_spec(restartNonce=1)
    cluster.reconcile()
    assert cluster.names() == ["wc-coordinator-1", "wc-worker-0-1", "wc-worker-1-1"]
    assert cluster.status["phase"] == "Pending"


def test_finished_job_keeps_its_coordinator_pod_and_stops_workers(cluster):
    running(cluster)
    cluster.terminate("wc-coordinator-0", 0)
    cluster.reconcile()
    assert cluster.status["phase"] == "Finished"
    assert cluster.names() == ["wc-coordinator-0"]


def test_failed_job_reports_the_coordinators_reason(cluster):
    running(cluster)
    cluster.terminate("wc-coordinator-0", 2, "Traceback\nValueError: bad record 7\n")
    cluster.reconcile()
    assert cluster.status["phase"] == "Failed"
    assert cluster.status["message"] == "the job failed: ValueError: bad record 7"
    assert ("Warning", "Failed") == cluster.events[-1][:2]


def test_status_and_events_never_contain_the_api_token(cluster):
    running(cluster)
    cluster.terminate("wc-worker-0-0", 1)
    cluster.reconcile()
    assert "tok" not in str(cluster.status).replace("token", "")
    assert all("tok" not in msg.replace("token", "") for *_, msg in cluster.events)
