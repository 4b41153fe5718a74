"""Session windows under failure and rescale (exact output against a plain-Python reference),
and late records reaching the side output exactly once across a failover."""

from __future__ import annotations

import os
import signal

import pytest

from tests.integration.conftest import kill_worker_and_finish

pytestmark = pytest.mark.integration

# 10 s of event time at most 2.5x faster than the wall clock; 500 users.
ARGS = {"records": 200_000, "users": 500, "events_per_second": 20_000, "gap_ms": 1000,
        "rate": 50_000}


def _assert_exact(output, args):
    from streamjob.examples.sessions import check_output

    result = check_output(str(output), args)
    assert result["lines"] > 0 and (result["duplicates"], result["missing"],
                                    result["unexpected"]) == (0, 0, 0), result


def test_sessions_survive_a_killed_worker_with_exact_output(run_job):
    job = run_job("streamjob.examples.sessions:build", name="sessions", args=ARGS)
    output = job.cwd / "output"
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint") is not None
                 and any(output.glob("part-*")), what="committed sessions")
    kill_worker_and_finish(job, 0)
    _assert_exact(output, ARGS)


def test_open_sessions_move_with_their_key_groups_from_p2_to_p3(run_job):
    from tests.integration.conftest import savepoint

    # Slower, so that it still runs when the savepoint is asked for (same records).
    job = run_job("streamjob.examples.sessions:build", name="ses2",
                  args={**ARGS, "rate": 20_000})
    job.wait_for(lambda s: s.get("records_in", 0) > ARGS["records"] // 3, what="a third done")
    uri = savepoint(job, stop=True)
    assert job.wait() == 0, job.output()
    job3 = run_job("streamjob.examples.sessions:build", name="ses3", args=ARGS,
                   parallelism=3, extra=["--from-savepoint", uri])
    assert job3.wait() == 0, job3.output()
    _assert_exact(job.cwd / "output", ARGS)


def test_late_clicks_reach_the_side_output_exactly_once_across_a_failover(run_job, tmp_path):
    """Clicks 1.5 s late are within the allowed lateness (2 s): they reach their sessions
    (which fire again if they had fired) and the last version of every session is exact.
    Clicks moved more than 5.75 s back, clear of any session, are beyond it: each must be in the
    side output once (this assumes no source subtask lags 2 s of event time behind another)."""
    args = {**ARGS, "events_per_second": 10_000, "rate": 10_000, "gap_ms": 500,
            "delay_every": 89, "delay_ms": 1500, "late_every": 97, "allowed_lateness_ms": 2000,
            "late_output": str(tmp_path / "late")}
    job = run_job("streamjob.examples.sessions:build", name="late", args=args)
    late = tmp_path / "late"
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint") is not None
                 and any(late.glob("part-*")), timeout=120, what="committed late clicks")
    os.kill(job.workers()[1], signal.SIGKILL)
    job.wait_for(lambda s: s.get("restarts", 0) >= 1 and s.get("state") == "RUNNING",
                 what="restart")
    assert job.wait() == 0, job.output()
    assert job.status()["restored_from"] is not None
    from streamjob.examples.sessions import check_output

    result = check_output(str(job.cwd / "output"), args, str(late))
    assert result["sessions"] > 0 and result["late"] > 0, result
    assert (result["duplicates"], result["missing"], result["unexpected"],
            result["late_duplicates"], result["late_missing"], result["late_unexpected"]
            ) == (0, 0, 0, 0, 0, 0), result
