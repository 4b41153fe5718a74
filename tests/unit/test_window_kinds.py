"""Sliding and session windows, allowed lateness, late side output and aggregate, on small
hand-checked inputs."""

from __future__ import annotations

from operator import itemgetter

import pytest

from streamjob import Pipeline
from streamjob.connectors import FileSink, GeneratorSource
from streamjob.pipeline import PipelineError
from streamjob.windows import (
    LATE,
    MAX_WATERMARK,
    EventTimeSessionWindows,
    SessionWindowOperator,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
    WindowOperator,
    WindowOperatorFactory,
)
from tests.unit import backends
from tests.unit.backends import (  # noqa: F401
    as_stored,
    each_backend,
    memory_only,
    new_backend,
)

KEY, TS, VALUE = itemgetter(1), itemgetter(0), itemgetter(2)


def _backend(track_changes=False):
    backend = new_backend(track_changes=track_changes)
    backend.max_parallelism = 128
    return backend


def _sum(backend, **kw):
    return WindowOperator(backend, KEY, TS, kw.pop("size", 1000), VALUE,
                          lambda a, b: a + b, **kw)


def _sessions(backend, gap=100, **kw):
    return SessionWindowOperator(backend, KEY, TS, gap, VALUE, lambda a, b: a + b,
                                 lambda a, b: a + b, **kw)


def test_sliding_assignment_puts_a_record_in_size_over_slide_windows():
    a = SlidingEventTimeWindows(size=1000, slide=250)
    assert a.starts(1100) == [1000, 750, 500, 250]
    assert a.starts(1000) == [1000, 750, 500, 250]
    assert a.starts(999) == [750, 500, 250, 0]
    assert a.starts(-1) == [-250, -500, -750, -1000]
    assert SlidingEventTimeWindows(1000, 1000).starts(1500) == [1000]
    assert TumblingEventTimeWindows(1000).starts(1500) == [1000]
    with pytest.raises(ValueError):
        SlidingEventTimeWindows(1000, 0)


def test_sliding_windows_sum_every_window_that_holds_the_record():
    op = _sum(_backend(), size=1000, slide=500)
    assert op.process_batch([(100, "a", 1), (600, "a", 2), (1200, "a", 4)]) == []
    # [-500, 500) ends at 500: only the record at 100.
    assert op.on_watermark(500) == [(-500, "a", 1)]
    assert op.on_watermark(1000) == [(0, "a", 3)]
    assert op.on_watermark(MAX_WATERMARK) == [(500, "a", 6), (1000, "a", 4)]
    assert op.table == {}


def test_sessions_merge_when_a_record_bridges_them_and_fire_gap_after_the_last_record():
    backend = _backend()
    op = _sessions(backend, gap=100)
    op.process_batch([(0, "a", 1), (50, "a", 2), (300, "a", 4), (10, "b", 8)])
    assert backend.tables["session"]["a"] == {0: (150, 3), 300: (400, 4)}
    op.process_batch([(199, "a", 16)])   # [199, 299) touches neither [0,150) nor [300,400)
    op.process_batch([(140, "a", 32)])   # [140, 240) overlaps [0,150) and [199,299)
    assert backend.tables["session"]["a"] == {0: (299, 51), 300: (400, 4)}
    op.process_batch([(299, "a", 64)])   # [299, 399) touches both: one session [0, 400)
    assert backend.tables["session"]["a"] == {0: (400, 119)}
    assert op.on_watermark(110) == [(10, 110, "b", 8)]
    assert op.on_watermark(399) == []
    assert op.on_watermark(400) == [(0, 400, "a", 119)]
    assert backend.tables["session"] == {}


def test_session_state_survives_a_snapshot_and_merges_after_restore():
    backend = _backend()
    op = _sessions(backend, gap=100)
    op.process_batch([(0, "a", 1), (300, "a", 2)])
    op.on_watermark(50)
    restored = _backend()
    for name, (kind, entries) in backend.freeze().items():
        restored.load(name, kind, entries)
    op2 = _sessions(restored, gap=100)
    op2.restore_watermark({kg: 50 for kg in range(128)})
    op2.process_batch([(150, "a", 4)])    # [150, 250): a session of its own
    op2.process_batch([(240, "a", 8)])    # [240,340) joins [150,250) and [300,400)
    assert op2.on_watermark(MAX_WATERMARK) == [(0, 100, "a", 1), (150, 400, "a", 14)]


