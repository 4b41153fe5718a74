"""Wordcount: a keyed running count of generated words, written exactly once.

Record g is the word ``w<i>`` with ``i = ((g * 2654435761) & 0xFFFFFFFF) % words``. For each
word seen n times the committed output holds exactly the lines ``w 1`` ... ``w n``, each once:
a duplicate means a replay leaked out, a gap means data was lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import FileSink, GeneratorSource

MULTIPLIER = 2654435761


def word_index(g: int, words: int) -> int:
    return ((g * MULTIPLIER) & 0xFFFFFFFF) % words


def word_of(words: int) -> Callable[[int], str]:
    """The generator function of the examples and benchmarks: record g -> its word.

    The word is formatted for every record, not looked up in a precomputed vocabulary:
    the same per-record work every system does in ``bench/peers`` (Flink SQL's
    ``CONCAT('w', CAST(...))``, Bytewax's f-string)."""

    def word(g: int) -> str:
        return f"w{((g * MULTIPLIER) & 0xFFFFFFFF) % words}"

    return word


def expected_counts(records: int, words: int) -> Counter[str]:
    return Counter(f"w{word_index(g, words)}" for g in range(records))


def _first(kv: tuple[str, int]) -> str:
    return kv[0]


def build(args: dict[str, Any]) -> Pipeline:
    records = int(args.get("records", 1_000_000))
    words = int(args.get("words", 1000))
    rate = float(args.get("rate", 0))
    output = str(args.get("output", "output"))
    if words < 1:
        raise ValueError("words must be at least 1")
    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=word_of(words), rate=rate), "Source: words")
      .key_by(str)
      .count()
      .map(lambda kv: f"{kv[0]} {kv[1]}", "Format")
      .sink(FileSink(output), "Sink: files"))
    return p


def check_output(folder: str, records: int, words: int) -> dict[str, Any]:
    """Compare committed ``part-*`` lines with what exactly-once must produce.

    Returns counts of ``duplicates`` (a line committed twice), ``missing`` (an expected line
    absent) and ``unexpected`` (a line that should not exist at all)."""
    from pathlib import Path

    seen: Counter[str] = Counter()
    for part in sorted(Path(folder).glob("part-*")):
        with open(part, encoding="utf-8") as f:
            seen.update(line.rstrip("\n") for line in f)
    expected = {f"{w} {i}" for w, n in expected_counts(records, words).items()
                for i in range(1, n + 1)}
    return {
        "lines": sum(seen.values()),
        "duplicates": sum(c - 1 for c in seen.values() if c > 1),
        "missing": len(expected - seen.keys()),
        "unexpected": len(seen.keys() - expected),
    }


if __name__ == "__main__":
    import json
    import sys

    folder, n_records, n_words = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    result = check_output(folder, n_records, n_words)
    print(json.dumps(result))
    sys.exit(0 if result["duplicates"] == result["missing"] == result["unexpected"] == 0 else 1)
