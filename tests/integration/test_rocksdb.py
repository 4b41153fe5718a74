"""The rocksdb state backend in real local jobs: kill and restore, rescale, switching backends
through a savepoint, a corrupt SST file in the latest checkpoint."""

from __future__ import annotations

import pytest

from tests.integration.conftest import assert_exactly_once, kill_worker_and_finish

pytestmark = pytest.mark.integration

RECORDS, WORDS = 200_000, 3_000


def rocksdb(tmp_path) -> dict:
    return {"type": "rocksdb", "rocksdb": {"localDir": str(tmp_path / "state"),
                                           "blockCacheMB": 16, "writeBufferMB": 8}}


def _checkpointed(s: dict) -> bool:
    return s.get("state") == "RUNNING" and (s.get("last_checkpoint") or {}).get("id", 0) >= 2


def test_killed_worker_restores_from_rocksdb_checkpoint_exactly_once(run_job, tmp_path):
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 40_000},
                  state_backend=rocksdb(tmp_path))
    job.wait_for(_checkpointed, what="checkpoints")
    kill_worker_and_finish(job, 0)
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)
