"""next_operation: the one thing a reconcile does next, from spec and status alone."""

from __future__ import annotations

import hashlib
import json

from sj_bodies import streamjob_body

from streamjob_operator.decide import Op, next_operation, upgrade_mode
from streamjob_operator.model import UPGRADE_FIELDS, Deployment, JobStatus, parse_job, spec_hash


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


ROCKSDB = {"type": "rocksdb", "rocksdb": {"blockCacheMB": 64}}


def test_a_state_backend_change_is_an_upgrade():
    assert next_operation(*situation(stateBackend=ROCKSDB)) == Op.UPGRADE
    spec, status = situation(stateBackend=ROCKSDB)
    assert status.deployment is not None
    status.deployment.spec_hash = spec_hash(spec)
    assert next_operation(spec, status) == Op.HEAL
    # a rocksdb setting changed on a rocksdb job: new pods too
    changed = parse_job(streamjob_body(stateBackend={"type": "rocksdb",
                                                     "rocksdb": {"blockCacheMB": 128}})).spec
    assert next_operation(changed, status) == Op.UPGRADE


def test_memory_backend_jobs_keep_the_hash_they_had_before_state_backends_existed():
    before = parse_job(streamjob_body()).spec
    data = before.model_dump(by_alias=True, mode="json")
    text = json.dumps({k: data.get(k) for k in UPGRADE_FIELDS}, sort_keys=True,
                      separators=(",", ":"))
    assert spec_hash(before) == hashlib.sha256(text.encode()).hexdigest()[:16]
    # rocksdb settings of a job on the memory backend do not matter
    tuned = parse_job(streamjob_body(stateBackend={"type": "memory",
                                                   "rocksdb": {"blockCacheMB": 64}})).spec
    assert spec_hash(tuned) == spec_hash(before)


def test_a_backend_switch_goes_through_a_savepoint_even_in_last_state_mode():
    dep = Deployment(revision=1, parallelism=2, job_id="uid-1", spec_hash="h")
    assert dep.state_backend == "memory"           # status written before the field existed
    spec = parse_job(streamjob_body(upgradeMode="last-state", stateBackend=ROCKSDB)).spec
    assert upgrade_mode(spec, dep) == "savepoint"
    spec = parse_job(streamjob_body(upgradeMode="last-state", args={"x": 1})).spec
    assert upgrade_mode(spec, dep) == "last-state"
    spec = parse_job(streamjob_body(upgradeMode="stateless", stateBackend=ROCKSDB)).spec
    assert upgrade_mode(spec, dep) == "stateless"
    rocks = dep.model_copy(update={"state_backend": "rocksdb"})
    spec = parse_job(streamjob_body(upgradeMode="last-state")).spec
    assert upgrade_mode(spec, rocks) == "savepoint"
