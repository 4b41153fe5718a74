"""Pipelines used by the integration tests (importable as tests.integration.jobs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import FileSink, FileSource, GeneratorSource
from streamjob.examples.wordcount import word_of
from streamjob.operators import KeyedProcessFunction
from streamjob.timers import TimeDomain


def slow_wordcount(args: dict[str, Any]) -> Pipeline:
    """Wordcount whose keyed task sleeps per batch: the sources outrun it (backpressure)."""
    records, words = int(args["records"]), int(args["words"])
    delay = float(args.get("delay", 0.002))
    word = word_of(words)

    def slow(kv: tuple[str, int]) -> str:
        if kv[1] % 50 == 0:
            time.sleep(delay)
        return f"{kv[0]} {kv[1]}"

    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=word, rate=float(args.get("rate", 0))))
      .key_by(str)
      .count()
      .map(slow)
      .sink(FileSink(args["output"])))
    return p


def cpu_bound_wordcount(args: dict[str, Any]) -> Pipeline:
    """Wordcount whose keyed task spins ``cost_us`` microseconds of CPU per record (a busy
    loop, not a sleep): it cannot keep up, so its sources are backpressured."""
    records, words = int(args["records"]), int(args["words"])
    cost = float(args.get("cost_us", 20)) / 1e6
    word = word_of(words)

    def spin(kv: tuple[str, int]) -> str:
        end = time.perf_counter() + cost
        while time.perf_counter() < end:
            pass
        return f"{kv[0]} {kv[1]}"

    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=word, rate=float(args.get("rate", 0))))
      .key_by(str)
      .count()
      .map(spin, "Spin")
      .sink(FileSink(args["output"])))
    return p


def lines_upper(args: dict[str, Any]) -> Pipeline:
    """File source -> rebalance -> map -> transactional file sink."""
    p = Pipeline()
    (p.source(FileSource(args["input"]))
      .rebalance()
      .map(str.upper)
      .filter(lambda s: not s.startswith("#"))
      .sink(FileSink(args["output"])))
    return p


def failing(args: dict[str, Any]) -> Pipeline:
    """A map that always fails: the job must give up after its restart attempts."""
    def boom(x: Any) -> Any:
        raise RuntimeError("user function failed")

    p = Pipeline()
    p.source(GeneratorSource(records=100)).map(boom).sink(FileSink(args["output"]))
    return p


def late_windowsum(args: dict[str, Any]) -> Pipeline:
    """``windowsum`` where every ``late_every``-th record's event time is ``late_ms`` in the
    past (beyond the watermark bound): such records may land in a window that already fired."""
    from operator import itemgetter

    records, words, eps = int(args["records"]), int(args["words"]), int(args["events_per_second"])
    late_every, late_ms = int(args["late_every"]), int(args["late_ms"])
    word = word_of(words)

    def event(g: int) -> tuple[int, str, int]:
        ts = g * 1000 // eps
        if g % late_every == 0:
            ts = max(0, ts - late_ms)
        return (ts, word(g), g % 100)

    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=event, rate=float(args.get("rate", 0))))
      .assign_timestamps(itemgetter(0), max_out_of_orderness=int(args["lateness_ms"]))
      .key_by(itemgetter(1))
      .window(1000)
      .sum(itemgetter(2))
      .map(lambda w: f"{w[0]} {w[1]} {w[2]}")
      .sink(FileSink(args["output"])))
    return p


def _wordcount_of(args: dict[str, Any], word: Callable[[int], str]) -> Pipeline:
    """The generated wordcount with ``word(g)`` making record g's word (what a test injects)."""
    p = Pipeline()
    (p.source(GeneratorSource(records=int(args["records"]), rate=float(args.get("rate", 0))))
      .map(word)
      .key_by(str)
      .count()
      .map(lambda kv: f"{kv[0]} {kv[1]}")
      .sink(FileSink(args["output"])))
    return p


def hanging_wordcount(args: dict[str, Any]) -> Pipeline:
    """Wordcount whose source-side map blocks forever (an Event never set) on record ``hang_at``
    the first time it is seen (a flag file remembers it): the worker must be killed by its
    watchdog and the job must recover with exact output instead of hanging."""
    from pathlib import Path

    words = int(args["words"])
    hang_at, flag = int(args["hang_at"]), Path(args["flag"])
    word = word_of(words)

    def maybe_hang(g: int) -> str:
        if g == hang_at and not flag.exists():
            flag.write_text("hung\n")
            threading.Event().wait()  # blocks forever, like a hung call
        return word(g)

    return _wordcount_of(args, maybe_hang)


def busy_wordcount(args: dict[str, Any]) -> Pipeline:
    """Wordcount whose source-side map computes for ``busy_s`` seconds on record ``busy_at``
    the first time it is seen (a flag file remembers it): one long batch that holds the event
    loop while checkpoints are triggered, as a heavy batch does on an overloaded machine. The
    worker works all along: its watchdog must leave it alone."""
    from pathlib import Path

    words = int(args["words"])
    busy_at, busy_s, flag = int(args["busy_at"]), float(args["busy_s"]), Path(args["flag"])
    word = word_of(words)

    def maybe_compute(g: int) -> str:
        if g == busy_at and not flag.exists():
            flag.write_text("busy\n")
            end = time.monotonic() + busy_s
            while time.monotonic() < end:  # computing all along, however loaded the machine
                sum(range(1000))
        return word(g)

    return _wordcount_of(args, maybe_compute)


