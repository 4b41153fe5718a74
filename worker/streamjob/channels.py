"""Input gates and output channels of one subtask.

An input gate holds one bounded queue per input channel. A full queue stops its reader, so
TCP flow control pushes back on the producer: a slow consumer backpressures its upstream.
Barriers travel in order as markers; when the handler says barriers may overtake
(unaligned), the reader also puts a notice in a priority queue that the task serves first.
Watermarks travel in order too, but never wait for room: they are tiny and must not block.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from streamjob import wire
from streamjob.keygroups import KeyRouter

# Records an unaligned checkpoint may hold in flight per subtask before it is declined.
CAPTURE_LIMIT = int(os.environ.get("STREAMJOB_INFLIGHT_LIMIT", 500_000))

CHECKPOINT, SAVEPOINT, FINAL = 0, 1, 2  # barrier kinds; savepoints and final are aligned


class Marker:
    """Barrier n at its place in a channel's queue."""

    __slots__ = ("checkpoint_id", "kind", "handled")

    def __init__(self, checkpoint_id: int, kind: int):
        self.checkpoint_id, self.kind, self.handled = checkpoint_id, int(kind), False

    @property
    def savepoint(self) -> bool:
        return self.kind == SAVEPOINT

    @property
    def aligned(self) -> bool:
        """Savepoints and the final checkpoint are always aligned: a savepoint must restore
        at any parallelism, and nothing may be processed after the final one."""
        return self.kind != CHECKPOINT


class Watermark:
    """A channel's event-time watermark at its place in the channel's queue."""

    __slots__ = ("timestamp",)

    def __init__(self, timestamp: float):
        self.timestamp = timestamp


class InputGate:
    def __init__(self, num_channels: int, capacity: int = 4):
        self.n = num_channels
        self.capacity = capacity
        self.queues: list[deque[Any]] = [deque() for _ in range(num_channels)]
        self.priority: deque[tuple[int, Marker]] = deque()
        self.blocked: set[int] = set()
        self.available = asyncio.Event()
        self.space = asyncio.Event()
        self._next = 0
        # Unaligned in-flight capture: checkpoint id -> channel -> batches; active channels.
        self.capture: dict[int, dict[int, list[Any]]] = {}
        self.capturing: dict[int, set[int]] = {}
        self.wants_priority = lambda marker: False
        # In-flight capture reads ahead of the queue capacity (the barrier is behind the
        # data); it is bounded by records: past the limit the capture is dropped and
        # ``on_capture_overflow(checkpoint_id)`` declines that checkpoint (memory stays
        # bounded; the next checkpoint tries again).
        self.capture_limit = CAPTURE_LIMIT
        self.captured_records: dict[int, int] = {}
        self.on_capture_overflow: Callable[[int], None] = lambda checkpoint_id: None

    def _read_ahead(self, channel: int) -> bool:
        return any(channel in active for active in self.capturing.values())

    async def put_batch(self, channel: int, batch: Any) -> None:
        q = self.queues[channel]
        while len(q) >= self.capacity and not self._read_ahead(channel):
            self.space.clear()
            await self.space.wait()
        q.append(batch)
        if self.capturing:
            self._capture(channel, batch)
        self.available.set()

    def _capture(self, channel: int, batch: Any) -> None:
        overflow = []
        for cid, active in self.capturing.items():
            if channel in active:
                self.capture[cid][channel].append(batch)
                n = self.captured_records[cid] = self.captured_records.get(cid, 0) + len(batch)
                if n > self.capture_limit:
                    overflow.append(cid)
        for cid in overflow:
            self.take_capture(cid)
            self.on_capture_overflow(cid)

    def put_watermark(self, channel: int, timestamp: float) -> None:
        # Not captured as in-flight state: a restored subtask starts from the watermark
        # in its snapshot and the sources emit new ones.
        self.queues[channel].append(Watermark(timestamp))
        self.available.set()

    def put_barrier(self, channel: int, marker: Marker) -> None:
        self.queues[channel].append(marker)
        active = self.capturing.get(marker.checkpoint_id)
        if active is not None:
            active.discard(channel)
        if self.wants_priority(marker):
            self.priority.append((channel, marker))
        self.available.set()

    def start_capture(self, checkpoint_id: int, channels: tuple[int, ...]) -> None:
        """Records ahead of barrier n on ``channels`` become in-flight state of checkpoint n."""
        captured: dict[int, list[Any]] = {}
        active = set()
        for c in channels:
            items = []
            done = False
            for item in self.queues[c]:
                if type(item) is Marker:
                    if item.checkpoint_id >= checkpoint_id:
                        done = True
                        break
                    continue
                if type(item) is not Watermark:
                    items.append(item)
            captured[c] = items
            if not done:
                active.add(c)
        self.capture[checkpoint_id] = captured
        self.capturing[checkpoint_id] = active
        self.captured_records[checkpoint_id] = sum(len(b) for bs in captured.values()
                                                   for b in bs)
        self.space.set()  # readers may now read ahead to find their barriers

    def take_capture(self, checkpoint_id: int) -> dict[int, list[Any]]:
        self.capturing.pop(checkpoint_id, None)
        self.captured_records.pop(checkpoint_id, None)
        self.space.set()  # a channel that stops reading ahead may have to wait again
        return self.capture.pop(checkpoint_id, {})

    def drop_capture(self, checkpoint_id: int) -> None:
        self.take_capture(checkpoint_id)

    def buffered_records(self, channels: set[int]) -> int:
        return sum(len(item) for c in channels for item in self.queues[c]
                   if type(item) is not Marker and type(item) is not Watermark)

    def poll(self) -> tuple[int, Any] | None:
        """The next item: priority notices first, then round robin over unblocked channels."""
        if self.priority:
            return self.priority.popleft()
        n = self.n
        for i in range(n):
            c = (self._next + i) % n
            if c in self.blocked:
                continue
            q = self.queues[c]
            if q:
                item = q.popleft()
                self._next = (c + 1) % n
                if len(q) < self.capacity:
                    self.space.set()
                if type(item) is Marker and item.handled:
                    continue
                return c, item
        return None

    async def next(self, timeout: float | None = None) -> tuple[int, Any] | None:
        while True:
            got = self.poll()
            if got is not None:
                return got
            self.available.clear()
            if timeout is None:
                await self.available.wait()
            else:
                try:
                    await asyncio.wait_for(self.available.wait(), timeout)
                except TimeoutError:
                    return None


