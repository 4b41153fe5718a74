"""Pipelines the benchmarks run (importable as bench.jobs from the repository root)."""

from __future__ import annotations

from typing import Any

from streamjob import Pipeline
from streamjob.connectors import DiscardSink, GeneratorSource
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
