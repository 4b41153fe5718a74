"""A connected (two-input) subtask fed with barriers and records on the channels of both
inputs: what its snapshot holds in each checkpoint mode, where its records go, and its
watermark (the minimum over both inputs, idle ones left out)."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter

import pytest

from streamjob import Pipeline
from streamjob.channels import CHECKPOINT, Marker, OutputSet
from streamjob.connectors import GeneratorSource
from streamjob.connectors.discard import DiscardSink
from streamjob.operators import CoProcessFunction
from streamjob.storage import LocalStorage
from streamjob.task import SubtaskRunner


class Log(CoProcessFunction):
    """Per key, the values seen, in order, tagged with their input (shared state)."""

    def open(self, ctx):
        self.seen = ctx.value_state("seen", ())

    def process1(self, key, value, out):
        self.seen.update((*self.seen.value(), f"1:{value[1]}"))
        out.append(value[1])

    def process2(self, key, value, out):
        self.seen.update((*self.seen.value(), f"2:{value[1]}"))
        out.side("second", value[1])


def connected_runner(tmp_path, mode: str) -> SubtaskRunner:
    p = Pipeline()
    a = p.source(GeneratorSource(0)).key_by(itemgetter(0))
    b = p.source(GeneratorSource(0)).key_by(itemgetter(0))
    a.connect(b).process(Log()).sink(DiscardSink())
    p.validate()
    # p = 2: channels 0, 1 are the first input's, 2, 3 the second's.
    return SubtaskRunner(p.tasks[2], 0, 2, 128, "job", LocalStorage(tmp_path),
                         ThreadPoolExecutor(1), mode, 0.0, lambda *a, **k: None)


async def run_until_snapshot(runner: SubtaskRunner, feed) -> list:
    """Feed the gate, run the task loop until checkpoint 1 completes; then drain the rest."""
    finished, done = [], asyncio.Event()

    def finish(snap):
        finished.append((snap, {k: dict(t) for k, (_, t) in snap.keyed.frozen.items()}))
        done.set()

    runner._finish = finish
    runner._stage = lambda cid: None  # the sink's staging is not under test here
    written = []
    runner.push = _recording_push(runner, written)
    for channel, item in feed:
        if item == "|":
            runner.gate.put_barrier(channel, Marker(1, CHECKPOINT))
        else:
            await runner.gate.put_batch(channel, [item])
    loop = asyncio.ensure_future(runner._run_gate())
    await asyncio.wait_for(done.wait(), 10)
    while any(runner.gate.queues) or runner.gate.priority:
        await asyncio.sleep(0)
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    return finished, written


class Recorder:
    """Stands in for the output edge of side output ``second``."""

    backpressured_s = 0.0  # never waits

    def __init__(self, written):
        self.written = written

    async def emit(self, batch):
        self.written.extend(batch)

    async def broadcast_barrier(self, checkpoint_id, kind):
        self.written.append(f"|{checkpoint_id}")

    async def broadcast_watermark(self, timestamp):
        pass


def _recording_push(runner, written):
    runner.output = OutputSet([], {"second": [Recorder(written)]})
    return runner.push


# Input 1: r1 | r2 on channel 0, | on channel 1. Input 2: s1 s2 | on 2, s3 | on 3.
FEED = [(0, ("k", "r1")), (0, "|"), (0, ("k", "r2")), (2, ("k", "s1")), (2, ("k", "s2")),
        (2, "|"), (1, "|"), (3, ("k", "s3")), (3, "|")]
BEFORE = {"1:r1", "2:s1", "2:s2", "2:s3"}


def test_aligned_snapshot_holds_exactly_what_came_before_the_barrier_on_every_input(tmp_path):
    runner = connected_runner(tmp_path, "exactly-once")
    [(snap, state)], written = asyncio.run(run_until_snapshot(runner, FEED))
    assert set(state["seen"]["k"]) == BEFORE  # not r2: channel 0 was blocked until aligned
    # Side output records of the epoch leave before the barrier that closes it.
    assert sorted(written[:3]) == ["s1", "s2", "s3"] and written[3] == "|1"
    assert not snap.unaligned and "inflight" not in snap.operator_state
    # Afterwards r2 went on, after the records of the second input that preceded it.
    assert runner.backend.tables["seen"]["k"][-1] == "1:r2"


def test_unaligned_snapshot_plus_its_in_flight_records_is_what_came_before(tmp_path):
    runner = connected_runner(tmp_path, "unaligned")
    [(snap, state)], _ = asyncio.run(run_until_snapshot(runner, FEED))
    assert snap.unaligned
    # The first barrier overtook everything queued: those records are in-flight state,
    # keyed by their channel (a restore replays each into its own input).
    inflight = {c: [r for b in batches for r in b] for c, batches in
                snap.operator_state["inflight"]}
    assert inflight == {0: [("k", "r1")], 2: [("k", "s1"), ("k", "s2")], 3: [("k", "s3")]}
    in_state = set(state.get("seen", {}).get("k", ()))
    replayed = {f"{1 if c < 2 else 2}:{r[1]}" for c, rs in inflight.items() for r in rs}
    assert in_state | replayed == BEFORE and not in_state & replayed


def test_at_least_once_snapshot_holds_at_least_what_came_before(tmp_path):
    runner = connected_runner(tmp_path, "at-least-once")
    [(snap, state)], _ = asyncio.run(run_until_snapshot(runner, FEED))
    assert set(state["seen"]["k"]) >= BEFORE


def test_replayed_in_flight_records_enter_the_input_of_their_channel(tmp_path):
    runner = connected_runner(tmp_path, "exactly-once")
    runner.replay = [(3, [("k", "s9")]), (1, [("k", "r9")])]
    written = []
    runner.push = _recording_push(runner, written)

    async def main():
        task = asyncio.ensure_future(runner.run())
        while runner.replay or len(runner.backend.tables.get("seen", {}).get("k", ())) < 2:
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert runner.backend.tables["seen"]["k"] == ("2:s9", "1:r9")
    assert written == ["s9"]  # process2's side output


@pytest.mark.parametrize("marks, expected", [
    ([(0, 5), (1, 7), (2, 3), (3, 9)], 3),            # the minimum over both inputs
    ([(0, 5), (1, 7), (2, 3), (3, 9), (2, math.nan)], 5),  # an idle channel is left out
    ([(0, 5), (1, 7), (2, 30)], -math.inf),           # channel 3 has said nothing yet
])
def test_watermark_is_the_minimum_over_the_channels_of_both_inputs(tmp_path, marks, expected):
    runner = connected_runner(tmp_path, "exactly-once")

    async def main():
        for channel, ts in marks:
            await runner._on_watermark(channel, ts)

    asyncio.run(main())
    assert runner.tracker.current == expected


class Expire(CoProcessFunction):
    """Shared state and timers: a first-input record opens the key until event time + 10; a
    second-input record is matched while it is open, and sent to a side output otherwise."""

    def open(self, ctx):
        self.ctx = ctx
        self.until = ctx.value_state("until", None)

    def process1(self, key, value, out):
        self.until.update(value[1] + 10)
        self.ctx.timers.register_event_time(value[1] + 10)

    def process2(self, key, value, out):
        if self.until.value() is not None:
            out.append(("matched", key, value[1]))
        else:
            out.side("unmatched", value)

    def on_timer(self, ts, key, out):
        self.until.clear()
        out.append(("closed", key, ts))
        out.side("closed", key)


def test_co_process_function_timers_fire_on_the_watermark_and_may_emit_side_outputs():
    from streamjob.operators import CoProcessOperatorFactory, KeyedStateBackend

    backend = KeyedStateBackend()
    backend.key_groups, backend.max_parallelism = range(128), 128
    op = CoProcessOperatorFactory(Expire(), (itemgetter(0), itemgetter(0))).create(backend)
    assert op.process_batch([("a", 100), ("b", 105)]) == []
    assert op.process_batch2([("a", 1), ("c", 2)]) == [("matched", "a", 1)]
    assert op.on_watermark(109) == []
    assert op.on_watermark(110) == [("closed", "a", 110)]
    assert op.process_batch2([("a", 3), ("b", 4)]) == [("matched", "b", 4)]
    assert op.on_watermark(200) == [("closed", "b", 115)]
    assert op.side_outputs == {"unmatched": [("c", 2), ("a", 3)], "closed": ["a", "b"]}
