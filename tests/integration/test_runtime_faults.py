"""Issue 11 (worker, task, sink): never lose an epoch, never hang. Real ``streamjob run``
process trees, faults injected at named worker-side protocol points."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from streamjob import faults
from streamjob.examples.lastn import check_output
from tests.integration.conftest import assert_exactly_once

pytestmark = pytest.mark.integration

WORDS = 500


def _staged_left(output) -> list[str]:
    """Staging folders left next to the output (a finished job has committed them all)."""
    staging = output.with_name(f".{output.name}.staging")
    return sorted(p.name for p in staging.glob("*/chk-*"))


def _fault_env(tmp_path, spec: str) -> dict[str, str]:
    return {"STREAMJOB_FAULTS": spec, "STREAMJOB_FAULTS_DIR": str(tmp_path / "faults")}


@pytest.mark.parametrize("spec", [
    "sink.during-commit=kill",
    "sink.after-pre-commit=kill,skip=3",
    "worker.after-snapshot-upload=kill,skip=3",
    "worker.after-snapshot-upload=kill,skip=3;worker.during-restore=kill",
])
def test_worker_killed_at_a_protocol_point_keeps_exactly_once(run_job, tmp_path, spec):
    records = 120_000
    job = run_job(args={"records": records, "words": WORDS, "rate": 30_000},
                  env=_fault_env(tmp_path, spec))
    assert job.wait(240) == 0, job.output()
    for index in range(spec.count(";") + 1):
        assert faults.fired(tmp_path / "faults", index) == 1, (spec, job.output()[-3000:])
    assert job.status()["restarts"] >= 1
    assert_exactly_once(job.cwd / "output", records, WORDS)
    assert _staged_left(job.cwd / "output") == []


def test_declined_delta_after_a_failed_upload_still_commits_its_epoch(run_job, tmp_path):
    """Incremental, two checkpoints in flight, one state upload fails: the next delta is
    declined (its base is gone) but its epoch's sink output must still be staged and later
    committed, in order.

    The order is made, not hoped for: the counting task's (t1, subtask 0) 5th shared-state
    upload fails, but only once that subtask has taken its next snapshot, a delta of the
    chain the failed upload breaks (rule 1 marks every snapshot taken, rule 0 waits for the
    next mark). maxDeltas is high so that the next snapshot is a delta, not a new base."""
    records = 150_000
    spec = ("storage.put:*/shared/t1/0-*=fail,skip=4,after=1;"
            "worker.after-snapshot-sync:t1/0=mark,times=100000")
    job = run_job(args={"records": records, "words": WORDS, "rate": 30_000},
                  checkpoint={"incremental": True, "maxDeltas": 50, "interval": "100ms",
                              "maxConcurrent": 2, "tolerableFailures": 1000},
                  env=_fault_env(tmp_path, spec))
    assert job.wait(240) == 0, job.output()
    assert faults.fired(tmp_path / "faults", 0) == 1, job.output()[-3000:]
    assert "incremental base of this delta was lost" in job.output(), job.output()[-3000:]
    assert_exactly_once(job.cwd / "output", records, WORDS)
    assert _staged_left(job.cwd / "output") == []


@pytest.mark.parametrize("incremental", [False, True])
def test_list_and_dict_state_survive_worker_kills_exactly(run_job, incremental):
    """State values that are a list and a dict, mutated in place by the user function:
    no post-barrier record may leak into a snapshot (a restore would then skip it)."""
    records, keys = 150_000, 1280
    rng = random.Random(os.environ.get("SEED", 11))
    job = run_job("streamjob.examples.lastn:build", name="lastn",
                  args={"records": records, "keys": keys, "rate": 25_000},
                  checkpoint={"interval": "150ms", "incremental": incremental})
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint"),
                 what="first checkpoint")
    for kill in range(2):
        time.sleep(rng.uniform(0.5, 1.5))
        os.kill(rng.choice(job.workers()), signal.SIGKILL)
        job.wait_for(lambda s, k=kill: s.get("restarts", 0) >= k + 1 and
                     s.get("state") == "RUNNING", timeout=120, what=f"restart {kill + 1}")
    assert job.wait(240) == 0, job.output()
    result = check_output(str(job.cwd / "output"), records, keys)
    assert result == {"lines": records, "duplicates": 0, "missing": 0, "unexpected": 0}
    assert _staged_left(job.cwd / "output") == []


def test_user_function_that_blocks_forever_is_killed_and_the_job_recovers(run_job, tmp_path):
    records = 100_000
    job = run_job("tests.integration.jobs:hanging_wordcount", name="hang",
                  args={"records": records, "words": WORDS, "rate": 25_000,
                        "hang_at": 40_000, "flag": str(tmp_path / "hung.flag")},
                  checkpoint={"timeout": "2s"},
                  env={"STREAMJOB_CANCEL_TIMEOUT": "3"})
    assert job.wait(180) == 0, job.output()[-3000:]
    assert (tmp_path / "hung.flag").exists()
    assert "watchdog:" in job.output()
    assert job.status()["restarts"] >= 1
    assert_exactly_once(job.cwd / "output", records, WORDS)


def test_a_batch_that_computes_longer_than_the_cancel_timeout_is_not_killed(run_job, tmp_path):
    """A batch that holds the event loop for more than ``STREAMJOB_CANCEL_TIMEOUT`` while
    checkpoints are triggered (a heavy batch, or an overloaded machine) but keeps working:
    the watchdog measures work, not wall time, so the worker is not restarted."""
    records = 60_000
    job = run_job("tests.integration.jobs:busy_wordcount", name="busy",
                  args={"records": records, "words": WORDS, "rate": 25_000,
                        "busy_at": 20_000, "busy_s": 8, "flag": str(tmp_path / "busy.flag")},
                  checkpoint={"interval": "200ms"},
                  env={"STREAMJOB_CANCEL_TIMEOUT": "3"})
    assert job.wait(180) == 0, job.output()[-3000:]
    assert (tmp_path / "busy.flag").exists()
    assert "watchdog:" not in job.output(), job.output()[-3000:]
    assert job.status()["restarts"] == 0
    assert_exactly_once(job.cwd / "output", records, WORDS)


def test_upload_stuck_in_storage_does_not_hang_a_cancel(run_job, tmp_path):
    """A state upload that never returns: the checkpoint times out, the job restarts, and the
    worker whose cancel waits for that upload is ended by its watchdog."""
    records = 100_000
    job = run_job(args={"records": records, "words": WORDS, "rate": 25_000},
                  checkpoint={"timeout": "1s", "tolerableFailures": 0},
                  env={"STREAMJOB_CANCEL_TIMEOUT": "3",
                       **_fault_env(tmp_path, "storage.put:*/chk-*/t1/*=stall:3600,skip=2")})
    assert job.wait(180) == 0, job.output()[-3000:]
    assert faults.fired(tmp_path / "faults", 0) == 1
    assert "a cancel did not complete" in job.output(), job.output()[-3000:]
    assert_exactly_once(job.cwd / "output", records, WORDS)


def test_sigterm_of_one_worker_restarts_it_and_the_job_completes(run_job):
    records = 120_000
    job = run_job(args={"records": records, "words": WORDS, "rate": 30_000})
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint"),
                 what="first checkpoint")
    victim = job.workers()[0]
    os.kill(victim, signal.SIGTERM)
    job.wait_for(lambda s: s.get("restarts", 0) >= 1 and s.get("state") == "RUNNING",
                 timeout=120, what="a restart after SIGTERM")
    assert victim not in job.workers()
    assert job.wait(240) == 0, job.output()[-3000:]
    assert "SIGTERM; exiting with code 143" in job.output()
    assert_exactly_once(job.cwd / "output", records, WORDS)


def test_unaligned_checkpoints_past_the_inflight_limit_are_declined_not_buffered(run_job):
    records = 60_000
    job = run_job("tests.integration.jobs:slow_wordcount", name="slow",
                  args={"records": records, "words": WORDS, "delay": 0.005},
                  checkpoint={"mode": "unaligned", "interval": "200ms",
                              "tolerableFailures": 100000},
                  env={"STREAMJOB_INFLIGHT_LIMIT": "2000", "STREAMJOB_LOG": "WARNING"})
    assert job.wait(240) == 0, job.output()[-3000:]
    assert "in-flight records (unaligned checkpoint declined" in job.output()
    assert_exactly_once(job.cwd / "output", records, WORDS)
