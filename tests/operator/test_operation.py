"""The operation state machine (pure): every step of every kind has an exit, a timeout, and a
way out of the operation; rollbacks and abandons warn."""

from __future__ import annotations

import pytest
from sj_bodies import streamjob_body

from streamjob_operator import operation as ops
from streamjob_operator.decide import Op, next_operation
from streamjob_operator.model import Deployment, JobStatus, parse_job, spec_hash
from streamjob_operator.operation import FLOWS, Action, Kind, Outcome, Step

LIMITS = ops.Limits(savepoint_timeout=300, rollout_timeout=120, grace=30)


@pytest.mark.parametrize("kind", list(Kind))
def test_every_step_has_a_timeout_exit_and_every_exit_leads_somewhere_known(kind):
    flow = FLOWS[kind]
    assert Step.SAVEPOINT_REQUESTED in flow          # every operation starts by asking
    for step, exits in flow.items():
        assert Outcome.TIMEOUT in exits, (kind, step)
        assert 0 < LIMITS.timeout(step) < float("inf")
        for outcome, ex in exits.items():
            assert ex.step is None or ex.step in flow, (kind, step, outcome)


@pytest.mark.parametrize("kind", list(Kind))
def test_every_step_is_reachable_and_every_step_can_end_the_operation(kind):
    flow = FLOWS[kind]
    reachable, todo = {Step.SAVEPOINT_REQUESTED}, [Step.SAVEPOINT_REQUESTED]
    while todo:
        for ex in flow[todo.pop()].values():
            if ex.step is not None and ex.step not in reachable:
                reachable.add(ex.step)
                todo.append(ex.step)
    assert reachable == set(flow)
    # from each step, following timeouts alone ends the operation (no cycle of waits)
    for step in flow:
        seen, current = set(), step
        while current is not None:
            assert current not in seen, (kind, step)
            seen.add(current)
            current = flow[current][Outcome.TIMEOUT].step


@pytest.mark.parametrize("kind", list(Kind))
def test_exits_that_do_not_do_what_was_asked_warn(kind):
    for step, exits in FLOWS[kind].items():
        for outcome, ex in exits.items():
            if ex.action in (Action.ROLL_BACK, Action.ROLL_BACK_LAST_STATE, Action.ABANDON,
                             Action.FAIL, Action.ROLL_OUT_LAST_STATE):
                assert ex.warning, (kind, step, outcome)
            if outcome in (Outcome.TIMEOUT, Outcome.STOPPED_UNKNOWN, Outcome.FAILED,
                           Outcome.SAVEPOINT_REFUSED) and step != Step.SAVEPOINT_TAKEN:
                assert ex.warning, (kind, step, outcome)


def test_a_rescale_goes_forward_or_back_never_nowhere():
    op = ops.start(Kind.RESCALE, 100.0, source=2, target=3, revision=1)
    assert (op.step, op.source, op.target, op.started_at) == (Step.SAVEPOINT_REQUESTED, 2, 3,
                                                                100.0)
    assert ops.exit_for(op, Outcome.SAVEPOINT_DONE).step == Step.SAVEPOINT_TAKEN
    # the coordinator stopped but its answer was lost: back to 2 from the latest checkpoint
    assert ops.exit_for(op, Outcome.STOPPED_UNKNOWN).action == Action.ROLL_BACK_LAST_STATE
    assert ops.exit_for(op, Outcome.RUNNING) is None          # not an exit of this step: wait
    started = op.at(Step.PODS_STARTED, 200.0, savepoint="s3://b/sp-1")
    assert ops.exit_for(started, Outcome.FAILED).action == Action.ROLL_BACK
    assert ops.exit_for(started, Outcome.RUNNING).action == Action.DONE
    back = started.at(Step.ROLLING_BACK, 300.0)
    assert ops.exit_for(back, Outcome.FAILED).action == Action.FAIL


def test_timeouts_count_from_the_step_not_the_operation():
    op = ops.start(Kind.SUSPEND, 0.0)
    assert not ops.timed_out(op, 330.0, LIMITS)
    assert ops.timed_out(op, 331.0, LIMITS)
    later = op.at(Step.PODS_STOPPED, 1000.0)
    assert not ops.timed_out(later, 1100.0, LIMITS) and ops.timed_out(later, 1121.0, LIMITS)


def test_the_operation_round_trips_through_status():
    op = ops.start(Kind.UPGRADE, 5.0, source=2, target=2, revision=4)
    status = JobStatus.from_body({"operation": op.dump()})
    assert status.operation == op
    assert status.dump()["operation"]["from"] == 2 and status.dump()["operation"]["type"] == \
        "upgrade"


def test_an_operation_in_flight_comes_before_everything_else():
    job = parse_job(streamjob_body(state="suspended", restartNonce=3, parallelism=4))
    dep = Deployment(revision=1, parallelism=2, job_id="uid-1", spec_hash=spec_hash(job.spec))
    op = ops.start(Kind.RESCALE, 0.0, source=2, target=3, revision=1)
    status = JobStatus(phase="Rescaling", deployment=dep, operation=op)
    assert next_operation(job.spec, status) == Op.CONTINUE


def test_a_postponed_rescale_waits_until_its_time():
    job = parse_job(streamjob_body(parallelism=3))
    dep = Deployment(revision=1, parallelism=2, job_id="uid-1", spec_hash=spec_hash(job.spec))
    status = JobStatus(phase="Running", deployment=dep, postponed_until=100.0)
    assert next_operation(job.spec, status, now=50.0) == Op.HEAL
    assert next_operation(job.spec, status, now=101.0) == Op.RESCALE
