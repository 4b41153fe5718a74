"""Pipelines the benchmarks run (importable as bench.jobs from the repository root)."""

from __future__ import annotations

from typing import Any

from streamjob import Pipeline
from streamjob.connectors import DiscardSink, GeneratorSource
from streamjob.examples.wordcount import MULTIPLIER


def keyed_count(args: dict[str, Any]) -> Pipeline:
    """Generated words -> key_by -> running count -> discarded (the keyed count alone)."""
    records, words = int(args["records"]), int(args.get("words", 10_000))
    vocab = [f"w{i}" for i in range(words)]

    def word(g: int) -> str:
        return vocab[((g * MULTIPLIER) & 0xFFFFFFFF) % words]

    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=word))
      .key_by(str)
      .count()
      .sink(DiscardSink()))
    return p
