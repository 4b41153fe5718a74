"""What the operator should do next for a job, from its spec and status alone (pure).

One operation per reconcile, in priority order; each operation is idempotent and records in
``status`` that it happened, so the next reconcile moves on to the next one.
"""

from __future__ import annotations

import enum

from streamjob.manifest import StreamJobSpec
from streamjob_operator.model import Deployment, JobStatus, spec_hash
from streamjob_operator.phases import Phase


class Op(enum.StrEnum):
    DEPLOY = "deploy"          # first rollout
    SUSPEND = "suspend"        # savepoint, stop, remove pods
    RESUME = "resume"          # new rollout from the suspend savepoint
    RESTART = "restart"        # restartNonce changed: new pods, latest checkpoint
    UPGRADE = "upgrade"        # pipeline/args/image/... changed: roll out per upgradeMode
    RESCALE = "rescale"        # parallelism changed: stop with savepoint, new pods
    SAVEPOINT = "savepoint"    # savepointNonce changed: savepoint, job keeps running
    HEAL = "heal"              # converge pods, watch the coordinator, settle phases
    CONTINUE = "continue"      # take the next step of status.operation (it was recorded first)


def target_parallelism(spec: StreamJobSpec, status: JobStatus) -> int:
    """The parallelism the job should run at: ``spec.parallelism``, or while the autoscaler
    is on, the parallelism it chose (``spec.parallelism`` until it chooses), within its
    bounds."""
    auto = spec.autoscaler
    if auto is None or not auto.enabled:
        return spec.parallelism
    chosen = status.autoscaler.target if status.autoscaler else None
    return min(max(chosen or spec.parallelism, auto.min_parallelism), auto.max_parallelism)


def next_operation(spec: StreamJobSpec, status: JobStatus, now: float | None = None) -> Op:
    phase = Phase(status.phase) if status.phase else None
    dep = status.deployment
    if status.operation is not None:
        return Op.CONTINUE                  # an operation in flight finishes (or rolls back) first
    postponed = (now is not None and status.postponed_until is not None
                 and now < status.postponed_until)
    if dep is None:
        return Op.SUSPEND if spec.state == "suspended" else Op.DEPLOY
    if spec.state == "suspended":
        return Op.HEAL if phase == Phase.SUSPENDED else Op.SUSPEND
    if phase == Phase.SUSPENDED:
        return Op.RESUME
    if spec.restart_nonce != status.observed_restart_nonce:
        return Op.RESTART
    if phase == Phase.RESCALING:
        return Op.HEAL                      # a rollout in flight settles before anything else
    if spec_hash(spec) != dep.spec_hash and not (postponed and phase == Phase.RUNNING
                                                 and spec.upgrade_mode == "savepoint"):
        return Op.UPGRADE
    if phase in (Phase.FINISHED, Phase.FAILED):
        return Op.HEAL
    if postponed:
        return Op.HEAL
    target = target_parallelism(spec, status)
    if target != dep.parallelism and target != status.failed_rescale:
        return Op.RESCALE
    if spec.savepoint_nonce is not None and spec.savepoint_nonce != status.observed_savepoint_nonce:
        return Op.SAVEPOINT
    return Op.HEAL


def upgrade_mode(spec: StreamJobSpec, dep: Deployment) -> str:
    """How an upgrade rolls out: ``spec.upgradeMode``, except that a change of state backend
    goes through a savepoint even in ``last-state`` mode. A checkpoint is in its backend's
    own format (RocksDB files, or a snapshot of dicts); a savepoint is canonical, readable by
    either backend (Flink's rule too). ``stateless`` stays stateless: no state to carry."""
    if spec.upgrade_mode == "last-state" and spec.state_backend.type != dep.state_backend:
        return "savepoint"
    return spec.upgrade_mode
