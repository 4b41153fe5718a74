"""CheckpointCoordinator and the coordinator's edges, in one event loop without processes:
completion and restore preparation are serialised; errors in background steps are never
silent."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamjob import checkpoints as ckpt
from streamjob import jobstate as js
from streamjob.checkpoint_coordinator import CheckpointCoordinator
from streamjob.metrics import CoordinatorMetrics
from streamjob.storage import LocalStorage, StorageError

JOB = "job-1"
TASKS = [SimpleNamespace(task_id="t0", name="source")]


class SlowMetadataStorage(LocalStorage):
    """Writes of ``_metadata`` wait until the test releases them."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.release = threading.Event()
        self.writing = threading.Event()
        self.slow = False

    def put(self, key: str, data: bytes) -> None:
        if self.slow and key.endswith("/_metadata"):
            self.writing.set()
            assert self.release.wait(10)
        super().put(key, data)


def make(storage, attempt, failures=None):
    cfg = SimpleNamespace(mode="exactly-once", timeout=30.0, tolerable_failures=0, retained=1,
                          incremental=False)
    return CheckpointCoordinator(
        job_id=JOB, job_name="job", storage=storage, tasks=TASKS, parallelism=1,
        max_parallelism=128, cfg=cfg, metrics=CoordinatorMetrics(),
        executor=ThreadPoolExecutor(2), broadcast=lambda *a, **k: None,
        attempt=lambda: attempt[0], on_failure=(failures if failures is not None else []).append,
        on_final=lambda pc: None, write_status=lambda: None)


def ack(cc, storage, cid: int) -> str:
    key = f"{JOB}/chk-{cid}/t0/0-state"
    storage.put(key, b"x" * 100)
    cc.on_ack({"id": cid, "task": "t0", "subtask": 0,
               "handle": {"format": 1, "key": key, "size": 100}, "timings": {}})
    return key


class RecordingSink:
    """A sink with nothing committed after any checkpoint; records recover calls."""

    def __init__(self, recovered: list[tuple[str, int]]):
        self.recovered = recovered

    def recover(self, job_id: str, checkpoint_id: int) -> None:
        self.recovered.append((job_id, checkpoint_id))

    def committed_after(self, job_id: str, checkpoint_id: int) -> list[str]:
        return []


def test_a_failover_during_the_metadata_write_restores_that_checkpoint(tmp_path: Path):
    storage = SlowMetadataStorage(tmp_path)
    attempt = [0]
    recovered: list[tuple[str, int]] = []

    async def scenario():
        cc = make(storage, attempt)
        cc.owner.start()
        cc.trigger()
        ack(cc, storage, 1)
        await cc.owner.submit("barrier", lambda: asyncio.sleep(0))  # chk-1 completed
        storage.slow = True
        cc.trigger()
        state_file = ack(cc, storage, 2)  # all acks of 2 are in: its _metadata is on its way
        assert 2 in cc.completing and 2 not in cc.pending
        await asyncio.get_running_loop().run_in_executor(None, storage.writing.wait, 10)
        # The job fails over now: the restore preparation must wait for the completion.
        attempt[0] += 1
        cc.abort_all("job restarting")
        plan_future = cc.prepare_restore({}, False, None, RecordingSink(recovered))
        await asyncio.sleep(0.2)
        assert not plan_future.done()
        storage.release.set()
        plan = await asyncio.wait_for(plan_future, 10)
        return plan, state_file

    plan, state_file = asyncio.run(scenario())
    assert plan.choice.checkpoint_id == 2 and plan.body["checkpoint_id"] == 2
    assert recovered == [(JOB, 2)]          # the sink commits what was staged up to 2
    assert storage.size(state_file) == 100  # and 2's state was not deleted as "incomplete"
    assert ckpt.list_checkpoint_ids(storage, JOB) == {2: True}  # retention kept the newest


