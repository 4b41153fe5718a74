"""desired_pods: which pods to create and delete, for every situation a job's pods can be in."""

from __future__ import annotations

from kubernetes import client as k8s

from streamjob_operator import names
from streamjob_operator.desired import (
    DeploymentSpec,
    Mode,
    PodInfo,
    PodToCreate,
    desired_pods,
    pod_info,
)

SVC = "wc-coordinator.jobs.svc"


def spec(revision=1, parallelism=2, mode=Mode.RUN, address="service"):
    return DeploymentSpec(revision=revision, parallelism=parallelism, mode=mode,
                          coordinator_address=address, service_address=SVC)


def coord(incarnation=0, revision=1, **kw):
    return PodInfo(name=f"wc-coordinator-{incarnation}", role="coordinator", subtask=None,
                   revision=revision, incarnation=incarnation, **{"phase": "Running", **kw})


def worker(i, incarnation=0, revision=1, **kw):
    return PodInfo(name=f"wc-worker-{i}-{incarnation}", role="worker", subtask=i,
                   revision=revision, incarnation=incarnation, **{"phase": "Running", **kw})


def healthy(p=2, revision=1):
    return [coord(revision=revision)] + [worker(i, revision=revision) for i in range(p)]


def test_a_new_job_gets_one_coordinator_and_one_worker_per_subtask():
    plan = desired_pods(spec(parallelism=3), [])
    assert plan.create == [PodToCreate("coordinator", None, 0),
                           PodToCreate("worker", 0, 0, SVC), PodToCreate("worker", 1, 0, SVC),
                           PodToCreate("worker", 2, 0, SVC)]
    assert plan.delete == [] and plan.replaced == [] and plan.outcome is None


def test_a_healthy_job_needs_nothing():
    assert desired_pods(spec(), healthy()).idle


def test_a_failed_worker_is_replaced_under_a_new_name_and_kept_for_its_logs():
    pods = healthy()
    pods[2] = worker(1, phase="Failed", exit_code=1, reason="Error")
    plan = desired_pods(spec(), pods)
    assert plan.create == [PodToCreate("worker", 1, 1, SVC)]
    assert plan.delete == []
    assert [p.name for p in plan.replaced] == ["wc-worker-1-0"]
    assert "exit 1" in plan.replaced[0].describe()


def test_a_deleted_worker_is_replaced_at_once_without_waiting_for_termination():
    pods = healthy()
    pods[1] = worker(0, deleting=True)
    plan = desired_pods(spec(), pods)
    assert plan.create == [PodToCreate("worker", 0, 1, SVC)]
    assert plan.replaced[0].describe() == "pod wc-worker-0-0 was deleted"
    assert plan.delete == []                       # already terminating


def test_a_worker_gone_from_the_api_is_recreated_and_reported():
    plan = desired_pods(spec(), healthy()[:2])
    assert plan.create == [PodToCreate("worker", 1, 0, SVC)]
    assert plan.vanished == ["the pod of worker 1 disappeared"]
    assert desired_pods(spec(), []).vanished == []          # a first rollout is no loss


def test_only_the_latest_failed_pod_of_a_slot_is_kept():
    pods = healthy()[:2] + [worker(1, 0, phase="Failed"), worker(1, 1, phase="Failed")]
    plan = desired_pods(spec(), pods)
    assert plan.delete == ["wc-worker-1-0"]
    assert plan.create == [PodToCreate("worker", 1, 2, SVC)]


def test_duplicate_live_pods_of_one_slot_keep_the_newest():
    pods = healthy() + [worker(1, 1)]
    plan = desired_pods(spec(), pods)
    assert plan.delete == ["wc-worker-1-0"] and plan.create == []


def test_a_new_revision_replaces_every_pod_with_names_that_do_not_collide():
    old = healthy(p=2, revision=1)
    plan = desired_pods(spec(revision=2, parallelism=3), old)
    assert plan.delete == sorted(p.name for p in old)
    assert plan.create == [PodToCreate("coordinator", None, 1),
                           PodToCreate("worker", 0, 1, SVC), PodToCreate("worker", 1, 1, SVC),
                           PodToCreate("worker", 2, 0, SVC)]
    assert plan.replaced == []                     # a rollout is not a failure


def test_scaling_down_deletes_the_surplus_workers():
    plan = desired_pods(spec(parallelism=1), healthy(p=3))
    assert plan.delete == ["wc-worker-1-0", "wc-worker-2-0"] and plan.create == []


def test_coordinator_exit_0_means_finished_and_live_workers_go():
    pods = [coord(phase="Succeeded", exit_code=0), worker(0), worker(1, phase="Succeeded",
                                                                   exit_code=0)]
    plan = desired_pods(spec(), pods)
    assert plan.outcome == "finished"
    assert plan.create == [] and plan.delete == ["wc-worker-0-0"]


