"""A keyed count under a rate schedule, with a CPU cost per record: the autoscaler's demo.

Record g is the word of :mod:`streamjob.examples.wordcount` (``w<i>``); the source follows
``schedule`` (rate steps, e.g. ``"0s:2000,40s:9000,100s:2000"``) from ``start_at`` (Unix time
of the job's first start, so that the schedule survives restarts and rescales; default: each
attempt starts it again), and the keyed task spins ``cost_us`` microseconds of CPU per record
(a busy loop, like real parsing or scoring would), so that one subtask handles about
``1e6 / cost_us`` records/s and cannot keep up with a peak above that.

The committed output holds, for each word seen n times, exactly the lines ``w 1`` ... ``w n``
(whatever the rescales): ``python -m streamjob.examples.scheduled check DIR RECORDS WORDS``.
"""

from __future__ import annotations

import time
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import FileSink, GeneratorSource
from streamjob.examples.wordcount import check_output, word_of


def spinning(cost_us: float):
    cost = cost_us / 1e6

    def fmt(kv: tuple[str, int]) -> str:
        end = time.perf_counter() + cost
        while time.perf_counter() < end:
            pass
        return f"{kv[0]} {kv[1]}"

    return fmt


def build(args: dict[str, Any]) -> Pipeline:
    records = int(args.get("records", 1_000_000))
    words = int(args.get("words", 1000))
    start_at = args.get("start_at")
    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=word_of(words),
                              rate=float(args.get("rate", 0)),
                              schedule=args.get("schedule") or None,
                              start_at=None if start_at in (None, "") else float(start_at)),
              "Source: words")
      .key_by(str)
      .count()
      .map(spinning(float(args.get("cost_us", 100))), "Format (CPU cost)")
      .sink(FileSink(str(args.get("output", "output"))), "Sink: files"))
    return p


def check(folder: str, records: int, words: int) -> dict[str, Any]:
    """Exactly-once check of the committed output (see the module doc)."""
    return check_output(folder, records, words)


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) != 5 or sys.argv[1] != "check":
        sys.exit("usage: python -m streamjob.examples.scheduled check DIR RECORDS WORDS")
    result = check(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    print(json.dumps(result))
    sys.exit(0 if result["duplicates"] == result["missing"] == result["unexpected"] == 0 else 1)
