"""The one record generator every system in the benchmark reads, and the expected results.

Record ``g`` (``0 <= g < records``) has word index ``((g * 2654435761) & 0xFFFFFFFF) % words``,
word text ``f"w{index}"``, value ``g % 100`` (summed by the window job) and event time
``g * 1000 // events_per_second`` milliseconds, so its 1-second tumbling window starts at
``(g // events_per_second) * 1000`` ms.

This module has no dependencies: the driver imports it to compute expected results, and each
peer's job script imports it from its own virtual environment.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Iterable

MULT = 2654435761
MASK = 0xFFFFFFFF


def word_index(g: int, words: int) -> int:
    return ((g * MULT) & MASK) % words


def word(g: int, words: int) -> str:
    return f"w{((g * MULT) & MASK) % words}"


def value(g: int) -> int:
    return g % 100


def event_ms(g: int, events_per_second: int) -> int:
    return g * 1000 // events_per_second


def window_start_ms(g: int, events_per_second: int) -> int:
    return (g // events_per_second) * 1000


def expected_counts(records: int, words: int) -> dict[str, int]:
    """Final running count per word (job 1 and job 3)."""
    counts: Counter[int] = Counter(((g * MULT) & MASK) % words for g in range(records))
    return {f"w{i}": c for i, c in counts.items()}


def expected_window_sums(records: int, words: int,
                         events_per_second: int) -> dict[tuple[int, str], int]:
    """Sum of ``value`` per (window start ms, word) (job 2)."""
    sums: dict[tuple[int, str], int] = defaultdict(int)
    for g in range(records):
        sums[((g // events_per_second) * 1000, f"w{((g * MULT) & MASK) % words}")] += g % 100
    return dict(sums)


def partition(records: int, parts: int, index: int) -> Iterable[int]:
    """The record numbers read by source partition ``index`` of ``parts`` (interleaved).

    Interleaving keeps every partition at the same event time, so per-key watermarks
    (Bytewax keeps one per key) do not see one partition's records as late.
    """
    return range(index, records, parts)


def flink_arguments() -> argparse.ArgumentParser:
    """The command line both Flink job scripts take from the driver."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", choices=["count", "window"], required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--words", type=int, required=True)
    ap.add_argument("--eps", type=int, default=100_000, help="events per event-time second")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--checkpoint-ms", type=int, default=0, help="0 turns checkpoints off")
    ap.add_argument("--checkpoint-dir", default="")
    ap.add_argument("--lateness-ms", type=int, default=2000)
    return ap
