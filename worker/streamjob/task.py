"""One subtask of one task (a chain of operators) inside a worker.

The task loop takes batches from its input gate (or polls its source), pushes them through
the chained operators and emits the result downstream or into the sink. Barriers reach it
between batches; snapshots are taken there, so state and emitted records always agree.
Watermarks (event time) also arrive between batches: windows fire, then the watermark goes on
downstream (see ``windows/``); processing-time timers fire from the loop when due.

A task with several input edges (union, connect; see ``jobgraph.py``) has one gate over the
channels of all of them: alignment and the watermark span every input. A connected task's
first operator takes each batch by the input its channel belongs to (``entry``). Operators
may emit side outputs (``side_outputs``): they leave on the task's side-output edges after
each batch, before any later barrier, so they belong to the same checkpoint as the batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from streamjob import barriers, faults, state
from streamjob.barriers import BarrierHandler
from streamjob.channels import (
    CHECKPOINT,
    FINAL,
    SAVEPOINT,
    InputGate,
    Marker,
    OutputSet,
    Watermark,
)
from streamjob.checkpoints import checkpoint_dir, savepoint_path, shared_dir
from streamjob.connectors.base import assign_splits
from streamjob.jobgraph import TaskSpec, sides_of_channels
from streamjob.keygroups import KeyGroupOf, key_group_range
from streamjob.memory_snapshot import MemorySnapshotStrategy
from streamjob.operators import KeyedStateBackend
from streamjob.snapshot_strategy import (
    KeyedSnapshot,
    NoKeyedState,
    SnapshotLocation,
    SnapshotStrategy,
)
from streamjob.storage import Storage
from streamjob.windows import (
    MAX_WATERMARK,
    MIN_WATERMARK,
    WatermarkGenerator,
    WatermarkTracker,
    restored_floors,
)

log = logging.getLogger("streamjob.task")

BATCH = 2048
# Batches handed to the sink's thread and not written yet: beyond this the task waits
# (backpressure from a slow disk instead of unbounded memory).
SINK_QUEUE = 8


class Pace:
    """How many more records a rate-limited source subtask may read now (``allowed``; None:
    unlimited). A ``rate`` counts from the attempt's start; a generator's ``schedule`` from
    its ``start_at`` (the job's first start, on the wall clock every process shares) against
    what its splits have read since then, so the pace survives restarts and rescales."""

    def __init__(self, source: Any, reader: Any, share: float):
        self.share, self.reader = share, reader
        self.schedule = getattr(source, "schedule", None)
        start_at = getattr(source, "start_at", None)
        self.origin = time.time() if start_at is None else start_at
        self.rate = source.rate * share
        self.started = time.monotonic()
        self.read = 0  # records read in this attempt

    def allowed(self) -> int | None:
        if self.schedule is not None:
            due = self.schedule.due(time.time() - self.origin) * self.share
            return int(due) - self.reader.emitted()
        if self.rate > 0:
            return int((time.monotonic() - self.started) * self.rate) - self.read
        return None

    def rate_now(self) -> float:
        if self.schedule is not None:
            return self.schedule.rate_at(time.time() - self.origin) * self.share
        return self.rate


class SinkStagingError(RuntimeError):
    """The sink could not stage the output of a checkpoint."""


@dataclass
class Snapshot:
    """A snapshot after its synchronous part, waiting for in-flight capture and upload."""

    checkpoint_id: int
    directory: str
    first_barrier: float
    alignment_ms: float
    sync_ms: float
    buffered_records: int
    keyed: KeyedSnapshot  # the keyed state's part (snapshot_strategy.py)
    operator_state: dict[str, Any]
    staged: asyncio.Future[None] | None  # the sink's output of this epoch, being staged
    unaligned: bool = False
    sync_done: float = field(default_factory=time.time)
    async_start: float = 0.0


class SubtaskRunner:
    def __init__(self, spec: TaskSpec, subtask: int, parallelism: int, max_parallelism: int,
                 job_id: str, storage: Storage, executor: Executor, checkpoint_mode: str,
                 aligned_timeout: float, send: Callable[..., None], source: Any = None,
                 incremental: bool = False, max_deltas: int = 10,
                 state_backend: Any = None, snapshot_strategy: str = "thread",
                 snapshot_timeout: float = 60.0):
        self.spec = spec
        self.subtask, self.p, self.m = subtask, parallelism, max_parallelism
        self.job_id, self.storage, self.executor = job_id, storage, executor
        self.send = send  # control message to the coordinator
        self.gate: InputGate | None = None
        self.handler: BarrierHandler | None = None
        channels = spec.num_channels(parallelism)
        if spec.inputs:
            self.gate = InputGate(channels)
            self.handler = BarrierHandler(channels, checkpoint_mode, aligned_timeout)
            self.gate.blocked = self.handler.blocked
            self.gate.wants_priority = self._wants_priority
            self.gate.on_capture_overflow = self._capture_overflow
        self.output: OutputSet | None = None
        # A connected (two-input) task: its first operator's entry per input, and the input
        # of each gate channel. None for every other task.
        self.entry: tuple[Callable[[Any], Any], ...] | None = None
        self.side_of: list[int] = sides_of_channels(spec, parallelism)
        self.side_ops: list[Any] = []  # operators that may emit side outputs
        self.backend: KeyedStateBackend | None = None
        self.source = source
        self.reader = None
        self.source_watermarks = False  # the reader makes watermarks (per split)
        self.source_snapshots: dict[int, dict[str, Any]] = {}  # positions until complete
        self.sink_writer = None
        self.transforms: list[Callable[[Any], Any]] = []
        # Event time: the source's watermark generator; the watermark of a gate task (min
        # over its channels); operators that act on watermarks, by their place in the chain.
        self.watermark_gen: WatermarkGenerator | None = None
        self.tracker = WatermarkTracker(channels) if self.gate is not None else None
        self.timers: list[tuple[int, Any]] = []
        # Operators with processing-time timers (keyed functions), by place in the chain.
        self.clocked: list[tuple[int, Any]] = []
        self.records_in = 0
        self.records_out = 0
        # Task metrics (taskmetrics.py), measured per batch: time spent processing, time
        # waiting for room downstream (sink queue, source waiting for output; the output's
        # channels count their own waits), since when the subtask runs.
        self.busy_s = 0.0
        self.backpressure_seconds = 0.0
        self.started: float | None = None
        self.pace: Pace | None = None  # sources: the rate they keep
        self.triggers: list[dict[str, Any]] = []
        self.trigger_event = asyncio.Event()
        self.source_finished = False
        self.stopped = False  # after a stop-with-savepoint barrier: emit nothing more
        self.pending: dict[int, Snapshot] = {}
        self.uploads: set[asyncio.Task[Any]] = set()
        self.replay: list[tuple[int, Any]] = []  # (gate channel, batch) captured in flight
        self._kg_of = KeyGroupOf(self.m)  # places the keys of a memory snapshot
        # How the keyed state backend is built and snapshotted: spec.stateBackend
        # (manifest.StateBackendSpec; None: memory), incremental checkpoints (chains of at
        # most max_deltas deltas), how the memory backend encodes (snapshotStrategy: thread
        # or fork, forked_snapshot.py; a child within the checkpoint timeout).
        self.incremental, self.max_deltas = incremental, max_deltas
        self.state_backend = state_backend
        self.snapshot_encoding, self.snapshot_timeout = snapshot_strategy, snapshot_timeout
        self.snapshots: SnapshotStrategy = NoKeyedState()  # the backend's, once built
        self.trim: Callable[[], None] | None = None  # the rocksdb backend's, between batches
        # Uploads of one subtask go in checkpoint order: a delta needs its base first.
        self.upload_lock = asyncio.Lock()
        # Keyed snapshots taken and neither uploaded nor discarded yet, by checkpoint id.
        self.taken: dict[int, KeyedSnapshot] = {}
        # Everything the sink does that may block (writes, the cut at a barrier, staging) runs
        # on one thread of its own, in the order of the stream: the records submitted before
        # barrier n are exactly epoch n. Staging starts at the barrier whatever becomes of
        # the checkpoint.
        self.sink_executor: ThreadPoolExecutor | None = None
        self.sink_writes: deque[Future[None]] = deque()
        self.sink_error: BaseException | None = None
        self._build()
        if self.sink_writer is not None:
            self.sink_executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"sink-{spec.task_id}-{subtask}")

    # -- construction -------------------------------------------------------------------

    def _build(self) -> None:
        for step in self.spec.steps:
            fn = step.fn
            if step.kind == "map":
                self.transforms.append(lambda b, f=fn: [f(x) for x in b])
            elif step.kind == "filter":
                self.transforms.append(lambda b, f=fn: [x for x in b if f(x)])
            elif step.kind == "flat_map":
                self.transforms.append(lambda b, f=fn: [y for x in b for y in f(x)])
            elif step.kind == "timestamps":
                self.watermark_gen = WatermarkGenerator(fn)
                self.transforms.append(self.watermark_gen.observe)
            elif step.kind in ("keyed", "co_keyed"):
                self.backend = self._new_backend()
                if step.kind == "co_keyed":
                    # Not in the chain: each input enters through its own method, then the
                    # chain goes on from transform 0 (also for what fires on a watermark).
                    op = fn.create(self.backend)
                    self.entry = (op.process_batch, op.process_batch2)
                    position = -1
                else:
                    op = fn.create(self.backend, self.spec.exchange.key_fn)
                    position = len(self.transforms)
                    self.transforms.append(op.process_batch)
                if hasattr(op, "on_watermark"):
                    self.timers.append((position, op))
                if hasattr(op, "on_processing_time"):
                    self.clocked.append((position, op))
                if hasattr(op, "side_outputs"):
                    self.side_ops.append(op)
            elif step.kind == "sink":
                self.sink_writer = fn.create_writer(self.subtask, self.job_id)

    def _new_backend(self) -> KeyedStateBackend:
        """The keyed state backend that ``spec.stateBackend`` asks for, and its snapshot
        strategy (``self.snapshots``)."""
        key_groups = key_group_range(self.subtask, self.p, self.m)
        sb = self.state_backend
        if sb is not None and sb.type == "rocksdb":
            from streamjob.rocksdb_backend import RocksDBKeyedStateBackend, subtask_dir
            from streamjob.rocksdb_snapshot import RocksDBSnapshotStrategy

            backend = RocksDBKeyedStateBackend(
                subtask_dir(sb.rocksdb.local_dir, self.job_id, self.spec.task_id,
                            self.subtask), key_groups, self.m,
                block_cache_mb=sb.rocksdb.block_cache_mb,
                write_buffer_mb=sb.rocksdb.write_buffer_mb)
            self.snapshots = RocksDBSnapshotStrategy(backend)
            self.trim = backend.trim
            return backend
        backend = KeyedStateBackend(track_changes=self.incremental)
        backend.key_groups, backend.max_parallelism = key_groups, self.m
        self.snapshots = MemorySnapshotStrategy(
            backend, self._kg_of, self.name, self.incremental, self.max_deltas,
            self.snapshot_encoding, self.snapshot_timeout)
        return backend

    @property
    def name(self) -> str:
        return f"{self.spec.task_id}[{self.subtask}]"

    @property
    def backpressured_s(self) -> float:
        """Seconds this subtask waited for room downstream."""
        own = self.backpressure_seconds
        return own if self.output is None else own + self.output.backpressured_s

    def stats(self) -> list[Any]:
        """The cumulative STATS of this subtask: ``[records_in, records_out, busy_s,
        backpressured_s, elapsed_s, backlog]`` (backlog: None unless a source)."""
        elapsed = 0.0 if self.started is None else time.monotonic() - self.started
        return [self.records_in, self.records_out, round(self.busy_s, 4),
                round(self.backpressured_s, 4), round(elapsed, 4), self.backlog()]

    def backlog(self) -> int | None:
        """Records a source is behind: Kafka's lag over its partitions; for a rate-limited
        source, what its pace allows by now and it has not read yet; for an unlimited one,
        what remains to be read (all of it is available now)."""
        if self.reader is None:
            return None
        lag = getattr(self.reader, "lag", None)
        if lag is not None:
            return sum(lag().values())
        remaining = getattr(self.reader, "remaining", None)
        left = remaining() if remaining is not None else None
        allowed = self.pace.allowed() if self.pace is not None else None
        if allowed is None:
            return left
        due = max(0, allowed)
        return due if left is None else min(due, left)

    @property
    def late_records(self) -> int:
        """Records dropped because their window had already fired."""
        return sum(getattr(op, "late_records", 0) for _, op in self.timers)

    def restore(self, task_state: dict[str, Any] | None, kind: str = "checkpoint") -> None:
        """Load this subtask's share of a checkpoint (any parallelism it was taken at)."""
        positions: dict[str, Any] = {}
        sink_states: list[dict[str, Any]] = []
        if task_state is not None:
            same_parallelism = len(task_state["subtasks"]) == self.p
            own_range = key_group_range(self.subtask, self.p, self.m)
            watermarks: list[float | None] = []
            for old_index, handle in enumerate(task_state["subtasks"]):
                op_state = state.read_operator_state(self.storage, handle)
                positions.update(op_state.get("splits", {}))
                if "sink" in op_state and old_index % self.p == self.subtask:
                    # What the sink had not committed yet (one new subtask per old one).
                    sink_states.append(op_state["sink"])
                watermarks.append(op_state.get("watermark"))
                own_snapshot = same_parallelism and old_index == self.subtask
                if own_snapshot:
                    for channel, batches in op_state.get("inflight", []):
                        self.replay.extend((channel, b) for b in batches)
                # Keyed state: the key groups we own; an incremental checkpoint of our own
                # goes on building deltas on the files we restored from.
                self.snapshots.restore(self.storage, handle, own_range,
                                       continue_chain=own_snapshot and kind == "checkpoint")
                if old_index == 0:
                    faults.point("worker.during-restore")  # one state file read, not all
            self.snapshots.restored(
                self.storage, f"{shared_dir(self.job_id)}/" if kind == "checkpoint" else None)
            self._restore_watermark(watermarks, own_range)
        restore_sink = getattr(self.sink_writer, "restore", None)
        if restore_sink is not None:
            restore_sink(sink_states)
        if self.source is not None:
            split_ids = self.source.split_ids()
            mine = assign_splits(split_ids, self.subtask, self.p)
            own = {s: positions.get(s, self.source.initial_position(s)) for s in mine}
            if hasattr(self.source, "discovery_interval"):  # finds splits while running
                self.reader = self.source.create_reader(own, self.subtask, self.p, split_ids)
            else:
                self.reader = self.source.create_reader(own)
            self.source_watermarks = callable(getattr(self.reader, "watermark", None))

    def cancel_restore(self) -> None:
        """From the event loop while :meth:`restore` runs on a thread (the attempt is being
        cancelled): a rocksdb restore stops at its next file."""
        self.snapshots.cancel_restore()

    def _restore_watermark(self, old: list[float | None], own_range: range) -> None:
        """Start from the watermark of the snapshot: windows it had fired (and cleared) must
        not be opened again by replayed records. After a rescale each key group keeps the
        watermark of the subtask it came from."""
        if self.tracker is None or not any(w is not None for w in old):
            return
        if self.backend is None:  # not keyed: any old subtask may have fed this one
            self.tracker.current = min(MIN_WATERMARK if w is None else w for w in old)
            return
        floors = restored_floors(old, own_range, self.m)
        if floors:
            self.tracker.current = min(floors.values())
        for _, op in self.timers:
            op.restore_watermark(floors)

    # -- processing ---------------------------------------------------------------------

    async def push(self, batch: Any, start: int = 0) -> None:
        """Through the chain from transform ``start`` on (fired windows enter after their
        operator), then downstream or into the sink."""
        for transform in self.transforms if start == 0 else self.transforms[start:]:
            batch = transform(batch)
            if not batch:
                break
        else:
            await self._emit(batch)
        if self.side_ops:
            await self._emit_side_outputs()
        if self.trim is not None:
            self.trim()

    async def _emit(self, batch: Any) -> None:
        self.records_out += len(batch)
        if self.sink_writer is not None:
            writes = self.sink_writes
            while writes and writes[0].done():
                writes.popleft()
            if self.sink_error is not None:
                raise SinkStagingError(f"sink write failed: {self.sink_error}")
            if len(writes) >= SINK_QUEUE:
                t0 = time.perf_counter()
                await asyncio.wrap_future(writes.popleft())
                self.backpressure_seconds += time.perf_counter() - t0
            writes.append(self.sink_executor.submit(self._sink_write, batch))
        elif self.output is not None:
            await self.output.emit(batch)

    async def _emit_side_outputs(self) -> None:
        for op in self.side_ops:
            if op.side_outputs:
                sides, op.side_outputs = op.side_outputs, {}
                for tag, records in sides.items():
                    if self.output is not None:
                        await self.output.emit_side(tag, records)

    async def _on_records(self, channel: int, batch: Any) -> None:
        self.records_in += len(batch)
        if self.entry is None:
            await self.push(batch)
        else:
            await self.push(self.entry[self.side_of[channel]](batch))

    async def run(self) -> None:
        self.started = time.monotonic()
        if self.replay:
            batches, self.replay = self.replay, []
            for channel, batch in batches:
                t0, b0 = time.perf_counter(), self.backpressured_s
                await self._on_records(channel, batch)
                self._busy(t0, b0)
        if self.gate is None:
            await self._run_source()
        else:
            await self._run_gate()

    def _busy(self, t0: float, backpressured_before: float) -> None:
        """Count the time since ``t0`` as busy, less what was spent backpressured."""
        self.busy_s += (time.perf_counter() - t0) - (self.backpressured_s -
                                                     backpressured_before)

    async def _run_source(self) -> None:
        share = len(self.reader.positions()) / max(1, len(self.source.split_ids()))
        pace = self.pace = Pace(self.source, self.reader, share)
        while True:
            while self.triggers:
                await self._source_barrier(self.triggers.pop(0))
            if self.source_finished or self.stopped:
                self.trigger_event.clear()
                await self.trigger_event.wait()
                continue
            if self.output is not None and not self.output.available():
                # Wait for room downstream *before* reading more, so that a checkpoint
                # trigger is served while backpressured instead of behind a blocked send.
                waiter = asyncio.ensure_future(self.output.wait_available())
                self.trigger_event.clear()
                trig = asyncio.ensure_future(self.trigger_event.wait())
                t0 = time.perf_counter()
                await asyncio.wait([waiter, trig], return_when=asyncio.FIRST_COMPLETED)
                self.backpressure_seconds += time.perf_counter() - t0
                waiter.cancel()
                trig.cancel()
                continue
            budget = BATCH
            allowed = pace.allowed()
            if allowed is not None:
                if allowed <= 0:
                    self.trigger_event.clear()
                    rate = pace.rate_now()
                    try:
                        await asyncio.wait_for(self.trigger_event.wait(), min(
                            0.05, (1 - allowed) / rate) if rate > 0 else 0.05)
                    except TimeoutError:
                        pass
                    continue
                budget = min(BATCH, allowed)
            t0, b0 = time.perf_counter(), self.backpressured_s
            batch = self.reader.poll(budget)
            if batch is None:
                if self.watermark_gen is not None:
                    # End of input: a finished source must not hold event time back.
                    await self._emit_watermark(self.watermark_gen.finish())
                elif self.source_watermarks:
                    await self._emit_watermark(MAX_WATERMARK)
                self.source_finished = True
                self.send("SOURCE_FINISHED", task=self.spec.task_id, subtask=self.subtask)
                continue
            pace.read += len(batch)
            self.records_in += len(batch)
            await self.push(batch)
            if self.watermark_gen is not None:
                await self._emit_watermark(self.watermark_gen.next_watermark(time.monotonic()))
            elif self.source_watermarks:
                await self._emit_watermark(self.reader.watermark(time.monotonic()))
            self._busy(t0, b0)
            allowed = pace.allowed()
            if self.output is None or (allowed is not None and allowed < 1):
                await asyncio.sleep(0)  # let control messages and readers run
                continue
            # Subtasks of a worker share its event loop: while a source that could read more
            # yields, the loop runs downstream subtasks (and their readers). Time it is held
            # back that way is backpressure as much as a full channel is (in Flink each task
            # has a thread of its own and would wait on the full channel instead). A paced
            # source less than a batch ahead of its schedule is on time, not held back: that
            # yield is idle time.
            t0 = time.perf_counter()
            await asyncio.sleep(0)
            if allowed is None or allowed >= BATCH:
                self.backpressure_seconds += time.perf_counter() - t0

    async def _emit_watermark(self, watermark: float | None) -> None:
        if watermark is not None and self.output is not None:
            await self.output.broadcast_watermark(watermark)

    async def _on_watermark(self, channel: int, timestamp: float) -> None:
        """A channel's watermark; if the subtask's (the minimum) advances, fire windows,
        push what they emit down the rest of the chain, then forward the watermark."""
        watermark = self.tracker.update(channel, timestamp)
        if watermark is None:
            return
        if math.isnan(watermark):  # every input idle: tell downstream, fire nothing
            await self._emit_watermark(watermark)
            return
        for index, op in self.timers:
            fired = op.on_watermark(watermark)
            if fired:
                await self.push(fired, index + 1)
        if self.trim is not None:
            self.trim()
        await self._emit_watermark(watermark)

    def _next_processing_time(self) -> float | None:
        times = [t for _, op in self.clocked if (t := op.next_processing_time()) is not None]
        return min(times) if times else None

    async def _fire_processing_timers(self) -> None:
        """Fire the processing-time timers that are due; what they emit goes down the rest
        of the chain (like fired windows)."""
        for index, op in self.clocked:
            fired = op.on_processing_time()
            if fired:
                await self.push(fired, index + 1)
        if self.trim is not None:
            self.trim()

    async def _source_barrier(self, trig: dict[str, Any]) -> None:
        now = time.time()
        kind = SAVEPOINT if trig.get("savepoint") else FINAL if trig.get("final") else CHECKPOINT
        snap = await self._sync_snapshot(trig["id"], self.directory(trig["id"], kind == SAVEPOINT),
                                         kind, now, 0.0, 0, unaligned=False)
        if trig.get("stop"):
            self.stopped = True
        self._finish(snap)

    async def _run_gate(self) -> None:
        gate, handler = self.gate, self.handler
        while True:
            deadline = handler.deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            if self.clocked:  # wake up for the next processing-time timer, input or not
                due = self._next_processing_time()
                if due is not None:
                    wait = max(0.0, due / 1000 - time.time())
                    timeout = wait if timeout is None else min(timeout, wait)
            got = await gate.next(timeout)  # waiting here is idle time
            t0, b0 = time.perf_counter(), self.backpressured_s
            if self.clocked:
                await self._fire_processing_timers()
            if got is None:
                await self._apply(handler.on_tick(time.time()), None)
            else:
                channel, item = got
                if type(item) is Marker:
                    item.handled = True
                    await self._apply(handler.on_barrier(channel, item.checkpoint_id,
                                                         time.time(), item.aligned), item)
                elif type(item) is Watermark:
                    await self._on_watermark(channel, item.timestamp)
                elif self.entry is None:
                    self.records_in += len(item)
                    await self.push(item)
                else:
                    await self._on_records(channel, item)
            self._busy(t0, b0)

    def _wants_priority(self, marker: Marker) -> bool:
        return not marker.aligned and self.handler.priority_barriers

    async def _apply(self, actions: list[barriers.Action], marker: Marker | None) -> None:
        for action in actions:
            cid = action.checkpoint_id
            if action.kind == barriers.SNAPSHOT:
                first = action.started_at or time.time()
                kind = marker.kind if marker else CHECKPOINT
                blocked = set(self.handler.blocked)
                await self._sync_snapshot(
                    cid, self.directory(cid, kind == SAVEPOINT), kind, first,
                    (time.time() - first) * 1000, self.gate.buffered_records(blocked),
                    unaligned=action.unaligned)
                if action.unaligned:
                    channels = action.channels
                    self.gate.start_capture(cid, channels + self._arrived_unhandled(cid))
            elif action.kind == barriers.COMPLETE:
                snap = self.pending.get(cid)
                if snap is not None:
                    if snap.unaligned:
                        captured = self.gate.take_capture(cid)
                        snap.operator_state["inflight"] = [
                            [c, [list(b) for b in batches]] for c, batches in captured.items()
                            if batches]
                    self._finish(snap)
            elif action.kind == barriers.ABORTED:
                self._drop(cid, "a newer barrier overtook it")

    def _capture_overflow(self, cid: int) -> None:
        """Too many in-flight records for unaligned checkpoint ``cid``: decline it rather
        than hold them all in memory (the gate has dropped the capture)."""
        reason = (f"more than {self.gate.capture_limit:,} in-flight records (unaligned "
                  f"checkpoint declined to bound memory)")
        log.warning("%s: checkpoint %d declined: %s", self.name, cid, reason)
        self.send("DECLINE", id=cid, task=self.spec.task_id, subtask=self.subtask,
                  reason=reason)
        self.on_abort(cid)

    def _arrived_unhandled(self, cid: int) -> tuple[int, ...]:
        """Channels whose barrier n sits in their queue but was not handled yet."""
        return tuple(c for c, q in enumerate(self.gate.queues)
                     if any(type(i) is Marker and i.checkpoint_id == cid for i in q))

    # -- checkpoints --------------------------------------------------------------------

    def directory(self, cid: int, savepoint: bool) -> str:
        return (savepoint_path(self.job_id, str(cid)) if savepoint
                else checkpoint_dir(self.job_id, cid))

    async def _sync_snapshot(self, cid: int, directory: str, kind: int, first: float,
                             alignment_ms: float, buffered: int, unaligned: bool) -> Snapshot:
        t0 = time.perf_counter()
        keyed = self.taken[cid] = self.snapshots.snapshot(cid, savepoint=kind == SAVEPOINT)
        op_state: dict[str, Any] = {}
        if self.reader is not None:
            op_state["splits"] = self.reader.positions()
            if hasattr(self.reader, "notify_checkpoint_complete") and kind != SAVEPOINT:
                self.source_snapshots[cid] = op_state["splits"]
        if self.tracker is not None and self.tracker.current > MIN_WATERMARK:
            op_state["watermark"] = self.tracker.current
        staged = self._stage(cid) if self.sink_writer is not None else None
        sync_ms = (time.perf_counter() - t0) * 1000
        snap = Snapshot(cid, directory, first, alignment_ms, sync_ms, buffered, keyed,
                        op_state, staged, unaligned)
        self.pending[cid] = snap
        # Taken: an incremental one is a delta of the chain as it is now, whatever happens
        # to the uploads still in flight.
        faults.point("worker.after-snapshot-sync", f"{self.spec.task_id}/{self.subtask}")
        if self.output is not None:
            await self.output.broadcast_barrier(cid, kind)
        return snap

    def _sink_write(self, batch: list[Any]) -> None:
        """On the sink's thread. A failed write fails every later stage (and the task)."""
        if self.sink_error is not None:
            return
        try:
            self.sink_writer.write(batch)
        except Exception as err:  # noqa: BLE001
            self.sink_error = err

    def _stage(self, cid: int) -> asyncio.Future[Any]:
        """Cut the sink's output at barrier ``cid`` and stage it off the loop, in barrier
        order. Staging does not depend on the checkpoint: the records of a closed epoch are
        out of the state of every later snapshot, so they must reach the staging area even
        if this checkpoint is declined, dropped or aborted (a later completed checkpoint then
        commits them). A staging failure fails the job (only a restore brings them back)."""

        def stage() -> Any:
            try:
                if self.sink_error is not None:
                    raise self.sink_error
                sink_state = self.sink_writer.pre_commit(cid)()
            except Exception as err:  # noqa: BLE001
                raise SinkStagingError(f"staging output of checkpoint {cid} failed: "
                                       f"{err}") from err
            faults.point("sink.after-pre-commit")
            return sink_state

        fut = asyncio.wrap_future(self.sink_executor.submit(stage))

        def done(f: asyncio.Future[None]) -> None:
            self.uploads.discard(f)
            if not f.cancelled() and f.exception() is not None:
                self.send("FAILED", reason=f"{self.name}: {f.exception()}")

        self.uploads.add(fut)
        fut.add_done_callback(done)
        return fut

    def _finish(self, snap: Snapshot) -> None:
        """Upload off the processing thread, then ack."""
        self.pending.pop(snap.checkpoint_id, None)
        loop = asyncio.get_running_loop()
        keyed = snap.keyed
        location = SnapshotLocation.of(self.job_id, snap.directory, self.spec.task_id,
                                       self.subtask, snap.checkpoint_id, uuid.uuid4().hex[:12])
        uploading = False

        async def run() -> None:
            try:
                await run_snapshot()
            finally:
                self.taken.pop(snap.checkpoint_id, None)
                if not uploading:  # it never got to its upload (which releases it)
                    await loop.run_in_executor(self.executor, keyed.discard)

        async def run_snapshot() -> None:
            nonlocal uploading
            snap.async_start = time.time()
            t0 = time.perf_counter()
            if snap.staged is not None:
                # The ack promises the epoch's output is staged (durable) before commit.
                try:
                    sink_state = await snap.staged
                except Exception:  # noqa: BLE001 - reported as FAILED by _stage
                    return
                if sink_state is not None:  # what a restore needs to finish the commit
                    snap.operator_state["sink"] = sink_state
            async with self.upload_lock:
                uploading = True
                try:
                    handle = await loop.run_in_executor(
                        self.executor, keyed.upload, self.storage, location,
                        snap.operator_state)
                except Exception as err:  # noqa: BLE001 - any storage failure declines
                    log.warning("%s: checkpoint %d declined: %s", self.name,
                                snap.checkpoint_id, err)
                    self.send("DECLINE", id=snap.checkpoint_id, task=self.spec.task_id,
                              subtask=self.subtask, reason=str(err))
                    return
            async_ms = (time.perf_counter() - t0) * 1000
            faults.point("worker.after-snapshot-upload")
            inflight = sum(len(b) for _, bs in snap.operator_state.get("inflight", [])
                           for b in bs)
            self.send("ACK", id=snap.checkpoint_id, task=self.spec.task_id, subtask=self.subtask,
                      handle=handle, timings={
                          "first_barrier": snap.first_barrier,
                          "alignment_ms": round(snap.alignment_ms, 3),
                          "sync_ms": round(snap.sync_ms, 3),
                          "async_ms": round(async_ms, 3),
                          "sync_done": snap.sync_done,
                          "async_start": snap.async_start,
                          "ack": time.time(),
                          "bytes": keyed.uploaded_bytes,
                          "buffered_records": snap.buffered_records,
                          "inflight_records": inflight,
                          "unaligned": snap.unaligned,
                          # How the keyed state was encoded (forked_snapshot.py), and what
                          # a forked child copied of the worker's memory.
                          "snapshot": keyed.encoding,
                          "child_copied_bytes": keyed.copied_bytes,
                      })

        task = asyncio.ensure_future(run())
        self.uploads.add(task)
        task.add_done_callback(self.uploads.discard)

    def _drop(self, cid: int, why: str) -> None:
        snap = self.pending.pop(cid, None)
        if self.gate is not None:
            self.gate.drop_capture(cid)
        if snap is not None:
            # Its sink output is being staged already (see _stage): the next completed
            # checkpoint commits it.
            log.info("%s: checkpoint %d dropped: %s", self.name, cid, why)
            self.taken.pop(cid, None)
            snap.keyed.discard()

    def on_trigger(self, trig: dict[str, Any]) -> None:
        if self.gate is None:
            self.triggers.append(trig)
            self.trigger_event.set()

    def on_abort(self, cid: int) -> None:
        if self.handler is not None:
            self.handler.abort(cid)
        self._drop(cid, "aborted by the coordinator")
        keyed = self.taken.get(cid)
        if keyed is not None:  # being uploaded: fails fast now (a child is killed)
            keyed.cancel()

    async def on_complete(self, cid: int) -> None:
        positions = self.source_snapshots.pop(cid, None)
        for older in [n for n in self.source_snapshots if n < cid]:
            del self.source_snapshots[older]
        if positions is not None:
            self.reader.notify_checkpoint_complete(cid, positions)
        if self.sink_writer is not None:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self.sink_writer.commit, cid)

    async def close(self) -> None:
        for keyed in list(self.taken.values()):
            keyed.cancel()  # an upload waiting for a child ends now
        if self.uploads:
            await asyncio.gather(*self.uploads, return_exceptions=True)
        for cid in list(self.taken):  # taken, never finished
            self.taken.pop(cid).discard()
        close_reader = getattr(self.reader, "close", None)
        if close_reader is not None:
            close_reader()
        if self.output is not None:
            self.output.close()
        if self.sink_writer is not None:
            # After every write queued before it (on the sink's thread): no write lands in a
            # file that was closed.
            await asyncio.wrap_future(self.sink_executor.submit(self.sink_writer.close))
            self.sink_executor.shutdown(wait=False)
        if self.backend is not None:
            self.backend.close()  # after its uploads (above): they read its checkpoints