def test_allowed_lateness_refires_with_the_update_and_later_records_go_to_the_side_output():
    backend = _backend()
    op = _sum(backend, size=1000, allowed_lateness=500)
    op.process_batch([(100, "a", 1), (900, "b", 2)])
    assert op.on_watermark(1000) == [(0, "a", 1), (0, "b", 2)]
    # Late but allowed: the window fires again at once with the new total.
    assert op.process_batch([(200, "a", 4), (1100, "a", 8)]) == [(0, "a", 5)]
    assert op.on_watermark(1499) == []
    assert backend.tables["window"]["a"] == {0: 5, 1000: 8}
    assert op.on_watermark(1500) == []           # [0, 1000) is now cleaned up
    assert backend.tables["window"] == {"a": {1000: 8}}
    assert op.process_batch([(300, "a", 16), (999, "c", 32)]) == []
    assert op.side_outputs[LATE] == [(300, "a", 16), (999, "c", 32)]
    assert op.late_records == 2
    assert op.on_watermark(MAX_WATERMARK) == [(1000, "a", 8)]


def test_late_sessions_merge_into_a_fired_session_and_fire_again():
    op = _sessions(_backend(), gap=100, allowed_lateness=1000)
    op.process_batch([(0, "a", 1), (150, "a", 2)])
    assert op.on_watermark(400) == [(0, 100, "a", 1), (150, 250, "a", 2)]
    # A late record bridging both fired sessions: one merged session, fired again.
    assert op.process_batch([(90, "a", 4)]) == [(0, 250, "a", 7)]
    assert op.on_watermark(1249) == []
    assert op.table == {"a": {0: (250, 7)}}
    assert op.on_watermark(1250) == []            # end 250 + lateness 1000: gone
    assert op.table == {}
    assert op.process_batch([(100, "a", 8)]) == [] and op.side_outputs[LATE] == [(100, "a", 8)]


def test_aggregate_builds_an_accumulator_merges_and_emits_its_result():
    def create():
        return [0, 0]                     # [count, total]

    def add(acc, record):
        acc[0] += 1
        acc[1] += record[2]
        return acc

    def merge(a, b):
        return [a[0] + b[0], a[1] + b[1]]

    def mean(acc):
        return acc[1] / acc[0]

    backend = _backend()
    op = WindowOperatorFactory(EventTimeSessionWindows(100), TS, lambda r: r, add, merge,
                               mean, first=lambda r: add(create(), r)).create(backend, KEY)
    op.process_batch([(0, "a", 1), (150, "a", 3), (60, "a", 8)])   # 60 bridges: one session
    frozen = backend.freeze()
    assert op.on_watermark(MAX_WATERMARK) == [(0, 250, "a", 4.0)]
    # the snapshot kept its copy
    assert frozen["session"][1]["a"] == as_stored({0: (250, [3, 12])})
    tumbling = WindowOperatorFactory(TumblingEventTimeWindows(1000), TS, lambda r: r, add,
                                     merge, mean, first=lambda r: add(create(), r))
    op = tumbling.create(_backend(), KEY)
    op.process_batch([(1, "a", 2), (2, "a", 4), (1001, "a", 6)])
    assert op.on_watermark(MAX_WATERMARK) == [(0, "a", 3.0), (1000, "a", 6.0)]


def test_window_state_changes_are_in_incremental_deltas():
    memory_only("incremental deltas are the memory backend's")
    backend = _backend(track_changes=True)
    op = _sessions(backend, gap=100)
    op.process_batch([(0, "a", 1), (0, "b", 1)])
    backend.freeze()
    op.process_batch([(50, "a", 2)])
    op.on_watermark(100)                    # b fires: deleted; a extends to 150
    kind, changed, deleted = backend.freeze_delta()["session"]
    assert changed == {"a": {0: (150, 3)}} and deleted == ["b"]


def _build(late: bool, tmp_path):
    p = Pipeline()
    windowed = (p.source(GeneratorSource(10, fn=lambda g: (g, "k", 1)))
                 .assign_timestamps(TS, 5)
                 .key_by(KEY)
                 .window(EventTimeSessionWindows(100))
                 .allowed_lateness(50)
                 .aggregate(lambda: 0, lambda a, r: a + 1, lambda a, b: a + b))
    windowed.map(str).sink(FileSink(str(tmp_path / "out")))
    if late:
        windowed.late_records().map(str).sink(FileSink(str(tmp_path / "late")))
    return p


def test_late_records_are_the_window_tasks_side_output_late(tmp_path):
    p = _build(True, tmp_path)
    p.validate()
    [late_task] = [t for t in p.tasks if any(e.tag for e in t.inputs)]
    [edge] = late_task.inputs
    assert (edge.tag, edge.exchange.kind, p.tasks[edge.source].steps[0].kind) == (
        LATE, "forward", "keyed")
    assert [s.kind for s in late_task.steps] == ["map", "sink"]
    assert len(p.sink_connector.sinks) == 2            # both recovered and committed
    assert not any(e.tag for t in _build(False, tmp_path).tasks for e in t.inputs)


