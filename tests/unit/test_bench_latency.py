"""bench/latency.py's own checks: the exactly-once check of the committed lines and the
line the sink writes (no timings are asserted)."""

from __future__ import annotations

import time
from collections import Counter

from bench.jobs import _written_line
from bench.latency import check, quantile, whole_files
from streamjob.examples.wordcount import expected_counts


def exact_lines(records: int, words: int) -> Counter[tuple[str, int]]:
    return Counter((w, i) for w, n in expected_counts(records, words).items()
                   for i in range(1, n + 1))


def test_check_accepts_exactly_once_output():
    assert check(exact_lines(500, 7), 500, 7) == ""


def test_check_reports_duplicates_gaps_and_strangers():
    lines = exact_lines(500, 7)
    some = next(iter(lines))
    lines[some] += 1
    assert check(lines, 500, 7) == "1 duplicate, 0 missing, 0 unexpected lines"
    lines = exact_lines(500, 7)
    del lines[some]
    lines[("w999", 1)] = 1
    assert check(lines, 500, 7) == "0 duplicate, 1 missing, 1 unexpected lines"
    # The output of fewer records than the run had is not exact either.
    assert check(exact_lines(499, 7), 500, 7) == "0 duplicate, 1 missing, 0 unexpected lines"


def test_the_sink_line_carries_both_stamps():
    before = time.time()
    word, n, emitted, written = _written_line(("w3", 12, 1700000000.25)).split()
    assert (word, int(n), float(emitted)) == ("w3", 12, 1700000000.25)
    assert float(written) >= before - 1e-6


def test_quantile_picks_a_sample():
    values = [float(v) for v in range(101)]
    assert quantile(values, 0.5) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile([3.0], 0.99) == 3.0


def test_only_whole_part_files_are_counted():
    """A file cut by the window's edge would count part of an interval (skewing the waits)."""
    def rows(*emitted: float) -> list[tuple[float, float, float]]:
        return [(e, e + 0.001, e + 1.0) for e in emitted]

    files = {"part-0": rows(0.5, 1.0, 1.9),       # starts before the window
             "part-1": rows(2.0, 2.5, 3.9),       # inside, edges included
             "part-2": rows(4.0, 5.0, 5.9),       # inside
             "part-3": rows(6.0, 7.0, 7.9),       # ends after the window
             "part-4": []}
    assert whole_files(files, 2.0, 6.5) == rows(2.0, 2.5, 3.9) + rows(4.0, 5.0, 5.9)
    assert whole_files(files, 8.0, 9.0) == []
