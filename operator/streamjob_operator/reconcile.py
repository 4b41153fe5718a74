"""One reconcile of one StreamJob: read what is, decide (pure modules), act, report.

Every trigger (create, update, resume, the periodic timer, a pod event) ends here. Work on one
job is serialised by a per-job lock; a pod event that finds the lock taken marks the job dirty
and the lock holder reconciles again before it lets go, so no event is lost and no executor
thread waits behind a savepoint.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import kopf

from streamjob import faults
from streamjob.manifest import StreamJob
from streamjob_operator import autoscaler as auto
from streamjob_operator import builders, kube, names
from streamjob_operator import operation as ops
from streamjob_operator.background import REQUESTS
from streamjob_operator.config import Settings
from streamjob_operator.coordinator import (
    CoordinatorClient,
    CoordinatorUnavailable,
    JobView,
    stop_savepoint,
)
from streamjob_operator.decide import next_operation, target_parallelism, upgrade_mode
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
    AutoscalerStatus,
    Deployment,
    InvalidSpec,
    JobStatus,
    Savepoint,
    parse_job,
    spec_hash,
)
from streamjob_operator.operation import Action, Kind, Operation, Outcome, Step
from streamjob_operator.phases import Event, Phase, conditions, transition

log = logging.getLogger(__name__)

ACTIVE = (Phase.PENDING, Phase.RUNNING, Phase.RECOVERING, Phase.RESCALING)
MAX_SAVEPOINTS_LISTED = 10
RETRY_DELAY = 5.0
#: a refused savepoint postpones the rescale/upgrade/savepoint that needed it this long
POSTPONE_SECONDS = 15.0
#: a savepoint completed this long before the operation started still counts (clock skew)
CLOCK_SKEW = 2.0
#: status writes that meet a conflict are re-read and decided again this many times
CONFLICT_RETRIES = 5


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
        conflicts = 0
        for _ in range(5 + CONFLICT_RETRIES):
            _dirty.discard(key)
            try:
                with METRICS.reconcile_pass((Retry, kube.Conflict)):
                    _reconcile_once(namespace, name, settings, emit or post_event)
            except kube.Conflict:
                # someone wrote the job since we read it: read it again and decide again
                conflicts += 1
                if conflicts > CONFLICT_RETRIES:
                    raise Retry(f"{key}: status kept changing under us", delay=1) from None
                log.debug("%s: conflict, reading the job again", key)
                continue
            if key not in _dirty:
                break
    finally:
        lock.release()


def _trigger(namespace: str, name: str, settings: Settings,
             emit: Callable[..., None]) -> Callable[[], None]:
    """What a background savepoint runs when its answer arrives: reconcile the job again."""
    def again() -> None:
        try:
            reconcile(namespace, name, settings, wait=True, emit=emit)
        except Retry as err:
            log.info("%s/%s: %s", namespace, name, err)
    return again


def forget(namespace: str, name: str, uid: str | None) -> None:
    with _guard:
        _locks.pop(f"{namespace}/{name}", None)
        _tokens.pop(uid or "", None)
    REQUESTS.forget(f"{namespace}/{name}")
    METRICS.job_phase(namespace, name, None)
    METRICS.forget_job(namespace, name)


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
                                                "generation")},
                          body["metadata"].get("resourceVersion"))
        return
    Reconciler(body, job, status, settings, emit).run()


def finalize(namespace: str, name: str, settings: Settings,
             emit: Callable[..., None] | None = None) -> bool:
    """The delete handler's work: the final savepoint if the job asks for one (annotation
    ``streamjob.dev/savepoint-on-delete: "true"``), recorded as ``status.operation`` so that a
    restarted operator resumes it, then the pods. False: not yet (call again in a moment)."""
    emit = emit or post_event
    with lock_for(namespace, name):
        for _ in range(CONFLICT_RETRIES):
            try:
                done = _finalize_once(namespace, name, settings, emit)
                break
            except kube.Conflict:
                continue
        else:
            return False
        if not done:
            return False
        for pod in kube.list_pods(namespace, name):
            kube.delete_pod(namespace, pod.metadata.name, grace_seconds=5)
    return True


def _finalize_once(namespace: str, name: str, settings: Settings,
                   emit: Callable[..., None]) -> bool:
    body = kube.get_job(namespace, name)
    if body is None:
        return True
    status = JobStatus.from_body(body.get("status"))
    op = status.operation
    resuming = op is not None and op.type == Kind.SAVEPOINT_ON_DELETE
    wanted = ((body["metadata"].get("annotations") or {}).get(
        names.ANNOTATION_SAVEPOINT_ON_DELETE) == "true"
        and status.phase == Phase.RUNNING.value and status.deployment is not None
        and op is None)
    if not resuming and not wanted:
        return True
    try:
        job = parse_job(body)
    except InvalidSpec:
        return True
    rec = Reconciler(body, job, status, settings, emit)
    try:
        if resuming:
            rec.op_continue()
        else:
            rec.begin(Kind.SAVEPOINT_ON_DELETE)
    finally:
        rec.flush()
    return rec.status.operation is None


def api_token(settings: Settings, uid: str) -> str | None:
    """The job's API token derived from the operator's key (HMAC-SHA256 of the job's uid), so
    that the operator never reads Secrets; None without a key (then it reads the Secret)."""
    if not settings.token_key:
        return None
    return hmac.new(settings.token_key.encode(), f"streamjob-api:{uid}".encode(),
                    hashlib.sha256).hexdigest()


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
        #: what heal() saw of a rollout in flight (operation steps pods-started/rolling-back)
        self.observed: Outcome | None = None
        self.pending_error = ""
        self.pending_savepoint: str | None = None

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
        # how a person opens the job's dashboard (a local proxy through a port-forward)
        data["dashboard"] = f"streamjob ui --kube {self.namespace}/{self.name}"
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
        meta = self.body["metadata"]
        version = kube.patch_status(self.namespace, self.name, data, meta.get("resourceVersion"))
        if version:
            meta["resourceVersion"] = version
        self.raw_status.update(data)
        op = self.status.operation
        if op is not None:
            # fault point for tests: the operator dies right after recording this step
            faults.point(f"operator.{op.type.value}.{op.step.value}")

    @property
    def target_parallelism(self) -> int:
        return target_parallelism(self.spec, self.status)

    # ------------------------------------------------------------------ entry
    def run(self) -> None:
        if self.status.autoscaler is not None and not (
                self.spec.autoscaler and self.spec.autoscaler.enabled):
            self.status.autoscaler = None         # off: spec.parallelism rules again
        op = next_operation(self.spec, self.status, self.clock())
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
        self.roll_out(self.target_parallelism, start, self.uid, Event.DEPLOYED,
                      f"deployed at parallelism {self.target_parallelism}"
                      + (f" from savepoint {start}" if start else ""))

    def op_suspend(self) -> None:
        dep = self.status.deployment
        if dep is not None and self.phase in ACTIVE:
            self.begin(Kind.SUSPEND)
            return
        if dep is None:
            message = "suspended before it was deployed"
        else:
            self.extra["resumeFrom"] = None
            message = "suspended; resume restores the latest checkpoint"
        self.to(Event.SUSPENDED, message)
        self.flush()
        if dep is not None:
            self.heal()

    def op_resume(self) -> None:
        dep = self.status.deployment
        start = self.raw_status.get("resumeFrom") or (dep.from_savepoint if dep else None)
        self.extra["resumeFrom"] = None
        job_id = self.fresh_job_id() if start and dep else (dep.job_id if dep else self.uid)
        how = f" from savepoint {start}" if start else " from the latest checkpoint"
        self.roll_out(self.target_parallelism, start, job_id, Event.RESUMED, "resumed" + how)

    def op_restart(self) -> None:
        dep = self.status.deployment
        assert dep is not None
        self.status.observed_restart_nonce = self.spec.restart_nonce
        self.status.failed_rescale = None
        self.roll_out(self.target_parallelism, dep.from_savepoint, dep.job_id, Event.RESTARTED,
                      "restarted (restartNonce) from the latest checkpoint")

    def op_upgrade(self) -> None:
        dep = self.status.deployment
        assert dep is not None
        mode = upgrade_mode(self.spec, dep)
        p = self.target_parallelism
        if mode == "stateless":
            self.roll_out(p, None, self.fresh_job_id(), Event.RESTARTED,
                          "upgraded (stateless): started with empty state")
            return
        if mode == "savepoint" and self.phase == Phase.RUNNING:
            self.begin(Kind.UPGRADE, target=p)
            return
        self.roll_out(p, dep.from_savepoint, dep.job_id, Event.RESTARTED,
                      "upgraded from the latest checkpoint (last-state)")

    def op_rescale(self) -> None:
        dep = self.status.deployment
        assert dep is not None
        target = self.target_parallelism
        if self.phase != Phase.RUNNING:
            if self.phase == Phase.PENDING and not self.raw_status.get("lastCheckpoint"):
                self.roll_out(target, dep.from_savepoint, dep.job_id, Event.DEPLOYED,
                              f"parallelism changed to {target} before the job ran; redeployed")
                return
            self.status.message = f"rescale to {target} waits for the job to be Running"
            raise Retry(self.status.message)
        self.begin(Kind.RESCALE, target=target)

    def op_savepoint(self) -> None:
        """savepointNonce: a savepoint without stop, in the background (the job keeps running;
        an operator that restarts before the answer simply asks again)."""
        nonce = self.spec.savepoint_nonce
        if self.phase != Phase.RUNNING:
            raise Retry(f"savepointNonce {nonce} waits for the job to be Running")
        ident = ("nonce", nonce, self.status.deployment.revision if self.status.deployment
                 else 0)
        req = REQUESTS.get(self.key, ident)
        if req is None:
            try:
                call = self.savepoint_call(stop=False)
            except CoordinatorUnavailable as err:
                raise Retry(f"savepointNonce {nonce} waits: {err}") from None
            req = REQUESTS.start(self.key, ident, call, self.trigger())
        if req.done.is_set():
            if req.uri:
                self.record_savepoint(req.uri, "savepointNonce", nonce)
                self.status.observed_savepoint_nonce = nonce
                self.emit(self.body, "Normal", "SavepointCompleted", f"savepoint {req.uri}")
            else:
                self.status.postponed_until = self.clock() + POSTPONE_SECONDS
                self.emit(self.body, "Warning", "SavepointFailed", f"savepoint failed: "
                          f"{req.error}")
        self.heal()

    # ------------------------------------------------------------------ multi-step operations
    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def limits(self) -> ops.Limits:
        return ops.Limits(savepoint_timeout=self.settings.savepoint_timeout,
                          rollout_timeout=self.settings.rollout_timeout)

    def trigger(self) -> Callable[[], None]:
        return _trigger(self.namespace, self.name, self.settings, self.emit)

    def savepoint_call(self, stop: bool) -> Callable[[], str]:
        client = self.client()             # resolved now: the URL of this revision's coordinator
        timeout = self.settings.savepoint_timeout
        return lambda: client.savepoint(stop=stop, timeout=timeout)

    def begin(self, kind: Kind, target: int | None = None) -> None:
        """Record a new operation in status (its intent), then take its first step."""
        dep = self.status.deployment
        assert dep is not None
        op = ops.start(kind, self.clock(), source=dep.parallelism, target=target,
                       revision=dep.revision)
        self.status.operation = op
        self.status.postponed_until = None
        if kind == Kind.RESCALE:
            self.to(Event.RESCALE_STARTED,
                    f"rescaling {op.source} -> {op.target}: taking a savepoint")
        else:
            self.status.message = f"{kind.value}: taking a savepoint"
        self.flush()                       # the intent is in status before anything is asked
        self.op_continue()

    def op_continue(self) -> None:
        """Take the steps of ``status.operation`` that can be taken now (one exit each)."""
        for _ in range(8):
            op = self.status.operation
            if op is None:
                return
            outcome = self.observe_step(op)
            op = self.status.operation or op          # observing may have counted an attempt
            if outcome is None and ops.timed_out(op, self.clock(), self.limits()):
                outcome = Outcome.TIMEOUT
            if outcome is None:
                return                     # waiting: the answer, a pod event or the timer
            ex = ops.exit_for(op, outcome)
            if ex is None:
                return
            log.info("%s: %s %s --%s--> %s (%s)", self.key, op.type, op.step, outcome,
                     ex.step, ex.action)
            self.take(op, outcome, ex)
            self.flush()

    def observe_step(self, op: Operation) -> Outcome | None:
        if op.step == Step.SAVEPOINT_REQUESTED:
            return self.observe_savepoint(op)
        if op.step == Step.SAVEPOINT_TAKEN:
            return Outcome.PROCEED
        if op.step == Step.PODS_STOPPED:
            self.heal()
            return Outcome.PODS_GONE if not self.pods() else None
        self.observed = None               # pods-started, rolling-back: heal() observes
        self.heal()
        return self.observed

    def observe_savepoint(self, op: Operation) -> Outcome | None:
        """Where the stop-savepoint stands: answered here, or (after a restart) as the
        coordinator shows it: in its savepoint list, or by having exited."""
        ident = (op.type.value, op.started_at, op.attempt)
        req = REQUESTS.get(self.key, ident)
        if req is not None and not req.done.is_set():
            return None
        if req is not None and req.uri:
            self.pending_savepoint = req.uri
            return Outcome.SAVEPOINT_DONE
        if req is not None and req.refused and op.attempt <= 1:
            # refused, and no earlier request (of an operator before a restart) can still be
            # pending on the coordinator: the job was not stopped and will not be
            self.pending_error = req.error
            return Outcome.SAVEPOINT_REFUSED
        pods = self.pods()
        coordinators = [p for p in pods if p.role == names.ROLE_COORDINATOR
                        and p.revision == op.revision]
        latest = max(coordinators, key=lambda p: p.incarnation, default=None)
        stopped_at = stop_savepoint(latest.message) if latest is not None and \
            latest.phase == "Succeeded" else None
        if stopped_at:
            # the answer was lost (the operator restarted) but the coordinator said where it
            # stopped in its termination message: go forward from that savepoint
            self.pending_savepoint = stopped_at
            return Outcome.SAVEPOINT_DONE
        if latest is None or latest.phase == "Succeeded" or latest.deleting:
            # the coordinator stopped (exit 0 after the stop-savepoint) or is gone, and the
            # answer that carried the savepoint's path was lost (the operator restarted)
            self.pending_error = ("the coordinator stopped but the savepoint's path was not "
                                  "recorded (the operator restarted while it was taken)")
            return Outcome.STOPPED_UNKNOWN
        if latest.phase == "Failed":
            self.pending_error = f"the coordinator failed: {latest.describe()}"
            return Outcome.SAVEPOINT_REFUSED
        if latest.phase != "Running" and req is None:
            self.pending_error = "the coordinator is not running yet"
            return Outcome.SAVEPOINT_REFUSED      # nothing to stop, no savepoint to take
        try:
            view = self.client(pods).job()
        except CoordinatorUnavailable as err:
            log.debug("%s: %s", self.key, err)
            return None
        uri = view.savepoint_since(op.started_at - CLOCK_SKEW)
        if uri:
            self.pending_savepoint = uri
            return Outcome.SAVEPOINT_DONE
        if view.state != "RUNNING":
            return None                    # stopping, or restarting: wait (timeout applies)
        if req is not None and req.refused:
            # refused, but an earlier request may still be pending and stop the job later:
            # never abandon then; wait (its savepoint shows up in the list) or time out
            self.pending_error = req.error
            return None
        # not asked yet, asked by an operator that restarted, or asked without an answer
        # (timeout, connection lost) while the job runs on: ask (again). Any savepoint that
        # completes since the operation started counts, so asking twice is harmless; the
        # step's timeout bounds the retries. The attempt is written to status first so that
        # its answer can be told from an older one's.
        try:
            call = self.savepoint_call(stop=True)
        except CoordinatorUnavailable as err:
            log.debug("%s: %s", self.key, err)
            return None
        op = op.model_copy(update={"attempt": op.attempt + 1})
        self.status.operation = op
        self.flush()
        req = REQUESTS.start(self.key, (op.type.value, op.started_at, op.attempt), call,
                             self.trigger())
        return self.observe_savepoint(op) if req.done.is_set() else None

    def take(self, op: Operation, outcome: Outcome, ex: ops.Exit) -> None:
        # (a finished request is not forgotten here: if the write of the next step meets a
        # conflict, the pass is decided again and must find the answer, not ask twice)
        now = self.clock()
        kind = op.type
        why = getattr(self, "pending_error", "") or f"{op.step} {outcome}"
        uri = getattr(self, "pending_savepoint", None) or op.savepoint
        label = kind.value
        match ex.action:
            case Action.NEXT:
                self.record_savepoint(uri, label)
                self.status.operation = op.at(ex.step, now, savepoint=uri)
                self.status.message = f"{label}: savepoint {uri} taken"
            case Action.ROLL_OUT:
                assert op.savepoint
                self.status.operation = op.at(ex.step, now)
                if kind == Kind.RESCALE:
                    self.roll_out(op.target, op.savepoint, self.fresh_job_id(),
                                  Event.RESCALE_STARTED, f"rescaling {op.source} -> {op.target} "
                                  f"from savepoint {op.savepoint}")
                else:
                    self.roll_out(self.target_parallelism, op.savepoint, self.fresh_job_id(),
                                  Event.RESTARTED, f"upgraded from savepoint {op.savepoint}")
            case Action.ROLL_OUT_LAST_STATE:
                dep = self.status.deployment
                assert dep is not None
                self.status.operation = op.at(ex.step, now)
                self.emit(self.body, "Warning", "UpgradeWithoutSavepoint",
                          f"upgrade: {why}; upgrading from the latest checkpoint")
                self.roll_out(self.target_parallelism, dep.from_savepoint, dep.job_id,
                              Event.RESTARTED, f"upgraded from the latest checkpoint ({why})")
            case Action.STOP_PODS:
                self.status.operation = op.at(ex.step, now)
                self.extra["resumeFrom"] = uri if outcome == Outcome.PROCEED else None
                if outcome == Outcome.PROCEED:
                    message = f"suspended with savepoint {uri}"
                else:
                    message = (f"suspended without a savepoint ({why}); resume restores the "
                               "latest checkpoint")
                    self.emit(self.body, "Warning", "SuspendWithoutSavepoint", message)
                self.to(Event.SUSPENDED, message)
                self.flush()
                self.heal()
            case Action.ROLL_BACK:
                self.status.failed_rescale = op.target
                self.status.operation = op.at(ex.step, now)
                message = (f"rescale to {op.target} failed ({why}); rolling back to "
                           f"{op.source} from savepoint {op.savepoint}")
                self.emit(self.body, "Warning", "RescaleFailed", message)
                self.roll_out(op.source, op.savepoint, self.fresh_job_id(), Event.ROLLED_BACK,
                              message)
            case Action.ROLL_BACK_LAST_STATE:
                dep = self.status.deployment
                assert dep is not None
                self.status.operation = op.at(ex.step, now, savepoint=None)
                message = (f"rescale to {op.target} interrupted ({why}); back at "
                           f"{op.source} from the latest checkpoint; the rescale is retried")
                self.emit(self.body, "Warning", "RescaleRolledBack", message)
                self.roll_out(op.source, dep.from_savepoint, dep.job_id, Event.ROLLED_BACK,
                              message)
            case Action.ABANDON:
                self.status.operation = None
                self.status.postponed_until = now + POSTPONE_SECONDS
                message = f"{label} to {op.target} postponed: savepoint failed ({why})" \
                    if kind == Kind.RESCALE else f"{label} waits: savepoint failed ({why})"
                self.emit(self.body, "Warning", "RescalePostponed" if kind == Kind.RESCALE
                          else "UpgradePostponed", message)
                self.to(Event.JOB_RUNNING, message)
                self.status.message = message
            case Action.DONE:
                self.status.operation = None
                self.finish_operation(op, outcome, ex, why, uri)
            case Action.FAIL:
                self.status.operation = None
                self.to(Event.JOB_FAILED, f"{label} failed and cannot roll back: {why}",
                        warning=True)
                self.heal()
        self.pending_error = ""
        self.pending_savepoint = None

    def finish_operation(self, op: Operation, outcome: Outcome, ex: ops.Exit, why: str,
                         uri: str | None) -> None:
        dep = self.status.deployment
        if op.type == Kind.SAVEPOINT_ON_DELETE:
            if outcome == Outcome.SAVEPOINT_DONE and uri:
                self.record_savepoint(uri, op.type.value)
                self.status.message = f"final savepoint {uri}"
                self.emit(self.body, "Normal", "FinalSavepoint", f"final savepoint {uri}")
                log.info("%s: final savepoint %s", self.key, uri)
            else:
                self.status.message = f"deleted without a final savepoint ({why})"
                self.emit(self.body, "Warning", "FinalSavepointFailed",
                          f"final savepoint failed: {why}")
        elif op.type == Kind.RESCALE:
            if op.step == Step.ROLLING_BACK:
                source = (f"savepoint {op.savepoint}" if op.savepoint
                          else "the latest checkpoint")
                message = (f"rescale to {op.target} failed; running at {op.source} again "
                           f"from {source}")
            else:
                self.status.failed_rescale = None
                message = f"rescaled {op.source} -> {op.target} from savepoint {op.savepoint}"
            self.to(Event.JOB_RUNNING, message)
        elif op.type == Kind.UPGRADE:
            if outcome == Outcome.RUNNING:
                self.to(Event.JOB_RUNNING, f"running at parallelism {dep.parallelism}"
                        if dep else "running")
            else:
                self.emit(self.body, "Warning", "UpgradeStalled",
                          f"the upgraded pods do not run after "
                          f"{self.settings.rollout_timeout:g}s")
        elif op.type == Kind.SUSPEND and ex.warning:
            self.emit(self.body, "Warning", "SuspendStalled", "pods are still terminating")

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
        return names.revision_job_id(self.uid, (dep.revision + 1) if dep else 1)

    def roll_out(self, parallelism: int, from_savepoint: str | None, job_id: str,
                 event: Event, message: str) -> None:
        """A new revision: recorded in status first, then old pods go and new pods come."""
        dep = self.status.deployment
        self.status.deployment = Deployment(
            revision=(dep.revision + 1) if dep else 1, parallelism=parallelism, job_id=job_id,
            from_savepoint=from_savepoint, spec_hash=spec_hash(self.spec),
            started_at=self.clock(), state_backend=self.spec.state_backend.type)
        self.status.recovering_since_attempt = None
        self.to(event, message)
        self.ensure_support_objects()
        self.flush()
        self.heal()

    def ensure_support_objects(self) -> None:
        owner = self.body
        token = api_token(self.settings, self.uid) or secrets.token_urlsafe(32)
        kube.create(builders.token_secret(self.job, token, secrets.token_urlsafe(32),
                                          owner=owner))
        kube.create(builders.coordinator_service(self.job, owner=owner))
        if self.settings.network_policy:
            kube.create(builders.network_policy(self.job, self.settings, owner=owner))

    def token(self) -> str:
        derived = api_token(self.settings, self.uid)
        if derived:
            return derived                 # no need to read any Secret (no RBAC for it)
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

    def in_rollout(self) -> bool:
        op = self.status.operation
        return op is not None and op.step in (Step.PODS_STARTED, Step.ROLLING_BACK)

    def heal(self) -> None:
        dep = self.status.deployment
        if dep is None:
            return
        op = self.status.operation
        if op is not None and op.step in (Step.SAVEPOINT_REQUESTED, Step.SAVEPOINT_TAKEN):
            return              # the old pods stop by themselves; their exit is the operation's
        pods = self.pods()
        plan = self.plan(pods)
        if self.mode() is Mode.RUN:
            if plan.outcome == "finished":
                if self.in_rollout():
                    self.observed = Outcome.RUNNING    # it ran (and already finished)
                    return
                self.to(Event.JOB_FINISHED, "the job finished")
                plan = self.plan(pods)
            elif plan.outcome == "failed":
                if self.in_rollout():
                    self.observed = Outcome.FAILED
                    self.pending_error = plan.outcome_message
                    return
                self.to(Event.JOB_FAILED, f"the job failed: {plan.outcome_message}", warning=True)
                plan = self.plan(pods)
            elif plan.coordinator_crashed:
                strategy = self.spec.restart_strategy
                allowed = 0 if strategy.type == "none" else strategy.max_attempts
                crashes = dep.coordinator_crashes + 1
                lost = next(p for p in plan.replaced if p.role == names.ROLE_COORDINATOR)
                if crashes > allowed:
                    if self.in_rollout():
                        self.observed = Outcome.FAILED
                        self.pending_error = lost.describe()
                        return
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
        """Copy the coordinator's view into status and settle Pending/Recovering; tell a
        rollout in flight (``self.observed``) when its revision runs."""
        dep = self.status.deployment
        assert dep is not None
        try:
            view = self.client(pods).job()
        except CoordinatorUnavailable as err:
            log.debug("%s/%s: %s", self.namespace, self.name, err)
            return
        self.copy_view(view)
        if self.phase == Phase.RUNNING and self.status.operation is None:
            self.autoscale(pods)
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
            if self.in_rollout():
                if view.parallelism in (None, dep.parallelism):
                    self.observed = Outcome.RUNNING
            elif self.phase == Phase.RECOVERING:
                since = self.status.recovering_since_attempt
                if since is not None and view.attempt <= since:
                    return                            # the restore has not happened yet
                restored = (f"restored from checkpoint {view.restored_from}"
                            if view.restored_from is not None else "restarted")
                self.status.recovering_since_attempt = None
                self.to(Event.JOB_RUNNING, f"running again, {restored}")
            elif self.phase in (Phase.PENDING, Phase.RESCALING):
                self.to(Event.JOB_RUNNING, f"running at parallelism {dep.parallelism}")

    def autoscale(self, pods: list[PodInfo]) -> None:
        """One autoscaler poll: read the task metrics, decide (``autoscaler.decide``), record
        the decision in ``status.autoscaler``; a ``scale`` decision sets its target, which the
        next pass rolls out like a change of ``spec.parallelism`` (savepoint rescale with its
        rollback)."""
        spec = self.spec.autoscaler
        dep = self.status.deployment
        if spec is None or not spec.enabled:
            return
        assert dep is not None
        policy = auto.policy_from_spec(spec, self.spec.max_parallelism)
        state = self.status.autoscaler or AutoscalerStatus()
        memory = auto.Memory.load(state.memory)
        # any rollout (the autoscaler's, a manual change, a restart) restarts the cooldown
        since = max(memory.last_rescale_at or 0.0, dep.started_at) or None
        memory = dataclasses.replace(memory, last_rescale_at=since)
        try:
            doc = self.client(pods).tasks(spec.metrics_window)
        except CoordinatorUnavailable as err:
            log.debug("%s: autoscaler: %s", self.key, err)
            return
        now = self.clock()
        d = auto.decide(now, auto.Metrics.from_json(doc), dep.parallelism, memory, policy)
        METRICS.autoscaler_decision(self.namespace, self.name, d.action, d.recommended)
        decision = {"at": _iso(now), "action": d.action, "reason": d.reason,
                    "parallelism": d.current, "recommended": d.recommended,
                    "target": d.target, "need": d.need, "metrics": d.inputs}
        state = state.model_copy(update={
            "recommended": d.recommended if d.recommended is not None else state.recommended,
            "last_decision": decision, "memory": d.memory.dump()})
        if d.action == "scale" and d.target is not None:
            state = state.model_copy(update={"target": d.target, "last_scale": decision})
            log.info("%s: autoscaler: %s -> %s: %s", self.key, d.current, d.target, d.reason)
            self.emit(self.body, "Normal", "Autoscaled",
                      f"parallelism {d.current} -> {d.target}: {d.reason}")
            _dirty.add(self.key)              # roll it out in the next pass, right away
        elif state.target is None:
            state = state.model_copy(update={"target": dep.parallelism})
        self.status.autoscaler = state

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
