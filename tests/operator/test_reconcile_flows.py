"""Whole reconcile flows against an in-memory API and a fake coordinator (no server).

These drive ``reconcile`` exactly as the kopf handlers do and check pods, status and events:
deploy, failover, rescale via savepoint (and its rollback), suspend/resume, savepointNonce,
finish and failure.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import pytest
from kubernetes.client import ApiClient
from sj_bodies import streamjob_body

from streamjob_operator import kube, reconcile
from streamjob_operator.background import REQUESTS
from streamjob_operator.config import Settings
from streamjob_operator.coordinator import CoordinatorRefused, CoordinatorUnavailable, JobView

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


class OperatorKilled(BaseException):
    """The operator process dies here (nothing after this line of the operator runs)."""


class FakeCoordinator:
    def __init__(self) -> None:
        self.state = "RUNNING"
        self.attempt = 0
        self.parallelism: int | None = None
        self.reachable = True
        self.savepoints: list[bool] = []
        self.completed: list[dict[str, Any]] = []   # the savepoint list of GET /api/v1/job
        self.savepoint_fails = False
        #: the operator dies while it waits for the answer, after the savepoint completed
        self.kill_operator_during_savepoint = False
        self.on_stop: Any = None                   # what the coordinator does after a stop
        self.killed: Any = lambda: None
        self.busy = 0.5                            # GET /api/v1/tasks: the keyed task's busy
        self.checkpointing = False

    def job(self) -> JobView:
        if not self.reachable:
            raise CoordinatorUnavailable("connection refused")
        return JobView(state=self.state, parallelism=self.parallelism, attempt=self.attempt,
                       restored_from=3, last_checkpoint={"id": 3, "completed_at": 1.7e9,
                                                         "duration_ms": 42.0, "size_bytes": 10},
                       savepoints=tuple(self.completed))

    def tasks(self, window: float) -> dict[str, Any]:
        """A job of two tasks at its parallelism, 10k records/s, the keyed one ``busy``."""
        if not self.reachable:
            raise CoordinatorUnavailable("connection refused")
        p = self.parallelism or 1

        def task(tid: str, inputs: list[str], busy: float) -> dict[str, Any]:
            subs = [{"index": i, "records_in_per_s": 10_000 / p, "records_out_per_s": 10_000 / p,
                     "busy_ratio": busy, "backpressured_ratio": 0.0, "idle_ratio": 1 - busy,
                     "backlog": 0 if not inputs else None,
                     "backlog_growth_per_s": 0.0 if not inputs else None} for i in range(p)]
            return {"id": tid, "name": tid, "inputs": inputs, "parallelism": p,
                    "busy_ratio": busy, "backlog": 0 if not inputs else None,
                    "backlog_growth_per_s": 0.0 if not inputs else None, "subtasks": subs}

        return {"window_s": window, "state": self.state, "restoring": False,
                "checkpoint_in_progress": self.checkpointing,
                "tasks": [task("t0", [], 0.01), task("t1", ["t0"], self.busy)]}

    def savepoint(self, stop: bool, timeout: float) -> str:
        if not self.reachable:
            raise CoordinatorUnavailable("connection refused")
        if self.savepoint_fails:
            raise CoordinatorRefused("HTTP 409 (savepoint declined)", 409, "savepoint declined")
        self.savepoints.append(stop)
        uri = f"s3://ckpt/jobs/uid-1/savepoints/sp-{len(self.savepoints)}"
        self.completed.append({"id": len(self.savepoints), "path": uri,
                               "completed_at": time.time(), "size_bytes": 1})
        if stop:
            self.state = "STOPPED"
            if self.on_stop:
                self.on_stop()
        if self.kill_operator_during_savepoint:
            self.kill_operator_during_savepoint = False
            self.killed()
            raise OperatorKilled
        return uri


class FakeCluster:
    def __init__(self, body: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        self.body = body
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.others: list[str] = []
        self.coordinator = FakeCoordinator()
        self.coordinator.killed = lambda: setattr(self, "dead", True)
        self.body["metadata"].setdefault("resourceVersion", "1")
        self.conflicts = 0             # the next n status writes meet 409 Conflict
        self.kill_at_step: str | None = None   # the operator dies right after writing this step
        self.dead = False              # the operator process is dead: it writes nothing more
        monkeypatch.setattr(REQUESTS, "inline", True)
        monkeypatch.setattr(kube, "get_job", lambda ns, name: copy.deepcopy(self.body))
        monkeypatch.setattr(kube, "patch_status", self.patch_status)
        monkeypatch.setattr(kube, "list_pods", self.list_pods)
        monkeypatch.setattr(kube, "create", self.create)
        monkeypatch.setattr(kube, "delete_pod", self.delete_pod)
        monkeypatch.setattr(kube, "read_secret_key", lambda *a: "tok")
        monkeypatch.setattr(reconcile.Reconciler, "client",
                            lambda rec, pods=None: self.coordinator)

    # --- fake API
    def patch_status(self, ns: str, name: str, status: dict[str, Any],
                     resource_version: str | None = None) -> str:
        meta = self.body["metadata"]
        if self.dead:
            raise OperatorKilled
        if self.conflicts or (resource_version and resource_version != meta["resourceVersion"]):
            self.conflicts = max(0, self.conflicts - 1)
            self.bump()
            raise kube.Conflict("changed")
        merge(self.body.setdefault("status", {}), status)
        version = self.bump()
        if self.kill_at_step and (status.get("operation") or {}).get("step") == self.kill_at_step:
            self.kill_at_step = None
            self.dead = True
            raise OperatorKilled
        return version

    def bump(self) -> str:
        meta = self.body["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return meta["resourceVersion"]

    def list_pods(self, ns: str, job: str) -> list[Any]:
        from kubernetes.client import V1Pod
        return [ApiClient()._ApiClient__deserialize(copy.deepcopy(p), V1Pod)
                for p in self.pods.values()]

    def create(self, obj: Any) -> bool:
        if self.dead:
            raise OperatorKilled
        data = ApiClient().sanitize_for_serialization(obj)
        if obj.kind != "Pod":
            self.others.append(f"{obj.kind}/{obj.metadata.name}")
            return True
        if data["metadata"]["name"] in self.pods:
            return False
        data["status"] = {"phase": "Pending"}
        self.pods[data["metadata"]["name"]] = data
        if data["metadata"]["labels"]["streamjob.dev/role"] == "coordinator" and \
                self.coordinator.state == "STOPPED":       # a new coordinator: a new job view
            self.coordinator.state, self.coordinator.reachable = "RUNNING", True
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

    def reconcile_until_killed(self) -> None:
        with pytest.raises(OperatorKilled):
            self.reconcile()
        self.restart_operator()

    def restart_operator(self) -> None:
        """A new operator process: no memory but what the cluster holds."""
        REQUESTS.forget("jobs/wc")
        self.dead = False
        reconcile._locks.clear()
        reconcile._tokens.clear()

    def exit_coordinator(self) -> None:
        """The coordinator stopped with its savepoint: it exits 0, the workers follow."""
        for name in self.names():
            self.terminate(name, 0)
        self.coordinator.reachable = False

    def warnings(self) -> list[str]:
        return [reason for t, reason, _ in self.events if t == "Warning"]

    def update_spec(self, **spec: Any) -> None:
        self.body["spec"].update(spec)
        self.body["metadata"]["generation"] += 1
        self.bump()


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
    assert status["dashboard"] == "streamjob ui --kube jobs/wc"
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
    assert "operation" not in cluster.status


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
    cluster.reconcile()
    assert cluster.status["phase"] == "Running" and cluster.status["parallelism"] == 2
    # the API's refusal reason ({"error": ...}) reaches status and the event
    assert "postponed" in cluster.status["message"]
    assert "savepoint declined" in cluster.status["message"]
    assert "RescalePostponed" in cluster.warnings()
    assert cluster.names("worker") == ["wc-worker-0-0", "wc-worker-1-0"]
    assert "operation" not in cluster.status and cluster.status["postponedUntil"]
    cluster.reconcile()                                   # postponed: not asked again at once
    assert cluster.coordinator.savepoints == []


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


# ---------------------------------------------------------------- status writes race


def test_a_status_write_that_meets_a_conflict_is_read_again_and_decided_again(cluster):
    cluster.reconcile()
    cluster.run_all()
    cluster.conflicts = 2                     # someone else wrote the job twice meanwhile
    cluster.reconcile()
    assert cluster.status["phase"] == "Running"


def test_a_stale_status_is_never_written_over_a_newer_one(cluster, monkeypatch):
    running(cluster)
    stale = copy.deepcopy(cluster.body)       # read by a writer that then lost the race
    cluster.update_spec(parallelism=3)
    cluster.reconcile()
    assert cluster.status["phase"] == "Rescaling"
    with pytest.raises(kube.Conflict):
        kube.patch_status("jobs", "wc", {"phase": "Running"},
                          stale["metadata"]["resourceVersion"])
    assert cluster.status["phase"] == "Rescaling"


# ---------------------------------------------------------------- the operator restarts


def test_restart_while_the_stop_savepoint_was_answered_and_the_coordinator_exited(cluster):
    """The reported bug: the coordinator exited 0 after the stop-savepoint, the answer with
    its path died with the operator. Before: Finished at 2, no savepoint. Now: back at 2 from
    the latest checkpoint with a Warning, then the rescale is tried again and reaches 3."""
    running(cluster)
    cluster.coordinator.kill_operator_during_savepoint = True
    cluster.coordinator.on_stop = cluster.exit_coordinator
    cluster.update_spec(parallelism=3)
    cluster.reconcile_until_killed()
    assert cluster.status["operation"]["step"] == "savepoint-requested"
    cluster.reconcile()
    assert cluster.status["phase"] == "Rescaling" and cluster.status["phase"] != "Finished"
    assert cluster.status["parallelism"] == 2
    assert cluster.status["operation"]["step"] == "rolling-back"
    assert "RescaleRolledBack" in cluster.warnings()
    coord = cluster.args("wc-coordinator-1")
    assert "--from-savepoint" not in coord                # latest checkpoint of the same id
    assert coord[coord.index("--job-id") + 1] == "uid-1"
    cluster.run_all()
    cluster.coordinator.reachable, cluster.coordinator.state = True, "RUNNING"
    cluster.coordinator.on_stop = None
    cluster.reconcile()
    assert cluster.status["phase"] == "Running" and cluster.status["parallelism"] == 2
    assert "running at 2 again from the latest checkpoint" in cluster.status["message"]
    cluster.reconcile()                                   # the rescale is tried again
    cluster.run_all()
    cluster.coordinator.state, cluster.coordinator.parallelism = "RUNNING", 3
    cluster.reconcile()
    assert cluster.status["phase"] == "Running" and cluster.status["parallelism"] == 3


def test_restart_while_the_stop_savepoint_was_answered_and_the_coordinator_is_still_up(
        cluster):
    """Before: "rescaled 2 -> 3 from savepoint None" while the job ran at 2. Now the restarted
    operator finds the savepoint in the coordinator's list and goes on to 3 from it."""
    running(cluster)
    cluster.coordinator.kill_operator_during_savepoint = True
    cluster.update_spec(parallelism=3)
    cluster.reconcile_until_killed()
    cluster.reconcile()
    assert cluster.status["operation"]["step"] == "pods-started"
    assert cluster.status["operation"]["savepoint"].endswith("sp-1")
    assert cluster.status["parallelism"] == 3
    coord = cluster.args("wc-coordinator-1")
    assert coord[coord.index("--from-savepoint") + 1].endswith("sp-1")
    cluster.run_all()
    cluster.coordinator.state, cluster.coordinator.parallelism = "RUNNING", 3
    cluster.reconcile()
    assert cluster.status["phase"] == "Running"
    assert cluster.status["message"].endswith("from savepoint s3://ckpt/jobs/uid-1/savepoints/sp-1")
    assert cluster.coordinator.savepoints == [True]       # one savepoint, not two


