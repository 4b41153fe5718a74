"""Which pods a job should have, given the pods it has: the pure core of failover.

``desired_pods(spec, existing)`` compares the rollout the operator wants (revision,
parallelism, whether pods should run at all) with the pods that exist, and returns a plan:
pods to create (with a fresh incarnation number, so a replacement never waits for the name of
a pod that is still terminating), pods to delete, and what it saw (lost pods, the coordinator's
exit). Running it twice on the same input gives the same plan; running the plan converges.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamjob_operator import names

#: coordinator exit codes (the runtime's contract, from ``streamjob.names``)
EXIT_FINISHED = names.EXIT_FINISHED
EXIT_FAILED = names.EXIT_FAILED


class Mode(enum.Enum):
    RUN = "run"        # the full set of pods, replacing lost ones
    HALT = "halt"      # job is over: remove live pods, keep terminated ones of this revision (logs)
    NONE = "none"      # no pods at all (suspended)


@dataclass(frozen=True)
class PodInfo:
    """What the operator needs to know about one pod of a job."""
    name: str
    role: str
    subtask: int | None
    revision: int
    incarnation: int
    phase: str = "Pending"             # Pending, Running, Succeeded, Failed, Unknown
    deleting: bool = False
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    ip: str | None = None
    ready: bool = False
    unschedulable: str = ""            # the scheduler's message while it cannot place the pod
    coordinator_address: str | None = None   # a worker's coordinator (from its annotation)

    @property
    def slot(self) -> tuple[str, int | None]:
        return (self.role, self.subtask)

    @property
    def alive(self) -> bool:
        return not self.deleting and self.phase in ("Pending", "Running")

    @property
    def lost(self) -> bool:
        """Failed, or being deleted/evicted: its slot needs a new pod."""
        return self.deleting or self.phase in ("Failed", "Unknown")

    def describe(self) -> str:
        """One line on why this pod is gone (never its environment)."""
        if self.deleting:
            return f"pod {self.name} was deleted"
        what = f"pod {self.name} {self.phase.lower()}"
        if self.exit_code is not None:
            what += f" (exit {self.exit_code}{', ' + self.reason if self.reason else ''})"
        elif self.reason:
            what += f" ({self.reason})"
        return what


@dataclass(frozen=True)
class DeploymentSpec:
    """The rollout the operator wants: revision, parallelism, and whether pods run."""
    revision: int
    parallelism: int
    mode: Mode = Mode.RUN
    #: "service": workers use ``service_address``; "pod-ip": the live coordinator pod's IP
    coordinator_address: str = "service"
    service_address: str = ""


@dataclass(frozen=True)
class PodToCreate:
    role: str
    subtask: int | None
    incarnation: int
    coordinator_address: str | None = None


@dataclass
class PodPlan:
    create: list[PodToCreate] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    #: pods of the current revision that were lost and are being replaced now
    replaced: list[PodInfo] = field(default_factory=list)
    #: slots whose pod vanished from the API while other pods of the revision exist
    vanished: list[str] = field(default_factory=list)
    #: the coordinator ended: "finished", or "failed" with its message; None while it runs
    outcome: str | None = None
    outcome_message: str = ""
    #: the coordinator crashed (neither finished nor failed) and is being recreated
    coordinator_crashed: bool = False
    #: workers wait for the coordinator pod's IP (pod-ip address mode)
    waiting_for_coordinator: bool = False
    #: pods of the current revision the scheduler cannot place (their messages)
    unschedulable: list[str] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        return not self.create and not self.delete


def pod_info(pod: Any) -> PodInfo | None:
    """A PodInfo from a ``V1Pod`` or a pod dict, or None if it is not one of our pods."""
    get = _getter(pod)
    labels = get("metadata", "labels") or {}
    role = labels.get(names.LABEL_ROLE)
    if role not in (names.ROLE_COORDINATOR, names.ROLE_WORKER):
        return None
    try:
        subtask = int(labels[names.LABEL_SUBTASK]) if role == names.ROLE_WORKER else None
        revision = int(labels.get(names.LABEL_REVISION, "0"))
        incarnation = int(labels.get(names.LABEL_INCARNATION, "0"))
    except (KeyError, ValueError):
        return None
    exit_code, reason, message = None, "", ""
    for status in get("status", "container_statuses") or get("status", "containerStatuses") or []:
        term = _getter(status)("state", "terminated")
        if term:
            tget = _getter(term)
            exit_code = tget("exit_code") if tget("exit_code") is not None else tget("exitCode")
            reason = tget("reason") or ""
            message = tget("message") or ""
    unschedulable = ""
    for cond in get("status", "conditions") or []:
        cget = _getter(cond)
        if cget("type") == "PodScheduled" and cget("status") == "False" \
                and cget("reason") == "Unschedulable":
            unschedulable = cget("message") or "unschedulable"
    ready = any(_getter(c)("type") == "Ready" and _getter(c)("status") == "True"
                for c in get("status", "conditions") or [])
    return PodInfo(
        name=get("metadata", "name"), role=role, subtask=subtask, revision=revision,
        incarnation=incarnation, phase=get("status", "phase") or "Pending",
        deleting=bool(get("metadata", "deletion_timestamp") or
                      get("metadata", "deletionTimestamp")),
        exit_code=exit_code, reason=reason or get("status", "reason") or "",
        message=message, ip=get("status", "pod_ip") or get("status", "podIP"), ready=ready,
        unschedulable=unschedulable,
        coordinator_address=(get("metadata", "annotations") or {}).get(
            names.ANNOTATION_COORDINATOR))


def _getter(obj: Any):
    def get(*path: str) -> Any:
        cur = obj
        for key in path:
            if cur is None:
                return None
            if isinstance(cur, dict) or hasattr(cur, "get") and not hasattr(cur, "to_dict"):
                cur = cur.get(key)
            else:
                cur = getattr(cur, key, None)
        return cur
    return get


def _slots(parallelism: int) -> list[tuple[str, int | None]]:
    return [(names.ROLE_COORDINATOR, None)] + [(names.ROLE_WORKER, i) for i in range(parallelism)]


def desired_pods(spec: DeploymentSpec, existing: Iterable[PodInfo]) -> PodPlan:
    """The plan that turns ``existing`` pods into the pods ``spec`` wants."""
    pods = list(existing)
    plan = PodPlan()
    wanted = set(_slots(spec.parallelism)) if spec.mode is not Mode.NONE else set()
    next_incarnation: dict[tuple[str, int | None], int] = {}
    for pod in pods:
        next_incarnation[pod.slot] = max(next_incarnation.get(pod.slot, 0), pod.incarnation + 1)

    current: dict[tuple[str, int | None], list[PodInfo]] = {}
    for pod in pods:
        if pod.revision != spec.revision or pod.slot not in wanted:
            if not pod.deleting:
                plan.delete.append(pod.name)
            continue
        current.setdefault(pod.slot, []).append(pod)

    coordinator = _latest(current.get((names.ROLE_COORDINATOR, None), []))
    if coordinator is not None and not coordinator.alive and not coordinator.deleting \
            and coordinator.phase in ("Succeeded", "Failed"):
        if coordinator.exit_code == EXIT_FINISHED and coordinator.phase == "Succeeded":
            plan.outcome = "finished"
        elif coordinator.exit_code == EXIT_FAILED:
            plan.outcome = "failed"
            plan.outcome_message = _last_line(coordinator.message) or coordinator.describe()

    halted = spec.mode is Mode.HALT or plan.outcome is not None
    address = _coordinator_address(spec, current)

    for slot in sorted(wanted, key=_slot_order):
        slot_pods = sorted(current.get(slot, []), key=lambda p: p.incarnation)
        alive = [p for p in slot_pods if p.alive]
        if halted:
            plan.delete += [p.name for p in alive]
            continue
        for older in alive[:-1]:                         # duplicates: keep the newest
            plan.delete.append(older.name)
        failed = [p for p in slot_pods if not p.alive and not p.deleting]
        for old in failed[:-1]:                          # keep only the last failed pod (logs)
            plan.delete.append(old.name)
        plan.unschedulable += [f"{p.name}: {p.unschedulable}" for p in alive if p.unschedulable]
        if alive:
            continue
        role, subtask = slot
        if role == names.ROLE_WORKER and any(p.phase == "Succeeded" for p in slot_pods):
            continue                                     # a worker that finished is not lost
        if role == names.ROLE_WORKER and address is None:
            plan.waiting_for_coordinator = True
            continue
        lost = _latest(slot_pods)
        if lost is not None:
            plan.replaced.append(lost)
            if role == names.ROLE_COORDINATOR:
                plan.coordinator_crashed = True
        elif any(current.values()):                      # deleted and already gone
            plan.vanished.append(f"the pod of {role}" + (f" {subtask}" if subtask is not None
                                                          else "") + " disappeared")
        plan.create.append(PodToCreate(role=role, subtask=subtask,
                                       incarnation=next_incarnation.get(slot, 0),
                                       coordinator_address=address
                                       if role == names.ROLE_WORKER else None))

    if not halted and spec.coordinator_address == "pod-ip" and address is not None:
        for slot_pods in current.values():               # workers of a previous coordinator
            for pod in slot_pods:
                if pod.role == names.ROLE_WORKER and pod.alive and pod.name not in plan.delete \
                        and pod.coordinator_address not in (None, address):
                    plan.delete.append(pod.name)
    plan.delete = sorted(set(plan.delete))
    return plan


def _coordinator_address(spec: DeploymentSpec,
                         current: dict[tuple[str, int | None], list[PodInfo]]) -> str | None:
    if spec.coordinator_address != "pod-ip":
        return spec.service_address
    alive = [p for p in current.get((names.ROLE_COORDINATOR, None), []) if p.alive and p.ip]
    return _latest(alive).ip if alive else None  # type: ignore[union-attr]


def _latest(pods: Sequence[PodInfo]) -> PodInfo | None:
    return max(pods, key=lambda p: p.incarnation) if pods else None


def _slot_order(slot: tuple[str, int | None]) -> tuple[int, int]:
    return (0 if slot[0] == names.ROLE_COORDINATOR else 1, slot[1] or 0)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
