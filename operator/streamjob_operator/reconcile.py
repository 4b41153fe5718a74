"""One reconcile of one StreamJob: read what is, decide (pure modules), act, report.

Every trigger (create, update, resume, the periodic timer, a pod event) ends here. Work on one
job is serialised by a per-job lock; a pod event that finds the lock taken marks the job dirty
and the lock holder reconciles again before it lets go, so no event is lost and no executor
thread waits behind a savepoint.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import kopf

from streamjob.manifest import StreamJob
from streamjob_operator import builders, kube, names
from streamjob_operator.config import Settings
from streamjob_operator.coordinator import CoordinatorClient, CoordinatorUnavailable, JobView
from streamjob_operator.decide import next_operation
from streamjob_operator.desired import (
    DeploymentSpec,
    Mode,
    PodInfo,
    PodPlan,
    desired_pods,
    pod_info,
)
from streamjob_operator.metrics import METRICS
from streamjob_operator.model import (
    Deployment,
    InvalidSpec,
    JobStatus,
    Rescale,
    Savepoint,
    parse_job,
    spec_hash,
)
from streamjob_operator.phases import Event, Phase, conditions, transition

log = logging.getLogger(__name__)

ACTIVE = (Phase.PENDING, Phase.RUNNING, Phase.RECOVERING, Phase.RESCALING)
MAX_SAVEPOINTS_LISTED = 10
RETRY_DELAY = 5.0


class Retry(Exception):
    """Not now: try again after ``delay`` seconds (kopf.TemporaryError in a change handler)."""

    def __init__(self, message: str, delay: float = RETRY_DELAY) -> None:
        super().__init__(message)
        self.delay = delay


_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}
_dirty: set[str] = set()
_tokens: dict[str, str] = {}


def lock_for(namespace: str, name: str) -> threading.Lock:
    """The lock that serialises all work on one job inside this operator process."""
    with _guard:
        return _locks.setdefault(f"{namespace}/{name}", threading.Lock())


def reconcile(namespace: str, name: str, settings: Settings, *, wait: bool = True,
              emit: Callable[..., None] | None = None) -> None:
    """Reconcile one job; with ``wait=False`` a busy job is only marked dirty."""
    key = f"{namespace}/{name}"
    lock = lock_for(namespace, name)
    if not lock.acquire(timeout=settings.savepoint_timeout + 30 if wait else 0):
        _dirty.add(key)
        METRICS.deferred()
        if wait:
            raise Retry(f"{key} is busy with a long operation")
        return
    try:
        for _ in range(5):
            _dirty.discard(key)
            with METRICS.reconcile_pass(Retry):
                _reconcile_once(namespace, name, settings, emit or post_event)
            if key not in _dirty:
                break
    finally:
        lock.release()


def forget(namespace: str, name: str, uid: str | None) -> None:
    with _guard:
        _locks.pop(f"{namespace}/{name}", None)
        _tokens.pop(uid or "", None)
    METRICS.job_phase(namespace, name, None)


def post_event(body: Any, type_: str, reason: str, message: str) -> None:
    try:
        kopf.event(body, type=type_, reason=reason, message=message)
    except Exception:  # events are best effort; never fail a reconcile for one  # noqa: BLE001
        log.debug("could not post event %s", reason, exc_info=True)


def _reconcile_once(namespace: str, name: str, settings: Settings,
                    emit: Callable[..., None]) -> None:
    body = kube.get_job(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        if body is None:
            METRICS.job_phase(namespace, name, None)
        return
    status = JobStatus.from_body(body.get("status"))
    try:
        job = parse_job(body)
    except InvalidSpec as err:
        if status.message != str(err):
            emit(body, "Warning", "InvalidSpec", str(err))
        METRICS.job_phase(namespace, name, Phase.FAILED.value,
                          changed=status.phase != Phase.FAILED.value)
        kube.patch_status(namespace, name, {"phase": Phase.FAILED.value, "message": str(err),
                                            "observedGeneration": body["metadata"].get(
                                                "generation")})
        return
    Reconciler(body, job, status, settings, emit).run()


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(float(value), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


class Reconciler:
    def __init__(self, body: dict[str, Any], job: StreamJob, status: JobStatus,
                 settings: Settings, emit: Callable[..., None],
                 clock: Callable[[], float] = time.time) -> None:
        self.body = body
        self.job = job
        self.spec = job.spec
        self.status = status
        self.settings = settings
        self.emit = emit
        self.clock = clock
        self.namespace = job.metadata.namespace or body["metadata"]["namespace"]
        self.name = job.metadata.name
        self.uid = body["metadata"]["uid"]
        self.raw_status: dict[str, Any] = dict(body.get("status") or {})
        self.extra: dict[str, Any] = {}
        self.written: dict[str, Any] | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def phase(self) -> Phase | None:
        return Phase(self.status.phase) if self.status.phase else None

    def to(self, event: Event, message: str, warning: bool = False) -> None:
        step = transition(self.phase, event)
        self.status.phase = step.target.value
        if message:
            self.status.message = message
        if step.changed:
            if step.target == Phase.RECOVERING:
                self.status.restarts += 1
            log.info("%s/%s: %s -> %s (%s)", self.namespace, self.name,
                     step.source, step.target, message)
            self.emit(self.body, "Warning" if warning else "Normal", step.target.value, message)
        elif warning and message:
            self.emit(self.body, "Warning", event.value, message)

    def flush(self) -> None:
        """Write the status if it changed (the whole operator-owned part, merge-patched)."""
        phase = self.phase or Phase.PENDING
        METRICS.job_phase(self.namespace, self.name, phase.value,
                          changed=self.raw_status.get("phase") != phase.value)
        data = self.status.dump()
        dep = self.status.deployment
        data.update(self.extra)
        data["phase"] = phase.value
        data["observedGeneration"] = self.body["metadata"].get("generation")
        data["parallelism"] = dep.parallelism if dep else None
        data["selector"] = names.worker_selector(self.name)
        data["conditions"] = conditions(phase, self.status.message,
                                        self.body["metadata"].get("generation"),
                                        self.raw_status.get("conditions") or [], _now_iso())
        comparable = {k: v for k, v in data.items() if k != "conditions"}
        before = {k: self.raw_status.get(k) for k in comparable}
        conds_before = [{k: c.get(k) for k in ("type", "status", "message")}
                        for c in self.raw_status.get("conditions") or []]
        conds_after = [{k: c.get(k) for k in ("type", "status", "message")}
                       for c in data["conditions"]]
        if comparable == before and conds_before == conds_after:
            return
        kube.patch_status(self.namespace, self.name, data)
        self.raw_status.update(data)

    # ------------------------------------------------------------------ entry
    def run(self) -> None:
        op = next_operation(self.spec, self.status)
        log.debug("%s/%s: %s", self.namespace, self.name, op)
        try:
            getattr(self, f"op_{op.value}")()
        finally:
            self.flush()

    # ------------------------------------------------------------------ operations
    def op_deploy(self) -> None:
        self.status.observed_restart_nonce = self.spec.restart_nonce
        self.status.observed_savepoint_nonce = self.spec.savepoint_nonce
        start = self.spec.initial_savepoint_path
        self.roll_out(self.spec.parallelism, start, self.uid, Event.DEPLOYED,
                      f"deployed at parallelism {self.spec.parallelism}"
                      + (f" from savepoint {start}" if start else ""))

    def op_suspend(self) -> None:
        uri, why = None, ""
        if self.status.deployment is not None and self.phase in ACTIVE:
            try:
                uri = self.client().savepoint(stop=True, timeout=self.settings.savepoint_timeout)
            except CoordinatorUnavailable as err:
                why = str(err)
        if uri:
            self.record_savepoint(uri, "suspend")
            self.extra["resumeFrom"] = uri
            message = f"suspended with savepoint {uri}"
        elif self.status.deployment is None:
            message = "suspended before it was deployed"
        else:
            self.extra["resumeFrom"] = None
            message = ("suspended without a savepoint"
                       + (f" ({why})" if why else "") + "; resume restores the latest checkpoint")
        self.to(Event.SUSPENDED, message)
        self.flush()
        if self.status.deployment is not None:
            self.heal()

    def op_resume(self) -> None:
        dep = self.status.deployment
        start = self.raw_status.get("resumeFrom") or (dep.from_savepoint if dep else None)
        self.extra["resumeFrom"] = None
        job_id = self.fresh_job_id() if start and dep else (dep.job_id if dep else self.uid)
        how = f" from savepoint {start}" if start else " from the latest checkpoint"
        self.roll_out(self.spec.parallelism, start, job_id, Event.RESUMED, "resumed" + how)

    def op_restart(self) -> None:
        dep = self.status.deployment
        assert dep is not None
        self.status.observed_restart_nonce = self.spec.restart_nonce
        self.status.failed_rescale = None
        self.status.rescale = None
        self.roll_out(self.spec.parallelism, dep.from_savepoint, dep.job_id, Event.RESTARTED,
                      "restarted (restartNonce) from the latest checkpoint")

    def op_upgrade(self) -> None:
        dep = self.status.deployment
        assert dep is not None
        mode = self.spec.upgrade_mode
        p = self.spec.parallelism
        if mode == "stateless":
            self.roll_out(p, None, self.fresh_job_id(), Event.RESTARTED,
                          "upgraded (stateless): started with empty state")
            return
        if mode == "savepoint" and self.phase == Phase.RUNNING:
            try:
                uri = self.client().savepoint(stop=True, timeout=self.settings.savepoint_timeout)
            except CoordinatorUnavailable as err:
                self.status.message = f"upgrade waits: savepoint failed ({err})"
                raise Retry(self.status.message) from None
            self.record_savepoint(uri, "upgrade")
            self.roll_out(p, uri, self.fresh_job_id(), Event.RESTARTED,
                          f"upgraded from savepoint {uri}")
            return
        self.roll_out(p, dep.from_savepoint, dep.job_id, Event.RESTARTED,
                      "upgraded from the latest checkpoint (last-state)")

    def op_rescale(self) -> None:
        dep = self.status.deployment
        assert dep is not None
        source, target = dep.parallelism, self.spec.parallelism
        if self.phase != Phase.RUNNING:
            if self.phase == Phase.PENDING and not self.raw_status.get("lastCheckpoint"):
                self.roll_out(target, dep.from_savepoint, dep.job_id, Event.DEPLOYED,
                              f"parallelism changed to {target} before the job ran; redeployed")
                return
            self.status.message = f"rescale to {target} waits for the job to be Running"
            raise Retry(self.status.message)
        self.status.rescale = Rescale(source=source, target=target, since=self.clock())
        self.to(Event.RESCALE_STARTED, f"rescaling {source} -> {target}: taking a savepoint")
        self.flush()
        try:
            uri = self.client().savepoint(stop=True, timeout=self.settings.savepoint_timeout)
        except CoordinatorUnavailable as err:
            self.status.rescale = None
            self.to(Event.JOB_RUNNING, f"rescale to {target} postponed: savepoint failed ({err})")
            self.emit(self.body, "Warning", "RescalePostponed", self.status.message)
            raise Retry(self.status.message, delay=15) from None
        self.record_savepoint(uri, "rescale")
        self.status.rescale = Rescale(source=source, target=target, savepoint=uri,
                                      since=self.clock())
        self.roll_out(target, uri, self.fresh_job_id(), Event.RESCALE_STARTED,
                      f"rescaling {source} -> {target} from savepoint {uri}")

    def op_savepoint(self) -> None:
        nonce = self.spec.savepoint_nonce
        if self.phase != Phase.RUNNING:
            raise Retry(f"savepointNonce {nonce} waits for the job to be Running")
        try:
            uri = self.client().savepoint(stop=False, timeout=self.settings.savepoint_timeout)
        except CoordinatorUnavailable as err:
            self.emit(self.body, "Warning", "SavepointFailed", f"savepoint failed: {err}")
            raise Retry(f"savepoint failed: {err}", delay=15) from None
        self.record_savepoint(uri, "savepointNonce", nonce)
        self.status.observed_savepoint_nonce = nonce
        self.emit(self.body, "Normal", "SavepointCompleted", f"savepoint {uri}")
        self.heal()

    # ------------------------------------------------------------------ helpers
    def record_savepoint(self, uri: str, reason: str, nonce: int | None = None) -> None:
        sp = Savepoint(path=uri, at=_now_iso(), reason=reason, nonce=nonce)
        self.status.last_savepoint = sp
        self.status.savepoints = (self.status.savepoints + [sp])[-MAX_SAVEPOINTS_LISTED:]

    def fresh_job_id(self) -> str:
        """Job id (checkpoint prefix) of the next revision when it starts from a savepoint.

        The coordinator restores from its job id's newest checkpoint before it looks at
        ``--from-savepoint``; a revision that must start from a savepoint therefore gets a job id
        with no checkpoints yet (its own later checkpoints then win, as they should).
        """
        dep = self.status.deployment
        return f"{self.uid}-r{(dep.revision + 1) if dep else 1}"

    def roll_out(self, parallelism: int, from_savepoint: str | None, job_id: str,
                 event: Event, message: str) -> None:
        """A new revision: recorded in status first, then old pods go and new pods come."""
        dep = self.status.deployment
        self.status.deployment = Deployment(
            revision=(dep.revision + 1) if dep else 1, parallelism=parallelism, job_id=job_id,
            from_savepoint=from_savepoint, spec_hash=spec_hash(self.spec),
            started_at=self.clock())
        self.status.recovering_since_attempt = None
        self.to(event, message)
        self.ensure_support_objects()
        self.flush()
        self.heal()

    def ensure_support_objects(self) -> None:
        owner = self.body
        token = secrets.token_urlsafe(32)
        kube.create(builders.token_secret(self.job, token, owner=owner))
        kube.create(builders.coordinator_service(self.job, owner=owner))
        if self.settings.network_policy:
            kube.create(builders.network_policy(self.job, self.settings, owner=owner))

    def token(self) -> str:
        cached = _tokens.get(self.uid)
        if cached:
            return cached
        value = kube.read_secret_key(self.namespace, names.token_secret_name(self.name),
                                     names.TOKEN_KEY)
        if not value:
            raise CoordinatorUnavailable("the API token Secret is missing")
        _tokens[self.uid] = value
        return value

    def api_url(self, pods: list[PodInfo] | None = None) -> str:
        mode = self.settings.api_url
        if mode == "service":
            return f"http://{names.coordinator_host(self.name, self.namespace)}:{names.API_PORT}"
        if mode == "pod-ip":
            dep = self.status.deployment
            pods = pods if pods is not None else self.pods()
            alive = [p for p in pods if p.role == names.ROLE_COORDINATOR and p.alive and p.ip
                     and dep is not None and p.revision == dep.revision]
            if not alive:
                raise CoordinatorUnavailable("the coordinator pod has no IP yet")
            ip = max(alive, key=lambda p: p.incarnation).ip
            return f"http://{ip}:{names.API_PORT}"
        return mode.format(name=self.name, namespace=self.namespace)

    def client(self, pods: list[PodInfo] | None = None) -> CoordinatorClient:
        return CoordinatorClient(self.api_url(pods), self.token(), self.settings.http_timeout)

    def pods(self) -> list[PodInfo]:
        infos = (pod_info(p) for p in kube.list_pods(self.namespace, self.name))
        return [p for p in infos if p is not None]

    def mode(self) -> Mode:
        if self.phase in (Phase.FINISHED, Phase.FAILED):
            return Mode.HALT
        if self.phase == Phase.SUSPENDED:
            return Mode.NONE
        return Mode.RUN

    def plan(self, pods: list[PodInfo]) -> PodPlan:
        dep = self.status.deployment
        assert dep is not None
        return desired_pods(DeploymentSpec(
            revision=dep.revision, parallelism=dep.parallelism, mode=self.mode(),
            coordinator_address=self.settings.coordinator_address,
            service_address=names.coordinator_host(self.name, self.namespace)), pods)

    def apply(self, plan: PodPlan) -> None:
        dep = self.status.deployment
        assert dep is not None
        for pod_name in plan.delete:
            kube.delete_pod(self.namespace, pod_name)
        for item in plan.create:
            if item.role == names.ROLE_COORDINATOR:
                pod = builders.coordinator_pod(self.job, dep, item.incarnation, self.settings,
                                               owner=self.body)
            else:
                assert item.subtask is not None and item.coordinator_address is not None
                pod = builders.worker_pod(self.job, dep, item.subtask, item.incarnation,
                                          item.coordinator_address, self.settings,
                                          owner=self.body)
            kube.create(pod)

    # ------------------------------------------------------------------ heal
    def op_heal(self) -> None:
        self.heal()

    def heal(self) -> None:
        dep = self.status.deployment
        if dep is None:
            return
        pods = self.pods()
        plan = self.plan(pods)
        if self.mode() is Mode.RUN:
            if plan.outcome == "finished":
                self.to(Event.JOB_FINISHED, "the job finished")
                plan = self.plan(pods)
            elif plan.outcome == "failed":
                if self.phase == Phase.RESCALING:
                    self.rollback(plan.outcome_message)
                    return
                self.to(Event.JOB_FAILED, f"the job failed: {plan.outcome_message}", warning=True)
                plan = self.plan(pods)
            elif plan.coordinator_crashed:
                strategy = self.spec.restart_strategy
                allowed = 0 if strategy.type == "none" else strategy.max_attempts
                crashes = dep.coordinator_crashes + 1
                lost = next(p for p in plan.replaced if p.role == names.ROLE_COORDINATOR)
                if crashes > allowed:
                    self.to(Event.JOB_FAILED, f"the coordinator crashed {crashes} times, more "
                            f"than restartStrategy.maxAttempts={allowed} ({lost.describe()})",
                            warning=True)
                    plan = self.plan(pods)
                else:
                    self.status.deployment = dep.model_copy(update={"coordinator_crashes":
                                                                    crashes})
        self.apply(plan)
        if (plan.replaced or plan.vanished) and self.mode() is Mode.RUN:
            lost = [p.describe() for p in plan.replaced] + plan.vanished
            what = "; ".join(lost[:3])
            if len(lost) > 3:
                what += f" and {len(lost) - 3} more"
            if self.phase != Phase.RECOVERING:
                self.status.recovering_since_attempt = self.status.attempt
            coordinator_lost = any(p.role == names.ROLE_COORDINATOR for p in plan.replaced) \
                or any("coordinator" in v for v in plan.vanished)
            if coordinator_lost:
                self.status.recovering_since_attempt = None
            self.to(Event.POD_LOST, f"{what}; replaced, restoring from the latest completed "
                    "checkpoint", warning=True)
        if plan.unschedulable and self.mode() is Mode.RUN:
            self.status.message = "cannot schedule " + "; ".join(plan.unschedulable[:2])
        if self.mode() is Mode.RUN and not plan.create:
            self.observe(pods, plan)

    def observe(self, pods: list[PodInfo], plan: PodPlan) -> None:
        """Copy the coordinator's view into status and settle Pending/Recovering/Rescaling."""
        dep = self.status.deployment
        assert dep is not None
        try:
            view = self.client(pods).job()
        except CoordinatorUnavailable as err:
            log.debug("%s/%s: %s", self.namespace, self.name, err)
            self.check_rollout_timeout()
            return
        self.copy_view(view)
        current = [p for p in pods if p.revision == dep.revision and p.alive
                   and p.name not in plan.delete]
        all_running = (len(current) == dep.parallelism + 1
                       and all(p.phase == "Running" for p in current))
        if view.state == "RESTARTING" and self.phase == Phase.RUNNING:
            self.status.recovering_since_attempt = view.attempt
            self.to(Event.JOB_RESTARTING, f"restarting from checkpoint: {view.message}"
                    if view.message else "the coordinator restarts the job from its latest "
                    "checkpoint", warning=True)
        elif view.state == "RUNNING" and all_running:
            if self.phase == Phase.RECOVERING:
                since = self.status.recovering_since_attempt
                if since is not None and view.attempt <= since:
                    return                            # the restore has not happened yet
                restored = (f"restored from checkpoint {view.restored_from}"
                            if view.restored_from is not None else "restarted")
                self.status.recovering_since_attempt = None
                self.to(Event.JOB_RUNNING, f"running again, {restored}")
            elif self.phase == Phase.RESCALING:
                if view.parallelism not in (None, dep.parallelism):
                    return
                rescale = self.status.rescale
                if rescale is not None and rescale.rollback:
                    message = (f"rescale to {rescale.target} failed; running at "
                               f"{rescale.source} again from savepoint {rescale.savepoint}")
                else:
                    self.status.failed_rescale = None
                    message = f"running at parallelism {dep.parallelism}"
                    if rescale is not None:
                        message = (f"rescaled {rescale.source} -> {rescale.target} from "
                                   f"savepoint {rescale.savepoint}")
                self.status.rescale = None
                self.to(Event.JOB_RUNNING, message)
            elif self.phase == Phase.PENDING:
                self.to(Event.JOB_RUNNING, f"running at parallelism {dep.parallelism}")
        self.check_rollout_timeout()

    def copy_view(self, view: JobView) -> None:
        self.status.attempt = view.attempt
        self.extra["restoredFrom"] = view.restored_from
        self.extra["coordinatorState"] = view.state
        chk = view.last_checkpoint
        if chk and chk.get("id") is not None:
            self.extra["lastCheckpoint"] = {
                "id": int(chk["id"]), "completedAt": _iso(chk.get("completed_at")),
                "durationMs": int(chk.get("duration_ms") or 0),
                "sizeBytes": int(chk.get("size_bytes") or 0)}

    def check_rollout_timeout(self) -> None:
        rescale = self.status.rescale
        if self.phase != Phase.RESCALING or rescale is None:
            return
        if self.clock() - rescale.since > self.settings.rollout_timeout:
            self.rollback(f"pods at parallelism {self.status.deployment.parallelism} not "
                          f"running after {self.settings.rollout_timeout:g}s")

    def rollback(self, why: str) -> None:
        rescale = self.status.rescale
        dep = self.status.deployment
        assert dep is not None
        if rescale is None or rescale.rollback or not rescale.savepoint:
            self.status.rescale = None
            self.to(Event.JOB_FAILED, f"rescale failed and cannot roll back: {why}",
                    warning=True)
            self.heal()
            return
        self.status.failed_rescale = rescale.target
        self.status.rescale = rescale.model_copy(update={"rollback": True, "since": self.clock()})
        self.emit(self.body, "Warning", "RescaleFailed",
                  f"rescale to {rescale.target} failed ({why}); rolling back")
        self.roll_out(rescale.source, rescale.savepoint, self.fresh_job_id(), Event.ROLLED_BACK,
                      f"rescale to {rescale.target} failed ({why}); rolling back to "
                      f"{rescale.source} from savepoint {rescale.savepoint}")
