"""Pipelines used by the integration tests (importable as tests.integration.jobs)."""

from __future__ import annotations

import threading
import time
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import FileSink, FileSource, GeneratorSource
from streamjob.examples.wordcount import word_of


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


def hanging_wordcount(args: dict[str, Any]) -> Pipeline:
    """Wordcount whose source-side map blocks forever (an Event never set) on record ``hang_at``
    the first time it is seen (a flag file remembers it): the worker must be killed by its
    watchdog and the job must recover with exact output instead of hanging."""
    from pathlib import Path

    records, words = int(args["records"]), int(args["words"])
    hang_at, flag = int(args["hang_at"]), Path(args["flag"])
    word = word_of(words)

    def maybe_hang(g: int) -> str:
        if g == hang_at and not flag.exists():
            flag.write_text("hung\n")
            threading.Event().wait()  # blocks forever, like a hung call
        return word(g)

    p = Pipeline()
    (p.source(GeneratorSource(records=records, rate=float(args.get("rate", 0))))
      .map(maybe_hang)
      .key_by(str)
      .count()
      .map(lambda kv: f"{kv[0]} {kv[1]}")
      .sink(FileSink(args["output"])))
    return p


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