class LocalChannel:
    """A channel to a subtask in the same worker: no serialization."""

    def __init__(self, gate: InputGate, channel: int):
        self.gate, self.channel = gate, channel
        self.backpressured_s = 0.0  # seconds spent waiting for room in the receiver's queue

    async def send(self, batch: Any) -> None:
        if self.available():
            await self.gate.put_batch(self.channel, batch)
            return
        t0 = time.perf_counter()
        await self.gate.put_batch(self.channel, batch)
        self.backpressured_s += time.perf_counter() - t0

    def available(self) -> bool:
        g = self.gate
        return len(g.queues[self.channel]) < g.capacity or g._read_ahead(self.channel)

    async def wait_available(self) -> None:
        while not self.available():
            self.gate.space.clear()
            await self.gate.space.wait()

    async def send_barrier(self, checkpoint_id: int, kind: int) -> None:
        self.gate.put_barrier(self.channel, Marker(checkpoint_id, kind))

    async def send_watermark(self, timestamp: float) -> None:
        self.gate.put_watermark(self.channel, timestamp)

    def close(self) -> None:
        pass


class RemoteChannel:
    """A TCP channel to a subtask in another worker."""

    HIGH_WATER = 512 * 1024

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.backpressured_s = 0.0  # seconds spent waiting for the peer to read (TCP flow control)
        writer.transport.set_write_buffer_limits(high=self.HIGH_WATER)
        limit_socket_buffers(writer)

    def available(self) -> bool:
        return self.writer.transport.get_write_buffer_size() <= self.HIGH_WATER

    async def wait_available(self) -> None:
        if not self.available():
            await self.writer.drain()

    async def send(self, batch: Any) -> None:
        self.writer.write(wire.frame(wire.DATA, wire.pack(batch)))
        # Sources wait for ``available()`` before reading more; this hard limit bounds the
        # buffer for tasks that cannot wait ahead of time.
        if self.writer.transport.get_write_buffer_size() > 4 * self.HIGH_WATER:
            t0 = time.perf_counter()
            await self.writer.drain()
            self.backpressured_s += time.perf_counter() - t0

    async def send_barrier(self, checkpoint_id: int, kind: int) -> None:
        # Never wait here: a barrier must not be held up by a full buffer to another peer.
        self.writer.write(wire.frame(wire.BARRIER, wire.pack([checkpoint_id, kind])))

    async def send_watermark(self, timestamp: float) -> None:
        self.writer.write(wire.frame(wire.WATERMARK, wire.pack(timestamp)))

    def close(self) -> None:
        self.writer.close()