@pytest.mark.parametrize("step", ["savepoint-requested", "savepoint-taken", "pods-started"])
def test_restart_at_each_step_of_a_rescale_ends_at_the_new_parallelism(cluster, step):
    running(cluster)
    cluster.kill_at_step = step
    cluster.update_spec(parallelism=3)
    cluster.reconcile_until_killed()
    assert cluster.status["operation"]["step"] == step
    cluster.reconcile()
    cluster.run_all()
    cluster.coordinator.state, cluster.coordinator.parallelism = "RUNNING", 3
    cluster.reconcile()
    assert cluster.status["phase"] == "Running" and cluster.status["parallelism"] == 3
    assert cluster.names("worker") == ["wc-worker-0-1", "wc-worker-1-1", "wc-worker-2-0"]
    assert cluster.coordinator.savepoints == [True]
    assert "operation" not in cluster.status


def test_restart_while_rolling_back_ends_at_the_old_parallelism_with_a_warning(cluster):
    running(cluster)
    cluster.update_spec(parallelism=3)
    cluster.reconcile()
    cluster.run_all()
    cluster.terminate("wc-coordinator-1", 2, "cannot restore\n")
    cluster.kill_at_step = "rolling-back"
    cluster.reconcile_until_killed()
    cluster.reconcile()
    cluster.run_all()
    cluster.coordinator.state, cluster.coordinator.parallelism = "RUNNING", 2
    cluster.reconcile()
    assert cluster.status["phase"] == "Running" and cluster.status["parallelism"] == 2
    assert "RescaleFailed" in cluster.warnings()
    assert cluster.status["failedRescale"] == 3


