"""Savepoints and rescaling by key groups, on local storage (the MinIO tier repeats it on S3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import PYPATH, assert_exactly_once, savepoint

pytestmark = pytest.mark.integration

RECORDS, WORDS = 300_000, 700


def test_stop_with_savepoint_and_resume_at_4_then_3_is_exactly_once(run_job):
    # 20k/s: still running when the stop-savepoint is asked for, on a loaded machine too.
    args = {"records": RECORDS, "words": WORDS, "rate": 20_000}
    job = run_job(args=args, parallelism=2)
    job.wait_for(lambda s: s.get("records_in", 0) > RECORDS // 4, what="a quarter done")
    uri = savepoint(job, stop=True)
    assert job.wait() == 0, job.output()
    assert job.status()["state"] == "STOPPED"
    assert uri.startswith("file://") and "/savepoints/sp-" in uri
    assert (job.checkpoints() / uri.split("/ckpt/")[1] / "_metadata").is_file()

    # Slower at p=4 so that it is still running when the second savepoint is asked for
    # (the generator's records do not depend on the rate).
    job4 = run_job(args={**args, "rate": 10_000}, parallelism=4,
                   extra=["--from-savepoint", uri])
    job4.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint"),
                  what="p=4 running with a checkpoint")
    uri2 = savepoint(job4, stop=True)
    assert job4.wait() == 0, job4.output()

    job3 = run_job(args={**args, "rate": 0}, parallelism=3, extra=["--from-savepoint", uri2])
    assert job3.wait() == 0, job3.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)

    # Both savepoints outlive their jobs and are listed with size and time.
    listing = subprocess.run([sys.executable, "-m", "streamjob", "savepoints",
                              str(job.checkpoints())], capture_output=True, text=True,
                             env=dict(job.env, PYTHONPATH=PYPATH), timeout=60)
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()[1:]
    assert [r.split()[-1] for r in rows] == [uri, uri2]
    assert all(int(r.split()[2].replace(",", "")) > 0 for r in rows)


@pytest.mark.parametrize("new_p", [1, 16])
def test_restore_at_any_parallelism_from_a_savepoint(run_job, new_p):
    # maxParallelism 16 so that new_p = 16 is p' = maxParallelism.
    records = 100_000
    # Slow enough to be running still when the savepoint is asked for, under load too.
    args = {"records": records, "words": WORDS, "rate": 10_000}
    job = run_job(args=args, parallelism=2, name=f"p{new_p}", max_parallelism=16)
    job.wait_for(lambda s: s.get("records_in", 0) > records // 3, what="a third done")
    uri = savepoint(job, stop=True)
    assert job.wait() == 0, job.output()
    job2 = run_job(args={**args, "rate": 0}, parallelism=new_p, name=f"p{new_p}",
                   max_parallelism=16, extra=["--from-savepoint", uri])
    assert job2.wait(300) == 0, job2.output()
    assert_exactly_once(job.cwd / "output", records, WORDS)


def test_restoring_with_another_max_parallelism_is_refused(run_job, tmp_path):
    args = {"records": 50_000, "words": WORDS, "rate": 20_000}
    # In a pod the coordinator says how it ended in its termination message (here a file
    # standing in for /dev/termination-log): the operator learns the stop's savepoint there.
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    job = run_job(args=args, parallelism=2, name="mp",
                  env={"STREAMJOB_TERMINATION_LOG": str(termination_log)})
    job.wait_for(lambda s: s.get("state") == "RUNNING", what="running")
    uri = savepoint(job, stop=True)
    assert job.wait() == 0
    assert json.loads(termination_log.read_text())["savepoint"] == uri
    job2 = run_job(args=args, parallelism=2, name="mp", max_parallelism=64,
                   extra=["--from-savepoint", uri])
    assert job2.wait() == 2
    assert ("it was taken with maxParallelism 128, the job has 64" in job2.output()
            ), job2.output()


def test_checkpoints_of_superseded_job_ids_go_after_the_first_checkpoint_savepoints_stay(
        run_job):
    """What the operator does at each revision (STREAMJOB_SUPERSEDED_JOB_IDS): the new job
    deletes the old job id's checkpoints once it has one of its own; the savepoint it started
    from, and every other savepoint, stay listed and restorable."""
    args = {"records": 100_000, "words": WORDS, "rate": 10_000}
    job = run_job(args=args, name="old")
    job.wait_for(lambda s: (s.get("last_checkpoint") or {}).get("id", 0) >= 2,
                 what="two checkpoints")
    old_id = job.status()["job_id"]
    first = savepoint(job, stop=False)
    uri = savepoint(job, stop=True)
    assert job.wait() == 0, job.output()
    old = job.checkpoints() / old_id
    assert list(old.glob("chk-*/_metadata"))

    job2 = run_job(args={**args, "rate": 0}, name="new", extra=["--from-savepoint", uri],
                   env={"STREAMJOB_SUPERSEDED_JOB_IDS": f"{old_id},never-existed"})
    assert job2.wait(300) == 0, job2.output()
    new_id = job2.status()["job_id"]
    assert new_id != old_id and list((job.checkpoints() / new_id).glob("chk-*/_metadata"))
    assert not list(old.glob("chk-*")) and not (old / "shared").exists()
    for kept in (first, uri):
        assert (job.checkpoints() / kept.split("/ckpt/")[1] / "_metadata").is_file()
    assert_exactly_once(job.cwd / "output", 100_000, WORDS)
