"""Flink's CheckpointCoordinator: pending checkpoints, acks, completion, abort, retention, and
the choice of the checkpoint to restore.

One owner orders every step that reads or changes which checkpoints exist: the
:class:`StorageOwner` runs them one at a time, in the order they were asked for. Completion
(``_metadata`` + retention), the deletion of an aborted checkpoint, and the restore
preparation (choice of the restore point, sink recovery, removal of incomplete folders) all
go through it, so a failover can never choose n-1 while n's ``_metadata`` is being written
and then delete n's state files as "incomplete".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from streamjob import checkpoints as ckpt
from streamjob import faults
from streamjob import jobstate as js
from streamjob.storage import NotFoundError, Storage, StorageError

log = logging.getLogger("streamjob.coordinator")

HISTORY = 50
STOP_MARKER = "stop"                 # <job>/stop: an acknowledged stop-with-savepoint
COUNTERS = "coordinator.json"        # <job>/coordinator.json: restarts, coordinator starts


@dataclass
class PendingCheckpoint:
    checkpoint_id: int
    triggered_at: float
    expected: set[tuple[str, int]]
    savepoint: bool = False
    final: bool = False
    stop: bool = False
    attempt: int = 0
    handles: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    timings: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    waiters: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "savepoint" if self.savepoint else "checkpoint"


class StorageOwner:
    """Runs storage steps one at a time in submission order (a FIFO queue, one consumer).
    A submitter that is cancelled does not cancel its step: steps are atomic."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any],
                                        str]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.busy_with: str | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def submit(self, what: str, step: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((step, fut, what))
        return fut

    async def _run(self) -> None:
        while True:
            step, fut, what = await self.queue.get()
            self.busy_with = what
            try:
                result = await step()
            except asyncio.CancelledError:
                if not fut.done():
                    fut.cancel()
                raise
            except Exception as err:  # noqa: BLE001 - handed to the submitter
                if not fut.done():
                    fut.set_exception(err)
                else:
                    log.error("%s failed: %s: %s", what, type(err).__name__, err)
            else:
                if not fut.done():
                    fut.set_result(result)
            finally:
                self.busy_with = None


@dataclass
class RestorePlan:
    choice: js.RestoreChoice
    body: dict[str, Any] | None      # what the workers restore (checkpoint or savepoint)
    problems: dict[int, str]         # every checkpoint known not to restore, and why


class CheckpointCoordinator:
    def __init__(self, *, job_id: str, job_name: str, storage: Storage, tasks: list[Any],
                 parallelism: int, max_parallelism: int, cfg: Any, metrics: Any,
                 executor: Executor, broadcast: Callable[..., None],
                 attempt: Callable[[], int], on_failure: Callable[[str], None],
                 on_final: Callable[[PendingCheckpoint], None],
                 write_status: Callable[[], None]):
        self.job_id, self.job_name, self.storage = job_id, job_name, storage
        self.tasks, self.p, self.m, self.cfg = tasks, parallelism, max_parallelism, cfg
        self.metrics, self.executor = metrics, executor
        self.broadcast, self.attempt = broadcast, attempt
        self.on_failure, self.on_final, self.write_status = on_failure, on_final, write_status
        self.owner = StorageOwner()
        self.pending: dict[int, PendingCheckpoint] = {}
        self.completing: dict[int, PendingCheckpoint] = {}   # all acked, _metadata on its way
        self.next_id = 1
        self.history: list[dict[str, Any]] = []
        self.savepoints: list[dict[str, Any]] = []
        self.last_trigger: float | None = None
        self.last_completion: float | None = None
        self.consecutive_failures = 0
        self.restored_from: int | None = None
        self._referenced: dict[int, set[str]] = {}
        #: checkpoints known not to restore (the last restore preparation's problems): they
        #: do not count as retained
        self.unrestorable: dict[int, str] = {}
        #: job ids of the operator revisions this job replaced: their checkpoints go once this
        #: job has a completed checkpoint of its own (``keep``: the path this job started from)
        self.superseded: list[str] = []
        self.keep: str | None = None

    async def io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- trigger, ack, complete -------------------------------------------------------------

    def trigger(self, savepoint: bool = False, final: bool = False,
                stop: bool = False) -> PendingCheckpoint:
        cid = self.next_id
        self.next_id += 1
        now = time.time()
        expected = {(t.task_id, i) for t in self.tasks for i in range(self.p)}
        pc = PendingCheckpoint(cid, now, expected, savepoint, final, stop, self.attempt())
        self.pending[cid] = pc
        if not savepoint:
            self.last_trigger = now
        log.debug("trigger checkpoint %d (savepoint=%s final=%s)", cid, savepoint, final)
        self.broadcast("TRIGGER", id=cid, ts=now, savepoint=savepoint, stop=stop, final=final)
        return pc

    def periodic_in_flight(self) -> int:
        """Checkpoints counted against ``maxConcurrent``: pending and being completed."""
        return sum(1 for pc in [*self.pending.values(), *self.completing.values()]
                   if not pc.savepoint)

    def stop_in_flight(self) -> bool:
        return any(pc.stop for pc in [*self.pending.values(), *self.completing.values()])

    def on_ack(self, msg: dict[str, Any]) -> None:
        pc = self.pending.get(msg["id"])
        if pc is None:
            return
        key = (msg["task"], msg["subtask"])
        log.debug("checkpoint %d: ack from %s[%d]", pc.checkpoint_id, *key)
        pc.handles[key] = msg["handle"]
        pc.timings[key] = msg["timings"]
        if len(pc.handles) == len(pc.expected):
            # Still known (never aborted, never deleted) until its _metadata is written.
            del self.pending[pc.checkpoint_id]
            self.completing[pc.checkpoint_id] = pc
            faults.point("coordinator.after-last-ack")
            self.owner.submit(f"completion of checkpoint {pc.checkpoint_id}",
                              lambda: self._complete(pc))

    def _metadata_body(self, pc: PendingCheckpoint, completed_at: float) -> dict[str, Any]:
        tasks, timings = {}, {}
        for t in self.tasks:
            tasks[t.task_id] = {"name": t.name,
                                "subtasks": [pc.handles[(t.task_id, i)] for i in range(self.p)]}
            timings[t.task_id] = [pc.timings[(t.task_id, i)] for i in range(self.p)]
        size = sum(h.get("size", 0) + h.get("rocksdb", {}).get("uploaded", 0)
                   for tk in tasks.values() for h in tk["subtasks"])
        return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "job_id": self.job_id,
                "job_name": self.job_name, "checkpoint_id": pc.checkpoint_id,
                "kind": pc.kind,
                "triggered_at": pc.triggered_at, "completed_at": completed_at,
                "parallelism": self.p, "max_parallelism": self.m,
                "mode": self.cfg.mode, "tasks": tasks, "timings": timings, "size_bytes": size,
                "attempt": pc.attempt}

    async def _complete(self, pc: PendingCheckpoint) -> None:
        """Runs in the owner: write ``_metadata`` (last), then NOTIFY, then retention."""
        try:
            await self._complete_inner(pc)
        except Exception as err:  # noqa: BLE001 - never a silent end of a completion
            log.exception("completion of checkpoint %d failed", pc.checkpoint_id)
            self._fail_waiters(pc, RuntimeError(f"{pc.kind} {pc.checkpoint_id} failed: {err}"))
            self.on_failure(f"completion of checkpoint {pc.checkpoint_id} failed: "
                            f"{type(err).__name__}: {err}")
        finally:
            self.completing.pop(pc.checkpoint_id, None)

    async def _complete_inner(self, pc: PendingCheckpoint) -> None:
        completed_at = time.time()
        body = self._metadata_body(pc, completed_at)
        path = (ckpt.savepoint_path(self.job_id, str(pc.checkpoint_id)) if pc.savepoint
                else ckpt.checkpoint_dir(self.job_id, pc.checkpoint_id))
        try:
            await self.io(self.storage.put, f"{path}/{ckpt.METADATA}",
                          ckpt.encode_metadata(body))
            if pc.savepoint:
                faults.point("coordinator.after-savepoint-metadata")
            if pc.stop:
                if pc.attempt != self.attempt():
                    raise StorageError("the job restarted while the stop savepoint was "
                                       "written; not stopping")
                # The stop is acknowledged only once it is durable: a restarted coordinator
                # finds this marker and stays stopped.
                await self.io(self.storage.put, f"{self.job_id}/{STOP_MARKER}",
                              json.dumps({"savepoint_id": pc.checkpoint_id,
                                          "path": f"{self.storage.uri}/{path}"}).encode())
        except Exception as err:  # noqa: BLE001 - a failed checkpoint, not a dead coordinator
            log.warning("checkpoint %d: cannot write _metadata: %s", pc.checkpoint_id, err)
            self._record_failed(pc, f"cannot write _metadata: {err}")
            self._fail_waiters(pc, err if isinstance(err, StorageError) else
                               RuntimeError(f"{pc.kind} {pc.checkpoint_id} failed: {err}"))
            self.count_failure(pc.checkpoint_id, f"cannot write _metadata: {err}")
            return
        if not pc.savepoint:
            faults.point("coordinator.after-metadata")
        summary = {"id": pc.checkpoint_id, "kind": body["kind"], "status": "COMPLETED",
                   "triggered_at": pc.triggered_at, "completed_at": completed_at,
                   "duration_ms": round((completed_at - pc.triggered_at) * 1000, 1),
                   "size_bytes": body["size_bytes"], "path": f"{self.storage.uri}/{path}",
                   "timings": body["timings"], "restored_from": self.restored_from}
        self._record(summary)
        self.metrics.completed(summary)
        self.consecutive_failures = 0
        if pc.savepoint:
            self.savepoints.append(summary)
        else:
            self.last_completion = completed_at
            self._referenced[pc.checkpoint_id] = ckpt.referenced_keys(body)
        # Older checkpoints are subsumed by a newer completed one; savepoints never are.
        for older in [c for c, o in self.pending.items()
                      if c < pc.checkpoint_id and not o.savepoint and not pc.savepoint]:
            self.abort(older, f"subsumed by checkpoint {pc.checkpoint_id}", count=False)
        current = pc.attempt == self.attempt()
        if (pc.final and current) or pc.stop:
            self.on_final(pc)  # a stop whose marker is written is honoured in any attempt
        if current and (not pc.savepoint or pc.stop):
            # An intermediate savepoint commits no side effects (as in Flink): its staged
            # output is committed by the next checkpoint, or dropped and replayed if the job
            # restores from an older one, so committed output never runs ahead of the
            # checkpoints a failover can restore.
            self.broadcast("NOTIFY", id=pc.checkpoint_id, final=pc.final or pc.stop)
        for fut in pc.waiters:
            if not fut.done():
                fut.set_result(summary)
        if not pc.savepoint:
            try:
                await self.io(self._retain, self._in_flight_keys())
            except Exception as err:  # noqa: BLE001 - retention is retried at the next one
                log.warning("retention after checkpoint %d failed: %s: %s", pc.checkpoint_id,
                            type(err).__name__, err)
            if self.superseded:
                try:
                    await self.io(self._clean_superseded)
                except Exception as err:  # noqa: BLE001 - retried after the next checkpoint
                    log.warning("cannot delete checkpoints of superseded job ids: %s: %s",
                                type(err).__name__, err)
        self.write_status()

    def _fail_waiters(self, pc: PendingCheckpoint, err: BaseException) -> None:
        for fut in pc.waiters:
            if not fut.done():
                fut.set_exception(err)

    # -- abort and failures -----------------------------------------------------------------

    def abort(self, cid: int, reason: str, count: bool) -> None:
        pc = self.pending.pop(cid, None)
        if pc is None:
            return  # unknown, or all acks are in (then it completes: never deleted)
        log.warning("checkpoint %d aborted: %s", cid, reason)
        self.broadcast("ABORT", id=cid)
        self._record_failed(pc, reason)
        if not pc.savepoint:
            self.owner.submit(f"deletion of aborted checkpoint {cid}",
                              lambda: self.io(self._delete_incomplete, cid))
        self._fail_waiters(pc, RuntimeError(f"{pc.kind} {cid} failed: {reason}"))
        if count:
            self.count_failure(cid, reason)

    def abort_all(self, reason: str) -> None:
        for cid in list(self.pending):
            self.abort(cid, reason, count=False)

    def expire(self, now: float) -> None:
        for cid, pc in list(self.pending.items()):
            if now - pc.triggered_at > self.cfg.timeout:
                self.abort(cid, f"not complete within {self.cfg.timeout:g}s", count=True)

    def _delete_incomplete(self, cid: int) -> None:
        ids = ckpt.list_checkpoint_ids(self.storage, self.job_id)
        if ids.get(cid):
            return  # it has _metadata after all: completed checkpoints are never deleted here
        try:
            self.storage.delete_prefix(ckpt.checkpoint_dir(self.job_id, cid))
        except Exception as err:  # noqa: BLE001 - an orphan folder, removed at the next restore
            log.warning("cannot delete aborted checkpoint %d: %s: %s", cid,
                        type(err).__name__, err)

    def _record_failed(self, pc: PendingCheckpoint, reason: str) -> None:
        self.metrics.failed.inc()
        self._record({"id": pc.checkpoint_id, "kind": "savepoint" if pc.savepoint
                      else "checkpoint", "status": "FAILED", "triggered_at": pc.triggered_at,
                      "failed_at": time.time(), "reason": reason,
                      "acked": len(pc.handles), "expected": len(pc.expected),
                      "timings": {t.task_id: [pc.timings.get((t.task_id, i))
                                              for i in range(self.p)] for t in self.tasks}})

    def count_failure(self, cid: int, reason: str) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures > self.cfg.tolerable_failures:
            self.consecutive_failures = 0
            self.on_failure(f"{self.cfg.tolerable_failures + 1} checkpoint(s) failed in a row "
                            f"(last: {cid}, {reason})")
        self.write_status()

    def _record(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        del self.history[:-HISTORY]

    # -- retention ----------------------------------------------------------------------------

    def _in_flight_keys(self) -> set[str]:
        """State files named by the acks of checkpoints in flight (read on the event loop,
        which adds acks: never iterated from the retention's thread)."""
        return {key for pc in [*self.pending.values(), *self.completing.values()]
                for h in pc.handles.values() for key in ckpt.handle_keys(h)}

    def _retain(self, in_flight: set[str]) -> None:
        """Keep the newest ``retained`` completed checkpoints; delete older ones only now that
        a newer one is complete. Shared (incremental) files go when no retained checkpoint
        and no checkpoint in flight (``in_flight``: the files their acks name) refers to
        them. A retained checkpoint whose ``_metadata`` cannot be read now raises (through
        :meth:`_refs`): nothing is deleted, the next completion tries again."""
        ids = ckpt.list_checkpoint_ids(self.storage, self.job_id)
        complete = sorted(n for n, done in ids.items() if done)
        # A checkpoint the restore had to skip is no fallback: the newest ``retained`` that
        # can be restored are kept (keeping a broken one instead left a job whose newest
        # checkpoint broke later with nothing to fall back to).
        keep = set([n for n in complete if n not in self.unrestorable][-self.cfg.retained:])
        newest = complete[-1] if complete else 0
        doomed = [n for n in ids if n not in keep and n < newest and n not in self.pending
                  and n not in self.completing]
        if not doomed:
            return
        released: set[str] = set()
        # Shared files (incremental chains, rocksdb SST files) go by reference count; a
        # checkpoint's own files go with its folder.
        shared = ckpt.shared_dir(self.job_id) + "/"
        released = {k for k in self._refs(n for n in doomed if ids[n]) if k.startswith(shared)}
        if released:
            released -= self._refs(keep)
            released -= in_flight
        for n in doomed:
            self._referenced.pop(n, None)
            try:
                self.storage.delete_prefix(ckpt.checkpoint_dir(self.job_id, n))
            except Exception as err:  # noqa: BLE001 - retried at the next retention
                log.warning("cannot delete old checkpoint %d: %s: %s", n, type(err).__name__,
                            err)
        for key in sorted(released):
            try:
                self.storage.delete(key)
            except Exception as err:  # noqa: BLE001
                log.warning("cannot delete shared state file %s: %s", key, err)

    def _clean_superseded(self) -> None:
        """Checkpoints left under earlier job ids by operator revisions: a user can no longer
        restore them (this job restores its own newest checkpoint, which now exists)."""
        for old in list(self.superseded):
            doomed = ckpt.superseded_deletions(self.storage.list(f"{old}/"), self.keep)
            for folder in doomed:
                self.storage.delete_prefix(folder)
            if doomed:
                log.info("deleted %s of superseded job id %s", ", ".join(doomed), old)
            self.superseded.remove(old)

    def _refs(self, ids) -> set[str]:
        """Every state file the completed checkpoints ``ids`` refer to. One whose
        ``_metadata`` is gone or corrupt can never be restored: it refers to nothing. One
        whose ``_metadata`` cannot be read right now (storage down, denied) raises
        :class:`StorageError`: taking its files for unreferenced would delete the shared
        files of a retained checkpoint."""
        refs: set[str] = set()
        for n in ids:
            if n not in self._referenced:
                try:
                    self._referenced[n] = ckpt.referenced_keys(
                        ckpt.read_metadata(self.storage, ckpt.checkpoint_dir(self.job_id, n)))
                except (NotFoundError, ckpt.CorruptMetadataError):
                    continue
            refs |= self._referenced[n]
        return refs

    # -- restore --------------------------------------------------------------------------------

    def prepare_restore(self, problems: dict[int, str], allow_fresh_start: bool,
                        savepoint_body: dict[str, Any] | None,
                        sink: Any) -> asyncio.Future[RestorePlan]:
        """Through the owner (after every completion asked for before it): choose the
        restore point, make the sink's output match it, remove incomplete folders."""
        known = dict(problems)
        return self.owner.submit("restore preparation", lambda: self.io(
            self._prepare_restore, known, allow_fresh_start, savepoint_body, sink))

    def _prepare_restore(self, problems: dict[int, str], allow_fresh_start: bool,
                         savepoint_body: dict[str, Any] | None, sink: Any) -> RestorePlan:
        ids = ckpt.list_checkpoint_ids(self.storage, self.job_id)
        self.next_id = max(self.next_id, max([0, *ids]) + 1)
        completed = [n for n, done in ids.items() if done]
        while True:
            choice = js.choose_restore(completed, problems, allow_fresh_start)
            n = choice.checkpoint_id
            if n is None:
                break
            path = ckpt.checkpoint_dir(self.job_id, n)
            try:
                body = ckpt.read_metadata(self.storage, path)
            except ckpt.CorruptMetadataError as err:
                problems[n] = f"{path}/_metadata is corrupt ({err})"
                continue
            except NotFoundError:
                problems[n] = f"{path}/_metadata disappeared"
                continue
            if body.get("max_parallelism") != self.m:
                problems[n] = (f"taken with maxParallelism {body.get('max_parallelism')}, "
                               f"the job has {self.m}")
                continue
            bad = js.missing_or_short(ckpt.handles_of(body), self.storage.size)
            if bad is not None:
                problems[n] = bad
                continue
            break
        self.unrestorable = dict(problems)
        for n, reason in choice.skipped:
            log.error("skipping checkpoint %d: %s; trying the one before it", n, reason)
        if choice.error is not None:
            return RestorePlan(choice, None, problems)
        if choice.checkpoint_id is not None:
            restore_id = choice.checkpoint_id
        else:
            body = savepoint_body
            restore_id = 0
        committed_after = sink.committed_after(self.job_id, restore_id)
        error = js.rewind_error(restore_id, committed_after, choice.skipped, allow_fresh_start)
        if error is not None:
            return RestorePlan(js.RestoreChoice(choice.checkpoint_id, choice.skipped, error),
                               None, problems)
        if committed_after:
            kept = sink.set_aside(self.job_id, restore_id)
            log.error("restarting %s behind committed output (--allow-fresh-start): %d output "
                      "file(s) of checkpoints after %d moved aside to %s (kept), replaying "
                      "from there", self.job_id, len(committed_after), restore_id, kept)
        sink.recover(self.job_id, restore_id)
        for n, done in ckpt.list_checkpoint_ids(self.storage, self.job_id).items():
            if not done and n not in self.pending and n not in self.completing:
                self.storage.delete_prefix(ckpt.checkpoint_dir(self.job_id, n))
        self._gc_shared(body)
        return RestorePlan(choice, body, problems)

    def _gc_shared(self, restore: dict[str, Any] | None) -> None:
        """At a restore (nothing running): shared files no checkpoint refers to are orphans of
        aborted checkpoints or of a previous attempt."""
        shared = self.storage.list(ckpt.shared_dir(self.job_id) + "/")
        if not shared:
            return
        ids = ckpt.list_checkpoint_ids(self.storage, self.job_id)
        try:
            refs = self._refs(n for n, done in ids.items() if done)
        except StorageError as err:  # orphans only cost space: the restore goes on
            log.warning("not deleting unreferenced shared state files now: %s", err)
            return
        if restore:
            refs |= ckpt.referenced_keys(restore)
        for key in shared:
            if key not in refs:
                self.storage.delete(key)

    # -- small durable facts ----------------------------------------------------------------------

    def read_json(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.storage.get(f"{self.job_id}/{name}"))
        except NotFoundError:
            return None
        except ValueError as err:
            log.error("%s/%s is unreadable (%s); ignoring it", self.job_id, name, err)
            return None

    def save_counters(self, counters: dict[str, int]) -> asyncio.Future[None]:
        data = json.dumps(counters).encode()
        return self.owner.submit("counters", lambda: self.io(
            self.storage.put, f"{self.job_id}/{COUNTERS}", data))
