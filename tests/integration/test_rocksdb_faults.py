"""The rocksdb state backend's checkpoint protocol under faults, in real ``streamjob run``
process trees: a process killed (or storage failing) at a named point of the incremental
checkpoint, the restore, the clip to another key-group range and the canonical savepoint,
and the committed output compared line by line.

Every test first proves that its faults fired (``tests/integration/test_fault_points.py``
explains the markers): a point missing from the code fails the test, it is not skipped.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conftest import assert_exactly_once
from tests.integration.test_fault_points import (
    assert_fired,
    fault_env,
    finish,
    savepoint_cmd,
    storage_of,
)
from tests.integration.test_rocksdb import metadata, rocksdb

pytestmark = pytest.mark.integration

RECORDS, WORDS, RATE = 120_000, 500, 25_000


def completed_ids(job, job_id: str) -> list[int]:
    return sorted(int(p.parent.name[4:])
                  for p in (job.checkpoints() / job_id).glob("chk-*/_metadata"))


def rocksdb_parts(body: dict) -> list[dict]:
    return [h["rocksdb"] for t in body["tasks"].values() for h in t["subtasks"]
            if "rocksdb" in h]


def assert_every_file_is_whole(job, job_id: str) -> int:
    """Every file of every completed checkpoint is in storage with its size and sha256 (a
    restore from storage alone would work); how many files were checked."""
    storage, checked = storage_of(job), 0
    for n in completed_ids(job, job_id):
        for part in rocksdb_parts(metadata(job, job_id, n)):
            for f in part["files"]:
                data = storage.get(f["key"])
                assert len(data) == f["size"] and \
                    hashlib.sha256(data).hexdigest() == f["sha256"], \
                    f"checkpoint {n}: {f['key']} is not the file its handle describes"
                checked += 1
    return checked


def test_ssts_of_a_checkpoint_that_failed_after_its_upload_are_reused_and_restored(
        run_job, tmp_path):
    """Flink's classic incremental-checkpoint bug: checkpoint 3 uploads new SST files, every
    subtask acks, then its ``_metadata`` cannot be written: it fails (tolerated). The
    workers remember those files as uploaded, so checkpoint 4 refers to them without
    uploading them again; the coordinator must not have deleted them with the failed
    checkpoint. A worker killed after its upload of checkpoint 5 (before its ack) makes the
    job restore exactly checkpoint 4 — nothing skipped — and the output is exact."""
    rules = "storage.put:*/chk-*/_metadata=fail,skip=2;worker.after-snapshot-upload=kill,skip=9"
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE},
                  checkpoint={"retained": 50, "tolerableFailures": 5},
                  state_backend=rocksdb(tmp_path), env=fault_env(tmp_path, rules))
    s = finish(job, tmp_path, "worker.after-snapshot-upload")
    assert_fired(tmp_path, "storage.put:*/chk-*/_metadata", job, 0)
    assert_fired(tmp_path, "worker.after-snapshot-upload", job, 1)
    job_id = s["job_id"]
    done = completed_ids(job, job_id)
    failed = min(set(range(1, done[-1])) - set(done))
    before = max(n for n in done if n < failed)
    after = min(n for n in done if n > failed)
    # The checkpoint after the failed one names SST files that neither it nor the one
    # before uploaded: the failed checkpoint's.
    old = {f["key"] for p in rocksdb_parts(metadata(job, job_id, before)) for f in p["files"]}
    reused = 0
    for part in rocksdb_parts(metadata(job, job_id, after)):
        new = sum(f["size"] for f in part["files"] if f["key"] not in old)
        reused += new - part["uploaded"]
    assert reused > 0, f"checkpoint {after} re-uploaded every file of failed {failed}"
    assert s["state"] == "FINISHED" and s["restarts"] >= 1, s
    assert s["restored_from"] == after, (s["restored_from"], failed, after, done)
    assert "skipping checkpoint" not in job.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)
    assert assert_every_file_is_whole(job, job_id) > 0


def test_worker_killed_while_its_rocksdb_checkpoint_is_made(run_job, tmp_path):
    """The RocksDB checkpoint is made on a thread of its own after the barrier while the
    task goes on; the worker dies there (memtables flushed, checkpoint folder not made).
    The job restores the checkpoint before it (the half-made local folder is never named by
    a handle) and ends exactly once."""
    point = "worker.during-rocksdb-checkpoint"
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE},
                  state_backend=rocksdb(tmp_path),
                  env=fault_env(tmp_path, f"{point}:t1/1=kill,skip=3"))
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    assert s["state"] == "FINISHED" and s["restarts"] >= 1 and s["restored_from"], s
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def _flip_local_copies(job, tmp_path: Path, job_id: str, n: int) -> int:
    """Flip one byte of every SST file in the workers' local checkpoint folders of
    checkpoint ``n`` (new files: the live databases' hard links stay intact); how many."""
    flipped = 0
    for task, t in metadata(job, job_id, n)["tasks"].items():
        for index, h in enumerate(t["subtasks"]):
            if "rocksdb" not in h:
                continue
            local = tmp_path / "state" / job_id / task / str(index) / h["rocksdb"]["local"]
            for f in h["rocksdb"]["files"]:
                path = local / f["name"]
                if f["name"].endswith(".sst") and path.exists():
                    data = bytearray(path.read_bytes())
                    data[len(data) // 2] ^= 0xFF
                    path.unlink()
                    path.write_bytes(bytes(data))
                    flipped += 1
    return flipped


def test_coordinator_killed_after_metadata_local_copies_that_differ_are_downloaded(
        run_job, tmp_path):
    """The coordinator stalls right after a rocksdb checkpoint's ``_metadata`` (nobody
    notified) and is killed there. The workers' local copies of that checkpoint differ from
    what its handles say (as files of another attempt or a newer checkpoint would): local
    recovery must not use them. The new coordinator restores that checkpoint; the workers
    download its files, and one worker is killed half-way through its download: the next
    attempt downloads again. Output exact."""
    from streamjob import faults

    rules = "coordinator.after-metadata=stall:30,skip=3;worker.during-rocksdb-fetch=kill"
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE},
                  checkpoint={"retained": 3}, state_backend=rocksdb(tmp_path),
                  env=fault_env(tmp_path, rules))
    deadline = time.monotonic() + 90
    while not faults.fired(tmp_path / "faults", 0):
        assert time.monotonic() < deadline and job.proc.poll() is None, job.output()[-3000:]
        time.sleep(0.02)
    coordinator = job.coordinator()
    job_id = job.status()["job_id"]
    newest = completed_ids(job, job_id)[-1]
    try:
        assert _flip_local_copies(job, tmp_path, job_id, newest) > 0
    finally:
        os.kill(coordinator, signal.SIGKILL)
    s = finish(job, tmp_path, "worker.during-rocksdb-fetch")
    assert_fired(tmp_path, "worker.during-rocksdb-fetch", job, 1)
    assert s["state"] == "FINISHED" and s["restored_from"] == newest, s
    assert "does not match" in job.output() and "downloading it" in job.output()
    assert "skipping checkpoint" not in job.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_a_checkpoint_restored_at_another_parallelism_survives_kills_in_fetch_and_clip(
        run_job, tmp_path):
    """A rocksdb checkpoint taken at p=2 is restored at p=3 (``--from-savepoint`` naming
    the checkpoint): subtasks 0 and 2 open one old database and clip it to their key
    groups, subtask 1 copies its range out of both. A worker is killed after its first
    downloaded file, another right before its clip; the attempt after them restores the
    same checkpoint again, and the counts go on exactly where the first job stopped."""
    first = run_job(args={"records": RECORDS, "words": WORDS, "rate": 0},
                    state_backend=rocksdb(tmp_path))
    assert first.wait() == 0, first.output()[-3000:]
    job_id = first.status()["job_id"]
    uri = f"{storage_of(first).uri}/{job_id}/chk-{completed_ids(first, job_id)[-1]}"
    rules = "worker.during-rocksdb-fetch=kill;worker.before-rocksdb-clip=kill"
    second = run_job(name="wc3", parallelism=3,
                     args={"records": 2 * RECORDS, "words": WORDS, "rate": 2 * RATE},
                     extra=["--from-savepoint", uri], state_backend=rocksdb(tmp_path),
                     env=fault_env(tmp_path, rules))
    s = finish(second, tmp_path, "worker.during-rocksdb-fetch")
    assert_fired(tmp_path, "worker.during-rocksdb-fetch", second, 0)
    assert_fired(tmp_path, "worker.before-rocksdb-clip", second, 1)
    assert s["state"] == "FINISHED" and s["restarts"] >= 1, s
    # The peers of a killed worker were cancelled mid-restore: none of them crashed.
    assert "Traceback" not in second.output(), second.output()[-3000:]
    assert_exactly_once(first.cwd / "output", 2 * RECORDS, WORDS)


