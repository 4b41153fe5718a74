"""The StreamJob's phase machine and the conditions derived from it (pure).

Every transition is listed in :data:`TRANSITIONS`; an event that has no entry for the current
phase leaves the phase unchanged (``transition`` says so), so a repeated or late event is
harmless. Conditions follow the Kubernetes shape so that ``kubectl wait --for=condition=Ready``
works.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RECOVERING = "Recovering"
    RESCALING = "Rescaling"
    SUSPENDED = "Suspended"
    FINISHED = "Finished"
    FAILED = "Failed"


class Event(enum.StrEnum):
    DEPLOYED = "Deployed"              # pods of a new revision were created
    JOB_RUNNING = "JobRunning"         # coordinator RUNNING and every pod running
    POD_LOST = "PodLost"               # a pod failed, was deleted or evicted
    JOB_RESTARTING = "JobRestarting"   # the coordinator restores from a checkpoint
    RESCALE_STARTED = "RescaleStarted"
    ROLLED_BACK = "RolledBack"         # a failed rescale/upgrade went back to the old shape
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    RESTARTED = "Restarted"            # restartNonce, or an upgrade redeploy
    JOB_FINISHED = "JobFinished"
    JOB_FAILED = "JobFailed"


P, E = Phase, Event
_ACTIVE = (P.PENDING, P.RUNNING, P.RECOVERING, P.RESCALING)

TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    P.PENDING: {E.DEPLOYED: P.PENDING, E.JOB_RUNNING: P.RUNNING, E.POD_LOST: P.RECOVERING,
                E.JOB_RESTARTING: P.RECOVERING, E.RESCALE_STARTED: P.RESCALING},
    P.RUNNING: {E.DEPLOYED: P.PENDING, E.POD_LOST: P.RECOVERING, E.JOB_RESTARTING: P.RECOVERING,
                E.RESCALE_STARTED: P.RESCALING},
    P.RECOVERING: {E.DEPLOYED: P.PENDING, E.JOB_RUNNING: P.RUNNING,
                   E.RESCALE_STARTED: P.RESCALING},
    # a pod lost while rescaling is replaced, but the phase stays Rescaling until it settles
    P.RESCALING: {E.JOB_RUNNING: P.RUNNING, E.ROLLED_BACK: P.RESCALING},
    P.SUSPENDED: {E.RESUMED: P.PENDING, E.DEPLOYED: P.PENDING},
    P.FINISHED: {E.RESTARTED: P.PENDING, E.DEPLOYED: P.PENDING},
    P.FAILED: {E.RESTARTED: P.PENDING, E.DEPLOYED: P.PENDING},
}
for _phase in _ACTIVE:
    TRANSITIONS[_phase].update({E.SUSPENDED: P.SUSPENDED, E.RESTARTED: P.PENDING,
                                E.JOB_FINISHED: P.FINISHED, E.JOB_FAILED: P.FAILED})


@dataclass(frozen=True)
class Transition:
    source: Phase | None
    target: Phase
    event: Event

    @property
    def changed(self) -> bool:
        return self.source != self.target


def transition(phase: Phase | str | None, event: Event) -> Transition:
    """Where ``event`` takes a job in ``phase`` (a new job starts as Pending)."""
    source = Phase(phase) if phase else None
    table = TRANSITIONS[source] if source else {E.DEPLOYED: P.PENDING, E.SUSPENDED: P.SUSPENDED}
    return Transition(source, table.get(event, source or P.PENDING), event)


def conditions(phase: Phase, message: str, generation: int | None,
               previous: Sequence[Mapping[str, Any]] = (), now: str = "") -> list[dict[str, Any]]:
    """Ready, Progressing and Degraded for ``phase``; transition times kept when unchanged."""
    truth = {
        "Ready": phase == P.RUNNING,
        "Progressing": phase in (P.PENDING, P.RECOVERING, P.RESCALING),
        "Degraded": phase in (P.RECOVERING, P.FAILED),
    }
    before = {c.get("type"): c for c in previous}
    result = []
    for kind, value in truth.items():
        status = "True" if value else "False"
        old = before.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        result.append({"type": kind, "status": status, "reason": phase.value,
                       "message": message, "observedGeneration": generation,
                       "lastTransitionTime": since or now})
    return result
