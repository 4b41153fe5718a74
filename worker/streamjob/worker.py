"""The worker process: runs subtask i of every task of the job.

Lifecycle: connect to the coordinator and say HELLO (index, data address). The coordinator
answers DEPLOY (attempt, parallelism, peers, checkpoint to restore); the worker builds its
subtasks, restores their state, connects its output channels and reports RUNNING. On CANCEL
it tears the attempt down (waiting for uploads in progress, so nothing stale lands in
storage later) and waits for the next DEPLOY. If the coordinator goes away the worker exits:
whoever runs it (``streamjob run`` or the operator) starts a new one.

Exit codes: 0 only after a SHUTDOWN from the coordinator (the job is over); 3 when the
coordinator went away; 4 when the watchdog found the worker stuck (below); 143 on SIGTERM
(128 + 15); anything else is a crash. Whoever runs workers restarts one that exits non-zero
while the job is not over.

Watchdog: user code runs on the event loop, so a user function that blocks (``sleep``, a hung
socket) would leave the coordinator's CANCEL unanswered forever. A thread checks that the
worker makes progress, and ends the process with code 4 (it is restarted and the job
recovers from its last checkpoint) when, with ``T`` = ``STREAMJOB_CANCEL_TIMEOUT`` (default
30 s):

- the loop has not turned while a message from the coordinator waits unread (or the
  coordinator has gone), and its thread has done no work (used no CPU) for ``T`` seconds:
  blocked in a call that does not return; or it has been busy without turning for
  ``BUSY_FACTOR * T``: a loop that does not end;
- a cancel has not completed and the process has done no work for ``T`` seconds (an upload
  stuck in storage), or it has not completed within ``BUSY_FACTOR * T``.

Work, not wall time, is the measure: on an overloaded machine a long batch or a cancel that
uploads state takes many times its CPU time while it keeps working, and must not be killed
for that (a restart would only add load). Work is CPU time in quanta of ``WORK_SHARE`` (1 %)
of the timeout: a thread that gets at least that share of a core works; what a waiting
process spends (heartbeats, client threads: well below it) does not count.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from streamjob import errors, wire
from streamjob.channels import (
    InputGate,
    LocalChannel,
    Marker,
    Output,
    OutputSet,
    RemoteChannel,
    limit_socket_buffers,
)
from streamjob.jobgraph import FORWARD, OutputEdge, channel_layout, outputs_of
from streamjob.manifest import StreamJob, import_pipeline
from streamjob.names import EXIT_COORDINATOR_LOST, EXIT_WATCHDOG
from streamjob.state import CorruptStateError
from streamjob.storage import NotFoundError, open_storage
from streamjob.task import SubtaskRunner

log = logging.getLogger("streamjob.worker")

EXIT_SIGTERM = 128 + signal.SIGTERM
CANCEL_TIMEOUT_ENV = "STREAMJOB_CANCEL_TIMEOUT"
DEFAULT_CANCEL_TIMEOUT = 30.0


WORK_SHARE = 0.01  # of a core over the timeout: less is no work (see the module doc)
BUSY_FACTOR = 10  # busy, yet not turning or not cancelled, for this many timeouts: stuck


def cancel_timeout() -> float:
    try:
        value = float(os.environ.get(CANCEL_TIMEOUT_ENV, DEFAULT_CANCEL_TIMEOUT))
    except ValueError:
        value = DEFAULT_CANCEL_TIMEOUT
    return value if value > 0 else DEFAULT_CANCEL_TIMEOUT


class WorkClock:
    """When a CPU clock last showed work: ``quantum`` seconds of CPU used since the previous
    time it did. A thread blocked in ``sleep`` or on a socket uses none; a thread that
    computes on an overloaded machine uses it slowly but steadily."""

    def __init__(self, quantum: float) -> None:
        self.quantum = quantum
        self.mark: float | None = None
        self.worked_at = -math.inf  # monotonic time of the last quantum

    def sample(self, now: float, cpu: float | None) -> None:
        if cpu is None:
            return
        if self.mark is None:
            self.mark = cpu
        elif cpu - self.mark >= self.quantum:
            self.mark, self.worked_at = cpu, now


class Watchdog:
    """A thread that ends the process when it is stuck (see the module doc)."""

    def __init__(self, index: int, timeout: float, interval: float = 0.25):
        self.index, self.timeout, self.interval = index, timeout, interval
        self.busy_limit = BUSY_FACTOR * timeout
        self.beat = time.monotonic()
        self.cancel_since: float | None = None
        self.ctrl: socket.socket | None = None
        self.loop_work = WorkClock(WORK_SHARE * timeout)  # the event loop's thread
        self.process_work = WorkClock(WORK_SHARE * timeout)  # every thread of the process
        self._loop_clock: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def start(self, ctrl_writer: asyncio.StreamWriter) -> None:
        """On the event loop's thread."""
        sock = ctrl_writer.get_extra_info("socket")
        if sock is not None:
            # Our own handle on the control socket, only ever peeked at.
            self.ctrl = socket.socket(fileno=os.dup(sock.fileno()))
        try:
            self._loop_clock = time.pthread_getcpuclockid(threading.get_ident())
        except (AttributeError, OSError):  # no per-thread CPU clock: wall time alone
            self._loop_clock = None
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    async def heartbeat(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(self.interval)

    def _coordinator_waiting(self) -> bool:
        """Bytes from the coordinator that nobody has read, or the connection closed."""
        if self.ctrl is None:
            return True
        try:
            return self.ctrl.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) is not None
        except BlockingIOError:
            return False
        except OSError:
            return True

    def check(self, now: float) -> str | None:
        """Why the process must end now, or None (decided on the last samples of work)."""
        since = self.cancel_since
        if since is not None:
            idle = now - max(since, self.process_work.worked_at)
            if idle > self.timeout:
                return (f"a cancel did not complete and the worker did no work for "
                        f"{idle:.0f}s (an upload stuck in storage?)")
            if now - since > self.busy_limit:
                return f"a cancel did not complete within {self.busy_limit:g}s"
        blocked = now - self.beat
        idle = now - max(self.beat, self.loop_work.worked_at)
        if idle > self.timeout and self._coordinator_waiting():
            return (f"the event loop has been blocked without doing any work for {idle:.0f}s "
                    f"(a user function that does not return?) while the coordinator waits")
        if blocked > self.busy_limit and self._coordinator_waiting():
            return (f"the event loop has been busy without turning for {blocked:.0f}s (a "
                    f"user function that does not end?) while the coordinator waits")
        return None

    def _loop_cpu(self) -> float | None:
        if self._loop_clock is None:
            return None
        try:
            return time.clock_gettime(self._loop_clock)
        except OSError:  # the thread is gone
            return None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            self.loop_work.sample(now, self._loop_cpu())
            self.process_work.sample(now, time.process_time())
            why = self.check(now)
            if why is not None:
                print(f"streamjob worker {self.index}: watchdog: {why}; exiting with code "
                      f"{EXIT_WATCHDOG} to be restarted", file=sys.stderr, flush=True)
                os._exit(EXIT_WATCHDOG)