@pytest.mark.parametrize("step", ["savepoint-requested", "savepoint-taken", "pods-stopped"])
def test_restart_at_each_step_of_a_suspend_ends_suspended_with_the_savepoint(cluster, step):
    running(cluster)
    cluster.coordinator.on_stop = cluster.exit_coordinator
    cluster.kill_at_step = step
    cluster.update_spec(state="suspended")
    cluster.reconcile_until_killed()
    cluster.reconcile()
    assert cluster.status["phase"] == "Suspended" and cluster.pods == {}
    assert cluster.status["resumeFrom"].endswith("sp-1")
    assert cluster.coordinator.savepoints == [True]


def test_restart_while_a_suspend_savepoint_was_answered_and_lost_suspends_with_a_warning(
        cluster):
    running(cluster)
    cluster.coordinator.kill_operator_during_savepoint = True
    cluster.coordinator.on_stop = cluster.exit_coordinator
    cluster.update_spec(state="suspended")
    cluster.reconcile_until_killed()
    cluster.reconcile()
    assert cluster.status["phase"] == "Suspended" and cluster.pods == {}
    assert "SuspendWithoutSavepoint" in cluster.warnings()
    assert cluster.status.get("resumeFrom") is None


@pytest.mark.parametrize("step", ["savepoint-requested", "savepoint-taken", "pods-started"])
def test_restart_at_each_step_of_an_upgrade_ends_upgraded_from_the_savepoint(cluster, step):
    running(cluster)
    cluster.coordinator.on_stop = cluster.exit_coordinator
    cluster.kill_at_step = step
    cluster.update_spec(args={"words": 7})
    cluster.reconcile_until_killed()
    cluster.reconcile()
    assert cluster.status["deployment"]["revision"] == 2
    coord = cluster.args("wc-coordinator-1")
    assert coord[coord.index("--from-savepoint") + 1].endswith("sp-1")
    cluster.run_all()
    cluster.coordinator.reachable, cluster.coordinator.state = True, "RUNNING"
    cluster.reconcile()
    assert cluster.status["phase"] == "Running" and "operation" not in cluster.status
    assert cluster.coordinator.savepoints == [True]