def test_late_records_need_a_sink_of_their_own(tmp_path):
    p = Pipeline()
    w = (p.source(GeneratorSource(10, fn=lambda g: (g, "k", 1))).assign_timestamps(TS)
          .key_by(KEY).window(1000).sum(VALUE))
    w.sink(FileSink(str(tmp_path / "out")))
    late = w.late_records().map(str)
    with pytest.raises(PipelineError, match="goes nowhere"):
        p.validate()
    late.sink(FileSink(str(tmp_path / "out")))
    with pytest.raises(PipelineError, match="each sink needs its own output"):
        p.validate()


def test_session_windows_need_a_merge_function():
    p = Pipeline()
    w = p.source(GeneratorSource(10)).assign_timestamps(int).key_by(str).window(
        EventTimeSessionWindows(10))
    with pytest.raises(ValueError, match="merge"):
        w.aggregate(lambda: 0, lambda a, r: a + 1)


def test_a_record_inside_an_open_session_does_not_make_it_fire_twice():
    op = _sessions(_backend(), gap=100)
    op.process_batch([(0, "a", 1), (150, "a", 2)])
    op.process_batch([(100, "a", 4), (120, "a", 8)])   # [0, 250), then inside it twice
    assert op.on_watermark(MAX_WATERMARK) == [(0, 250, "a", 15)]


def test_a_late_record_inside_a_fired_session_refires_it_once_per_record():
    op = _sessions(_backend(), gap=100, allowed_lateness=500)
    op.process_batch([(0, "a", 1), (50, "a", 2)])
    assert op.on_watermark(200) == [(0, 150, "a", 3)]
    assert op.process_batch([(10, "a", 4)]) == [(0, 150, "a", 7)]
    assert op.process_batch([(20, "a", 8)]) == [(0, 150, "a", 15)]
    assert op.on_watermark(649) == [] and op.table != {}
    assert op.on_watermark(650) == [] and op.table == {}


def _restored(backend):
    """A backend restored from ``backend``'s snapshot: a full one, or (as incremental
    checkpoints do) the full one it was last restored from plus the changes since."""
    restored = _backend(track_changes=True)
    base, n = getattr(backend, "test_base", None), getattr(backend, "test_restores", 0)
    if base is None or n % 2 or backends.kind() != "memory":  # rocksdb: by SST files
        frozen = {name: (kind, dict(entries)) for name, (kind, entries)
                  in backend.freeze().items()}
    else:
        frozen = {name: (kind, dict(base.get(name, (kind, {}))[1]))
                  for name, kind in backend.kinds.items()}
        for name, (_kind, changed, deleted) in backend.freeze_delta().items():
            frozen[name][1].update(changed)
            for k in deleted:
                frozen[name][1].pop(k, None)
    for name, (kind, entries) in frozen.items():
        restored.load(name, kind, entries)
    restored.test_base, restored.test_restores = frozen, n + 1
    return restored


def _state(table):
    """A window table as plain dicts and tuples (rocksdb gives restored tuples as lists)."""
    return {k: {s: tuple(v) if isinstance(v, list) else v for s, v in windows.items()}
            for k, windows in table.items()}


class _SessionModel:
    """Session windows the slow, obvious way: a list of [start, end, total] per key, every
    record merged with every session it touches; a session fires when the watermark passes
    its end, or at once when a late record (within the lateness) changes a fired one."""

    def __init__(self, gap, lateness):
        self.gap, self.lateness, self.watermark = gap, lateness, float("-inf")
        self.sessions = {}

    def process(self, records):
        out, late = [], []
        for record in records:
            ts, key, value = record
            sessions = self.sessions.setdefault(key, [])
            start, end = ts, ts + self.gap
            touching = [s for s in sessions if s[0] <= end and ts <= s[1]]
            for s in touching:
                start, end = min(start, s[0]), max(end, s[1])
            if end + self.lateness <= self.watermark:
                late.append(record)
                continue
            total = value + sum(s[2] for s in touching)
            sessions[:] = [s for s in sessions if s not in touching] + [[start, end, total]]
            if end <= self.watermark:
                out.append((start, end, key, total))
        return out, late

    def advance(self, watermark):
        if watermark <= self.watermark:
            return []
        fired = sorted((e, s, k, t) for k, ss in self.sessions.items() for s, e, t in ss
                       if self.watermark < e <= watermark)
        self.watermark = watermark
        for k in list(self.sessions):
            self.sessions[k] = [s for s in self.sessions[k] if s[1] + self.lateness > watermark]
        return [(s, e, k, t) for e, s, k, t in fired]


