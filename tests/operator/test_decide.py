"""next_operation: the one thing a reconcile does next, from spec and status alone."""

from __future__ import annotations

from sj_bodies import streamjob_body

from streamjob_operator.decide import Op, next_operation
from streamjob_operator.model import Deployment, JobStatus, parse_job, spec_hash


def situation(phase="Running", deployed_p=2, status_extra=None, **spec):
    job = parse_job(streamjob_body(**spec))
    dep = Deployment(revision=1, parallelism=deployed_p, job_id="uid-1",
                     spec_hash=spec_hash(parse_job(streamjob_body()).spec))
    status = JobStatus(phase=phase, deployment=dep, **(status_extra or {}))
    return job.spec, status


def test_a_new_job_is_deployed_or_marked_suspended():
    spec = parse_job(streamjob_body()).spec
    assert next_operation(spec, JobStatus()) == Op.DEPLOY
    spec = parse_job(streamjob_body(state="suspended")).spec
    assert next_operation(spec, JobStatus()) == Op.SUSPEND


def test_a_steady_job_heals():
    assert next_operation(*situation()) == Op.HEAL


def test_a_parallelism_change_rescales_unless_it_already_failed():
    assert next_operation(*situation(parallelism=3)) == Op.RESCALE
    spec, status = situation(parallelism=3, status_extra={"failed_rescale": 3})
    assert next_operation(spec, status) == Op.HEAL
    spec, status = situation(parallelism=4, status_extra={"failed_rescale": 3})
    assert next_operation(spec, status) == Op.RESCALE


def test_suspend_and_resume():
    assert next_operation(*situation(state="suspended")) == Op.SUSPEND
    assert next_operation(*situation(phase="Suspended", state="suspended")) == Op.HEAL
    assert next_operation(*situation(phase="Suspended")) == Op.RESUME


def test_nonces():
    assert next_operation(*situation(savepointNonce=1)) == Op.SAVEPOINT
    spec, status = situation(savepointNonce=1, status_extra={"observed_savepoint_nonce": 1})
    assert next_operation(spec, status) == Op.HEAL
    assert next_operation(*situation(restartNonce=7)) == Op.RESTART
    assert next_operation(*situation(phase="Failed", restartNonce=7)) == Op.RESTART


def test_a_pipeline_change_is_an_upgrade_even_after_failure():
    assert next_operation(*situation(args={"words": 10})) == Op.UPGRADE
    assert next_operation(*situation(phase="Failed", image="other:1")) == Op.UPGRADE
    assert next_operation(*situation(phase="Failed")) == Op.HEAL


def test_a_rollout_in_flight_settles_before_the_next_change():
    assert next_operation(*situation(phase="Rescaling", parallelism=5)) == Op.HEAL
    assert next_operation(*situation(phase="Rescaling", args={"x": 1})) == Op.HEAL


def test_finished_jobs_do_not_rescale():
    assert next_operation(*situation(phase="Finished", parallelism=3)) == Op.HEAL