def test_restart_while_an_upgrade_savepoint_was_answered_and_lost_upgrades_with_a_warning(
        cluster):
    running(cluster)
    cluster.coordinator.kill_operator_during_savepoint = True
    cluster.coordinator.on_stop = cluster.exit_coordinator
    cluster.update_spec(args={"words": 7})
    cluster.reconcile_until_killed()
    cluster.reconcile()
    assert "UpgradeWithoutSavepoint" in cluster.warnings()
    coord = cluster.args("wc-coordinator-1")
    assert "--from-savepoint" not in coord and coord[coord.index("--job-id") + 1] == "uid-1"


def finalize(cluster: FakeCluster) -> bool:
    return reconcile.finalize("jobs", "wc", SETTINGS, emit=lambda body, t, reason, msg:
                              cluster.events.append((t, reason, msg)))


def test_restart_during_the_final_savepoint_finds_it_and_then_deletes(cluster):
    running(cluster)
    cluster.body["metadata"]["annotations"] = {"streamjob.dev/savepoint-on-delete": "true"}
    cluster.body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    cluster.coordinator.kill_operator_during_savepoint = True
    with pytest.raises(OperatorKilled):
        finalize(cluster)
    cluster.restart_operator()
    assert cluster.status["operation"]["type"] == "savepoint-on-delete"
    assert finalize(cluster) is True
    assert ("Normal", "FinalSavepoint") in [e[:2] for e in cluster.events]
    assert cluster.status["lastSavepoint"]["path"].endswith("sp-1")
    assert cluster.pods == {} and cluster.coordinator.savepoints == [True]