@pytest.mark.parametrize("seed", range(40))
def test_session_windows_match_a_plain_model_on_random_out_of_order_input(seed):
    """Random keys, timestamps out of order, batches with runs of one key (the open-session
    fast path), watermarks, allowed lateness or none, snapshots restored mid-way: every
    firing, every late record and the final state equal the model's."""
    import random

    rnd = random.Random(seed)
    gap, lateness = rnd.choice([10, 50]), rnd.choice([0, 0, 30, 200])
    model = _SessionModel(gap, lateness)
    backend = _backend(track_changes=True)
    op = _sessions(backend, gap=gap, allowed_lateness=lateness)
    t, watermark, late = 0, float("-inf"), []
    for _ in range(60):
        batch = []
        for _ in range(rnd.randrange(0, 30)):
            t += rnd.randrange(0, 8)
            key = rnd.choice("abc") if rnd.random() < 0.7 else rnd.choice("defgh")
            batch.append((t - rnd.randrange(0, 3 * gap), key, rnd.randrange(1, 100)))
        expected, expected_late = model.process(batch)
        assert sorted(op.process_batch(batch)) == sorted(expected)
        late += expected_late
        assert sorted(op.side_outputs.get(LATE, [])) == sorted(late)  # per key in order
        if rnd.random() < 0.6:
            watermark = max(watermark, t - rnd.randrange(0, 2 * gap))
            fired, expected = op.on_watermark(watermark), model.advance(watermark)
            assert sorted(fired) == sorted(expected)
            assert [f[1] for f in fired] == sorted(f[1] for f in fired)  # by end
        if rnd.random() < 0.15:  # restore from a snapshot and go on
            backend, sides = _restored(backend), op.side_outputs
            op = _sessions(backend, gap=gap, allowed_lateness=lateness)
            op.side_outputs = sides
            op.restore_watermark({kg: watermark for kg in range(128)})
        state = {k: {s: (e, total) for s, e, total in ss}
                 for k, ss in model.sessions.items() if ss}
        assert _state(op.table) == state
    assert sorted(op.on_watermark(MAX_WATERMARK)) == sorted(model.advance(MAX_WATERMARK))
    assert len(op.table) == 0


@pytest.mark.parametrize("make", [_sum, _sessions])
def test_windows_restored_from_a_snapshot_fire_on_the_first_watermark_after_it(make):
    """A restored subtask may see a watermark before any record: the windows it restored
    are still to fire (not taken for fired ones because the watermark moved first)."""
    backend = _backend()
    op = make(backend)
    op.process_batch([(10, "a", 1)])
    op.on_watermark(5)
    restored = _backend()
    for name, (kind, entries) in backend.freeze().items():
        restored.load(name, kind, entries)
    op2 = make(restored)
    op2.restore_watermark({kg: 5 for kg in range(128)})
    fired = op2.on_watermark(MAX_WATERMARK)
    assert [f[-2:] for f in fired] == [("a", 1)]
    assert len(op2.table) == 0


@pytest.mark.parametrize("seed", range(30))
def test_tumbling_and_sliding_windows_match_a_plain_model_on_random_runs_of_keys(seed):
    """Runs of one key and window (folded in a local accumulator), keys switching, records
    out of order and late, watermarks, snapshots restored mid-way: every firing, every late
    record and the state equal a plain dict of sums."""
    import random

    rnd = random.Random(seed)
    size = rnd.choice([10, 100])
    slide = None if seed % 3 == 0 else rnd.choice([size // 2, size // 5, size])
    backend = _backend(track_changes=True)
    op = _sum(backend, size=size, slide=slide)
    sums, watermark, t, late, expected_late = {}, float("-inf"), 0, [], []
    for _ in range(60):
        batch = []
        for _ in range(rnd.randrange(0, 40)):
            t += rnd.randrange(0, 4)
            key = rnd.choice("ab") if rnd.random() < 0.8 else rnd.choice("cdefg")
            record = (t - rnd.randrange(0, 2 * size), key, rnd.randrange(1, 100))
            batch.append(record)
            ts, step = record[0], slide or size
            starts = [s for s in range(ts - ts % step, ts - size, -step)
                      if s + size > watermark]
            if not starts:
                expected_late.append(record)
            for start in starts:
                sums[(start, key)] = sums.get((start, key), 0) + record[2]
        assert op.process_batch(batch) == []
        late = op.side_outputs.get(LATE, [])
        assert sorted(late) == sorted(expected_late)
        if rnd.random() < 0.6:
            watermark = max(watermark, t - rnd.randrange(0, 2 * size))
            due = sorted(w for w in sums if w[0] + size <= watermark)
            assert sorted(op.on_watermark(watermark)) == [(s, k, sums.pop((s, k))) for s, k in due]
        if rnd.random() < 0.15:
            backend, sides = _restored(backend), op.side_outputs
            op = _sum(backend, size=size, slide=slide)
            op.side_outputs = sides
            op.restore_watermark({kg: watermark for kg in range(128)})
        state = {}
        for (s, k), v in sums.items():
            state.setdefault(k, {})[s] = v
        assert _state(op.table) == state
