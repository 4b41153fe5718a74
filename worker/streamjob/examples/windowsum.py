"""Windowsum: 1 s tumbling event-time windows summing a value per word, written exactly once.

Record g is ``(event_ms, word, value)`` with word ``w<i>``, ``i = ((g * 2654435761) &
0xFFFFFFFF) % words`` (as in wordcount), value ``g % 100`` and event time
``g * 1000 // events_per_second`` ms; watermarks trail the largest event time by
``lateness_ms``. Each (window, word) is committed as one line ``<window_start_ms> <word>
<sum>`` (the peer benchmark's ``window`` job, see docs/benchmarks.md).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from operator import itemgetter
from pathlib import Path
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import FileSink, GeneratorSource
from streamjob.examples.wordcount import word_of

WINDOW_MS = 1000


def expected_sums(records: int, words: int, events_per_second: int) -> dict[tuple[int, str], int]:
    sums: dict[tuple[int, str], int] = defaultdict(int)
    word = word_of(words)
    for g in range(records):
        start = (g * 1000 // events_per_second) // WINDOW_MS * WINDOW_MS
        sums[(start, word(g))] += g % 100
    return dict(sums)


def _format(w: tuple[int, str, int]) -> str:
    return f"{w[0]} {w[1]} {w[2]}"


def build(args: dict[str, Any]) -> Pipeline:
    records = int(args.get("records", 1_000_000))
    words = int(args.get("words", 1000))
    eps = int(args.get("events_per_second", 100_000))
    lateness_ms = int(args.get("lateness_ms", 2000))
    rate = float(args.get("rate", 0))
    output = str(args.get("output", "output"))
    if words < 1 or eps < 1:
        raise ValueError("words and events_per_second must be at least 1")
    word = word_of(words)

    def event(g: int) -> tuple[int, str, int]:
        return (g * 1000 // eps, word(g), g % 100)

    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=event, rate=rate), "Source: events")
      .assign_timestamps(itemgetter(0), max_out_of_orderness=lateness_ms)
      .key_by(itemgetter(1))
      .window(WINDOW_MS)
      .sum(itemgetter(2))
      .map(_format, "Format")
      .sink(FileSink(output), "Sink: files"))
    return p


def check_output(folder: str, records: int, words: int,
                 events_per_second: int) -> dict[str, Any]:
    """Compare committed lines with the expected sums: ``duplicates`` (a (window, word)
    committed more than once), ``missing``, ``unexpected`` and ``wrong`` (a different sum)."""
    seen: Counter[tuple[int, str]] = Counter()
    got: dict[tuple[int, str], int] = {}
    for part in sorted(Path(folder).glob("part-*")):
        with open(part, encoding="utf-8") as f:
            for line in f:
                start, word, total = line.split()
                key = (int(start), word)
                seen[key] += 1
                got[key] = int(total)
    want = expected_sums(records, words, events_per_second)
    return {
        "lines": sum(seen.values()),
        "duplicates": sum(c - 1 for c in seen.values() if c > 1),
        "missing": len(want.keys() - got.keys()),
        "unexpected": len(got.keys() - want.keys()),
        "wrong": sum(1 for k in want.keys() & got.keys() if want[k] != got[k]),
    }


if __name__ == "__main__":
    import json
    import sys

    folder, n, w, e = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    result = check_output(folder, n, w, e)
    print(json.dumps(result))
    sys.exit(0 if not any(result[k] for k in ("duplicates", "missing", "unexpected", "wrong"))
             else 1)