def test_restart_during_the_final_savepoint_whose_answer_was_lost_warns_and_deletes(cluster):
    running(cluster)
    cluster.body["metadata"]["annotations"] = {"streamjob.dev/savepoint-on-delete": "true"}
    cluster.body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    cluster.coordinator.kill_operator_during_savepoint = True
    cluster.coordinator.on_stop = cluster.exit_coordinator
    with pytest.raises(OperatorKilled):
        finalize(cluster)
    cluster.restart_operator()
    assert finalize(cluster) is True
    assert "FinalSavepointFailed" in cluster.warnings()
    assert cluster.pods == {}


def test_a_savepoint_that_never_answers_times_out_and_rolls_back(cluster, monkeypatch):
    running(cluster)
    monkeypatch.setattr(REQUESTS, "inline", False)
    cluster.coordinator.savepoint = lambda stop, timeout: time.sleep(3600)  # hangs
    cluster.update_spec(parallelism=3)
    cluster.reconcile()                                    # returns at once: asked in background
    assert cluster.status["operation"]["step"] == "savepoint-requested"
    cluster.status["operation"]["stepSince"] -= SETTINGS.savepoint_timeout + 31   # time passes
    cluster.reconcile()
    assert cluster.status["operation"]["step"] == "rolling-back"
    assert "RescaleRolledBack" in cluster.warnings()


def test_a_rescale_whose_savepoint_hangs_returns_at_once_and_goes_on_when_answered(
        cluster, monkeypatch):
    """No reconcile waits for a savepoint: kopf's threads stay free for every other job."""
    running(cluster)
    monkeypatch.setattr(REQUESTS, "inline", False)
    answer = threading.Event()
    real = cluster.coordinator.savepoint

    def slow(stop: bool, timeout: float) -> str:
        answer.wait(10)
        return real(stop, timeout)

    cluster.coordinator.savepoint = slow
    cluster.update_spec(parallelism=3)
    start = time.monotonic()
    cluster.reconcile()
    cluster.reconcile()                                   # the timer: returns at once too
    assert time.monotonic() - start < 1.0
    assert cluster.status["operation"]["step"] == "savepoint-requested"
    answer.set()                                          # the answer triggers a reconcile
    deadline = time.monotonic() + 10
    while cluster.status.get("operation", {}).get("step") != "pods-started" and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.status["operation"]["step"] == "pods-started"
    assert cluster.status["parallelism"] == 3


def test_suspending_a_job_whose_coordinator_never_ran_does_not_wait_for_a_savepoint(cluster):
    cluster.reconcile()                                   # pods exist, none runs yet
    cluster.update_spec(state="suspended")
    cluster.reconcile()
    assert cluster.status["phase"] == "Suspended" and cluster.pods == {}
    assert cluster.coordinator.savepoints == []


def test_a_conflict_on_the_write_after_the_savepoint_answer_does_not_ask_twice(cluster):
    """The answer is kept until the next step is written: a 409 on that write re-reads and
    finds it again, even when the coordinator does not list its savepoints."""
    running(cluster)
    cluster.coordinator.completed = _NoList()
    real = cluster.patch_status

    def conflict_once_on_taken(ns: str, name: str, status: dict, rv: str | None = None) -> str:
        if (status.get("operation") or {}).get("step") == "savepoint-taken" and \
                not getattr(cluster, "_conflicted", False):
            cluster._conflicted = True
            cluster.bump()
            raise kube.Conflict("changed")
        return real(ns, name, status, rv)

    import pytest as _pytest
    mp = _pytest.MonkeyPatch()
    mp.setattr(kube, "patch_status", conflict_once_on_taken)
    try:
        cluster.update_spec(parallelism=3)
        cluster.reconcile()
    finally:
        mp.undo()
    assert cluster._conflicted
    assert cluster.coordinator.savepoints == [True]
    assert cluster.status["operation"]["step"] == "pods-started"


