"""A generator's rate schedule counts from the job's first start (start_at), not from the
attempt: a job started (or resumed) late is behind by what the schedule allowed meanwhile,
reports it as backlog, catches up, and its output is exact."""

from __future__ import annotations

import time

import pytest

from .conftest import assert_exactly_once
from .test_observability import call

pytestmark = pytest.mark.integration

RECORDS, WORDS = 80_000, 300  # well beyond what the queues read ahead (~30,000)


def test_a_schedule_started_in_the_past_is_behind_by_its_backlog_and_catches_up(run_job):
    # The schedule allowed 1,000/s from 300 s ago: all 80,000 records are due at once (and
    # the keyed task reads at most ~3,300/s per subtask: 300 us of CPU per record). Counted
    # from the attempt instead, at most a few thousand would be due by the first report.
    job = run_job("streamjob.examples.scheduled:build", name="sched",
                  args={"records": RECORDS, "words": WORDS, "schedule": "0s:1000",
                        "start_at": time.time() - 300, "cost_us": 300})
    status = job.wait_for(lambda s: s.get("state") == "RUNNING", what="RUNNING")
    port = status["coordinator"]["api_port"]
    token = (job.cwd / ".streamjob/runs/sched/api-token").read_text().strip()
    backlogs = []

    def reported():
        code, body = call(port, "/api/v1/tasks?window=1", token)
        if code != 200 or not body["tasks"][0]["subtasks"]:
            return False
        backlogs.append(body["tasks"][0]["backlog"])
        return True

    deadline = time.monotonic() + 60
    while not reported():
        assert time.monotonic() < deadline, "no task metrics within 60 s"
        time.sleep(0.2)  # polling for a condition
    assert job.wait() == 0, job.output()
    assert backlogs[0] is not None and backlogs[0] >= 10_000, backlogs
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)
