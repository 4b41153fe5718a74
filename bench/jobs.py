"""Pipelines the benchmarks run (importable as bench.jobs from the repository root)."""

from __future__ import annotations

import time
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import DiscardSink, FileSink, GeneratorSource
from streamjob.examples.wordcount import word_of
from streamjob.keygroups import key_group
from streamjob.operators import KeyedProcessFunction


def keyed_count(args: dict[str, Any]) -> Pipeline:
    """Generated words -> key_by -> running count -> discarded (the keyed count alone)."""
    records, words = int(args["records"]), int(args.get("words", 10_000))
    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=word_of(words)))
      .key_by(str)
      .count()
      .sink(DiscardSink()))
    return p


class PreloadedState(KeyedProcessFunction):
    """Keeps a ``value_bytes`` value per key; on its first record a subtask fills the keys of
    its own key groups, so a benchmark starts with large state without streaming it in."""

    def __init__(self, keys: int, value_bytes: int):
        self.keys, self.value = keys, b"v" * value_bytes

    def open(self, ctx):
        self.ctx = ctx
        self.state = ctx.value_state("value")
        self.loaded = False

    def process(self, key, record, out):
        if not self.loaded:
            self.loaded = True
            table = self.ctx.backend.tables["value"]
            if not table:
                mine, m = self.ctx.key_groups, self.ctx.max_parallelism
                table.update((k, self.value) for k in range(self.keys)
                             if key_group(k, m) in mine)
                self.ctx.backend.mark_dirty(table.keys())
        self.state.update(self.value[:-8] + record.to_bytes(8, "little"))
        out.append(key)


def large_state(args: dict[str, Any]) -> Pipeline:
    """About keys * value_bytes of keyed state; each record rewrites one key's value."""
    keys, value_bytes = int(args.get("keys", 1_000_000)), int(args.get("value_bytes", 100))
    p = Pipeline()
    (p.source(GeneratorSource(records=int(args["records"]), rate=float(args.get("rate", 0)),
                              fn=lambda g: (g * 7919) % keys))
      .key_by(int)
      .process(PreloadedState(keys, value_bytes))
      .sink(DiscardSink()))
    return p


class StampedCount(KeyedProcessFunction):
    """The running count of each word, carrying the emission time of the record that
    made it: ``(word, n, emitted_at)``."""

    def open(self, ctx):
        self.n = ctx.value_state("n", 0)

    def process(self, key, record, out):
        n = self.n.value() + 1
        self.n.update(n)
        out.append((key, n, record[1]))


def _written_line(r: tuple[str, int, float]) -> str:
    # Called by the file sink on its thread as it writes the line into its (not yet
    # committed) file: the end of processing.
    return f"{r[0]} {r[1]} {r[2]:.6f} {time.time():.6f}"


def _first(r: tuple[str, float]) -> str:
    return r[0]


def stamped_count(args: dict[str, Any]) -> Pipeline:
    """The wordcount with timestamps, for ``bench/latency.py``: the source stamps each record
    with the wall-clock time it makes it (``(word, time.time())``, at the moment the source
    reads it into the job), the keyed count keeps it, and the transactional file sink writes
    ``<word> <n> <emitted_at> <written_at>``, ``written_at`` taken as the sink writes the
    line. Committed output: the lines ``w 1`` ... ``w n`` of each word, once each."""
    records, words = int(args["records"]), int(args.get("words", 1000))
    word = word_of(words)

    def stamped(g: int) -> tuple[str, float]:
        return (word(g), time.time())

    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=stamped, rate=float(args["rate"])),
              "Source: stamped words")
      .key_by(_first)
      .process(StampedCount(), "Stamped count")
      .sink(FileSink(str(args["output"]), fmt=_written_line), "Sink: files"))
    return p
