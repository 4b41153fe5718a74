"""The coordinator process: the scheduler (deploy, failover, finish) of one job.

Three parts, each with one home:

- :mod:`streamjob.jobstate` — the state machine, pure functions (every state has a deadline);
- :mod:`streamjob.checkpoint_coordinator` — pending checkpoints, acks, completion, abort,
  retention and the restore-point choice, serialised by one storage owner;
- this module — connections to workers, deploys, failovers and the status (I/O edges).

Storage is the only source of truth: a restarted coordinator finds where to resume by listing
it, honours an acknowledged stop (``<job>/stop``) and continues the restart count
(``<job>/coordinator.json``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from streamjob import checkpoints as ckpt
from streamjob import faults, wire
from streamjob import jobstate as js
from streamjob.api import ApiServer
from streamjob.checkpoint_coordinator import (
    COUNTERS,
    STOP_MARKER,
    CheckpointCoordinator,
    PendingCheckpoint,
)
from streamjob.jobgraph import source_tasks
from streamjob.jobstate import JobState
from streamjob.jobstatus import (
    RecordCounter,
    status_document,
    tasks_document,
    write_status_file,
)
from streamjob.manifest import StreamJob, import_pipeline
from streamjob.metrics import CoordinatorMetrics
from streamjob.names import EXIT_FAILED, EXIT_FINISHED
from streamjob.storage import Storage, StorageError
from streamjob.taskmetrics import TaskMetrics, job_graph

log = logging.getLogger("streamjob.coordinator")

FAILURE_HISTORY = 50



@dataclass
class WorkerConn:
    index: int
    writer: asyncio.StreamWriter
    host: str
    port: int
    pid: int | None
    idle: bool = True      # not part of a running attempt: ready to be deployed


def superseded_job_ids(env: str, job_id: str) -> list[str]:
    """``STREAMJOB_SUPERSEDED_JOB_IDS`` (comma-separated, set by the operator): job ids of
    earlier revisions; never this job's own id, never a path."""
    ids = [i.strip() for i in env.split(",")]
    return [i for i in ids if i and i != job_id and "/" not in i and i not in (".", "..")]


