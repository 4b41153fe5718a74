"""The phase machine and the conditions it shows."""

from __future__ import annotations

import pytest

from streamjob_operator.phases import TRANSITIONS, Event, Phase, conditions, transition


@pytest.mark.parametrize(("source", "event", "target"), [
    (None, Event.DEPLOYED, Phase.PENDING),
    (None, Event.SUSPENDED, Phase.SUSPENDED),
    (Phase.PENDING, Event.JOB_RUNNING, Phase.RUNNING),
    (Phase.RUNNING, Event.POD_LOST, Phase.RECOVERING),
    (Phase.RUNNING, Event.JOB_RESTARTING, Phase.RECOVERING),
    (Phase.RECOVERING, Event.JOB_RUNNING, Phase.RUNNING),
    (Phase.RUNNING, Event.RESCALE_STARTED, Phase.RESCALING),
    (Phase.RESCALING, Event.POD_LOST, Phase.RESCALING),
    (Phase.RESCALING, Event.ROLLED_BACK, Phase.RESCALING),
    (Phase.RESCALING, Event.JOB_RUNNING, Phase.RUNNING),
    (Phase.RUNNING, Event.SUSPENDED, Phase.SUSPENDED),
    (Phase.SUSPENDED, Event.RESUMED, Phase.PENDING),
    (Phase.SUSPENDED, Event.POD_LOST, Phase.SUSPENDED),
    (Phase.RUNNING, Event.JOB_FINISHED, Phase.FINISHED),
    (Phase.RECOVERING, Event.JOB_FAILED, Phase.FAILED),
    (Phase.FAILED, Event.POD_LOST, Phase.FAILED),
    (Phase.FAILED, Event.JOB_RUNNING, Phase.FAILED),
    (Phase.FAILED, Event.RESTARTED, Phase.PENDING),
    (Phase.FINISHED, Event.RESTARTED, Phase.PENDING),
])
def test_transition(source, event, target):
    step = transition(source, event)
    assert step.target == target
    assert step.changed == (source != target)


def test_terminal_phases_leave_only_by_an_explicit_restart_or_redeploy():
    for phase in (Phase.FINISHED, Phase.FAILED):
        assert set(TRANSITIONS[phase]) == {Event.RESTARTED, Event.DEPLOYED}


def test_every_phase_has_a_row():
    assert set(TRANSITIONS) == set(Phase)


def test_ready_only_when_running_and_degraded_while_recovering_or_failed():
    def truth(phase):
        return {c["type"]: c["status"] for c in conditions(phase, "", 1)}
    assert truth(Phase.RUNNING) == {"Ready": "True", "Progressing": "False",
                                    "Degraded": "False"}
    assert truth(Phase.RECOVERING) == {"Ready": "False", "Progressing": "True",
                                       "Degraded": "True"}
    assert truth(Phase.RESCALING)["Progressing"] == "True"
    assert truth(Phase.FAILED) == {"Ready": "False", "Progressing": "False", "Degraded": "True"}
    assert truth(Phase.SUSPENDED) == {"Ready": "False", "Progressing": "False",
                                      "Degraded": "False"}


def test_conditions_carry_generation_and_keep_their_transition_time():
    first = conditions(Phase.RUNNING, "ok", 4, now="2026-01-01T00:00:00Z")
    assert all(c["observedGeneration"] == 4 for c in first)
    later = conditions(Phase.RUNNING, "still ok", 5, first, now="2026-01-01T00:05:00Z")
    ready = next(c for c in later if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    moved = conditions(Phase.RECOVERING, "lost", 5, later, now="2026-01-01T00:06:00Z")
    ready = next(c for c in moved if c["type"] == "Ready")
    assert (ready["status"], ready["lastTransitionTime"]) == ("False", "2026-01-01T00:06:00Z")