def test_coordinator_exit_2_means_failed_with_the_reason_from_stderr():
    pods = [coord(phase="Failed", exit_code=2,
                  message="Traceback ...\nstreamjob: pipeline raised KeyError: 'x'\n")] + \
        healthy()[1:]
    plan = desired_pods(spec(), pods)
    assert plan.outcome == "failed"
    assert plan.outcome_message == "streamjob: pipeline raised KeyError: 'x'"
    assert plan.create == [] and plan.delete == ["wc-worker-0-0", "wc-worker-1-0"]


def test_a_crashed_coordinator_is_recreated():
    pods = [coord(phase="Failed", exit_code=137, reason="OOMKilled")] + healthy()[1:]
    plan = desired_pods(spec(), pods)
    assert plan.coordinator_crashed and plan.outcome is None
    assert plan.create == [PodToCreate("coordinator", None, 1)]


def test_a_worker_that_finished_is_not_replaced():
    pods = healthy()
    pods[1] = worker(0, phase="Succeeded", exit_code=0)
    assert desired_pods(spec(), pods).idle


def test_halt_keeps_terminated_pods_for_logs_and_removes_live_ones():
    pods = [coord(phase="Failed", exit_code=2), worker(0), worker(1, phase="Failed")]
    plan = desired_pods(spec(mode=Mode.HALT), pods)
    assert plan.delete == ["wc-worker-0-0"] and plan.create == []


def test_suspended_jobs_have_no_pods():
    plan = desired_pods(spec(mode=Mode.NONE), healthy())
    assert plan.delete == sorted(p.name for p in healthy()) and plan.create == []


def test_pod_ip_mode_creates_workers_once_the_coordinator_has_an_ip():
    plan = desired_pods(spec(address="pod-ip"), [coord(phase="Pending")])
    assert plan.create == [] and plan.waiting_for_coordinator
    plan = desired_pods(spec(address="pod-ip"), [coord(ip="10.0.0.7")])
    assert plan.create == [PodToCreate("worker", 0, 0, "10.0.0.7"),
                           PodToCreate("worker", 1, 0, "10.0.0.7")]


def test_pod_ip_mode_replaces_workers_of_a_previous_coordinator():
    pods = [coord(1, ip="10.0.0.8"), worker(0, coordinator_address="10.0.0.7"),
            worker(1, coordinator_address="10.0.0.8")]
    plan = desired_pods(spec(address="pod-ip"), pods)
    assert plan.delete == ["wc-worker-0-0"]


def test_executing_a_plan_converges_to_an_idle_plan():
    pods = [coord(phase="Failed", exit_code=1), worker(0, deleting=True), worker(1)]
    plan = desired_pods(spec(parallelism=3), pods)
    after = [p for p in pods if p.name not in plan.delete] + [
        (coord(c.incarnation) if c.role == "coordinator" else worker(c.subtask, c.incarnation))
        for c in plan.create]
    assert desired_pods(spec(parallelism=3), after).idle
    assert desired_pods(spec(parallelism=3), pods) == plan      # and it is deterministic


def test_pod_info_reads_a_v1pod_and_a_dict_alike():
    labels = names.pod_labels("wc", "worker", 3, 2, 5)
    v1 = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="wc-worker-3-5", labels=labels,
                                  annotations={names.ANNOTATION_COORDINATOR: SVC}),
        status=k8s.V1PodStatus(phase="Failed", pod_ip="10.1.1.1", container_statuses=[
            k8s.V1ContainerStatus(name="worker", image="i", image_id="", ready=False,
                                  restart_count=0, state=k8s.V1ContainerState(
                                      terminated=k8s.V1ContainerStateTerminated(
                                          exit_code=137, reason="OOMKilled")))]))
    as_dict = k8s.ApiClient().sanitize_for_serialization(v1)
    for pod in (v1, as_dict):
        info = pod_info(pod)
        assert info == PodInfo(name="wc-worker-3-5", role="worker", subtask=3, revision=2,
                               incarnation=5, phase="Failed", exit_code=137, reason="OOMKilled",
                               ip="10.1.1.1", coordinator_address=SVC)
    assert pod_info({"metadata": {"name": "x", "labels": {}}}) is None


def test_pod_info_sees_an_unschedulable_pod():
    pod = {"metadata": {"name": "wc-worker-0-0", "labels": names.pod_labels("wc", "worker", 0,
                                                                             1, 0)},
           "status": {"phase": "Pending", "conditions": [
               {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient memory."}]}}
    info = pod_info(pod)
    assert info.unschedulable.startswith("0/1 nodes")
    plan = desired_pods(spec(parallelism=1), [coord(), info])
    assert plan.unschedulable == ["wc-worker-0-0: 0/1 nodes are available: 1 Insufficient "
                                  "memory."]
