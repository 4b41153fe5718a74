"""Wordcount with a hot key and an optional per-record cost: the example behind the timelines
in ``docs/checkpoints.md`` (skew, backpressure, unaligned checkpoints).

Record g is the word ``hot`` when ``g % 100 < hot_percent``, else ``w<i>`` as in
:mod:`streamjob.examples.wordcount`. ``cost`` seconds are spent (sleeping) per 1,000
records in the keyed task, so the sources outrun it: backpressure.
"""

from __future__ import annotations

import time
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import FileSink, GeneratorSource
from streamjob.examples.wordcount import word_of


def build(args: dict[str, Any]) -> Pipeline:
    records = int(args.get("records", 1_000_000))
    words = int(args.get("words", 1000))
    hot = int(args.get("hot_percent", 50))
    cost = float(args.get("cost", 0))
    rate = float(args.get("rate", 0))
    plain = word_of(words)

    def word(g: int) -> str:
        return "hot" if g % 100 < hot else plain(g)

    seen = [0]

    def fmt(kv: tuple[str, int]) -> str:
        seen[0] += 1
        if cost and seen[0] % 1000 == 0:
            time.sleep(cost)
        return f"{kv[0]} {kv[1]}"

    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=word, rate=rate), "Source: words")
      .key_by(str)
      .count()
      .map(fmt, "Format")
      .sink(FileSink(str(args.get("output", "output"))), "Sink: files"))
    return p