def test_an_aborted_checkpoint_is_deleted_through_the_owner(tmp_path: Path):
    storage = LocalStorage(tmp_path)
    failures: list[str] = []

    async def scenario():
        cc = make(storage, [0], failures)
        cc.owner.start()
        cc.trigger()
        storage.put(f"{JOB}/chk-1/t0/0-state", b"x")
        cc.abort(1, "declined", count=True)
        await cc.owner.submit("barrier", lambda: asyncio.sleep(0))

    asyncio.run(scenario())
    assert ckpt.list_checkpoint_ids(storage, JOB) == {}
    assert failures and "1 checkpoint(s) failed in a row" in failures[0]


class UndeletableStorage(LocalStorage):
    def delete_prefix(self, prefix: str) -> None:
        raise PermissionError(f"[Errno 13] Permission denied: {prefix}")


class FakeWriter:
    def __init__(self):
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def test_a_non_storage_error_in_the_restore_is_logged_and_counted_not_a_silent_hang(
        tmp_path: Path, caplog):
    from streamjob.coordinator import Coordinator, WorkerConn
    from streamjob.jobstate import JobState
    from streamjob.manifest import parse_manifest

    storage = UndeletableStorage(tmp_path / "ckpt")
    storage.put(f"{JOB}/chk-3/t0/0-state", b"x")  # incomplete: the restore deletes it
    job = parse_manifest({
        "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "wc"},
        "spec": {"pipeline": "streamjob.examples.wordcount:build", "parallelism": 2,
                 "args": {"output": str(tmp_path / "out")},
                 "storage": f"file://{tmp_path / 'ckpt'}",
                 "restartStrategy": {"type": "fixed-delay", "delay": "10ms",
                                     "maxAttempts": 1}}})
    coordinator = Coordinator(job, JOB, storage)

    async def scenario():
        coordinator.done, coordinator._wake = asyncio.Event(), asyncio.Event()
        coordinator.checkpoints.owner.start()
        coordinator.workers = {i: WorkerConn(i, FakeWriter(), "127.0.0.1", 1000 + i, None)
                               for i in range(2)}
        coordinator._schedule_deploy(0.0)
        for _ in range(500):
            if coordinator.restarts == 1:
                break
            await asyncio.sleep(0.01)
        assert coordinator.state is JobState.RESTARTING
        # the next attempt fails the same way: no attempts left, FAILED (not a hang)
        for w in coordinator.workers.values():
            w.idle = True
        coordinator._wake.set()
        await asyncio.wait_for(coordinator.done.wait(), 10)

    with caplog.at_level(logging.ERROR, logger="streamjob.coordinator"):
        asyncio.run(scenario())
    assert coordinator.state is JobState.FAILED
    assert coordinator.restarts == 2
    assert "PermissionError" in coordinator.last_failure["reason"]
    assert "no restart attempts left (1 allowed)" in coordinator.message
    assert any("PermissionError" in r.getMessage() or r.exc_info for r in caplog.records)


def test_a_stop_savepoint_is_acknowledged_only_with_its_marker_and_in_its_attempt(
        tmp_path: Path):
    storage = SlowMetadataStorage(tmp_path)
    attempt = [0]
    finals = []

    async def scenario():
        cc = make(storage, attempt)
        cc.on_final = finals.append
        cc.owner.start()
        pc = cc.trigger(savepoint=True, stop=True)
        fut = asyncio.get_running_loop().create_future()
        pc.waiters.append(fut)
        storage.slow = True
        ack(cc, storage, pc.checkpoint_id)
        await asyncio.get_running_loop().run_in_executor(None, storage.writing.wait, 10)
        attempt[0] += 1            # a failover while the savepoint's _metadata is written
        storage.release.set()
        with pytest.raises(Exception, match="restarted while the stop savepoint"):
            await asyncio.wait_for(fut, 10)
        # the same in a quiet attempt is acknowledged, and the marker is there first
        pc = cc.trigger(savepoint=True, stop=True)
        fut = asyncio.get_running_loop().create_future()
        pc.waiters.append(fut)
        ack(cc, storage, pc.checkpoint_id)
        summary = await asyncio.wait_for(fut, 10)
        return summary

    summary = asyncio.run(scenario())
    assert (tmp_path / JOB / "stop").is_file()
    assert summary["id"] == 2 and [pc.checkpoint_id for pc in finals] == [2]
    assert b'"savepoint_id": 2' in (tmp_path / JOB / "stop").read_bytes()


