"""The scheduler's state machine and restore-point choice: pure functions, no servers."""

from __future__ import annotations

import pytest

from streamjob import jobstate as js
from streamjob.jobstate import JobState as S

STRATEGY = {"strategy_type": "fixed-delay", "max_attempts": 3, "delay_for": lambda n: 0.1 * n}


def fail(state, restarts=0, **kw):
    return js.on_failure(state, restarts, "lost worker 1", **{**STRATEGY, **kw})


def test_a_lost_worker_while_deploying_is_a_new_counted_deploy_attempt():
    t = fail(S.DEPLOYING, restarts=1)
    assert (t.state, t.action, t.restarts, t.counted) == (S.RESTARTING, "restart", 2, True)
    assert t.delay == pytest.approx(0.2)
    # and the restart deploys again once every worker is connected and idle
    assert js.on_workers_ready(t.state) is S.DEPLOYING


@pytest.mark.parametrize("state", [S.RUNNING, S.FINISHING, S.DEPLOYING])
def test_failures_of_deployed_states_restart_until_attempts_run_out(state):
    assert fail(state, restarts=2).action == "restart"
    t = fail(state, restarts=3)
    assert (t.state, t.action) == (S.FAILED, "fail")
    assert "no restart attempts left (3 allowed)" in t.message
    assert fail(state, strategy_type="none").state is S.FAILED


@pytest.mark.parametrize("state", [S.CREATED, S.RESTARTING])
def test_waiting_states_keep_waiting_on_a_lost_worker_but_a_timeout_counts(state):
    t = fail(state, restarts=1)
    assert (t.state, t.action, t.restarts) == (state, "none", 1)
    t = fail(state, restarts=1, timed_out=True)
    assert (t.state, t.action, t.restarts) == (S.RESTARTING, "restart", 2)
    assert fail(state, restarts=3, timed_out=True).state is S.FAILED


@pytest.mark.parametrize("state", sorted(js.TERMINAL))
def test_terminal_states_ignore_failures(state):
    assert fail(state).action == "none" and fail(state).state is state


def test_an_acknowledged_stop_is_never_restarted():
    t = fail(S.FINISHING, restarts=0, stopped_with=7)
    assert t.action == "finish-stop" and t.restarts == 0


def test_every_waiting_state_has_a_deadline_and_a_timeout_reason():
    for state in S:
        limit = js.deadline(state, checkpoint_timeout=30.0)
        if state in js.TERMINAL or state is S.RUNNING:
            assert limit is None and js.on_timeout(state, 1.0) is None
        else:
            assert 0 < limit < float("inf"), state
            assert js.on_timeout(state, limit + 1)
    assert js.deadline(S.DEPLOYING, 600.0) == 600.0        # a slow restore is not a hang
    assert js.deadline(S.DEPLOYING, 1.0) == js.DEPLOY_FLOOR
    assert js.deadline(S.DEPLOYING, 1.0, deploy_timeout=2.5) == 2.5


def test_happy_path_transitions():
    assert js.on_workers_ready(S.CREATED) is S.DEPLOYING
    assert js.on_workers_ready(S.RUNNING) is S.RUNNING
    assert js.on_all_running(S.DEPLOYING) is S.RUNNING
    assert js.on_all_running(S.RESTARTING) is S.RESTARTING
    assert js.on_final_checkpoint(S.RUNNING) is S.FINISHING
    assert js.on_all_committed(S.FINISHING, stopped=False) is S.FINISHED
    assert js.on_all_committed(S.FINISHING, stopped=True) is S.STOPPED
    assert js.on_all_committed(S.RESTARTING, stopped=False) is S.RESTARTING


def test_public_state_keeps_the_vocabulary_of_the_status_readers():
    assert js.public_state(S.DEPLOYING, attempt=0) == "CREATED"
    assert js.public_state(S.DEPLOYING, attempt=2) == "RESTARTING"
    assert js.public_state(S.FINISHING, attempt=0) == "RUNNING"
    assert js.public_state(S.FAILED, attempt=0) == "FAILED"


def test_restore_falls_back_to_the_newest_checkpoint_without_a_problem():
    c = js.choose_restore([3, 5, 4], {5: "restore failed: checksum mismatch"}, False)
    assert c.checkpoint_id == 4 and c.error is None
    assert c.skipped == ((5, "restore failed: checksum mismatch"),)


def test_checkpoints_but_none_restorable_is_an_error_unless_a_fresh_start_is_allowed():
    problems = {4: "_metadata is corrupt", 3: "state file x is missing"}
    c = js.choose_restore([3, 4], problems, allow_fresh_start=False)
    assert c.checkpoint_id is None
    assert "chk-4: _metadata is corrupt" in c.error and "chk-3" in c.error
    assert "--allow-fresh-start" in c.error
    c = js.choose_restore([3, 4], problems, allow_fresh_start=True)
    assert (c.checkpoint_id, c.error) == (None, None) and len(c.skipped) == 2


def test_no_checkpoint_at_all_is_a_fresh_start():
    assert js.choose_restore([], {}, False) == js.RestoreChoice(None)


def test_missing_or_resized_state_files_are_found_before_a_deploy():
    sizes = {"a": 10, "b": 7, "c": 3}
    handles = [{"key": "a", "size": 10}, {"inline": "xx", "size": 0},
               {"key": "b", "size": 7, "chain": [{"key": "c", "size": 3}]}]
    assert js.missing_or_short(handles, sizes.get) is None
    assert "c has 2 bytes" in js.missing_or_short(handles, {**sizes, "c": 2}.get)
    assert "b is missing" in js.missing_or_short(handles, {"a": 10, "c": 3}.get)


def test_a_restore_behind_committed_output_fails_unless_explicitly_allowed():
    later = ["out/part-ab-0-7", "out/part-ab-1-7"]
    skipped = [(7, "state file job/chk-7/t1/0-x is missing")]
    error = js.rewind_error(6, later, skipped, allow_fresh_start=False)
    assert error is not None
    assert "checkpoint 6" in error and "checkpoint 7: state file" in error
    assert "2 output file(s)" in error and "--allow-fresh-start" in error
    assert js.rewind_error(6, later, skipped, allow_fresh_start=True) is None
    assert js.rewind_error(6, [], skipped, allow_fresh_start=False) is None
    assert "the beginning" in js.rewind_error(0, later, [], allow_fresh_start=False)