class Deployment:
    def __init__(self, attempt: int, runners: list[SubtaskRunner]):
        self.attempt = attempt
        self.runners = runners
        self.tasks: list[asyncio.Task[Any]] = []
        self.readers: list[asyncio.Task[Any]] = []
        self.connections: list[asyncio.StreamWriter] = []
        self.commit_lock = asyncio.Lock()

    def gate(self, task_index: int) -> InputGate | None:
        return self.runners[task_index].gate if task_index < len(self.runners) else None


class Worker:
    def __init__(self, job: StreamJob, index: int, coordinator: str, bind: str,
                 advertise: str | None, search_path: str | None = None,
                 metrics_port: int | None = None):
        self.job = job
        self.index = index
        self.coordinator = coordinator
        self.bind = bind
        self.advertise = advertise
        self.pipeline = import_pipeline(job.spec, search_path)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="upload")
        self.deployment: Deployment | None = None
        self.parked: list[tuple[int, int, int, asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.ctrl_writer: asyncio.StreamWriter | None = None
        self.storage = None
        self.port = 0
        self.deploy_task: asyncio.Task[None] | None = None
        self.watchdog = Watchdog(index, cancel_timeout())
        # Shared by the job's processes: peers must present it on data channels too.
        self.token = os.environ.get("STREAMJOB_WORKER_TOKEN", "")
        if metrics_port is not None:
            from streamjob.metrics import serve_worker_metrics

            serve_worker_metrics(metrics_port, lambda: (
                self.deployment.runners if self.deployment else []), index, bind)

    # -- control ------------------------------------------------------------------------

    def send(self, msg_type: str, **fields: Any) -> None:
        if self.ctrl_writer is not None and not self.ctrl_writer.is_closing():
            attempt = self.deployment.attempt if self.deployment else -1
            self.ctrl_writer.write(wire.control(msg_type, attempt=attempt, worker=self.index,
                                                **fields))

    async def main(self) -> int:
        server = await asyncio.start_server(self._on_data_connection, self.bind, 0)
        self.port = server.sockets[0].getsockname()[1]
        host, _, port = self.coordinator.rpartition(":")
        reader, self.ctrl_writer = await _connect_with_retry(host, int(port), 30.0)
        wire.watch_peer(self.ctrl_writer)  # a coordinator gone without a word: see wire
        self.send("HELLO", host=self.advertise, port=self.port, pid=os.getpid(),
                  token=self.token)
        stats = asyncio.ensure_future(self._report_stats())
        beat = asyncio.ensure_future(self.watchdog.heartbeat())
        self.watchdog.start(self.ctrl_writer)
        try:
            while True:
                try:
                    kind, payload = await wire.read_frame(reader)
                except (asyncio.IncompleteReadError, OSError) as err:  # reset, timed out
                    log.error("worker %d: lost the coordinator (%s); exiting", self.index,
                              type(err).__name__)
                    return EXIT_COORDINATOR_LOST
                msg = wire.unpack_control(payload)
                if await self._handle(msg):
                    return 0
        finally:
            self.watchdog.stop()
            beat.cancel()
            stats.cancel()
            server.close()

    async def _handle(self, msg: dict[str, Any]) -> bool:
        t = msg["type"]
        d = self.deployment
        if t == "DEPLOY":
            await self._cancel()
            # Deploy in the background so that a CANCEL can interrupt a deploy that waits
            # for a peer which died meanwhile.
            self.deploy_task = asyncio.ensure_future(self._deploy(msg))
        elif t == "CANCEL":
            await self._cancel()
            self.send("CANCELLED", cancelled=msg["attempt"])
        elif t == "TRIGGER" and d and msg["attempt"] == d.attempt:
            for r in d.runners:
                r.on_trigger(msg)
        elif t == "ABORT" and d:
            for r in d.runners:
                r.on_abort(msg["id"])
        elif t == "NOTIFY" and d and msg["attempt"] == d.attempt:
            asyncio.ensure_future(self._complete(d, msg))
        elif t == "SHUTDOWN":
            await self._cancel()
            return True
        return False

    async def _complete(self, d: Deployment, msg: dict[str, Any]) -> None:
        try:
            # One commit at a time, in order: two commits racing over the same staged files
            # would each find the other's work gone.
            async with d.commit_lock:
                for r in d.runners:
                    await r.on_complete(msg["id"])
        except Exception as err:  # noqa: BLE001
            if self.deployment is not d:
                # A cancelled attempt's commit (it outlives the attempt on the executor):
                # reported as FAILED it would fail the attempt that replaced it, whose
                # restore settles this commit anyway.
                log.warning("worker %d: commit of checkpoint %d of cancelled attempt %d "
                            "failed: %s", self.index, msg["id"], d.attempt, err)
                return
            self.send("FAILED", reason=f"commit of checkpoint {msg['id']} failed: {err}")
            return
        if msg.get("final"):
            # Final counts first (same ordered connection): the job's totals are exact.
            self.send("STATS", tasks={r.spec.task_id: r.stats() for r in d.runners})
            self.send("COMMITTED", id=msg["id"])

    async def _report_stats(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            d = self.deployment
            if d is not None:
                self.send("STATS", tasks={r.spec.task_id: r.stats() for r in d.runners},
                          lag=_source_lag(d.runners))

    # -- deploy and cancel ---------------------------------------------------------------

    async def _deploy(self, msg: dict[str, Any]) -> None:
        attempt, p = msg["attempt"], msg["parallelism"]
        spec = self.job.spec
        if self.storage is None:
            # Off the loop: opening S3 storage talks to the server (and may wait for it).
            self.storage = await asyncio.get_running_loop().run_in_executor(
                self.executor, open_storage, msg["storage"])
        runners = [
            SubtaskRunner(t, self.index, p, spec.max_parallelism, msg["job_id"], self.storage,
                          self.executor, spec.checkpoint.mode, spec.checkpoint.aligned_timeout,
                          self.send, t.steps[0].fn if t.is_source else None,
                          spec.checkpoint.incremental, spec.checkpoint.max_deltas,
                          spec.state_backend, spec.checkpoint.snapshot_strategy,
                          spec.checkpoint.timeout)
            for t in self.pipeline.tasks]
        d = self.deployment = Deployment(attempt, runners)
        restore = msg.get("restore")
        try:
            loop = asyncio.get_running_loop()
            for r in runners:
                task_state = restore["tasks"].get(r.spec.task_id) if restore else None
                kind = restore.get("kind", "checkpoint") if restore else "checkpoint"
                try:
                    await _restore_on_thread(loop, self.executor, r, task_state, kind)
                except (CorruptStateError, NotFoundError) as err:
                    # The checkpoint itself is bad: the coordinator tries an older one.
                    log.error("worker %d: cannot restore %s: %s", self.index, r.name, err)
                    self.send("FAILED", reason=f"worker {self.index} could not restore "
                                               f"{r.name}: {err}", restore_failed=True)
                    return
            # Channels parked before this DEPLOY arrived belong to it now.
            parked, self.parked = self.parked, []
            for a, task_index, sender, reader, writer in parked:
                self._attach(a, task_index, sender, reader, writer)
            for r in runners:
                main: list[Output] = []
                sides: dict[str, list[Output]] = {}
                for edge in outputs_of(self.pipeline.tasks, r.spec.index):
                    output = await self._connect_edge(d, msg["peers"], runners[edge.target],
                                                      edge, p)
                    (main if edge.tag is None else sides.setdefault(edge.tag, [])).append(output)
                if main or sides:
                    r.output = OutputSet(main, sides)
        except asyncio.CancelledError:
            for w in d.connections:
                w.close()
            raise
        except Exception as err:  # noqa: BLE001 - reported, the coordinator restarts
            log.exception("worker %d: deploy of attempt %d failed", self.index, attempt)
            self.send("FAILED", reason=f"worker {self.index} could not start: {err}")
            return
        if self.deployment is not d:
            return
        for r in runners:
            d.tasks.append(asyncio.ensure_future(self._run(d, r)))
        self.send("RUNNING")

    async def _connect_edge(self, d: Deployment, peers: list[Any], target: SubtaskRunner,
                            edge: OutputEdge, p: int) -> Output:
        """This worker's channels of one output edge: to the same worker's subtask of the
        target task (in-process) and, unless the edge is ``forward``, to every other
        worker's (TCP, opened with a HELLO naming the target task and its gate channel)."""
        first = channel_layout(target.spec, p)[edge.input]
        if edge.exchange.kind == FORWARD:
            return Output(FORWARD, [LocalChannel(target.gate, first)], None,
                          self.job.spec.max_parallelism)
        channels: list[Any] = []
        for j, peer in enumerate(peers):
            if j == self.index:
                channels.append(LocalChannel(target.gate, first + self.index))
                continue
            _, w = await _connect_with_retry(peer[0], peer[1], 10.0)
            w.write(wire.frame(wire.HELLO, wire.pack([d.attempt, target.spec.index,
                                                      first + self.index, self.token])))
            d.connections.append(w)
            channels.append(RemoteChannel(w))
        return Output(edge.exchange.kind, channels, edge.exchange.key_fn,
                      self.job.spec.max_parallelism)

    async def _run(self, d: Deployment, runner: SubtaskRunner) -> None:
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - user code failed: the job restarts
            errors.log_failure(log, err, "%s failed", runner.name)
            if self.deployment is d:
                self.send("FAILED", reason=f"{runner.name} failed: {type(err).__name__}: {err}",
                          exception=errors.traceback_text(err))

    async def _cancel(self) -> None:
        self.watchdog.cancel_since = time.monotonic()
        try:
            await self._cancel_attempt()
        finally:
            self.watchdog.cancel_since = None

    async def _cancel_attempt(self) -> None:
        if self.deploy_task is not None:
            self.deploy_task.cancel()
            await asyncio.gather(self.deploy_task, return_exceptions=True)
            self.deploy_task = None
        d, self.deployment = self.deployment, None
        if d is None:
            return
        for t in d.tasks + d.readers:
            t.cancel()
        await asyncio.gather(*d.tasks, *d.readers, return_exceptions=True)
        for r in d.runners:
            await r.close()
        for w in d.connections:
            w.close()

    # -- data channels -------------------------------------------------------------------

    async def _on_data_connection(self, reader: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter) -> None:
        # Authentication first: a small HELLO within a timeout (wire.read_data_hello).
        hello = await wire.read_data_hello(reader, writer, self.token)
        if hello is None:
            return
        attempt, task_index, sender = hello
        limit_socket_buffers(writer)
        self._attach(attempt, task_index, sender, reader, writer)

    def _attach(self, attempt: int, task_index: int, sender: int,
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        d = self.deployment
        if d is None or attempt > d.attempt:
            self.parked.append((attempt, task_index, sender, reader, writer))
            return
        gate = d.gate(task_index)
        if attempt < d.attempt or gate is None or sender >= gate.n:
            writer.close()
            return
        d.connections.append(writer)
        d.readers.append(asyncio.ensure_future(self._read_channel(d, gate, sender, reader)))

    async def _read_channel(self, d: Deployment, gate: InputGate, channel: int,
                            reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, value = wire.decode_data(*await wire.read_frame(reader))
                if kind == wire.DATA:
                    await gate.put_batch(channel, value)
                elif kind == wire.BARRIER:
                    gate.put_barrier(channel, Marker(*value))
                else:
                    gate.put_watermark(channel, value)
        except wire.ProtocolError as err:
            # An authenticated peer sent what no peer sends: fail loudly, the job restarts.
            reason = f"worker {self.index}: bad frame on data channel from subtask {channel}: {err}"
            log.error("%s", reason)
            if self.deployment is d:
                self.send("FAILED", reason=reason)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The sender is gone; the coordinator sees the lost worker and restarts the job.
            return


def _source_lag(runners: list[SubtaskRunner]) -> dict[str, int]:
    """Records not read yet per source split (Kafka partitions), for the autoscaler."""
    out: dict[str, int] = {}
    for r in runners:
        lag = getattr(r.reader, "lag", None)
        if lag is not None:
            out.update(lag())
    return out


async def _restore_on_thread(loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor,
                             runner: SubtaskRunner, task_state: Any, kind: str) -> None:
    """``runner.restore`` on a thread. A cancel (the attempt is being torn down) asks the
    restore to stop at its next file and waits for the thread: the cancel closes the runner
    right after, and a RocksDB database closed while a thread restores into it crashed the
    worker (rocksdict: "Already borrowed"). Bounded like every cancel (the watchdog)."""
    restoring = loop.run_in_executor(executor, runner.restore, task_state, kind)
    try:
        await asyncio.shield(restoring)
    except asyncio.CancelledError:
        runner.cancel_restore()
        await asyncio.gather(restoring, return_exceptions=True)
        raise


async def _connect_with_retry(host: str, port: int, timeout: float):
    """Connect, retrying until ``timeout``; each attempt is bounded too (a host that drops
    the connection request would otherwise hold one attempt for minutes of SYN retries)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port),
                                          max(0.1, deadline - time.monotonic()))
        except OSError as err:  # TimeoutError included
            if time.monotonic() > deadline:
                raise ConnectionError(f"cannot connect to {host}:{port} within "
                                      f"{timeout:g}s: {err or type(err).__name__}") from None
            await asyncio.sleep(0.05)


def run_worker(job: StreamJob, index: int, coordinator: str, bind: str = "127.0.0.1",
               advertise: str | None = None, search_path: str | None = None,
               metrics_port: int | None = None) -> int:
    logging.basicConfig(level=os.environ.get("STREAMJOB_LOG", "WARNING"),
                        format=f"%(asctime)s worker-{index} %(levelname)s %(message)s")
    # SIGTERM is not the end of the job (only the coordinator's SHUTDOWN is): exit non-zero so
    # that whoever runs the worker starts it again. os._exit: also while user code blocks.
    signal.signal(signal.SIGTERM, _on_sigterm)
    worker = Worker(job, index, coordinator, bind, advertise, search_path, metrics_port)
    profile_dir = os.environ.get("STREAMJOB_PROFILE")
    if profile_dir:  # for performance work: one cProfile file per worker process
        import cProfile

        profiler = cProfile.Profile()
        signal.signal(signal.SIGTERM, lambda *_: (profiler.disable(), profiler.dump_stats(
            f"{profile_dir}/worker-{index}-{os.getpid()}.prof"), _on_sigterm()))
        try:
            return profiler.runcall(asyncio.run, worker.main())
        finally:
            profiler.dump_stats(f"{profile_dir}/worker-{index}-{os.getpid()}.prof")
    return asyncio.run(worker.main())


def _on_sigterm(*_: Any) -> None:
    print(f"streamjob worker (pid {os.getpid()}): SIGTERM; exiting with code {EXIT_SIGTERM}",
          file=sys.stderr, flush=True)
    os._exit(EXIT_SIGTERM)