def test_a_restore_behind_committed_output_fails_or_sets_it_aside_when_allowed(
        tmp_path: Path):
    """Checkpoint 2's state file is gone after its output was committed: restoring 1 would
    write 2's output again. Without --allow-fresh-start that fails with the reason; with it
    the committed output of 2 is moved aside (kept) before the replay."""
    from streamjob.connectors import FileSink
    from streamjob.connectors.filesink import job_token

    storage = LocalStorage(tmp_path / "ckpt")
    sink = FileSink(str(tmp_path / "out"))
    writer = sink.create_writer(0, JOB)
    for cid in (1, 2):
        storage.put(f"{JOB}/chk-{cid}/t0/0-state", b"x" * 100)
        body = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "job_id": JOB,
                "checkpoint_id": cid, "max_parallelism": 128, "kind": "checkpoint",
                "tasks": {"t0": {"name": "source", "subtasks": [
                    {"format": 1, "key": f"{JOB}/chk-{cid}/t0/0-state", "size": 100}]}}}
        storage.put(f"{JOB}/chk-{cid}/_metadata", ckpt.encode_metadata(body))
        writer.write([f"epoch {cid}"])
        writer.pre_commit(cid)()
        writer.commit(cid)
    storage.delete(f"{JOB}/chk-2/t0/0-state")
    part2 = tmp_path / "out" / f"part-{job_token(JOB)}-0-2"

    async def plan(allow: bool):
        cc = make(storage, [0])
        cc.owner.start()
        return await cc.prepare_restore({}, allow, None, sink)

    refused = asyncio.run(plan(False))
    assert refused.choice.error is not None and "state file" in refused.choice.error
    assert refused.body is None
    assert part2.read_text() == "epoch 2\n"        # untouched
    allowed = asyncio.run(plan(True))
    assert allowed.choice.error is None and allowed.body["checkpoint_id"] == 1
    assert not part2.exists()
    [kept] = (tmp_path / ".out.superseded").iterdir()
    assert (kept / part2.name).read_text() == "epoch 2\n"


def test_only_checkpoints_and_shared_files_of_a_superseded_job_id_are_deleted():
    keys = ["old/chk-3/_metadata", "old/chk-3/t0/0-ab", "old/chk-4/t1/1-cd",
            "old/shared/t0/0-5-ef", "old/savepoints/sp-5/_metadata",
            "old/savepoints/sp-5/t0/0-gh", "old/stop", "old/coordinator.json",
            "old/chk-9/_metadata", "old/chk-9/t0/0-ij", "old/chk-10/t0/0-kl"]
    assert ckpt.superseded_deletions(keys, keep="old/savepoints/sp-5") == [
        "old/chk-3", "old/chk-4", "old/shared", "old/chk-9", "old/chk-10"]
    # the path this job started from (here a checkpoint of the old id) is kept, and the
    # shared files an incremental checkpoint may need with it
    assert ckpt.superseded_deletions(keys, keep="old/chk-9") == [
        "old/chk-3", "old/chk-4", "old/chk-10"]
    assert ckpt.superseded_deletions(keys, keep="other/chk-9") == ckpt.superseded_deletions(
        keys)


def test_superseded_job_ids_from_the_environment_are_never_this_job_or_a_path():
    from streamjob.coordinator import superseded_job_ids

    assert superseded_job_ids(" a, b ,,me,../x,..,c/d,e", "me") == ["a", "b", "e"]
    assert superseded_job_ids("", "me") == []


