"""Where the CPU of a record goes at p = 1 and at p = 2: the keyed count's data path, step
by step, in one process.

    python bench/exchange.py [--records N] [--words W] [--repeat K]

The wordcount job (generated words -> key_by -> running count -> "<word> <count>" -> file
lines) runs through the runtime's own functions without processes, sockets or event loop:

* p = 1: the source's batch goes straight to the count (the channel is in-process, a list is
  handed over);
* p = 2, per record of the job: the source routes its batch by key (``KeyRouter.partition``);
  half the records stay in the worker, the other half are framed and packed
  (``wire.frame``/``wire.pack``), then checked and decoded by the receiving worker
  (``wire.decode_data``) before its count. Both workers' shares are done here, so the figure
  is CPU per record of the whole job.

Every step is timed with ``time.process_time`` per batch. The two parallelisms run side by
side, one source batch of p = 1, then one of p = 2, and so on (each with its own source,
router and state), so a change in the load of a shared machine hits both alike; the best of
K repeats is kept per step. What is left out (event loop, syscalls, the sink's thread) is
what separates these figures from ``bench/throughput.py``'s. The last line is the scaling
that the per-record CPU allows on two otherwise idle cores: 2 x (CPU per record at p = 1) /
(CPU per record at p = 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker"), str(ROOT)]

from streamjob import wire  # noqa: E402
from streamjob.connectors import GeneratorSource  # noqa: E402
from streamjob.connectors.filesink import lines  # noqa: E402
from streamjob.examples.wordcount import expected_counts, word_of  # noqa: E402
from streamjob.keygroups import KeyRouter  # noqa: E402
from streamjob.operators import CountOperator, KeyedStateBackend  # noqa: E402
from streamjob.task import BATCH  # noqa: E402

STEPS = ["generate", "partition", "pack", "unpack", "count", "format+lines"]


class Lane:
    """The job at parallelism ``p``, one source batch at a time; CPU seconds per step."""

    def __init__(self, p: int, records: int, words: int):
        source = GeneratorSource(records=records, fn=word_of(words))
        self.reader = source.create_reader({s: 0 for s in source.split_ids()})
        self.p, self.router = p, KeyRouter(p, 128)
        self.counts = [CountOperator(KeyedStateBackend(), str) for _ in range(p)]
        self.spent: dict[str, float] = defaultdict(float)

    def _count(self, j: int, batch: Any) -> None:
        clock, spent = time.process_time, self.spent
        t0 = clock()
        out = self.counts[j].process_batch(batch)
        t1 = clock()
        lines([f"{kv[0]} {kv[1]}" for kv in out], str)  # the job's map, then the file sink's
        spent["count"] += t1 - t0
        spent["format+lines"] += clock() - t1

    def step(self) -> bool:
        """One source batch through the job; False at the end of input."""
        clock, spent = time.process_time, self.spent
        t0 = clock()
        batch = self.reader.poll(BATCH)
        spent["generate"] += clock() - t0
        if batch is None:
            return False
        if self.p == 1:
            self._count(0, batch)
            return True
        t0 = clock()
        buckets = self.router.partition(batch, str)
        spent["partition"] += clock() - t0
        for j, bucket in enumerate(buckets):
            if j == 0:  # stays in the worker
                self._count(j, bucket)
                continue
            t0 = clock()
            payload = wire.frame(wire.DATA, wire.pack(bucket))
            t1 = clock()
            _, received = wire.decode_data(wire.DATA, payload[wire.HEADER.size:])
            t2 = clock()
            spent["pack"] += t1 - t0
            spent["unpack"] += t2 - t1
            self._count(j, received)
        return True

    def final_counts(self) -> dict[str, int]:
        final: dict[str, int] = {}
        for c in self.counts:
            final.update(c.table)
        return final


def run(records: int, words: int) -> dict[int, Lane]:
    """The job at p = 1 and at p = 2, alternating batch by batch."""
    lanes = {p: Lane(p, records, words) for p in (1, 2)}
    live = list(lanes.values())
    while live:
        live = [lane for lane in live if lane.step()]
    return lanes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--words", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    best: dict[int, dict[str, float]] = {1: {}, 2: {}}
    expected = dict(expected_counts(args.records, args.words))
    load0 = os.getloadavg()[0]
    for _ in range(args.repeat):
        for p, lane in run(args.records, args.words).items():
            if lane.final_counts() != expected:
                raise SystemExit(f"wrong counts at p={p}")
            for step, s in lane.spent.items():
                best[p][step] = min(best[p].get(step, s), s)
    ns = {p: {s: best[p].get(s, 0.0) / args.records * 1e9 for s in STEPS} for p in (1, 2)}
    total = {p: sum(ns[p].values()) for p in (1, 2)}
    print(f"keyed count data path in one process, {args.records:,} records, {args.words:,} "
          f"keys, best of {args.repeat}; {os.cpu_count()} cores, load average {load0:.1f} at "
          f"start, {os.getloadavg()[0]:.1f} at end: CPU ns per record of the job")
    print(f"{'step':<16}{'p=1':>8}{'p=2':>8}{'p=2 - p=1':>12}")
    for step in STEPS:
        one, two = ns[1][step], ns[2][step]
        print(f"{step:<16}{one:>8.0f}{two:>8.0f}{two - one:>+12.0f}")
    print(f"{'total':<16}{total[1]:>8.0f}{total[2]:>8.0f}{total[2] - total[1]:>+12.0f}")
    print(f"CPU per record p=2 / p=1: {total[2] / total[1]:.2f}; scaling the data path allows "
          f"on 2 idle cores: {2 * total[1] / total[2]:.2f}x (target 1.6x)")


if __name__ == "__main__":
    main()
