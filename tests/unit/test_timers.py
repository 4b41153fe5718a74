"""Timers of keyed functions: ordering, firing, delete, snapshots and rescale by key group."""

from __future__ import annotations

import asyncio
from operator import itemgetter

from streamjob import state
from streamjob.keygroups import key_group, key_group_range
from streamjob.operators import KeyedProcessFunction, ProcessOperator
from streamjob.storage import LocalStorage
from streamjob.timers import EVENT_TABLE, PROCESSING_TABLE, TimeDomain
from tests.unit.backends import each_backend, memory_only, new_backend  # noqa: F401


class Clock:
    def __init__(self, now: int = 0):
        self.now = now

    def __call__(self) -> int:
        return self.now


class Reminders(KeyedProcessFunction):
    """Record (key, ts, delay, cancel): register an event-time timer at ts + delay (and
    delete the one at ``cancel`` if given); a processing-time timer 1000 ms from now for a
    key's first record. Timers emit (domain, ts, key, records of the key so far)."""

    def open(self, ctx):
        self.ctx = ctx
        self.n = ctx.value_state("n", 0)

    def process(self, key, record, out):
        _, ts, delay, cancel = record
        self.n.update(self.n.value() + 1)
        timers = self.ctx.timers
        timers.register_event_time(ts + delay)
        if cancel is not None:
            timers.delete_event_time(cancel)
        if self.n.value() == 1:
            timers.register_processing_time(timers.current_processing_time() + 1000)

    def on_timer(self, ts, key, out):
        assert self.ctx.key == key
        out.append((self.ctx.timers.time_domain, ts, key, self.n.value()))


def _op(backend=None, clock=None):
    backend = backend or new_backend()
    backend.max_parallelism = 128
    return ProcessOperator(backend, itemgetter(0), Reminders(), clock=clock or Clock()), backend


E, P = TimeDomain.EVENT_TIME, TimeDomain.PROCESSING_TIME


def test_event_timers_fire_in_timestamp_order_once_the_watermark_passes_them():
    op, _ = _op()
    op.process_batch([("a", 100, 500, None), ("b", 50, 100, None), ("a", 300, 0, None),
                      ("c", 10, 590, None)])
    assert op.on_watermark(149) == []
    assert op.on_watermark(150) == [(E, 150, "b", 1)]
    # a at 300 and 600, c at 600: timestamp order, each (key, ts) once.
    fired = op.on_watermark(10_000)
    assert [f[1] for f in fired] == [300, 600, 600]
    assert sorted(fired) == [(E, 300, "a", 2), (E, 600, "a", 2), (E, 600, "c", 1)]
    assert op.on_watermark(20_000) == []
    assert op.ctx.timers.current_watermark() == 20_000


def test_registering_the_same_timer_twice_fires_it_once_and_delete_cancels_it():
    op, backend = _op()
    op.process_batch([("a", 100, 0, None), ("a", 100, 0, None), ("b", 100, 0, None),
                      ("b", 200, 0, 100)])          # b deletes its timer at 100
    assert op.on_watermark(1000) == [(E, 100, "a", 2), (E, 200, "b", 2)]
    assert EVENT_TABLE not in backend.tables or backend.tables[EVENT_TABLE] == {}


def test_a_timer_registered_in_on_timer_at_or_before_the_watermark_fires_in_the_same_advance():
    class Chain(KeyedProcessFunction):
        def open(self, ctx):
            self.ctx = ctx

        def process(self, key, record, out):
            self.ctx.timers.register_event_time(record[1])

        def on_timer(self, ts, key, out):
            out.append(ts)
            if ts < 130:
                self.ctx.timers.register_event_time(ts + 10)

    backend = new_backend()
    op = ProcessOperator(backend, itemgetter(0), Chain())
    op.process_batch([("a", 100)])
    assert op.on_watermark(125) == [100, 110, 120]
    assert op.on_watermark(1000) == [130]


def test_processing_time_timers_fire_when_the_clock_reaches_them_and_say_their_domain():
    clock = Clock(5000)
    op, _ = _op(clock=clock)
    op.process_batch([("a", 0, 10**9, None), ("a", 1, 10**9, None)])
    clock.now = 5500
    op.process_batch([("b", 0, 10**9, None)])
    assert op.next_processing_time() == 6000
    clock.now = 5999
    assert op.on_processing_time() == []
    clock.now = 6400
    assert op.on_processing_time() == [(P, 6000, "a", 2)]
    assert op.next_processing_time() == 6500
    clock.now = 7000
    assert op.on_processing_time() == [(P, 6500, "b", 1)]
    assert op.next_processing_time() is None


