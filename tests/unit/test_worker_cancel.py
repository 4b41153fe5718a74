"""A CANCEL that arrives while a worker restores state: the restore runs on a thread, which
cannot be stopped, and the cancel closes the subtask (its RocksDB database) right after.
Closing a database another thread is still restoring into crashed the worker
(``RuntimeError: Already borrowed`` from rocksdict, seen when a peer died during a restore)
or left a thread writing into removed folders. The cancel asks the restore to stop and waits
for its thread before it closes anything."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from streamjob import worker as worker_module
from streamjob.manifest import parse_manifest

RESTORE_LIMIT = 10.0  # the fake restore ends by itself after this (no hang on a regression)


class BlockingRestoreRunner:
    """A subtask whose restore blocks on its thread until asked to stop (or the limit)."""

    created: list[BlockingRestoreRunner] = []

    def __init__(self, spec, *args, **kwargs):
        self.spec, self.name = spec, f"{spec.name}[0]"
        self.started, self.stop = threading.Event(), threading.Event()
        self.restoring = False
        self.closed_while_restoring: bool | None = None
        BlockingRestoreRunner.created.append(self)

    def restore(self, task_state, kind="checkpoint") -> None:
        self.restoring = True
        self.started.set()
        try:
            self.stop.wait(RESTORE_LIMIT)
        finally:
            self.restoring = False

    def cancel_restore(self) -> None:
        self.stop.set()

    def on_abort(self, cid: int) -> None:
        pass

    async def close(self) -> None:
        self.closed_while_restoring = self.restoring


def test_a_cancel_during_a_restore_closes_the_subtask_only_after_its_restore_thread(
        tmp_path: Path, monkeypatch):
    monkeypatch.setattr(worker_module, "SubtaskRunner", BlockingRestoreRunner)
    BlockingRestoreRunner.created.clear()
    job = parse_manifest({
        "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "wc"},
        "spec": {"pipeline": "streamjob.examples.wordcount:build", "parallelism": 1,
                 "args": {"output": str(tmp_path / "out")},
                 "storage": f"file://{tmp_path / 'ckpt'}"}})
    worker = worker_module.Worker(job, 0, "127.0.0.1:1", "127.0.0.1", None)

    async def scenario() -> None:
        worker.deploy_task = asyncio.ensure_future(worker._deploy({
            "attempt": 1, "parallelism": 1, "peers": [["127.0.0.1", 1]], "job_id": "job",
            "storage": f"file://{tmp_path / 'ckpt'}",
            "restore": {"kind": "checkpoint", "checkpoint_id": 3, "tasks": {}}}))
        loop = asyncio.get_running_loop()
        for _ in range(500):
            if BlockingRestoreRunner.created:
                break
            await asyncio.sleep(0.01)
        first = BlockingRestoreRunner.created[0]
        assert await loop.run_in_executor(None, first.started.wait, 10)
        await asyncio.wait_for(worker._cancel(), RESTORE_LIMIT + 5)

    try:
        asyncio.run(scenario())
    finally:
        worker.executor.shutdown(wait=True)
    runners = BlockingRestoreRunner.created
    assert runners and all(r.closed_while_restoring is False for r in runners), \
        [(r.name, r.closed_while_restoring) for r in runners]
    assert runners[0].stop.is_set(), "the cancel did not ask the restore to stop"