TIMER_FAR = 10**9  # the "last record" timer sits this far after the record: fires at the end


def timer_event(eps: int, keys: int):
    """Record g: (event ms, key, value); keys a multiple of the generator's 128 splits keeps
    each key's records in order."""
    def event(g: int) -> tuple[int, str, int]:
        return (g * 1000 // eps, f"k{g % keys}", g % 100)

    return event


class BucketTimers(KeyedProcessFunction):
    """A keyed function built on timers only (see ``timer_buckets``)."""

    def __init__(self, processing_until: int, delay_ms: int):
        self.processing_until, self.delay_ms = processing_until, delay_ms

    def open(self, ctx):
        self.ctx = ctx
        self.sums = ctx.map_state("sums")
        self.last = ctx.value_state("last", None)
        self.pending = ctx.map_state("pending")  # processing timer ts -> bucket

    def process(self, key, record, out):
        ts, _, value = record
        end = ts // 1000 * 1000 + 999
        timers = self.ctx.timers
        if end not in self.sums and ts < self.processing_until:
            at = timers.current_processing_time() + self.delay_ms
            while at in self.pending:  # one bucket per processing timer
                at += 1
            self.pending.put(at, end)
            timers.register_processing_time(at)
        self.sums.put(end, self.sums.get(end, 0) + value)
        timers.register_event_time(end)
        last = self.last.value()
        if last is not None:
            timers.delete_event_time(last + TIMER_FAR)
        timers.register_event_time(ts + TIMER_FAR)
        self.last.update(ts)

    def on_timer(self, ts, key, out):
        if self.ctx.timers.time_domain == TimeDomain.PROCESSING_TIME:
            out.append(f"{key} p {self.pending.get(ts)}")
            self.pending.remove(ts)
        elif ts >= TIMER_FAR:
            out.append(f"{key} last {ts - TIMER_FAR}")
        else:
            out.append(f"{key} {ts} {self.sums.get(ts)}")
            self.sums.remove(ts)


def timer_buckets(args: dict[str, Any]) -> Pipeline:
    """Per key: the sum of each 1 s event-time bucket, emitted by an event-time timer at the
    bucket's end; the key's last event time, by a timer that each record moves (delete +
    register) and that fires at the end of input; and for each bucket that starts before
    ``processing_until`` ms, one line from a processing-time timer ``delay_ms`` after the
    bucket's first record."""
    from operator import itemgetter

    records, keys, eps = int(args["records"]), int(args["keys"]), int(args["events_per_second"])
    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=timer_event(eps, keys),
                              rate=float(args.get("rate", 0))))
      .assign_timestamps(itemgetter(0), max_out_of_orderness=int(args["lateness_ms"]))
      .key_by(itemgetter(1))
      .process(BucketTimers(int(args["processing_until"]), int(args["delay_ms"])), "Timers")
      .sink(FileSink(args["output"])))
    return p


def timer_buckets_expected(records: int, keys: int, eps: int, processing_until: int) -> set[str]:
    """What ``timer_buckets`` must commit, computed in plain Python."""
    event = timer_event(eps, keys)
    sums: dict[tuple[str, int], int] = {}
    last: dict[str, int] = {}
    firsts: dict[tuple[str, int], int] = {}
    for g in range(records):
        ts, key, value = event(g)
        end = ts // 1000 * 1000 + 999
        firsts.setdefault((key, end), ts)
        sums[(key, end)] = sums.get((key, end), 0) + value
        last[key] = ts
    lines = {f"{k} {end} {s}" for (k, end), s in sums.items()}
    lines |= {f"{k} last {ts}" for k, ts in last.items()}
    lines |= {f"{k} p {end}" for (k, end), ts in firsts.items() if ts < processing_until}
    return lines


def wordcount_failing_once(args: dict[str, Any]) -> Pipeline:
    """Wordcount whose counting map raises once, at record ``fail_at`` of subtask 0's first
    run (a marker file remembers it across the restart): one failure with a traceback."""
    import os

    records, words = int(args["records"]), int(args["words"])
    marker, fail_at = args["marker"], int(args.get("fail_at", 20_000))
    word = word_of(words)
    seen = [0]

    def format_count(kv: tuple[str, int]) -> str:
        seen[0] += 1
        if seen[0] == fail_at and not os.path.exists(marker):
            open(marker, "w").close()
            raise ValueError(f"bad record {kv!r} (this job fails once, on purpose)")
        return f"{kv[0]} {kv[1]}"

    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=word, rate=float(args.get("rate", 0))))
      .key_by(str)
      .count()
      .map(format_count)
      .sink(FileSink(args["output"])))
    return p