class _NoList(list):
    """A coordinator that keeps no savepoint list (older API)."""

    def append(self, item: object) -> None:
        pass


def test_a_savepoint_request_without_an_answer_is_asked_again_never_abandoned(cluster):
    """No answer (HTTP timeout) while the job runs on: a stop may still be pending, so the
    rescale is not dropped (a late stop would then look like a finished job); it asks again."""
    running(cluster)
    real = cluster.coordinator.savepoint
    calls = []

    def first_times_out(stop: bool, timeout: float) -> str:
        calls.append(stop)
        if len(calls) == 1:
            raise CoordinatorUnavailable("timed out")
        return real(stop, timeout)

    cluster.coordinator.savepoint = first_times_out
    cluster.update_spec(parallelism=3)
    cluster.reconcile()
    assert "RescalePostponed" not in cluster.warnings()
    assert cluster.status["operation"]["step"] == "pods-started"
    assert cluster.status["operation"]["attempt"] == 2 and len(calls) == 2


def test_a_refusal_after_a_restart_waits_for_the_earlier_request(cluster):
    running(cluster)
    cluster.coordinator.kill_operator_during_savepoint = True
    cluster.update_spec(parallelism=3)
    cluster.reconcile_until_killed()
    cluster.coordinator.completed.clear()                 # as if it were still in progress
    cluster.coordinator.state = "RUNNING"
    cluster.coordinator.savepoint_fails = True            # the second request is refused
    cluster.reconcile()
    assert cluster.status["operation"]["step"] == "savepoint-requested"   # not abandoned
    assert cluster.status["phase"] == "Rescaling"


AUTOSCALER = {"enabled": True, "minParallelism": 1, "maxParallelism": 8,
              "targetUtilization": 0.7, "metricsWindow": "1s", "stabilization": "0s",
              "scaleUpCooldown": "0s", "scaleDownInterval": "0s", "catchUpDuration": "60s",
              "maxScaleDownFactor": 0.5}


def long_running(cluster: FakeCluster) -> None:
    """The current revision started long ago: no cooldown left."""
    cluster.body["status"]["deployment"]["startedAt"] = time.time() - 3600


def test_autoscaler_scales_a_busy_job_through_the_savepoint_rescale_and_reports(cluster):
    cluster.update_spec(parallelism=1, autoscaler=AUTOSCALER)
    running(cluster)
    long_running(cluster)
    cluster.coordinator.busy = 0.99   # 10k/s at 1 subtask busy 0.99 (+ 0.01): 1.0 / 0.7 = 1.43 -> 2
    cluster.reconcile()
    auto = cluster.status["autoscaler"]
    assert auto["target"] == 2 and auto["recommended"] == 2
    assert auto["lastScale"]["reason"].startswith("task t1 busy 0.99 at 1 subtask; needs")
    assert auto["lastDecision"]["metrics"]["t1"]["trueRate"] == pytest.approx(10_101, abs=1)
    (autoscaled,) = [m for _, r, m in cluster.events if r == "Autoscaled"]
    assert autoscaled.startswith("parallelism 1 -> 2: task t1 busy 0.99")
    # ... rolled out as a rescale (stop-savepoint, new pods) in the same reconcile
    assert cluster.coordinator.savepoints == [True]
    assert cluster.status["phase"] == "Rescaling" and cluster.status["parallelism"] == 2
    cluster.run_all()
    cluster.coordinator.parallelism = 2
    cluster.coordinator.busy = 0.25
    cluster.reconcile()
    assert cluster.status["phase"] == "Running"
    assert cluster.status["message"].startswith("rescaled 1 -> 2")
    # right after the rescale the cooldown holds any new decision
    cluster.coordinator.busy = 0.05
    cluster.reconcile()
    assert cluster.status["autoscaler"]["lastDecision"]["action"] in ("hold", "none")
    assert cluster.status["parallelism"] == 2


