"""Exactly-once under failure: kill workers and the coordinator of a real local job."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.integration.conftest import assert_exactly_once

pytestmark = pytest.mark.integration

RECORDS, WORDS = 240_000, 500


def _running_with_checkpoint(s: dict) -> bool:
    return s.get("state") == "RUNNING" and s.get("last_checkpoint") is not None


def test_clean_run_commits_every_update_once(run_job):
    job = run_job(args={"records": 100_000, "words": WORDS, "rate": 0}, parallelism=3)
    assert job.wait() == 0, job.output()
    assert_exactly_once(job.cwd / "output", 100_000, WORDS)
    status = job.status()
    # Exact at the end: every worker reports its final counts before COMMITTED.
    assert (status["state"], status["records_in"]) == ("FINISHED", 100_000)
    assert (status["restarts"], status["coordinator_restarts"]) == (0, 0)


def test_killed_worker_three_times_resumes_without_duplicates_or_gaps(run_job):
    rng = random.Random(os.environ.get("SEED", 7))
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 25_000})
    job.wait_for(_running_with_checkpoint, what="first checkpoint")
    for kill in range(3):
        time.sleep(rng.uniform(0.2, 1.5))
        victim = rng.choice(job.workers())
        os.kill(victim, signal.SIGKILL)
        job.wait_for(lambda s, k=kill: s.get("restarts", 0) >= k + 1 and
                     s.get("state") == "RUNNING", what=f"restart {kill + 1}")
    assert job.wait() == 0, job.output()
    status = job.status()
    assert status["state"] == "FINISHED"
    assert status["restarts"] >= 3
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_killed_coordinator_recovers_from_storage(run_job):
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 40_000})
    job.wait_for(_running_with_checkpoint, what="first checkpoint")
    os.kill(job.workers()[0], signal.SIGKILL)  # one failover before the coordinator dies
    job.wait_for(lambda s: s.get("restarts") == 1 and s.get("state") == "RUNNING",
                 what="the restart")
    before = job.wait_for(lambda s: (s.get("last_checkpoint") or {}).get("id", 0) >
                          (s.get("restored_from") or 0) + 1, what="checkpoints after it")
    old = job.coordinator()
    os.kill(old, signal.SIGKILL)
    after = job.wait_for(lambda s: s.get("coordinator", {}).get("pid") not in (None, old)
                         and s.get("state") == "RUNNING", what="a new coordinator running")
    assert after["restored_from"] >= before["last_checkpoint"]["id"]
    # The restart count survives the coordinator; its own restarts are counted apart.
    assert (after["restarts"], after["coordinator_restarts"]) == (1, 1)
    assert job.wait() == 0, job.output()
    assert "restarting it" in job.output()
    assert job.status()["restarts"] == 1
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_unaligned_checkpoints_under_backpressure_keep_exactly_once(run_job):
    from streamjob import checkpoints as ckpt
    from streamjob.storage import LocalStorage

    records = 120_000
    job = run_job("tests.integration.jobs:slow_wordcount", name="slow",
                  args={"records": records, "words": WORDS, "delay": 0.005},
                  checkpoint={"mode": "unaligned", "interval": "200ms"})
    s = job.wait_for(lambda s: s.get("state") == "RUNNING" and
                     s.get("last_checkpoint") is not None, what="a checkpoint")
    # The in-flight records of an unaligned checkpoint are in its state: look at one.
    storage = LocalStorage(job.checkpoints())
    body = ckpt.latest_completed(storage, s["job_id"])
    inflight = sum(t.get("inflight_records", 0) for ts in body["timings"].values() for t in ts)
    unaligned = [t["unaligned"] for ts in body["timings"].values() for t in ts]
    assert any(unaligned)
    os.kill(job.workers()[0], signal.SIGKILL)
    assert job.wait(240) == 0, job.output()
    assert_exactly_once(job.cwd / "output", records, WORDS)
    assert inflight > 0, body["timings"]


def test_at_least_once_loses_nothing(run_job):
    from streamjob.examples.wordcount import check_output

    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 40_000},
                  checkpoint={"mode": "at-least-once"})
    first = job.wait_for(_running_with_checkpoint, what="first checkpoint")["last_checkpoint"]
    job.wait_for(lambda s: s["last_checkpoint"]["id"] > first["id"], what="a second one")
    os.kill(job.workers()[1], signal.SIGKILL)
    assert job.wait() == 0, job.output()
    result = check_output(str(job.cwd / "output"), RECORDS, WORDS)
    assert result["missing"] == 0, result


def test_incremental_checkpoints_recover_exactly_once_and_clean_shared_files(run_job):
    from streamjob import checkpoints as ckpt
    from streamjob.storage import LocalStorage

    records, words = 300_000, 20_000
    job = run_job(args={"records": records, "words": words, "rate": 40_000},
                  checkpoint={"incremental": True, "maxDeltas": 3, "interval": "200ms",
                              "retained": 2},
                  state_backend={"type": "memory"})  # its delta chains (rocksdb: by SST)
    s = job.wait_for(lambda s: (s.get("last_checkpoint") or {}).get("id", 0) >= 4,
                     what="several incremental checkpoints")
    storage = LocalStorage(job.checkpoints())
    body = ckpt.latest_completed(storage, s["job_id"])
    keyed = body["tasks"]["t1"]["subtasks"]
    assert any(h.get("chain") for h in keyed)  # deltas on top of a full snapshot
    for kill in range(2):
        os.kill(random.choice(job.workers()), signal.SIGKILL)
        job.wait_for(lambda s, k=kill: s.get("restarts", 0) >= k + 1 and
                     s.get("state") == "RUNNING", what="restart")
        # a delta checkpoint on top of the restored chain before the next kill
        job.wait_for(lambda s: (s.get("last_checkpoint") or {}).get("id", 0) >
                     (s.get("restored_from") or 0) + 1, what="checkpoints after the restore")
    assert job.wait() == 0, job.output()
    assert_exactly_once(job.cwd / "output", records, words)
    # Every shared file left is referenced by a retained checkpoint: nothing leaks.
    job_id = job.status()["job_id"]
    ids = ckpt.list_checkpoint_ids(storage, job_id)
    refs = set()
    for n, done in ids.items():
        if done:
            refs |= ckpt.referenced_keys(ckpt.read_metadata(storage,
                                                            ckpt.checkpoint_dir(job_id, n)))
    shared = set(storage.list(ckpt.shared_dir(job_id) + "/"))
    assert shared <= refs
    assert len([n for n, done in ids.items() if done]) <= 2
