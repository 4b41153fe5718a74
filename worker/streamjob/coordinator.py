"""The coordinator process: CheckpointCoordinator and failover for one job.

It owns the checkpoint clock (one global trigger decision, never per-subtask timers), collects
acks, writes ``_metadata`` last, tells subtasks when a checkpoint completed (sinks commit),
aborts checkpoints that time out or are declined, and restarts the whole job from the latest
completed checkpoint when a worker is lost. Storage is the only source of truth: a
restarted coordinator finds where to resume by listing it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from streamjob import checkpoints as ckpt
from streamjob import wire
from streamjob.api import ApiServer
from streamjob.manifest import StreamJob, import_pipeline
from streamjob.metrics import CoordinatorMetrics
from streamjob.storage import Storage, StorageError

log = logging.getLogger("streamjob.coordinator")

EXIT_FINISHED, EXIT_FAILED = 0, 2
HISTORY = 50


@dataclass
class WorkerConn:
    index: int
    writer: asyncio.StreamWriter
    host: str
    port: int
    pid: int | None
    idle: bool = True      # not part of a running attempt: ready to be deployed
    running: bool = False


@dataclass
class PendingCheckpoint:
    checkpoint_id: int
    triggered_at: float
    expected: set[tuple[str, int]]
    savepoint: bool = False
    final: bool = False
    stop: bool = False
    handles: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    timings: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    waiters: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)


class Coordinator:
    def __init__(self, job: StreamJob, job_id: str, storage: Storage, bind: str = "127.0.0.1",
                 port: int = 0, status_file: str | None = None,
                 from_savepoint: str | None = None, api_port: int | None = None,
                 api_token: str | None = None, search_path: str | None = None):
        self.job, self.spec = job, job.spec
        self.job_id = job_id
        self.storage = storage
        self.bind, self.port = bind, port
        self.status_file = status_file
        self.from_savepoint = from_savepoint
        self.pipeline = import_pipeline(job.spec, search_path)
        self.p = job.spec.parallelism
        self.cfg = job.spec.checkpoint
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="coord-io")
        self.api = ApiServer(self, bind, api_port, api_token) if api_port is not None else None
        self.metrics = CoordinatorMetrics()
        # Workers prove they belong to this job with a shared token (from a Secret in
        # Kubernetes, generated per run locally); without it the port accepts any worker.
        self.worker_token = os.environ.get("STREAMJOB_WORKER_TOKEN") or None

        self.state = "CREATED"
        self.message = "waiting for workers"
        self.attempt = 0
        self.restarts = 0
        self.workers: dict[int, WorkerConn] = {}
        self.running: set[int] = set()
        self.sources_finished: set[int] = set()
        self.committed: set[int] = set()
        self.pending: dict[int, PendingCheckpoint] = {}
        self.next_id = 1
        self.restore_point: dict[str, Any] | None = None
        self.restored_from: int | None = None
        self.history: list[dict[str, Any]] = []
        self.savepoints: list[dict[str, Any]] = []
        self.last_trigger: float | None = None
        self.last_completion: float | None = None
        self.consecutive_failures = 0
        self.final_id: int | None = None
        self.stop_after: int | None = None
        self.records: dict[int, dict[str, list[int]]] = {}
        self.records_base = 0  # records read by sources in earlier attempts
        self._referenced: dict[int, set[str]] = {}  # checkpoint id -> state files it needs
        self.rate = 0.0
        self._rate_mark: tuple[float, int] | None = None
        self.done: asyncio.Event | None = None  # created in run(), inside the event loop
        self.exit_code = EXIT_FINISHED
        self.running_since: float | None = None
        self.attempt_running_at: float | None = None
        self.last_failure: dict[str, Any] | None = None
        self.finished_at: float | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    # -- I/O helpers ----------------------------------------------------------------------

    async def io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def broadcast(self, msg_type: str, **fields: Any) -> None:
        for w in self.workers.values():
            if not w.writer.is_closing():
                w.writer.write(wire.control(msg_type, attempt=self.attempt, **fields))

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        self.done = asyncio.Event()
        self._wake = asyncio.Event()
        await self._find_restore_point()
        server = await asyncio.start_server(self._on_worker, self.bind, self.port)
        self.port = server.sockets[0].getsockname()[1]
        if self.api is not None:
            await self.api.start()
        log.info("coordinator of %s listening on %s:%d", self.job_id, self.bind, self.port)
        self._write_status()
        ticker = asyncio.ensure_future(self._tick())
        self._restart_task = asyncio.ensure_future(self._deploy_when_ready(0.0))
        await self.done.wait()
        ticker.cancel()
        self.broadcast("SHUTDOWN")
        await asyncio.sleep(0.05)
        server.close()
        if self.api is not None:
            await self.api.stop()
        self._write_status()
        return self.exit_code

    async def _find_restore_point(self) -> None:
        # A StorageError here (unreachable, bad savepoint) ends the coordinator with exit 2.
        ids = await self.io(ckpt.list_checkpoint_ids, self.storage, self.job_id)
        latest = await self.io(ckpt.latest_completed, self.storage, self.job_id)
        if latest is None and self.from_savepoint:
            _, latest = await self.io(ckpt.resolve_savepoint, self.storage, self.from_savepoint)
            log.info("restoring from savepoint %s", self.from_savepoint)
        self.next_id = max([0, *ids]) + 1
        if latest is not None:
            ckpt.check_compatible(latest, self.spec.max_parallelism)
        self._set_restore_point(latest)

    def _set_restore_point(self, body: dict[str, Any] | None) -> None:
        """Where the next restore would start (``restored_from`` says where the running
        attempt did start)."""
        self.restore_point = body

    def _finish(self, state: str, message: str, code: int) -> None:
        if self.state in ("FINISHED", "FAILED", "STOPPED"):
            return
        self.state, self.message, self.exit_code = state, message, code
        self.finished_at = time.time()
        log.warning("job %s: %s", state.lower(), message) if code else log.info(message)
        self._write_status()
        self.done.set()

    # -- workers ---------------------------------------------------------------------------

    async def _on_worker(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        conn: WorkerConn | None = None
        try:
            kind, payload = await wire.read_frame(reader)
            hello = wire.unpack_control(payload)
            if hello["type"] != "HELLO" or not 0 <= hello["worker"] < self.p:
                writer.close()
                return
            index = hello["worker"]
            if self.worker_token and not hmac.compare_digest(
                    str(hello.get("token", "")).encode(), self.worker_token.encode()):
                log.warning("refused a worker connection from %s: wrong or missing token",
                            writer.get_extra_info("peername"))
                writer.close()
                return
            host = hello.get("host") or writer.get_extra_info("peername")[0]
            old = self.workers.get(index)
            conn = WorkerConn(index, writer, host, hello["port"], hello.get("pid"))
            self.workers[index] = conn
            if old is not None:
                old.writer.close()
                self._failover(f"worker {index} was replaced")
            self._wake.set()
            while True:
                kind, payload = await wire.read_frame(reader)
                self._on_message(conn, wire.unpack_control(payload))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if conn is not None and self.workers.get(conn.index) is conn:
                del self.workers[conn.index]
                if not self.done.is_set():
                    self._failover(f"lost worker {conn.index} (pid {conn.pid})")

    def _on_message(self, w: WorkerConn, msg: dict[str, Any]) -> None:
        t = msg["type"]
        if t == "CANCELLED":
            w.idle, w.running = True, False
            self._wake.set()
            return
        if msg.get("attempt") != self.attempt:
            return  # from an attempt that was cancelled
        if t == "RUNNING":
            w.running = True
            self.running.add(w.index)
            self.metrics.running.set(len(self.running))
            if len(self.running) == self.p and self.state in ("CREATED", "RESTARTING"):
                self.state = "RUNNING"
                self.running_since = self.running_since or time.time()
                self.attempt_running_at = time.time()
                self.message = (f"running from checkpoint {self.restored_from}"
                                if self.restored_from else "running")
                log.info("job %s is running (attempt %d)", self.job_id, self.attempt)
                self._write_status()
        elif t == "ACK":
            self._on_ack(msg)
        elif t == "DECLINE":
            self._abort(msg["id"], f"declined by {msg['task']}[{msg['subtask']}]: "
                                   f"{msg['reason']}", count=True)
        elif t == "SOURCE_FINISHED":
            self.sources_finished.add(msg["subtask"])
        elif t == "COMMITTED":
            self.committed.add(w.index)
            if len(self.committed) == self.p:
                if self.stop_after is not None:
                    self._finish("STOPPED", f"stopped with savepoint {self.stop_after}",
                                 EXIT_FINISHED)
                else:
                    self._finish("FINISHED", f"finished; final checkpoint {self.final_id}",
                                 EXIT_FINISHED)
        elif t == "STATS":
            self.records[w.index] = msg["tasks"]
        elif t == "FAILED":
            self._failover(msg["reason"])

    # -- failover ----------------------------------------------------------------------------

    def _failover(self, reason: str) -> None:
        if self.state in ("FINISHED", "FAILED", "STOPPED"):
            return
        if self.state == "RESTARTING" and not self.running:
            log.warning("while restarting: %s", reason)
            return
        if self.stop_after is not None:
            # The stop-with-savepoint is complete: do not restart, finish the stop. Output
            # is made to match the savepoint (staged up to it committed, later dropped).
            log.warning("failure after stop-with-savepoint %d: %s", self.stop_after, reason)
            asyncio.ensure_future(self._finish_stop())
            return
        log.warning("job %s fails over: %s", self.job_id, reason)
        self.last_failure = {"reason": reason, "detected_at": time.time(),
                             "attempt": self.attempt}
        for cid in list(self.pending):
            self._abort(cid, "job restarting", count=False)
        self.restarts += 1
        self.metrics.restarts.set(self.restarts)
        strategy = self.spec.restart_strategy
        if strategy.type == "none" or self.restarts > strategy.max_attempts:
            self._finish("FAILED", f"{reason}; no restart attempts left "
                         f"({strategy.max_attempts} allowed)", EXIT_FAILED)
            return
        self.state, self.message = "RESTARTING", f"restarting: {reason}"
        # Subtasks of the next attempt count from 0: keep the total cumulative.
        self.records_base += self._records_now()
        self.records = {}
        self.attempt += 1
        self.running.clear()
        self.sources_finished.clear()
        self.committed.clear()
        self.final_id = None
        for w in self.workers.values():
            w.idle = False
        self.broadcast("CANCEL")
        self._write_status()
        if self._restart_task is not None:
            self._restart_task.cancel()
        self._restart_task = asyncio.ensure_future(
            self._deploy_when_ready(strategy.delay_for(self.restarts)))

    async def _finish_stop(self) -> None:
        self.broadcast("CANCEL")
        await asyncio.sleep(0.2)
        try:
            await self.io(self.pipeline.sink_connector.recover, self.job_id, self.stop_after)
        except StorageError as err:
            self._finish("FAILED", f"stopped with savepoint {self.stop_after} but could not "
                         f"commit the output: {err}", EXIT_FAILED)
            return
        self._finish("STOPPED", f"stopped with savepoint {self.stop_after}", EXIT_FINISHED)

    async def _deploy_when_ready(self, delay: float) -> None:
        await asyncio.sleep(delay)
        while not self._workers_ready():
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                pass
        attempt = self.attempt
        delay = 0.2
        while True:
            try:
                await self._prepare_restore()
                break
            except StorageError as err:
                # Storage down: keep the job waiting (and saying why) rather than give up.
                self.message = f"waiting for checkpoint storage: {err}"
                log.warning("cannot prepare the restore yet: %s", err)
                self._write_status()
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
        if attempt != self.attempt:
            return
        if not self._workers_ready():
            # A worker went away while we waited for storage: wait for it again.
            self._restart_task = asyncio.ensure_future(self._deploy_when_ready(0.0))
            return
        self.restored_from = self.restore_point["checkpoint_id"] if self.restore_point else None
        peers = [[self.workers[i].host, self.workers[i].port] for i in range(self.p)]
        for w in self.workers.values():
            w.idle = False
            w.writer.write(wire.control(
                "DEPLOY", attempt=attempt, parallelism=self.p, peers=peers,
                job_id=self.job_id, storage=self.storage.uri, restore=self.restore_point))
        self.message = (f"deploying attempt {attempt} from checkpoint {self.restored_from}"
                        if self.restored_from else f"deploying attempt {attempt}")
        self._write_status()

    def _workers_ready(self) -> bool:
        """Every subtask's worker is connected and not part of a running attempt."""
        return len(self.workers) == self.p and all(w.idle for w in self.workers.values())

    async def _prepare_restore(self) -> None:
        if self.restarts:
            # Storage is the truth: the newest intact checkpoint, whatever we believed.
            latest = await self.io(ckpt.latest_completed, self.storage, self.job_id)
            if latest is not None:
                self._set_restore_point(latest)
        sink = self.pipeline.sink_connector
        restore_id = self.restore_point["checkpoint_id"] if (
            self.restore_point and self.restore_point.get("job_id") == self.job_id) else 0
        await self.io(sink.recover, self.job_id, restore_id)
        await self.io(self._drop_incomplete)
        await self.io(self._gc_shared)

    def _drop_incomplete(self) -> None:
        for n, done in ckpt.list_checkpoint_ids(self.storage, self.job_id).items():
            if not done:
                self.storage.delete_prefix(ckpt.checkpoint_dir(self.job_id, n))

    # -- checkpoints -----------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            now = time.time()
            self._update_rate(now)
            for cid, pc in list(self.pending.items()):
                if now - pc.triggered_at > self.cfg.timeout:
                    self._abort(cid, f"not complete within {self.cfg.timeout:g}s", count=True)
            if self.state != "RUNNING":
                continue
            all_done = len(self.sources_finished) == self.p
            if all_done and self.final_id is None:
                if not any(pc.final for pc in self.pending.values()):
                    self.trigger(final=True)
                continue
            if not self.cfg.enabled or self.stop_after is not None:
                continue
            state = ckpt.TriggerState(now, self.last_trigger, self.last_completion,
                                      sum(1 for pc in self.pending.values() if not pc.savepoint),
                                      len(self.running) == self.p)
            if ckpt.should_trigger(state, self.cfg.interval, self.cfg.min_pause,
                                   self.cfg.max_concurrent):
                self.trigger()

    def trigger(self, savepoint: bool = False, final: bool = False,
                stop: bool = False) -> PendingCheckpoint:
        cid = self.next_id
        self.next_id += 1
        now = time.time()
        expected = {(t.task_id, i) for t in self.pipeline.tasks for i in range(self.p)}
        pc = PendingCheckpoint(cid, now, expected, savepoint, final, stop)
        self.pending[cid] = pc
        if not savepoint:
            self.last_trigger = now
        log.debug("trigger checkpoint %d (savepoint=%s final=%s)", cid, savepoint, final)
        self.broadcast("TRIGGER", id=cid, ts=now, savepoint=savepoint, stop=stop, final=final)
        return pc

    def _on_ack(self, msg: dict[str, Any]) -> None:
        pc = self.pending.get(msg["id"])
        if pc is None:
            return
        key = (msg["task"], msg["subtask"])
        log.debug("checkpoint %d: ack from %s[%d]", pc.checkpoint_id, *key)
        pc.handles[key] = msg["handle"]
        pc.timings[key] = msg["timings"]
        if len(pc.handles) == len(pc.expected):
            del self.pending[pc.checkpoint_id]
            asyncio.ensure_future(self._complete(pc))

    def _metadata_body(self, pc: PendingCheckpoint, completed_at: float) -> dict[str, Any]:
        tasks = {}
        timings = {}
        for t in self.pipeline.tasks:
            tasks[t.task_id] = {"name": t.name,
                                "subtasks": [pc.handles[(t.task_id, i)] for i in range(self.p)]}
            timings[t.task_id] = [pc.timings[(t.task_id, i)] for i in range(self.p)]
        size = sum(h.get("size", 0) for tk in tasks.values() for h in tk["subtasks"])
        return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "job_id": self.job_id,
                "job_name": self.job.metadata.name, "checkpoint_id": pc.checkpoint_id,
                "kind": "savepoint" if pc.savepoint else "checkpoint",
                "triggered_at": pc.triggered_at, "completed_at": completed_at,
                "parallelism": self.p, "max_parallelism": self.spec.max_parallelism,
                "mode": self.cfg.mode, "tasks": tasks, "timings": timings, "size_bytes": size,
                "attempt": self.attempt}

    async def _complete(self, pc: PendingCheckpoint) -> None:
        attempt = self.attempt
        completed_at = time.time()
        body = self._metadata_body(pc, completed_at)
        path = (ckpt.savepoint_path(self.job_id, str(pc.checkpoint_id)) if pc.savepoint
                else ckpt.checkpoint_dir(self.job_id, pc.checkpoint_id))
        try:
            await self.io(self.storage.put, f"{path}/{ckpt.METADATA}",
                          ckpt.encode_metadata(body))
        except StorageError as err:
            self._count_failure(pc.checkpoint_id, f"cannot write _metadata: {err}")
            for fut in pc.waiters:
                if not fut.done():
                    fut.set_exception(err)
            return
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
            self._set_restore_point(body)
            self._referenced[pc.checkpoint_id] = ckpt.referenced_keys(body)
        # Older checkpoints are subsumed by a newer completed one; savepoints never are.
        for older in [c for c, o in self.pending.items()
                      if c < pc.checkpoint_id and not o.savepoint and not pc.savepoint]:
            self._abort(older, f"subsumed by checkpoint {pc.checkpoint_id}", count=False)
        if attempt == self.attempt:
            final = pc.final or pc.stop
            if final:
                self.final_id = pc.checkpoint_id
                if pc.stop:
                    self.stop_after = pc.checkpoint_id
            self.broadcast("NOTIFY", id=pc.checkpoint_id, final=final)
        for fut in pc.waiters:
            if not fut.done():
                fut.set_result(summary)
        if not pc.savepoint:
            await self.io(self._retain)
        self._write_status()

    def _retain(self) -> None:
        """Keep the newest ``retained`` completed checkpoints; delete older ones only now that
        a newer one is complete. Shared (incremental) files go when no retained checkpoint
        and no checkpoint in flight refers to them."""
        ids = ckpt.list_checkpoint_ids(self.storage, self.job_id)
        complete = sorted(n for n, done in ids.items() if done)
        keep = set(complete[-self.cfg.retained:])
        newest = complete[-1] if complete else 0
        doomed = [n for n in ids if n not in keep and n < newest and n not in self.pending]
        if not doomed:
            return
        released: set[str] = set()
        if self.cfg.incremental:
            released = self._refs(n for n in doomed if ids[n])
            released -= self._refs(keep)
            for pc in list(self.pending.values()):
                for h in pc.handles.values():
                    released -= ckpt.handle_keys(h)
        for n in doomed:
            self._referenced.pop(n, None)
            try:
                self.storage.delete_prefix(ckpt.checkpoint_dir(self.job_id, n))
            except StorageError as err:
                log.warning("cannot delete old checkpoint %d: %s", n, err)
        for key in sorted(released):
            try:
                self.storage.delete(key)
            except StorageError as err:
                log.warning("cannot delete shared state file %s: %s", key, err)

    def _refs(self, ids) -> set[str]:
        """State files the given checkpoints need; metadata this coordinator wrote is known,
        only older checkpoints are read from storage (once)."""
        refs: set[str] = set()
        for n in ids:
            if n not in self._referenced:
                try:
                    self._referenced[n] = ckpt.referenced_keys(
                        ckpt.read_metadata(self.storage, ckpt.checkpoint_dir(self.job_id, n)))
                except (StorageError, ckpt.CorruptMetadataError):
                    continue
            refs |= self._referenced[n]
        return refs

    def _gc_shared(self) -> None:
        """At a restore (nothing running): shared files no checkpoint refers to are orphans of
        aborted checkpoints or of a previous attempt."""
        shared = self.storage.list(ckpt.shared_dir(self.job_id) + "/")
        if not shared:
            return
        ids = ckpt.list_checkpoint_ids(self.storage, self.job_id)
        refs = self._refs(n for n, done in ids.items() if done)
        if self.restore_point:
            refs |= ckpt.referenced_keys(self.restore_point)
        for key in shared:
            if key not in refs:
                self.storage.delete(key)

    def _abort(self, cid: int, reason: str, count: bool) -> None:
        pc = self.pending.pop(cid, None)
        if pc is None:
            return
        log.warning("checkpoint %d aborted: %s", cid, reason)
        self.metrics.failed.inc()
        self.broadcast("ABORT", id=cid)
        self._record({"id": cid, "kind": "savepoint" if pc.savepoint else "checkpoint",
                      "status": "FAILED", "triggered_at": pc.triggered_at,
                      "failed_at": time.time(), "reason": reason,
                      "acked": len(pc.handles), "expected": len(pc.expected),
                      "timings": {t.task_id: [pc.timings.get((t.task_id, i))
                                              for i in range(self.p)]
                                  for t in self.pipeline.tasks}})
        if not pc.savepoint:
            asyncio.ensure_future(self.io(self.storage.delete_prefix,
                                          ckpt.checkpoint_dir(self.job_id, cid)))
        for fut in pc.waiters:
            if not fut.done():
                fut.set_exception(RuntimeError(f"savepoint {cid} failed: {reason}"))
        if count:
            self._count_failure(cid, reason)

    def _count_failure(self, cid: int, reason: str) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures > self.cfg.tolerable_failures:
            self.consecutive_failures = 0
            self._failover(f"{self.cfg.tolerable_failures + 1} checkpoint(s) failed in a row "
                           f"(last: {cid}, {reason})")
        self._write_status()

    def _record(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        del self.history[:-HISTORY]

    async def savepoint(self, stop: bool = False) -> dict[str, Any]:
        """Take a savepoint (aligned, self-contained); with ``stop`` the job stops after it."""
        if self.state != "RUNNING":
            raise RuntimeError(f"job is {self.state}, not RUNNING")
        pc = self.trigger(savepoint=True, stop=stop)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        pc.waiters.append(fut)
        return await fut

    # -- status ------------------------------------------------------------------------------

    def _records_now(self) -> int:
        """Records read by the sources of the current attempt (from the workers' STATS)."""
        return sum(v.get("t0", [0, 0])[0] for v in self.records.values())

    def _update_rate(self, now: float) -> None:
        total = self.records_base + self._records_now()
        if self._rate_mark is None:
            self._rate_mark = (now, total)
        elif now - self._rate_mark[0] >= 1.0:
            t0, n0 = self._rate_mark
            self.rate = max(0.0, (total - n0) / (now - t0))
            self._rate_mark = (now, total)
            self._write_status()

    def status(self) -> dict[str, Any]:
        completed = [h for h in self.history if h["status"] == "COMPLETED"
                     and h["kind"] == "checkpoint"]
        last = completed[-1] if completed else None
        return {
            "job_id": self.job_id, "name": self.job.metadata.name, "state": self.state,
            "message": self.message, "parallelism": self.p, "attempt": self.attempt,
            "restarts": self.restarts, "restored_from": self.restored_from,
            "records_per_second": round(self.rate, 1),
            "records_in": self.records_base + self._records_now(),
            "last_checkpoint": None if last is None else {
                k: last[k] for k in ("id", "completed_at", "duration_ms", "size_bytes")},
            "failed_checkpoints": sum(1 for h in self.history if h["status"] == "FAILED"),
            "savepoints": [{k: s[k] for k in ("id", "path", "completed_at", "size_bytes")}
                           for s in self.savepoints],
            "coordinator": {"port": self.port,
                            "api_port": self.api.port if self.api else None,
                            "pid": os.getpid()},
            "running_since": self.running_since, "finished_at": self.finished_at,
            "attempt_running_at": self.attempt_running_at, "last_failure": self.last_failure,
            "updated_at": time.time(),
        }

    def _write_status(self) -> None:
        if not self.status_file:
            return
        tmp = f"{self.status_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.status(), f)
        os.replace(tmp, self.status_file)