def limit_socket_buffers(writer: asyncio.StreamWriter, size: int = 512 * 1024) -> None:
    """Small kernel buffers on data channels: what sits in them is ahead of any barrier, so
    big (autotuned, megabytes on loopback) buffers would make alignment slow."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError:
            pass


class Output:
    """Sends a task's output batches to the next task's subtasks."""

    def __init__(self, kind: str, channels: list[Any], key_fn: Any, max_parallelism: int):
        self.kind = kind
        self.channels = channels
        self.key_fn = key_fn
        self.p = len(channels)
        self.router = KeyRouter(self.p, max_parallelism) if kind == "keyed" else None
        self._rr = 0

    async def emit(self, batch: Any) -> None:
        p = self.p
        if p == 1:
            await self.channels[0].send(batch)
            return
        if self.kind == "keyed":
            buckets = self.router.partition(batch, self.key_fn)
        else:
            size = (len(batch) + p - 1) // p
            buckets = [batch[i * size:(i + 1) * size] for i in range(p)]
            self._rr = (self._rr + 1) % p
            buckets = buckets[self._rr:] + buckets[:self._rr]
        for channel, bucket in zip(self.channels, buckets, strict=True):
            if bucket:
                await channel.send(bucket)

    @property
    def backpressured_s(self) -> float:
        """Seconds the sends of this output waited for room downstream (backpressure)."""
        return sum(c.backpressured_s for c in self.channels)

    def available(self) -> bool:
        return all(c.available() for c in self.channels)

    async def wait_available(self) -> None:
        for channel in self.channels:
            await channel.wait_available()

    async def broadcast_barrier(self, checkpoint_id: int, kind: int) -> None:
        for channel in self.channels:
            await channel.send_barrier(checkpoint_id, kind)

    async def broadcast_watermark(self, timestamp: float) -> None:
        for channel in self.channels:
            await channel.send_watermark(timestamp)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class OutputSet:
    """Every output edge of a task: its main output (to one or more downstream tasks) and its
    side outputs by tag. Records go to the edges of their output; barriers and watermarks go
    to every edge (each downstream input aligns and tracks event time on its own)."""

    def __init__(self, main: list[Output], sides: dict[str, list[Output]] | None = None):
        self.main = main
        self.sides = sides or {}
        self.all = main + [o for outputs in self.sides.values() for o in outputs]
        # The common case (one downstream task) calls the edge's emit directly.
        self.emit = main[0].emit if len(main) == 1 else self._emit_all

    async def _emit_all(self, batch: Any) -> None:
        for output in self.main:
            await output.emit(batch)

    async def emit_side(self, tag: str, batch: Any) -> None:
        for output in self.sides.get(tag, ()):
            await output.emit(batch)

    @property
    def backpressured_s(self) -> float:
        """Seconds the sends of every edge waited for room downstream (backpressure)."""
        return sum(o.backpressured_s for o in self.all)

    def available(self) -> bool:
        return all(o.available() for o in self.all)

    async def wait_available(self) -> None:
        for output in self.all:
            await output.wait_available()

    async def broadcast_barrier(self, checkpoint_id: int, kind: int) -> None:
        for output in self.all:
            await output.broadcast_barrier(checkpoint_id, kind)

    async def broadcast_watermark(self, timestamp: float) -> None:
        for output in self.all:
            await output.broadcast_watermark(timestamp)

    def close(self) -> None:
        for output in self.all:
            output.close()
