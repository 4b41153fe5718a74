"""Pipelines used by the integration tests (importable as tests.integration.jobs)."""

from __future__ import annotations

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


LAST_N = 3


def last_n(args: dict[str, Any]) -> Pipeline:
    """Keyed state whose values are a list and a dict, mutated in place and then updated:
    per word, the last ``LAST_N`` record indices (list) and ``{"n": count, "sum": sum}``
    (dict). Each record emits ``word<TAB>n<TAB>sum<TAB>i1,i2,...``; ``check_last_n`` proves
    from those lines alone that every record was applied exactly once to the state."""
    from streamjob.operators import KeyedProcessFunction

    records, words = int(args["records"]), int(args["words"])
    word = word_of(words)

    class LastN(KeyedProcessFunction):
        def open(self, ctx):
            self.last = ctx.value_state("last")
            self.agg = ctx.value_state("agg")

        def process(self, key, value, out):
            g = value[1]
            last = self.last.value()
            if last is None:
                last = []
            last.append(g)                 # in place: the snapshot must not see this later
            if len(last) > LAST_N:
                del last[0]
            self.last.update(last)
            agg = self.agg.value()
            if agg is None:
                agg = {"n": 0, "sum": 0}
            agg["n"] += 1
            agg["sum"] += g
            self.agg.update(agg)
            out.append(f"{key}\t{agg['n']}\t{agg['sum']}\t{','.join(map(str, last))}")

    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=lambda g: (word(g), g),
                              rate=float(args.get("rate", 0))))
      .key_by(lambda r: r[0])
      .process(LastN())
      .sink(FileSink(args["output"])))
    return p


def check_last_n(folder: str, records: int, words: int) -> dict[str, Any]:
    """Exact check of ``last_n``'s output: per word, lines n = 1..count each once, each line
    consistent with the one before it (same list shifted by one new index, sum grown by that
    index), and the new indices of a word are exactly the records of that word."""
    from pathlib import Path

    from streamjob.examples.wordcount import expected_counts

    word = word_of(words)
    lines: dict[str, dict[int, tuple[int, list[int]]]] = {}
    problems: list[str] = []
    total = 0
    for f in sorted(Path(folder).glob("part-*")):
        for line in f.read_text().splitlines():
            total += 1
            w, n, s, last = line.split("\t")
            per = lines.setdefault(w, {})
            if int(n) in per:
                problems.append(f"duplicate {w} {n}")
            per[int(n)] = (int(s), [int(x) for x in last.split(",")])
    expected = expected_counts(records, words)
    seen: dict[str, list[int]] = {}
    for w, per in lines.items():
        prev_sum, prev_last = 0, []
        for n in range(1, max(per) + 1):
            if n not in per:
                problems.append(f"missing {w} {n}")
                break
            s, last = per[n]
            new = last[-1]
            if last != (prev_last + [new])[-LAST_N:] or s != prev_sum + new:
                problems.append(f"inconsistent {w} {n}: {prev_last} {prev_sum} -> {last} {s}")
                break
            seen.setdefault(w, []).append(new)
            prev_sum, prev_last = s, last
    for w, count in expected.items():
        got = sorted(seen.get(w, []))
        if len(lines.get(w, {})) != count:
            problems.append(f"{w}: {len(lines.get(w, {}))} lines, expected {count}")
        elif any(word(g) != w for g in got) or len(set(got)) != count:
            problems.append(f"{w}: wrong records {got[:5]}")
    return {"lines": total, "problems": problems[:20], "problem_count": len(problems)}


def hanging_wordcount(args: dict[str, Any]) -> Pipeline:
    """Wordcount whose source-side map blocks forever (``time.sleep``) on record ``hang_at``
    the first time it is seen (a flag file remembers it): the worker must be killed by its
    watchdog and the job must recover with exact output instead of hanging."""
    from pathlib import Path

    records, words = int(args["records"]), int(args["words"])
    hang_at, flag = int(args["hang_at"]), Path(args["flag"])
    word = word_of(words)

    def maybe_hang(g: int) -> str:
        if g == hang_at and not flag.exists():
            flag.write_text("hung\n")
            time.sleep(3600)
        return word(g)

    p = Pipeline()
    (p.source(GeneratorSource(records=records, rate=float(args.get("rate", 0))))
      .map(maybe_hang)
      .key_by(str)
      .count()
      .map(lambda kv: f"{kv[0]} {kv[1]}")
      .sink(FileSink(args["output"])))
    return p
