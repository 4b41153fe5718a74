"""Multi-step operations as an explicit state machine (pure).

A rescale, a suspend, an upgrade from a savepoint and the final savepoint before a delete take
several steps (ask the coordinator for a stop-savepoint, learn its path, stop the old pods,
start the new ones, watch them run). Each step is written to ``status.operation`` *before* the
operator acts on it, so an operator that restarts in the middle reads where it was and takes
the step's exit: the next step, a retry, or a rollback with a Warning event.

``status.operation``::

    {type: rescale|suspend|upgrade|savepoint-on-delete,
     step: savepoint-requested|savepoint-taken|pods-started|pods-stopped|rolling-back,
     savepoint: <uri or null>, from: 2, to: 3, revision: <revision it started from>,
     startedAt: <epoch s>, stepSince: <epoch s>, attempt: <savepoint requests so far>}

:data:`FLOWS` lists every exit of every step of every kind; :func:`exit_for` looks one up and
:func:`timed_out` says when a step has waited too long (every step has a timeout, and
``Outcome.TIMEOUT`` is an exit of every step). Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class Kind(enum.StrEnum):
    RESCALE = "rescale"
    SUSPEND = "suspend"
    UPGRADE = "upgrade"
    SAVEPOINT_ON_DELETE = "savepoint-on-delete"


class Step(enum.StrEnum):
    SAVEPOINT_REQUESTED = "savepoint-requested"   # stop-savepoint asked for, path not known yet
    SAVEPOINT_TAKEN = "savepoint-taken"           # path known (recorded), old pods still there
    PODS_STARTED = "pods-started"                 # the new revision's pods were created
    PODS_STOPPED = "pods-stopped"                 # every pod is being removed (suspend)
    ROLLING_BACK = "rolling-back"                 # old parallelism again, from the savepoint


class Outcome(enum.StrEnum):
    """What the operator observed for the current step."""
    SAVEPOINT_DONE = "savepoint-done"       # the savepoint's path is known
    SAVEPOINT_REFUSED = "savepoint-refused"  # refused/aborted: the job runs as before
    STOPPED_UNKNOWN = "stopped-unknown"     # the coordinator stopped (exit 0), path never learnt
    PROCEED = "proceed"                     # nothing to wait for (savepoint-taken)
    RUNNING = "running"                     # the started revision runs at its parallelism
    FAILED = "failed"                       # the started revision failed (coordinator exit 2)
    PODS_GONE = "pods-gone"                 # no pod of the job is left
    TIMEOUT = "timeout"                     # the step waited longer than its timeout


class Action(enum.StrEnum):
    """What the operator does when it takes an exit."""
    NEXT = "next"                     # record the savepoint, go to the next step
    ROLL_OUT = "roll-out"             # start a new revision from the savepoint (target shape)
    ROLL_OUT_LAST_STATE = "roll-out-last-state"  # new revision, latest checkpoint, same job id
    STOP_PODS = "stop-pods"           # suspended: remove every pod
    ROLL_BACK = "roll-back"           # old parallelism from the operation's savepoint
    ROLL_BACK_LAST_STATE = "roll-back-last-state"  # old parallelism, latest checkpoint
    ABANDON = "abandon"               # drop the operation: the job still runs as before it
    DONE = "done"                     # the operation is over, as intended
    FAIL = "fail"                     # the operation is over and the job failed


@dataclass(frozen=True)
class Exit:
    step: Step | None      # the next step; None: the operation is over
    action: Action
    warning: bool = False  # post a Warning event (the operation did not go as intended)


S, O, A = Step, Outcome, Action  # noqa: E741

#: every exit of every step, per kind of operation
FLOWS: dict[Kind, dict[Step, dict[Outcome, Exit]]] = {
    Kind.RESCALE: {
        S.SAVEPOINT_REQUESTED: {
            O.SAVEPOINT_DONE: Exit(S.SAVEPOINT_TAKEN, A.NEXT),
            # the job was not stopped: it runs at the old parallelism; the rescale is retried
            O.SAVEPOINT_REFUSED: Exit(None, A.ABANDON, warning=True),
            # stopped, but the savepoint's path was lost with a restarted operator: old
            # parallelism from the latest checkpoint (same job id); the rescale is retried
            O.STOPPED_UNKNOWN: Exit(S.ROLLING_BACK, A.ROLL_BACK_LAST_STATE, warning=True),
            # no answer in time: a stop may still be pending, so restart the old shape
            O.TIMEOUT: Exit(S.ROLLING_BACK, A.ROLL_BACK_LAST_STATE, warning=True),
        },
        S.SAVEPOINT_TAKEN: {
            O.PROCEED: Exit(S.PODS_STARTED, A.ROLL_OUT),
            O.TIMEOUT: Exit(S.PODS_STARTED, A.ROLL_OUT),
        },
        S.PODS_STARTED: {
            O.RUNNING: Exit(None, A.DONE),
            O.FAILED: Exit(S.ROLLING_BACK, A.ROLL_BACK, warning=True),
            O.TIMEOUT: Exit(S.ROLLING_BACK, A.ROLL_BACK, warning=True),
        },
        S.ROLLING_BACK: {
            O.RUNNING: Exit(None, A.DONE, warning=True),
            O.FAILED: Exit(None, A.FAIL, warning=True),
            O.TIMEOUT: Exit(None, A.FAIL, warning=True),
        },
    },
    Kind.SUSPEND: {
        S.SAVEPOINT_REQUESTED: {
            O.SAVEPOINT_DONE: Exit(S.SAVEPOINT_TAKEN, A.NEXT),
            # suspended anyway; resume restores the latest checkpoint
            O.SAVEPOINT_REFUSED: Exit(S.PODS_STOPPED, A.STOP_PODS, warning=True),
            O.STOPPED_UNKNOWN: Exit(S.PODS_STOPPED, A.STOP_PODS, warning=True),
            O.TIMEOUT: Exit(S.PODS_STOPPED, A.STOP_PODS, warning=True),
        },
        S.SAVEPOINT_TAKEN: {
            O.PROCEED: Exit(S.PODS_STOPPED, A.STOP_PODS),
            O.TIMEOUT: Exit(S.PODS_STOPPED, A.STOP_PODS),
        },
        S.PODS_STOPPED: {
            O.PODS_GONE: Exit(None, A.DONE),
            O.TIMEOUT: Exit(None, A.DONE, warning=True),   # pods stuck terminating
        },
    },
    Kind.UPGRADE: {
        S.SAVEPOINT_REQUESTED: {
            O.SAVEPOINT_DONE: Exit(S.SAVEPOINT_TAKEN, A.NEXT),
            O.SAVEPOINT_REFUSED: Exit(None, A.ABANDON, warning=True),   # retried
            # the old spec is gone, so there is nothing to roll back to: upgrade from the
            # latest checkpoint (last-state)
            O.STOPPED_UNKNOWN: Exit(S.PODS_STARTED, A.ROLL_OUT_LAST_STATE, warning=True),
            O.TIMEOUT: Exit(S.PODS_STARTED, A.ROLL_OUT_LAST_STATE, warning=True),
        },
        S.SAVEPOINT_TAKEN: {
            O.PROCEED: Exit(S.PODS_STARTED, A.ROLL_OUT),
            O.TIMEOUT: Exit(S.PODS_STARTED, A.ROLL_OUT),
        },
        S.PODS_STARTED: {
            O.RUNNING: Exit(None, A.DONE),
            O.FAILED: Exit(None, A.FAIL, warning=True),
            # the new pods do not run (unschedulable, image missing): say so, keep healing
            O.TIMEOUT: Exit(None, A.DONE, warning=True),
        },
    },
    Kind.SAVEPOINT_ON_DELETE: {
        S.SAVEPOINT_REQUESTED: {
            O.SAVEPOINT_DONE: Exit(None, A.DONE),
            O.SAVEPOINT_REFUSED: Exit(None, A.DONE, warning=True),   # deleted without one
            O.STOPPED_UNKNOWN: Exit(None, A.DONE, warning=True),
            O.TIMEOUT: Exit(None, A.DONE, warning=True),
        },
    },
}

#: the kinds whose savepoint also stops the job
STOPPING = frozenset(Kind)


@dataclass(frozen=True)
class Limits:
    savepoint_timeout: float
    rollout_timeout: float
    #: extra time for an answer that is on its way (HTTP, a pod event)
    grace: float = 30.0

    def timeout(self, step: Step) -> float:
        if step == Step.SAVEPOINT_REQUESTED:
            return self.savepoint_timeout + self.grace
        if step == Step.SAVEPOINT_TAKEN:
            return self.grace
        return self.rollout_timeout


class Operation(BaseModel):
    """``status.operation``: one multi-step operation in flight."""
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    type: Kind
    step: Step
    savepoint: str | None = None
    source: int | None = Field(None, alias="from")
    target: int | None = Field(None, alias="to")
    revision: int | None = None
    started_at: float = Field(0.0, alias="startedAt")
    step_since: float = Field(0.0, alias="stepSince")
    attempt: int = 0

    def dump(self) -> dict[str, object]:
        return self.model_dump(by_alias=True, mode="json")

    def at(self, step: Step, now: float, **changes: object) -> Operation:
        return self.model_copy(update={"step": step, "step_since": now, **changes})


def start(kind: Kind, now: float, *, source: int | None = None, target: int | None = None,
          revision: int | None = None) -> Operation:
    """A new operation: its first step is always asking for the savepoint."""
    return Operation(type=kind, step=Step.SAVEPOINT_REQUESTED, source=source, target=target,
                     revision=revision, started_at=now, step_since=now)


def exit_for(op: Operation, outcome: Outcome) -> Exit | None:
    """The exit ``outcome`` takes from ``op``'s step, or None (keep waiting)."""
    return FLOWS[op.type].get(op.step, {}).get(outcome)


def timed_out(op: Operation, now: float, limits: Limits) -> bool:
    return now - op.step_since > limits.timeout(op.step)
