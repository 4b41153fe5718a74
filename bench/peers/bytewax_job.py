"""Bytewax 0.21 dataflow for the benchmark jobs, configured by environment variables.

Run by ``run.py`` inside the Bytewax virtual environment as
``python -m bytewax.run bytewax_job:flow`` (one process) or with ``-i/-a`` (several processes).

``BENCH_JOB``: ``count`` (keyed running count, one ``<word> <count>`` line per update) or
``window`` (1 s tumbling event-time windows, ``<window_start_ms> <word> <sum>`` per window);
``BENCH_RECORDS``, ``BENCH_WORDS``, ``BENCH_EPS`` (events per event-time second),
``BENCH_PARTS`` (source partitions and output files: the number of workers), ``BENCH_OUTPUT``
(folder), ``BENCH_LATENESS_MS`` (watermark delay).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.files import DirSink
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
from bytewax.outputs import StatefulSinkPartition

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

JOB = os.environ.get("BENCH_JOB", "count")
RECORDS = int(os.environ.get("BENCH_RECORDS", "100000"))
WORDS = int(os.environ.get("BENCH_WORDS", "10000"))
EPS = int(os.environ.get("BENCH_EPS", "100000"))
PARTS = int(os.environ.get("BENCH_PARTS", "1"))
OUTPUT = Path(os.environ.get("BENCH_OUTPUT", "out"))
LATENESS = timedelta(milliseconds=int(os.environ.get("BENCH_LATENESS_MS", "2000")))
BATCH = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # noqa: UP017 (peer Python may be <3.11)


class _Part(StatefulSourcePartition):
    """Records ``index, index + parts, ...`` (see ``gen.partition``); state: records emitted."""

    def __init__(self, index: int, resume: int | None):
        self._next = index + (resume or 0) * PARTS
        self._done = resume or 0

    def next_batch(self):
        if self._next >= RECORDS:
            raise StopIteration()
        stop = min(RECORDS, self._next + BATCH * PARTS)
        gs = range(self._next, stop, PARTS)
        self._next += len(gs) * PARTS
        self._done += len(gs)
        if JOB == "count":
            return [f"w{((g * 2654435761) & 0xFFFFFFFF) % WORDS}" for g in gs]
        return [(f"w{((g * 2654435761) & 0xFFFFFFFF) % WORDS}", g % 100,
                 EPOCH + timedelta(milliseconds=g * 1000 // EPS)) for g in gs]

    def snapshot(self):
        return self._done


class Records(FixedPartitionedSource):
    def list_parts(self):
        return [f"p{i}" for i in range(PARTS)]

    def build_part(self, step_id, for_part, resume_state):
        return _Part(int(for_part[1:]), resume_state)


class _FilePart(StatefulSinkPartition):
    """Like Bytewax's DirSink partition (truncate to the snapshot offset on resume) but
    without an fsync per batch, so the sink costs Bytewax as little as possible."""

    def __init__(self, path: Path, resume_state: int | None):
        self._f = open(path, "a")  # noqa: SIM115
        self._f.seek(resume_state or 0)
        self._f.truncate()

    def write_batch(self, values):
        self._f.write("".join(v + "\n" for v in values))
        self._f.flush()

    def snapshot(self):
        return self._f.tell()

    def close(self):
        self._f.close()


class Files(DirSink):
    def build_part(self, step_id, for_part, resume_state):
        return _FilePart(self._dir_path / for_part, resume_state)


def _count(state, _word):
    state = (state or 0) + 1
    return state, state


def build() -> Dataflow:
    flow = Dataflow("peers")
    records = op.input("records", flow, Records())
    if JOB == "count":
        keyed = op.key_on("key", records, lambda w: w)
        counts = op.stateful_map("count", keyed, _count)
        lines = op.map("fmt", counts, lambda kv: (kv[0], f"{kv[0]} {kv[1]}"))
    else:
        keyed = op.key_on("key", records, lambda r: r[0])
        # Replayed history: the watermark follows event time only (a constant "now"), as
        # Bytewax's docs advise; windows close on later items of the key or at the end.
        clock = EventClock(lambda r: r[2], wait_for_system_duration=LATENESS,
                           now_getter=lambda: EPOCH, to_system_utc=lambda _t: None)
        windower = TumblingWindower(length=timedelta(seconds=1), align_to=EPOCH)
        sums = fold_window("sum", keyed, clock, windower, lambda: 0,
                           lambda s, r: s + r[1], lambda a, b: a + b)
        lines = op.map("fmt", sums.down,
                       lambda kv: (kv[0], f"{kv[1][0] * 1000} {kv[0]} {kv[1][1]}"))
    op.output("out", lines, Files(OUTPUT, PARTS))
    return flow


flow = build()