def test_worker_killed_while_writing_a_rocksdb_savepoint(run_job, tmp_path):
    """A savepoint of a rocksdb job is written in the canonical format, one key group at a
    time; a worker dies after the first. The savepoint fails (no ``_metadata``), the job
    restores its last checkpoint and ends with exact output; a stop-with-savepoint taken
    after it is complete and resumes at p=3 to the same exact output."""
    point = "worker.during-savepoint-write"
    args = {"records": RECORDS, "words": WORDS, "rate": RATE // 2}
    job = run_job(args=args, state_backend=rocksdb(tmp_path),
                  env=fault_env(tmp_path, f"{point}=kill"))
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint"),
                 what="a first checkpoint")
    uri, said = savepoint_cmd(job, stop=False)
    assert uri is None, f"the savepoint whose writer was killed succeeded: {said}"
    assert_fired(tmp_path, point, job)
    job.wait_for(lambda s: s.get("restarts", 0) >= 1 and s.get("state") == "RUNNING",
                 what="the restart")
    uri, said = savepoint_cmd(job, stop=True)
    assert uri is not None, said
    assert job.wait() == 0, job.output()[-3000:]
    assert job.status()["state"] == "STOPPED"
    resumed = run_job(name="wc3", parallelism=3, args={**args, "rate": 0},
                      extra=["--from-savepoint", uri], state_backend=rocksdb(tmp_path))
    assert resumed.wait() == 0, resumed.output()[-3000:]
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)