class UnreadableMetadataStorage(LocalStorage):
    """Reads of the ``_metadata`` keys in ``broken`` fail as storage that is down would."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.broken: set[str] = set()

    def get(self, key: str) -> bytes:
        if key in self.broken:
            raise StorageError(f"injected: cannot read {key}")
        return super().get(key)


def shared_handle(cid: int, ssts: list[str]) -> dict:
    """A rocksdb-like subtask handle: its own file plus SST files in the shared folder."""
    return {"format": 1, "key": f"{JOB}/chk-{cid}/t0/0-state", "size": 1,
            "rocksdb": {"files": [{"name": f"{s}.sst", "key": f"{JOB}/shared/t0/0-{s}.sst",
                                   "size": 1} for s in ssts]}}


def completed(storage, cid: int, ssts: list[str]) -> None:
    handle = shared_handle(cid, ssts)
    for key in ckpt.handle_keys(handle):
        storage.put(key, b"x")
    body = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "job_id": JOB,
            "checkpoint_id": cid, "max_parallelism": 128, "kind": "checkpoint",
            "tasks": {"t0": {"name": "source", "subtasks": [handle]}}}
    storage.put(f"{JOB}/chk-{cid}/_metadata", ckpt.encode_metadata(body))


def shared_files(storage) -> set[str]:
    return {k.rsplit("-", 1)[1] for k in storage.list(f"{JOB}/shared/")}


def test_retention_deletes_no_shared_file_of_a_retained_checkpoint_it_cannot_read(
        tmp_path: Path, caplog):
    """A coordinator restarted after checkpoints 1 and 2 (retained: 2) completes 3: 1 goes.
    Reading 2's _metadata fails for a moment: its SST b (shared with 1) must stay; the
    retention is retried after the next checkpoint and then deletes exactly 1's own file."""
    storage = UnreadableMetadataStorage(tmp_path)
    completed(storage, 1, ["a", "b"])
    completed(storage, 2, ["b", "c"])
    storage.broken.add(f"{JOB}/chk-2/_metadata")

    async def complete(cc, cid: int, ssts: list[str]) -> None:
        cc.trigger()
        handle = shared_handle(cid, ssts)
        for key in ckpt.handle_keys(handle):
            storage.put(key, b"x")
        cc.on_ack({"id": cid, "task": "t0", "subtask": 0, "handle": handle, "timings": {}})
        await cc.owner.submit("barrier", lambda: asyncio.sleep(0))

    async def scenario():
        cc = make(storage, [0])
        cc.cfg.retained = 2
        cc.next_id = 3
        cc.owner.start()
        await complete(cc, 3, ["c", "d"])
        assert shared_files(storage) == {"a.sst", "b.sst", "c.sst", "d.sst"}
        assert set(ckpt.list_checkpoint_ids(storage, JOB)) == {1, 2, 3}
        storage.broken.clear()
        await complete(cc, 4, ["d", "e"])

    with caplog.at_level(logging.WARNING, logger="streamjob.coordinator"):
        asyncio.run(scenario())
    assert any("retention after checkpoint 3 failed" in r.getMessage() for r in caplog.records)
    assert ckpt.list_checkpoint_ids(storage, JOB) == {3: True, 4: True}
    assert shared_files(storage) == {"c.sst", "d.sst", "e.sst"}


def test_the_restore_deletes_no_shared_file_of_a_checkpoint_it_cannot_read(tmp_path: Path,
                                                                           caplog):
    """At a restore, shared files no checkpoint refers to are deleted (orphans of aborted
    checkpoints). A completed checkpoint whose _metadata cannot be read for a moment is not
    'no checkpoint': its files stay, the restore goes on, and the next restore cleans up."""
    storage = UnreadableMetadataStorage(tmp_path)
    completed(storage, 1, ["a", "b"])
    completed(storage, 2, ["b", "c"])
    storage.put(f"{JOB}/shared/t0/0-orphan.sst", b"x")  # of an aborted checkpoint
    storage.broken.add(f"{JOB}/chk-1/_metadata")

    def restore():
        async def plan():
            cc = make(storage, [0])
            cc.owner.start()
            return await cc.prepare_restore({}, False, None, RecordingSink([]))
        return asyncio.run(plan())

    with caplog.at_level(logging.WARNING, logger="streamjob.coordinator"):
        assert restore().choice.checkpoint_id == 2
    assert shared_files(storage) == {"a.sst", "b.sst", "c.sst", "orphan.sst"}
    assert "not deleting unreferenced shared state files" in caplog.text
    storage.broken.clear()
    assert restore().choice.checkpoint_id == 2
    assert shared_files(storage) == {"a.sst", "b.sst", "c.sst"}