def test_autoscaler_waits_during_a_checkpoint_and_never_scales_beyond_its_bounds(cluster):
    cluster.update_spec(parallelism=1, autoscaler={**AUTOSCALER, "maxParallelism": 2})
    running(cluster)
    long_running(cluster)
    cluster.coordinator.busy = 0.99 * 3   # would need 5 (a ratio above 1 is clipped: ok)
    cluster.coordinator.checkpointing = True
    cluster.reconcile()
    assert cluster.status["autoscaler"]["lastDecision"]["action"] == "wait"
    assert cluster.status["parallelism"] == 1 and cluster.coordinator.savepoints == []
    cluster.coordinator.checkpointing = False
    cluster.reconcile()
    assert cluster.status["autoscaler"]["target"] == 2


def test_autoscaler_decides_anyway_after_checkpoints_back_to_back(cluster):
    """A job that cannot keep up checkpoints back to back (barriers wait behind its backlog):
    the operator carries since when every poll found a checkpoint in progress from one poll
    to the next, and decides once that lasts max(stabilization, metricsWindow)."""
    cluster.update_spec(parallelism=1, autoscaler=AUTOSCALER)
    running(cluster)
    long_running(cluster)
    cluster.coordinator.busy = 0.99
    cluster.coordinator.checkpointing = True
    cluster.reconcile()
    auto = cluster.body["status"]["autoscaler"]
    assert auto["lastDecision"]["action"] == "wait"
    assert auto["memory"]["checkpointingSince"] is not None
    auto["memory"]["checkpointingSince"] -= 10     # polls with a checkpoint in progress for 10 s
    cluster.reconcile()
    auto = cluster.body["status"]["autoscaler"]
    assert auto["lastScale"]["reason"].endswith("decided anyway) → 2"), auto["lastScale"]
    assert auto["target"] == 2 and cluster.status["parallelism"] == 2


def test_turning_the_autoscaler_off_returns_to_spec_parallelism(cluster):
    cluster.update_spec(parallelism=1, autoscaler=AUTOSCALER)
    running(cluster)
    long_running(cluster)
    cluster.coordinator.busy = 0.99
    cluster.reconcile()
    cluster.run_all()
    cluster.coordinator.parallelism = 2
    cluster.reconcile()
    assert cluster.status["parallelism"] == 2
    cluster.update_spec(autoscaler={**AUTOSCALER, "enabled": False})
    cluster.reconcile()
    assert cluster.status["phase"] == "Rescaling" and cluster.status["parallelism"] == 1
    assert "autoscaler" not in cluster.status


def test_a_state_backend_switch_upgrades_through_a_savepoint_even_in_last_state_mode(
        monkeypatch):
    cluster = running(FakeCluster(streamjob_body(upgradeMode="last-state"), monkeypatch))
    assert cluster.status["deployment"]["stateBackend"] == "memory"
    cluster.coordinator.on_stop = cluster.exit_coordinator
    cluster.update_spec(stateBackend={"type": "rocksdb", "rocksdb": {"blockCacheMB": 64}})
    for _ in range(3):
        cluster.reconcile()
    assert cluster.coordinator.savepoints == [True]          # a stop-savepoint was taken
    dep = cluster.status["deployment"]
    assert dep["revision"] == 2 and dep["stateBackend"] == "rocksdb"
    coord = cluster.args("wc-coordinator-1")
    assert coord[coord.index("--from-savepoint") + 1].endswith("sp-1")
    worker = cluster.pods["wc-worker-0-1"]
    assert {v["name"] for v in worker["spec"]["volumes"]} == {"tmp", "state"}
    # a later last-state upgrade on the same backend restores the latest checkpoint
    cluster.run_all()
    cluster.coordinator.reachable, cluster.coordinator.state = True, "RUNNING"
    cluster.reconcile()
    assert cluster.status["phase"] == "Running"
    cluster.update_spec(args={"words": 7})
    cluster.reconcile()
    assert cluster.coordinator.savepoints == [True]
    assert cluster.status["deployment"]["revision"] == 3