class Coordinator:
    def __init__(self, job: StreamJob, job_id: str, storage: Storage, bind: str = "127.0.0.1",
                 port: int = 0, status_file: str | None = None,
                 from_savepoint: str | None = None, api_port: int | None = None,
                 api_token: str | None = None, search_path: str | None = None,
                 allow_fresh_start: bool = False):
        self.job, self.spec = job, job.spec
        self.job_id = job_id
        self.storage = storage
        self.bind, self.port = bind, port
        self.status_file = status_file
        self.from_savepoint = from_savepoint
        self.allow_fresh_start = allow_fresh_start
        self.pipeline = import_pipeline(job.spec, search_path)
        self.p = job.spec.parallelism
        self.cfg = job.spec.checkpoint
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="coord-io")
        self.api = ApiServer(self, bind, api_port, api_token) if api_port is not None else None
        self.metrics = CoordinatorMetrics()
        # Workers prove they belong to this job with a shared token (from a Secret in
        # Kubernetes, generated per run locally); without it the port accepts any worker.
        self.worker_token = os.environ.get("STREAMJOB_WORKER_TOKEN") or None
        deploy_timeout = os.environ.get("STREAMJOB_DEPLOY_TIMEOUT")
        self.deploy_timeout = float(deploy_timeout) if deploy_timeout else None

        self.state = JobState.CREATED
        self.state_since = time.monotonic()
        self.message = "waiting for workers"
        self.attempt = 0
        self.restarts = 0
        self.coordinator_restarts = 0
        self.workers: dict[int, WorkerConn] = {}
        self.running: set[int] = set()
        self.sources_finished: set[tuple[str, int]] = set()  # (source task, subtask)
        self.committed: set[int] = set()
        self.final_id: int | None = None
        self.stop_after: int | None = None
        self.restore_problems: dict[int, str] = {}
        self.deploying_from: int | None = None
        self.savepoint_body: dict[str, Any] | None = None
        self.source_tasks = [t.task_id for t in source_tasks(self.pipeline.tasks)]
        self.records = RecordCounter(self.source_tasks, [t.task_id for t in self.pipeline.tasks
                                                         if t.sink is not None])
        self.task_metrics = TaskMetrics()
        self.graph = job_graph(self.pipeline.tasks)
        self.done: asyncio.Event | None = None  # created in run(), inside the event loop
        self.exit_code = EXIT_FINISHED
        self.running_since: float | None = None
        self.attempt_running_at: float | None = None
        self.last_failure: dict[str, Any] | None = None
        #: restart history, newest last (``GET /api/v1/failures``, the dashboard)
        self.failures: list[dict[str, Any]] = []
        self.finished_at: float | None = None
        self._deploy_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.checkpoints = CheckpointCoordinator(
            job_id=job_id, job_name=job.metadata.name, storage=storage,
            tasks=self.pipeline.tasks, parallelism=self.p,
            max_parallelism=self.spec.max_parallelism, cfg=self.cfg, metrics=self.metrics,
            executor=self.executor, broadcast=self.broadcast, attempt=lambda: self.attempt,
            on_failure=self._failover, on_final=self._on_final,
            write_status=self._write_status)
        self.checkpoints.superseded = superseded_job_ids(
            os.environ.get("STREAMJOB_SUPERSEDED_JOB_IDS", ""), job_id)

    # -- entry points used by the API --------------------------------------------------------

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.checkpoints.history

    async def savepoint(self, stop: bool = False) -> dict[str, Any]:
        """Take a savepoint (aligned, self-contained); with ``stop`` the job stops after it.
        A stop is answered only once its marker is in storage."""
        self._require_running()
        if stop and self.checkpoints.stop_in_flight():
            raise RuntimeError("a stop-with-savepoint is already in progress")
        return await self._completion(self.checkpoints.trigger(savepoint=True, stop=stop))

    async def checkpoint(self) -> dict[str, Any]:
        """Take a checkpoint now, besides the periodic ones (as Flink's REST API triggers
        one); answered with its summary once it is complete. It counts as the latest trigger,
        so the next periodic one comes an interval after it."""
        self._require_running()
        if not self.cfg.enabled:
            raise RuntimeError("checkpoints are disabled for this job")
        if self.stop_after is not None or self.checkpoints.stop_in_flight():
            raise RuntimeError("the job is stopping")
        return await self._completion(self.checkpoints.trigger())

    def _require_running(self) -> None:
        if self.state is not JobState.RUNNING:
            raise RuntimeError(f"job is {js.public_state(self.state, self.attempt)}, "
                               "not RUNNING")

    @staticmethod
    async def _completion(pc: PendingCheckpoint) -> dict[str, Any]:
        """The summary of a triggered checkpoint or savepoint once complete (its failure
        raises: every pending one completes, fails, is aborted or expires)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        pc.waiters.append(fut)
        return await fut

    # -- I/O helpers ----------------------------------------------------------------------

    async def io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def broadcast(self, msg_type: str, **fields: Any) -> None:
        for w in self.workers.values():
            if not w.writer.is_closing():
                w.writer.write(wire.control(msg_type, attempt=self.attempt, **fields))

    def _spawn(self, coro, what: str) -> asyncio.Task[Any]:
        """A background coroutine whose unexpected error is logged and becomes a failover
        (a retry counted against the restart strategy, or FAILED): never a silent hang."""
        async def guarded():
            try:
                return await coro
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001
                log.exception("%s failed", what)
                # counted even while waiting (CREATED/RESTARTING): a retry, or FAILED
                self._failover(f"{what} failed: {type(err).__name__}: {err}", timed_out=True)
        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        self.done = asyncio.Event()
        self._wake = asyncio.Event()
        self.checkpoints.owner.start()
        try:
            stopped = await self._load_durable_facts_with_retry()
        except Exception as err:  # noqa: BLE001 - storage down for too long, bad savepoint
            log.error("job failed: %s", err)
            self._finish(JobState.FAILED, f"cannot start: {err}", EXIT_FAILED)
            return self.exit_code
        if stopped is not None:
            await self._honour_stop(stopped)
            return self.exit_code
        server = await asyncio.start_server(self._on_worker, self.bind, self.port)
        self.port = server.sockets[0].getsockname()[1]
        if self.api is not None:
            await self.api.start()
        log.info("coordinator of %s listening on %s:%d", self.job_id, self.bind, self.port)
        self._write_status()
        ticker = self._spawn(self._tick(), "the checkpoint clock")
        self._schedule_deploy(0.0)
        await self.done.wait()
        ticker.cancel()
        if self._deploy_task is not None:
            self._deploy_task.cancel()
        self.broadcast("SHUTDOWN")
        await asyncio.sleep(0.05)
        server.close()
        if self.api is not None:
            await self.api.stop()
        self._write_status()
        return self.exit_code

    async def _load_durable_facts_with_retry(self) -> dict[str, Any] | None:
        """Storage that is down when this coordinator starts (a restart during an outage) is
        waited for, as a deploy waits for it, within the deploy deadline; a savepoint that
        does not exist or fit is final at once."""
        deadline = time.monotonic() + js.deadline(JobState.DEPLOYING, self.cfg.timeout,
                                                  self.deploy_timeout)
        backoff = 0.2
        while True:
            try:
                return await self._load_durable_facts()
            except ckpt.UnusableRestoreError:
                raise
            except StorageError as err:
                if time.monotonic() + backoff > deadline:
                    raise
                # No status yet: its readers take a status as "listening on this port".
                log.warning("cannot read the job's state in storage yet: %s", err)
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    async def _load_durable_facts(self) -> dict[str, Any] | None:
        """Restart counters, an acknowledged stop, the savepoint to start from."""
        counters = await self.io(self.checkpoints.read_json, COUNTERS) or {}
        self.restarts = int(counters.get("restarts", 0))
        self.coordinator_restarts = int(counters.get("coordinator_starts", 0))
        self.metrics.restarts.set(self.restarts)
        await self.checkpoints.save_counters(self._counters())
        stop = await self.io(self.checkpoints.read_json, STOP_MARKER)
        if stop is None and self.from_savepoint:
            self.checkpoints.keep, self.savepoint_body = await self.io(
                ckpt.resolve_savepoint, self.storage, self.from_savepoint)
            ckpt.check_compatible(self.savepoint_body, self.spec.max_parallelism)
            log.info("restoring from savepoint %s", self.from_savepoint)
        return stop

    def _counters(self) -> dict[str, int]:
        """What ``<job>/coordinator.json`` holds: failovers so far, and coordinator starts
        including this one (so ``coordinator_restarts`` is one less)."""
        return {"restarts": self.restarts, "coordinator_starts": self.coordinator_restarts + 1}

    async def _save_counters(self) -> None:
        try:
            await self.checkpoints.save_counters(self._counters())
        except Exception as err:  # noqa: BLE001 - a statistic: never a reason to restart
            log.warning("cannot save the restart count: %s: %s", type(err).__name__, err)

    async def _honour_stop(self, stop: dict[str, Any]) -> None:
        """A stop-with-savepoint was acknowledged before this coordinator started: make the
        output match the savepoint and stay stopped."""
        sp = int(stop["savepoint_id"])
        log.warning("job %s was stopped with savepoint %d (%s); not restarting it",
                    self.job_id, sp, stop.get("path"))
        self.stop_after = self.final_id = sp
        try:
            await self.io(self.pipeline.sink_connector.recover, self.job_id, sp)
        except Exception as err:  # noqa: BLE001
            self._finish(JobState.FAILED, f"stopped with savepoint {sp} but could not commit "
                         f"the output: {err}", EXIT_FAILED)
            return
        self._finish(JobState.STOPPED, f"stopped with savepoint {sp}", EXIT_FINISHED)

    async def _stop_after_failure(self) -> None:
        """Cancel what still runs (so that no worker commits while the sink recovers), with a
        bounded wait, then finish the stop (once, whatever fails meanwhile)."""
        if self._stopping:
            return
        self._stopping = True
        if self._deploy_task is not None:
            self._deploy_task.cancel()
        for w in self.workers.values():
            w.idle = False
        self.broadcast("CANCEL")
        deadline = time.monotonic() + 10.0
        while (not all(w.idle for w in self.workers.values())
               and time.monotonic() < deadline):
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 0.5)
            except TimeoutError:
                pass
        await self._honour_stop({"savepoint_id": self.stop_after})

    def _set_state(self, state: JobState) -> None:
        if state is not self.state:
            log.debug("job %s: %s -> %s", self.job_id, self.state.value, state.value)
            self.state = state
            self.state_since = time.monotonic()

    def _finish(self, state: JobState, message: str, code: int) -> None:
        if self.state in js.TERMINAL:
            return
        self._set_state(state)
        self.message, self.exit_code = message, code
        self.finished_at = time.time()
        log.warning("job %s: %s", state.value.lower(), message) if code else log.info(message)
        self._write_status()
        self._write_termination_message()
        self.done.set()

    def _write_termination_message(self) -> None:
        """In Kubernetes the pod's termination message (``/dev/termination-log``) tells the
        operator how the job ended, and after a stop which savepoint holds it, even when the
        operator restarted while the stop was answered."""
        path = os.environ.get("STREAMJOB_TERMINATION_LOG", "/dev/termination-log")
        if not os.path.exists(path):
            return  # not in a pod
        doc: dict[str, Any] = {"state": self.state.value, "message": self.message[:1000]}
        if self.state is JobState.STOPPED and self.stop_after is not None:
            doc["savepoint"] = (f"{self.storage.uri.rstrip('/')}/"
                                f"{ckpt.savepoint_path(self.job_id, str(self.stop_after))}")
        try:
            with open(path, "w") as f:
                json.dump(doc, f)
        except OSError as err:
            log.warning("cannot write the termination message to %s: %s", path, err)

    # -- workers ---------------------------------------------------------------------------

    async def _on_worker(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        conn: WorkerConn | None = None
        try:
            # Authentication first: a small HELLO within a timeout (wire.read_control_hello).
            hello = await wire.read_control_hello(reader, writer, self.worker_token, self.p)
            if hello is None:
                return
            index = hello["worker"]
            wire.watch_peer(writer)  # a worker gone without a word: see wire
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
        except Exception:  # noqa: BLE001 - a malformed message: drop this worker, loudly
            log.exception("worker connection failed")
        finally:
            writer.close()
            if conn is not None and self.workers.get(conn.index) is conn:
                del self.workers[conn.index]
                if not self.done.is_set():
                    self._failover(f"lost worker {conn.index} (pid {conn.pid})")

    def _on_message(self, w: WorkerConn, msg: dict[str, Any]) -> None:
        t = msg["type"]
        if t == "CANCELLED":
            w.idle = True
            self._wake.set()
            return
        if msg.get("attempt") != self.attempt:
            return  # from an attempt that was cancelled
        if t == "RUNNING":
            self.running.add(w.index)
            self.metrics.running.set(len(self.running))
            if len(self.running) == self.p and self.state is JobState.DEPLOYING:
                self._set_state(js.on_all_running(self.state))
                self.running_since = self.running_since or time.time()
                self.attempt_running_at = time.time()
                self.message = (f"running from checkpoint {self.checkpoints.restored_from}"
                                if self.checkpoints.restored_from else "running")
                if self.restore_problems:
                    self.message += " (skipped " + "; ".join(
                        f"checkpoint {n}: {why}"
                        for n, why in sorted(self.restore_problems.items())) + ")"
                log.info("job %s is running (attempt %d)", self.job_id, self.attempt)
                self._write_status()
        elif t == "ACK":
            self.checkpoints.on_ack(msg)
        elif t == "DECLINE":
            self.checkpoints.abort(msg["id"], f"declined by {msg['task']}[{msg['subtask']}]: "
                                              f"{msg['reason']}", count=True)
        elif t == "SOURCE_FINISHED":
            self.sources_finished.add((msg.get("task", self.source_tasks[0]), msg["subtask"]))
        elif t == "COMMITTED":
            self.committed.add(w.index)
            if len(self.committed) == self.p and self.final_id is not None:
                self._on_all_committed()
        elif t == "STATS":
            if isinstance(msg.get("tasks"), dict):
                self.records.on_stats(w.index, msg["tasks"], msg.get("lag"))
                self.task_metrics.on_stats(time.monotonic(), w.index, msg["tasks"])
        elif t == "FAILED":
            if (self.state is JobState.DEPLOYING and self.deploying_from is not None
                    and msg.get("restore_failed")):
                # The worker found the checkpoint's state missing or corrupt (not a peer it
                # could not reach): the next deploy tries an older checkpoint.
                self.restore_problems[self.deploying_from] = (
                    f"restore failed: {msg['reason']}")
            exception = msg.get("exception")
            self._failover(msg["reason"], exception=exception if isinstance(exception, str)
                           else None)

    def _on_final(self, pc: PendingCheckpoint) -> None:
        if pc.stop:
            self.stop_after = pc.checkpoint_id
            if pc.attempt != self.attempt:
                # Acknowledged (the marker is written) while a failover was under way.
                log.warning("stop-with-savepoint %d completed during a restart; stopping",
                            pc.checkpoint_id)
                self._spawn(self._stop_after_failure(), "the stop")
                return
        self.final_id = pc.checkpoint_id
        self._set_state(js.on_final_checkpoint(self.state))

    def _on_all_committed(self) -> None:
        stopped = self.stop_after is not None
        if stopped:
            faults.point("coordinator.after-stop-savepoint")
        target = js.on_all_committed(self.state, stopped)
        if target is JobState.STOPPED:
            self._finish(target, f"stopped with savepoint {self.stop_after}", EXIT_FINISHED)
        elif target is JobState.FINISHED:
            self._finish(target, f"finished; final checkpoint {self.final_id}", EXIT_FINISHED)

    # -- failover ----------------------------------------------------------------------------

    def _failover(self, reason: str, timed_out: bool = False,
                  exception: str | None = None) -> None:
        strategy = self.spec.restart_strategy
        tr = js.on_failure(self.state, self.restarts, reason, strategy_type=strategy.type,
                           max_attempts=strategy.max_attempts, delay_for=strategy.delay_for,
                           stopped_with=self.stop_after, timed_out=timed_out)
        if tr.action == "none":
            if tr.message:
                log.warning("%s", tr.message)
            return
        if tr.action == "finish-stop":
            # The stop-with-savepoint is complete: do not restart, finish the stop. Output
            # is made to match the savepoint (staged up to it committed, later dropped).
            log.warning("%s", tr.message)
            self._spawn(self._stop_after_failure(), "the stop")
            return
        log.warning("job %s fails over: %s", self.job_id, reason)
        self.last_failure = {"reason": reason, "detected_at": time.time(),
                             "attempt": self.attempt}
        self.failures.append({**self.last_failure, "exception": exception,
                              "restarts": tr.restarts, "action": tr.action})
        del self.failures[:-FAILURE_HISTORY]
        self.checkpoints.abort_all("job restarting")
        self.restarts = tr.restarts
        self.metrics.restarts.set(self.restarts)
        self._spawn(self._save_counters(), "saving the counters")
        if tr.action == "fail":
            self.broadcast("CANCEL")
            self._finish(JobState.FAILED, tr.message, EXIT_FAILED)
            return
        self._set_state(tr.state)
        self.message = tr.message
        self.records.new_attempt()
        self.task_metrics.clear()
        self.attempt += 1
        self.running.clear()
        self.metrics.running.set(0)
        self.sources_finished.clear()
        self.committed.clear()
        self.final_id = None
        for w in self.workers.values():
            w.idle = False
        self.broadcast("CANCEL")
        self._write_status()
        self._schedule_deploy(tr.delay)

    def _schedule_deploy(self, delay: float) -> None:
        if self._deploy_task is not None:
            self._deploy_task.cancel()
        self._deploy_task = self._spawn(self._deploy_when_ready(delay),
                                        f"deploy of attempt {self.attempt}")

    def _workers_ready(self) -> bool:
        """Every subtask's worker is connected and not part of a running attempt."""
        return len(self.workers) == self.p and all(w.idle for w in self.workers.values())

    async def _deploy_when_ready(self, delay: float) -> None:
        await asyncio.sleep(delay)
        while not self._workers_ready():
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                pass
        attempt = self.attempt
        self._set_state(js.on_workers_ready(self.state))
        for w in self.workers.values():
            w.idle = False
        backoff = 0.2
        while True:
            try:
                plan = await self.checkpoints.prepare_restore(
                    self.restore_problems, self.allow_fresh_start, self.savepoint_body,
                    self.pipeline.sink_connector)
                break
            except StorageError as err:
                # Storage down: wait (bounded by the DEPLOYING deadline) and say why.
                self.message = f"waiting for checkpoint storage: {err}"
                log.warning("cannot prepare the restore yet: %s", err)
                self._write_status()
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
        self.restore_problems.update(plan.problems)
        if plan.choice.error is not None:
            self._finish(JobState.FAILED, plan.choice.error, EXIT_FAILED)
            return
        if attempt != self.attempt or self.state is not JobState.DEPLOYING:
            return
        cid = plan.choice.checkpoint_id
        self.deploying_from = cid
        self.checkpoints.restored_from = plan.body["checkpoint_id"] if plan.body else None
        skipped = "; ".join(f"skipped checkpoint {n}: {why}" for n, why in plan.choice.skipped)
        faults.point("coordinator.before-deploy")
        peers = [[self.workers[i].host, self.workers[i].port] for i in range(self.p)]
        for w in self.workers.values():
            w.writer.write(wire.control(
                "DEPLOY", attempt=attempt, parallelism=self.p, peers=peers,
                job_id=self.job_id, storage=self.storage.uri, restore=plan.body))
        self.message = (f"deploying attempt {attempt} from checkpoint {cid}" if cid
                        else f"deploying attempt {attempt}") + (f" ({skipped})" if skipped
                                                                else "")
        log.info("%s", self.message)
        self._write_status()

    # -- the clock -----------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            try:
                self._tick_once(time.time())
            except Exception as err:  # noqa: BLE001 - the clock must keep running
                log.exception("checkpoint clock")
                self._failover(f"checkpoint clock failed: {type(err).__name__}: {err}")

    def _tick_once(self, now: float) -> None:
        if self.records.update_rate(now):
            self._write_status()
        self.checkpoints.expire(now)
        limit = js.deadline(self.state, self.cfg.timeout, self.deploy_timeout)
        waited = time.monotonic() - self.state_since
        if limit is not None and waited > limit:
            reason = js.on_timeout(self.state, waited)
            log.error("job %s: %s", self.job_id, reason)
            self.state_since = time.monotonic()  # one timeout per deadline
            self._failover(reason, timed_out=True)
            return
        if self.state is not JobState.RUNNING:
            return
        if (len(self.sources_finished) == self.p * len(self.source_tasks)
                and self.final_id is None):
            if not any(pc.final for pc in self.checkpoints.pending.values()) and \
                    not self.checkpoints.completing:
                self.checkpoints.trigger(final=True)
            return
        if (not self.cfg.enabled or self.stop_after is not None
                or self.checkpoints.stop_in_flight()):
            return
        c = self.checkpoints
        state = ckpt.TriggerState(now, c.last_trigger, c.last_completion,
                                  c.periodic_in_flight(), len(self.running) == self.p)
        if ckpt.should_trigger(state, self.cfg.interval, self.cfg.min_pause,
                               self.cfg.max_concurrent):
            c.trigger()

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return status_document(self)

    def tasks(self, window: float | None = None) -> dict[str, Any]:
        return tasks_document(self, window)

    def _write_status(self) -> None:
        write_status_file(self.status_file, self.status())