def test_a_checkpoint_the_restore_skipped_does_not_count_as_retained(tmp_path: Path):
    """Checkpoints 6 and 7 lost an SST file: the restore skips them for 5. When 8 completes
    (retained: 2), 5 is the fallback and must stay; keeping 7 (known broken) instead would
    leave nothing to fall back to if 8 broke too."""
    storage = LocalStorage(tmp_path)
    completed(storage, 5, ["a", "b"])
    completed(storage, 6, ["b", "c"])
    completed(storage, 7, ["c", "d"])
    storage.delete(f"{JOB}/shared/t0/0-c.sst")

    async def scenario():
        cc = make(storage, [0])
        cc.cfg.retained = 2
        cc.owner.start()
        plan = await cc.prepare_restore({}, False, None, RecordingSink([]))
        assert plan.choice.checkpoint_id == 5 and set(plan.problems) == {6, 7}
        cc.trigger()
        handle = shared_handle(8, ["b", "e"])  # the restored database's files, and a new one
        for key in ckpt.handle_keys(handle):
            storage.put(key, b"x")
        cc.on_ack({"id": 8, "task": "t0", "subtask": 0, "handle": handle, "timings": {}})
        await cc.owner.submit("barrier", lambda: asyncio.sleep(0))

    asyncio.run(scenario())
    assert ckpt.list_checkpoint_ids(storage, JOB) == {5: True, 8: True}
    assert shared_files(storage) == {"a.sst", "b.sst", "e.sst"}


@pytest.mark.parametrize("how", ["declined", "expired"])
def test_an_aborted_checkpoint_keeps_the_shared_files_its_acks_uploaded(tmp_path: Path, how):
    """Subtask 0 uploaded SST x for checkpoint 2 and acked; subtask 1 declines (or 2 times
    out). The workers remember x as uploaded, so checkpoint 3 refers to it without
    uploading it again: the abort deletes 2's own folder, never a shared file."""
    storage = LocalStorage(tmp_path)

    async def scenario():
        cc = make(storage, [0])
        cc.p = 2
        cc.owner.start()

        uploaded: set[str] = set()

        def ack_all(cid: int, ssts: list[str], subtasks=(0, 1)) -> None:
            """Acks naming ``ssts``; a file is uploaded once (the workers remember what they
            uploaded and never upload it again)."""
            for i in subtasks:
                handle = shared_handle(cid, ssts)
                handle["key"] = f"{JOB}/chk-{cid}/t0/{i}-state"
                for key in ckpt.handle_keys(handle) - uploaded:
                    storage.put(key, b"x")
                    uploaded.add(key)
                cc.on_ack({"id": cid, "task": "t0", "subtask": i, "handle": handle,
                           "timings": {}})

        cc.trigger()
        ack_all(1, ["a"])
        cc.trigger()
        ack_all(2, ["a", "x"], subtasks=(0,))
        if how == "declined":
            cc.abort(2, "declined by t0[1]", count=True)
        else:
            cc.expire(cc.pending[2].triggered_at + cc.cfg.timeout + 1)
        await cc.owner.submit("barrier", lambda: asyncio.sleep(0))
        assert 2 not in ckpt.list_checkpoint_ids(storage, JOB)
        cc.trigger()
        ack_all(3, ["a", "x"])
        await cc.owner.submit("barrier", lambda: asyncio.sleep(0))

    asyncio.run(scenario())
    assert ckpt.list_checkpoint_ids(storage, JOB) == {3: True}
    assert shared_files(storage) == {"a.sst", "x.sst"}
    assert js.missing_or_short(ckpt.handles_of(ckpt.read_metadata(
        storage, ckpt.checkpoint_dir(JOB, 3))), storage.size) is None
