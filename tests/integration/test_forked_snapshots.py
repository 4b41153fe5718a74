"""Checkpoints whose keyed state is encoded by a forked copy-on-write child
(``snapshotStrategy: fork``): the same guarantees as the default — exact output after kills,
with full, incremental and unaligned checkpoints and through a savepoint at another
parallelism — and a worker killed while its child runs leaves no child behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamjob import faults
from tests.integration.conftest import assert_exactly_once, kill_worker_and_finish, savepoint

pytestmark = pytest.mark.integration

# Enough distinct words that each of 2 subtasks holds more than forked_snapshot.MIN_KEYS
# keys after the first second (the strategy forks only for state that big).
RECORDS, WORDS, RATE = 200_000, 40_000, 40_000
FORK = {"snapshotStrategy": "fork"}
LOG = {"STREAMJOB_LOG": "INFO"}  # workers log "snapshot child <pid> encodes checkpoint <n>"


def forked_checkpoints(job) -> int:
    """How many subtask snapshots of the latest completed checkpoint a child encoded."""
    from streamjob import checkpoints as ckpt
    from streamjob.storage import LocalStorage

    storage = LocalStorage(job.checkpoints())
    body = ckpt.latest_completed(storage, job.status()["job_id"])
    return sum(t.get("snapshot") == "fork" for ts in body["timings"].values() for t in ts)


def big_enough(s: dict) -> bool:
    """Running, with a checkpoint taken after both subtasks passed MIN_KEYS keys."""
    return (s.get("state") == "RUNNING" and s.get("records_in", 0) > 3 * WORDS
            and (s.get("last_checkpoint") or {}).get("id", 0) >= 3)


def child_pids(log: str) -> set[int]:
    return {int(p) for p in re.findall(r"snapshot child (\d+) encodes", log)}


def alive(pid: int) -> bool:
    """Whether ``pid`` is still a streamjob process (not reaped, or an orphan)."""
    try:
        return b"streamjob" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize("checkpoint", [
    {},
    {"incremental": True, "maxDeltas": 3},
    {"mode": "unaligned"},
], ids=["full", "incremental", "unaligned"])
def test_forked_snapshots_recover_exactly_once_after_a_kill(run_job, checkpoint):
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE},
                  checkpoint={**FORK, **checkpoint}, env=LOG)
    job.wait_for(big_enough, what="checkpoints of a big enough state")
    assert forked_checkpoints(job) == 2, "the keyed subtasks did not fork"
    kill_worker_and_finish(job, 0)
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)
    pids = child_pids(job.output())
    assert pids and not [p for p in pids if alive(p)]


def test_worker_killed_while_its_snapshot_child_runs_restores_exactly(run_job, tmp_path):
    """The worker dies (fault point ``worker.snapshot-child-running``) while a child is
    encoding: the child dies with it (no orphan keeps the worker's memory or sockets), the
    checkpoint never completes, the job restores from an earlier one with exact output."""
    point = "worker.snapshot-child-running"
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE},
                  checkpoint=FORK,
                  env={**LOG, "STREAMJOB_FAULTS": f"{point}=kill,skip=3",
                       "STREAMJOB_FAULTS_DIR": str(tmp_path / "faults")})
    assert job.wait(240) == 0, job.output()[-3000:]
    assert faults.fired(tmp_path / "faults", 0) == 1, job.output()[-3000:]
    status = job.status()
    assert status["restarts"] >= 1 and status["restored_from"] is not None, status
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)
    pids = child_pids(job.output())
    assert pids, "no snapshot child was started"
    assert not [p for p in pids if alive(p)]


def test_savepoint_of_forked_snapshots_restores_at_another_parallelism(run_job):
    from streamjob import checkpoints as ckpt
    from streamjob.storage import LocalStorage

    # No periodic checkpoint: one whose child still runs would make the savepoint encode on
    # a thread (one child per worker).
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE // 4},
                  checkpoint={**FORK, "interval": "1h"})
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("records_in", 0) > 3 * WORDS,
                 what="a big enough state")
    uri = savepoint(job, stop=True)
    assert job.wait() == 0, job.output()
    _, body = ckpt.resolve_savepoint(LocalStorage(job.checkpoints()), uri)
    assert [t["snapshot"] for t in body["timings"]["t1"]] == ["fork", "fork"]
    resumed = run_job(parallelism=3, extra=["--from-savepoint", uri],
                      args={"records": RECORDS, "words": WORDS, "rate": RATE},
                      checkpoint=FORK)
    assert resumed.wait() == 0, resumed.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)