def test_timers_are_keyed_state_restored_and_split_by_key_group_on_rescale(tmp_path):
    keys = [f"k{i}" for i in range(40)]
    clock = Clock(0)
    op, backend = _op(clock=clock)
    op.process_batch([(k, 100 * i, 1000, None) for i, k in enumerate(keys)])
    assert op.on_watermark(1000 + 100 * 9) != []     # keys 0..9 fired: gone from state
    frozen = backend.freeze()
    storage = LocalStorage(str(tmp_path))
    handle = state.write_snapshot(storage, "snap", frozen, None,
                                  lambda k: key_group(k, 128))
    # Rescale to p=2: each new subtask loads only its key groups and fires only its timers.
    fired, pending = [], []
    for sub in range(2):
        clock2 = Clock(0)
        op2, backend2 = _op(clock=clock2)
        for name, kind, entries, deleted in state.read_keyed_state(
                storage, handle, key_group_range(sub, 2, 128)):
            backend2.load(name, kind, entries, deleted)
        op2.restore_watermark({kg: 1900 for kg in range(128)})
        pending.append(op2.next_processing_time())
        clock2.now = 1000
        fired += [f[2] for f in op2.on_processing_time()]
        got = op2.on_watermark(10**9)
        assert all(key_group(f[2], 128) in key_group_range(sub, 2, 128) for f in got)
        fired += [f[2] for f in got]
    assert pending == [1000, 1000]  # restored processing-time timers are due at once
    assert sorted(fired) == sorted(keys + keys[10:])   # each processing timer, then event


def test_incremental_snapshots_carry_timer_registrations_and_deletions():
    memory_only("incremental deltas are the memory backend's")
    backend = new_backend(track_changes=True)
    backend.max_parallelism = 128
    op = ProcessOperator(backend, itemgetter(0), Reminders(), clock=Clock())
    op.process_batch([("a", 100, 0, None), ("b", 100, 0, None)])
    base = backend.freeze()
    op.process_batch([("a", 200, 0, 100)])            # a: +200, -100
    op.on_watermark(100)                               # b's timer fired: deleted
    delta = backend.freeze_delta()
    kind, changed, deleted = delta[EVENT_TABLE]
    assert changed == {"a": (200,)} and deleted == ["b"]
    restored = new_backend()
    for name, (k, entries) in base.items():
        restored.load(name, k, entries)
    for name, (k, entries, gone) in delta.items():
        restored.load(name, k, entries, gone)
    assert restored.tables[EVENT_TABLE] == {"a": (200,)}
    assert set(restored.tables[PROCESSING_TABLE]) == {"a", "b"}


def test_a_function_without_timers_costs_no_state_and_no_timer_service():
    class Plain(KeyedProcessFunction):
        def process(self, key, record, out):
            out.append(record)

    backend = new_backend()
    op = ProcessOperator(backend, itemgetter(0), Plain())
    assert op.process_batch([("a", 1)]) == [("a", 1)]
    assert op.on_watermark(100) == [] and op.next_processing_time() is None
    assert op.ctx._timers is None and backend.tables == {}


def test_processing_timers_fire_from_the_task_loop_without_input():
    """A gate task with no input at all still fires a due processing-time timer."""
    from streamjob.jobgraph import Exchange, InputEdge, Step, TaskSpec
    from streamjob.operators import ProcessOperatorFactory

    class Once(KeyedProcessFunction):
        def open(self, ctx):
            self.ctx = ctx

        def on_timer(self, ts, key, out):
            out.append((key, ts))

    spec = TaskSpec(1, [InputEdge(0, Exchange("keyed", itemgetter(0)))],
                    [Step("keyed", "once", ProcessOperatorFactory(Once()))])

    async def go():
        from streamjob.task import SubtaskRunner

        runner = SubtaskRunner(spec, 0, 1, 128, "job", LocalStorage("/nonexistent"), None,
                               "exactly-once", 10.0, lambda *a, **k: None)
        [(_, op)] = runner.clocked
        op.ctx.key = "k"
        op.ctx.timers.register_processing_time(op.ctx.timers.current_processing_time() + 50)
        emitted = []

        async def push(batch, start=0):
            emitted.extend(batch)

        runner.push = push
        task = asyncio.ensure_future(runner.run())
        for _ in range(200):  # up to 10 s: wait for the condition, not for a fixed time
            if emitted:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        return emitted

    assert [k for k, _ in asyncio.run(go())] == ["k"]
