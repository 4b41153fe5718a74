"""The rocksdb state backend in real local jobs: kill and restore (with the shared SST files
cleaned up by reference count), rescale through a savepoint, switching backends through
savepoints both ways, a corrupt SST file in the newest checkpoint."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conftest import assert_exactly_once, kill_worker_and_finish, savepoint

pytestmark = pytest.mark.integration

RECORDS, WORDS = 200_000, 3_000


def rocksdb(tmp_path: Path) -> dict:
    return {"type": "rocksdb", "rocksdb": {"localDir": str(tmp_path / "state"),
                                           "blockCacheMB": 16, "writeBufferMB": 8}}


def checkpointed(n: int):
    return lambda s: (s.get("state") == "RUNNING"
                      and (s.get("last_checkpoint") or {}).get("id", 0) >= n)


def metadata(job, job_id: str, n: int) -> dict:
    from streamjob import checkpoints as ckpt
    from streamjob.storage import LocalStorage

    return ckpt.read_metadata(LocalStorage(job.checkpoints()), ckpt.checkpoint_dir(job_id, n))


def sst_keys(body: dict) -> set[str]:
    return {f["key"] for t in body["tasks"].values() for h in t["subtasks"]
            for f in h.get("rocksdb", {}).get("files", []) if f["name"].endswith(".sst")}


def test_killed_worker_restores_exactly_once_and_unreferenced_ssts_are_deleted(run_job,
                                                                                tmp_path):
    from streamjob import checkpoints as ckpt
    from streamjob.storage import LocalStorage

    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 25_000},
                  checkpoint={"interval": "200ms", "retained": 2},
                  state_backend=rocksdb(tmp_path))
    s = job.wait_for(checkpointed(2), what="checkpoints")
    early = sst_keys(metadata(job, s["job_id"], s["last_checkpoint"]["id"]))
    assert early and all(k.startswith(f"{s['job_id']}/shared/t1/") for k in early)
    kill_worker_and_finish(job, 0)
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)

    # The shared SST files left are exactly those the retained checkpoints refer to; the
    # early ones were compacted away and deleted by the coordinator's reference counting.
    storage = LocalStorage(job.checkpoints())
    ids = ckpt.list_checkpoint_ids(storage, s["job_id"])
    refs: set[str] = set()
    for n, done in ids.items():
        if done:
            refs |= ckpt.referenced_keys(metadata(job, s["job_id"], n))
    shared = set(storage.list(ckpt.shared_dir(s["job_id"]) + "/"))
    assert shared and shared <= refs
    assert early - shared, "no early SST file was ever deleted"


def test_rescale_2_to_3_through_a_savepoint_is_exactly_once(run_job, tmp_path):
    args = {"records": RECORDS, "words": WORDS, "rate": 20_000}
    job = run_job(args=args, parallelism=2, state_backend=rocksdb(tmp_path))
    job.wait_for(lambda s: s.get("records_in", 0) > RECORDS // 4, what="a quarter done")
    uri = savepoint(job, stop=True)
    assert job.wait() == 0, job.output()
    job3 = run_job(args={**args, "rate": 0}, parallelism=3, extra=["--from-savepoint", uri],
                   state_backend=rocksdb(tmp_path))
    assert job3.wait(300) == 0, job3.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_switching_backends_through_savepoints_both_ways(run_job, tmp_path):
    args = {"records": RECORDS, "words": WORDS, "rate": 15_000}
    job = run_job(args=args, parallelism=2)  # memory
    job.wait_for(lambda s: s.get("records_in", 0) > RECORDS // 5, what="a fifth done")
    uri = savepoint(job, stop=True)
    assert job.wait() == 0, job.output()
    on_rocksdb = run_job(args=args, parallelism=3, extra=["--from-savepoint", uri],
                         state_backend=rocksdb(tmp_path))
    on_rocksdb.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint"),
                        what="running on rocksdb with a checkpoint")
    uri2 = savepoint(on_rocksdb, stop=True)
    assert on_rocksdb.wait() == 0, on_rocksdb.output()
    back = run_job(args={**args, "rate": 0}, parallelism=2, extra=["--from-savepoint", uri2])
    assert back.wait(300) == 0, back.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def _flip_byte(path: Path) -> None:
    """Replace ``path`` by a copy with one byte flipped (a new file: a hard link to it, the
    live database's, stays intact)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[:len(data) // 2])


def _stalled_newest(job, tmp_path: Path, hurt) -> tuple[int, int, int]:
    """Wait for the coordinator to stall after the newest checkpoint's _metadata (its output
    not committed yet), hurt one of that checkpoint's new SST files (``hurt(storage path,
    local copies)``), kill the coordinator. (stalled coordinator pid, newest, previous)."""
    from streamjob import faults

    deadline = time.monotonic() + 90
    while not faults.fired(tmp_path / "faults"):
        assert time.monotonic() < deadline and job.proc.poll() is None, job.output()[-3000:]
        time.sleep(0.02)
    coordinator = job.coordinator()
    try:
        job_id = job.status()["job_id"]
        done = sorted(int(p.parent.name[4:])
                      for p in (job.checkpoints() / job_id).glob("chk-*/_metadata"))
        bad, previous = done[-1], done[-2]
        body = metadata(job, job_id, bad)
        victim = sorted(sst_keys(body) - sst_keys(metadata(job, job_id, previous)))[0]
        copies = []
        for index, h in enumerate(body["tasks"]["t1"]["subtasks"]):
            part = h["rocksdb"]
            local = tmp_path / "state" / job_id / "t1" / str(index) / part["local"]
            copies += [local / f["name"] for f in part["files"]
                       if f["key"] == victim and (local / f["name"]).exists()]
        hurt(job.checkpoints() / victim, copies)
    finally:
        os.kill(coordinator, signal.SIGKILL)
    return coordinator, bad, previous


def test_a_truncated_sst_in_the_newest_checkpoint_restores_the_one_before(run_job, tmp_path):
    """The newest checkpoint is complete but its output not committed yet (the coordinator
    stalls after its _metadata and dies there); one of its new SST files is cut short in
    storage. The restarted coordinator finds it (sizes are checked before a restore), skips
    that checkpoint and restores the one before it, exactly once."""
    from streamjob import faults

    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 25_000},
                  checkpoint={"retained": 3}, state_backend=rocksdb(tmp_path),
                  env={faults.ENV: "coordinator.after-metadata=stall:30,skip=3",
                       faults.DIR_ENV: str(tmp_path / "faults")})
    coordinator, bad, previous = _stalled_newest(
        job, tmp_path, lambda stored, local: _truncate(stored))
    job.wait_for(lambda s: s.get("coordinator", {}).get("pid") not in (None, coordinator)
                 and s.get("state") == "RUNNING", what="the restarted coordinator")
    assert job.status()["restored_from"] == previous, json.dumps(job.status())
    assert job.wait() == 0, job.output()
    assert f"skipping checkpoint {bad}" in job.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_a_bit_flipped_sst_is_found_by_checksum_and_never_restored(run_job, tmp_path):
    """Same size, one byte flipped (in storage and in the workers' local copies): only the
    workers' sha256 check can notice. They refuse that checkpoint; restoring the one before
    it would write the newer one's output again (committed while the restore was being
    prepared), so the job fails with the reason instead. A rerun with --allow-fresh-start
    resumes from the older checkpoint and ends exactly once."""
    from streamjob import faults

    def flip(stored: Path, local: list[Path]) -> None:
        for path in [stored, *local]:
            _flip_byte(path)

    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 25_000},
                  checkpoint={"retained": 3}, state_backend=rocksdb(tmp_path),
                  env={faults.ENV: "coordinator.after-metadata=stall:30,skip=3",
                       faults.DIR_ENV: str(tmp_path / "faults")})
    _, bad, _ = _stalled_newest(job, tmp_path, flip)
    assert job.wait() == 1, job.output()
    status = job.status()
    assert status["state"] == "FAILED", status
    assert "does not match its checksum" in status["skipped_checkpoints"][str(bad)]
    rerun = run_job(args={"records": RECORDS, "words": WORDS, "rate": 0},
                    checkpoint={"retained": 3}, state_backend=rocksdb(tmp_path),
                    extra=["--allow-fresh-start"])
    assert rerun.wait() == 0, rerun.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)
