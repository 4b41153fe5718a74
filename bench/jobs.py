"""Pipelines the benchmarks run (importable as bench.jobs from the repository root)."""

from __future__ import annotations

import itertools
import os
import random
import time
from pathlib import Path
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import DiscardSink, FileSink, GeneratorSource
from streamjob.connectors.generator import GeneratorReader
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


def large_value(key: int, version: int, value_bytes: int) -> bytes:
    """``value_bytes`` (at least 12) that differ from key to key and version to version (they
    do not compress: RocksDB compresses its blocks), ending with the key and the version."""
    n = value_bytes - 12
    at = (key * 2654435761 + version * 40503) % (len(_POOL) - n)
    return _POOL[at:at + n] + key.to_bytes(8, "little") + version.to_bytes(4, "little")


class PreloadedState(KeyedProcessFunction):
    """Keeps a ``value_bytes`` value per key (:func:`large_value`: version 0 as loaded, 1 once
    a record rewrote it); on its first record a subtask fills the keys of its own key groups,
    so a benchmark starts with large state without streaming it in.
    ``loaded_mark``: ``<loaded_mark>.<first key group>`` gets ``time.time()`` once the
    subtask's state is loaded (a benchmark measures from there: loading differs between the
    state backends)."""

    def __init__(self, keys: int, value_bytes: int, loaded_mark: str | None = None):
        if value_bytes < 12:
            raise ValueError(f"value_bytes must be at least 12, got {value_bytes}")
        self.keys, self.value_bytes, self.loaded_mark = keys, value_bytes, loaded_mark

    def open(self, ctx):
        self.ctx = ctx
        self.state = ctx.value_state("value")
        self.loaded = False

    def process(self, key, record, out):
        if not self.loaded:
            self.loaded = True
            self._load()
        self.state.update(large_value(record, 1, self.value_bytes))
        out.append(key)

    def _load(self) -> None:
        backend = self.ctx.backend
        table = backend.tables["value"]
        if not table:  # not restored
            mine, m = self.ctx.key_groups, self.ctx.max_parallelism
            n = self.value_bytes
            entries = ((k, large_value(k, 0, n)) for k in range(self.keys)
                       if len(mine) == m or key_group(k, m) in mine)
            if hasattr(backend, "checkpoint"):  # rocksdb: straight into the database
                while chunk := dict(itertools.islice(entries, 65536)):
                    backend.load("value", "value", chunk)
            else:
                table.update(entries)
                backend.mark_dirty(table.keys())
        if self.loaded_mark:
            Path(f"{self.loaded_mark}.{self.ctx.key_groups.start}").write_text(
                repr(time.time()))


def large_state(args: dict[str, Any]) -> Pipeline:
    """About keys * value_bytes of keyed state; each record rewrites one key's value."""
    keys, value_bytes = int(args.get("keys", 1_000_000)), int(args.get("value_bytes", 100))
    p = Pipeline()
    (p.source(GeneratorSource(records=int(args["records"]), rate=float(args.get("rate", 0)),
                              fn=lambda g: (g * 7919) % keys))
      .key_by(int)
      .process(PreloadedState(keys, value_bytes, args.get("loaded_mark")))
      .sink(DiscardSink()))
    return p


class StampedCount(KeyedProcessFunction):
    """The running count of each word, carrying the emission time of the record that
    made it: ``(word, n, emitted_at)``."""

    def open(self, ctx):
        self.n = ctx.value_state("n", 0)

    def process(self, key, record, out):
        n = self.n.value() + 1
        self.n.update(n)
        out.append((key, n, record[1]))


def _written_line(r: tuple[str, int, float]) -> str:
    # Called by the file sink on its thread as it writes the line into its (not yet
    # committed) file: the end of processing.
    return f"{r[0]} {r[1]} {r[2]:.6f} {time.time():.6f}"


def stamped_count(args: dict[str, Any]) -> Pipeline:
    """The wordcount with timestamps, for ``bench/latency.py``: the source stamps each record
    with the wall-clock time it makes it (``(word, time.time())``, at the moment the source
    reads it into the job), the keyed count keeps it, and the transactional file sink writes
    ``<word> <n> <emitted_at> <written_at>``, ``written_at`` taken as the sink writes the
    line. Committed output: the lines ``w 1`` ... ``w n`` of each word, once each."""
    records, words = int(args["records"]), int(args.get("words", 1000))
    word = word_of(words)

    def stamped(g: int) -> tuple[str, float]:
        return (word(g), time.time())

    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=stamped, rate=float(args["rate"])),
              "Source: stamped words")
      .key_by(_first)
      .process(StampedCount(), "Stamped count")
      .sink(FileSink(str(args["output"]), fmt=_written_line), "Sink: files"))
    return p


# --- bench/state.py: keyed state of many keys, checked record by record ----------------------

UPDATE, UPDATE_EMIT, VERIFY = 0, 1, 2
CHANGED_EVERY, CHANGED_AT = 100, 37      # 1 % of the keys change per round: k % 100 == 37, ...
VERIFY_EVERY, VERIFY_AT = 20, 17         # 5 % are read back at the end (every changed key too)
VALUE_BYTES = 100


#: random bytes the values' padding is cut from: values do not compress (RocksDB compresses
#: its blocks; padding of one repeated byte would shrink the state fivefold)
_POOL = random.Random(17).randbytes(1 << 20)


def state_value(key: int, version: int) -> bytes:
    """The 100-byte value of ``key`` at ``version``: who and which, then 88 bytes that differ
    from key to key and version to version."""
    at = (key * 2654435761 + version * 40503) % (len(_POOL) - 88)
    return key.to_bytes(8, "little") + version.to_bytes(4, "little") + _POOL[at:at + 88]


def state_phases(keys: int) -> tuple[int, int, int]:
    """Records of the three phases of the large-state job: load (every key once), change
    (1 % of the keys, per round), verify (every 20th key read back)."""
    if keys < CHANGED_EVERY:
        raise ValueError(f"keys must be at least {CHANGED_EVERY}, got {keys}")
    return keys, keys // CHANGED_EVERY, (keys - VERIFY_AT + VERIFY_EVERY - 1) // VERIFY_EVERY


def changed_class(round_: int) -> int:
    """``k % 100`` of the keys that change in round ``round_``: five classes in turn, each
    one read back at the end (``k % 20 == 17``), so rounds 0-4 change different keys (as
    keyed state changes spread over the key space) and round 5 changes round 0's again."""
    return (CHANGED_AT + VERIFY_EVERY * round_) % CHANGED_EVERY


def state_record(g: int, keys: int, rounds: int = 1) -> tuple[int, int, int]:
    """Record g of the large-state job with ``rounds`` change rounds: (key, version, mode)."""
    load, change, _ = state_phases(keys)
    if g < load:
        return g, 1, UPDATE
    g -= load
    if g < change * rounds:
        r, i = divmod(g, change)
        return i * CHANGED_EVERY + changed_class(r), 2 + r // 5, UPDATE
    return (g - change * rounds) * VERIFY_EVERY + VERIFY_AT, 0, VERIFY


def expected_verify_lines(keys: int, rounds: int = 1) -> set[str]:
    """What the large-state job reads back: every 20th key at the version its rounds left."""
    times = {changed_class(r): len(range(r, rounds, 5)) for r in range(min(rounds, 5))}
    return {f"{k} {1 + times.get(k % CHANGED_EVERY, 0)}"
            for k in range(VERIFY_AT, keys, VERIFY_EVERY)}


def churn_record(g: int, keys: int, records: int) -> tuple[int, int, int]:
    """Record g of the few-keys job: key g % keys at its next version; the key's last record
    is emitted."""
    key, version = g % keys, g // keys + 1
    return key, version, UPDATE_EMIT if g + keys >= records else UPDATE


def expected_churn_lines(keys: int, records: int) -> set[str]:
    return {f"{k} {(records - k + keys - 1) // keys}" for k in range(min(keys, records))}


class CheckedValue(KeyedProcessFunction):
    """Read-modify-write of one 100-byte value per key, checked on every record: the value
    read must be the key's previous version (a record applied twice or lost, or state not
    restored exactly, shows up as a ``BAD`` line). Emits ``key version`` when asked to."""

    def open(self, ctx):
        self.state = ctx.value_state("value")

    def process(self, key, record, out):
        _, version, mode = record
        old = self.state.value()
        if mode == VERIFY:
            seen = int.from_bytes(old[8:12], "little") if old else 0
            ok = old is not None and bytes(old) == state_value(key, seen)
            out.append(f"{key} {seen}" if ok else f"BAD {key} read {old!r:.40}")
            return
        expected = None if version == 1 else state_value(key, version - 1)
        if (None if old is None else bytes(old)) != expected:
            out.append(f"BAD {key} {version} read {old!r:.40}")
        self.state.update(state_value(key, version))
        if mode == UPDATE_EMIT:
            out.append(f"{key} {version}")


class GatedGeneratorSource(GeneratorSource):
    """A generator that holds back record ``b`` and later ones, for each boundary ``b`` in
    ``gates``, until the file ``<gate_dir>/gate-<b>`` exists: a benchmark can let a
    checkpoint complete at an exact position between two phases. Positions are the
    generator's, so a restored or rescaled job keeps its place."""

    def __init__(self, records: int, fn, gates: list[int], gate_dir: str):
        super().__init__(records=records, fn=fn)
        self.gates, self.gate_dir = sorted(gates), gate_dir

    def create_reader(self, positions):
        return GatedReader(self, {int(k): int(v) for k, v in positions.items()})


class GatedReader(GeneratorReader):
    """``GeneratorReader.poll`` with the records at and after the first closed gate held
    back."""

    IDLE_S = 0.02   # while held back: do not spin the worker's event loop

    def __init__(self, source: GatedGeneratorSource, positions: dict[int, int]):
        super().__init__(source, positions)
        self.open_gates: set[int] = set()

    def _limit(self) -> int | None:
        for b in self.source.gates:
            if b not in self.open_gates:
                if not os.path.exists(os.path.join(self.source.gate_dir, f"gate-{b}")):
                    return b
                self.open_gates.add(b)
        return None

    def poll(self, max_records: int) -> list[Any] | None:
        limit = self._limit()
        S = self.source.splits
        n = self.source.records if limit is None else min(limit, self.source.records)
        size = {k: max(0, (n - k + S - 1) // S) for k in self.pos}      # split k's g < n
        out = self.read_below(n, size, max_records)
        if out is None and limit is not None:  # held back at a closed gate
            time.sleep(self.IDLE_S)
            return []
        return out


def large_state_checked(args: dict[str, Any]) -> Pipeline:
    """bench/state.py's large-state job: load ``keys`` keys, change 1 % per round
    (``rounds``, default 1), read 5 % back; held at each phase and round boundary until the
    benchmark opens it (``gate_dir``)."""
    keys, rounds = int(args["keys"]), int(args.get("rounds", 1))
    load, change, verify = state_phases(keys)
    p = Pipeline()
    (p.source(GatedGeneratorSource(load + change * rounds + verify,
                                   lambda g: state_record(g, keys, rounds),
                                   [load + change * r for r in range(rounds + 1)],
                                   str(args["gate_dir"])))
      .key_by(_first)
      .process(CheckedValue())
      .sink(FileSink(str(args["output"]))))
    return p


def churn_checked(args: dict[str, Any]) -> Pipeline:
    """bench/state.py's throughput job: ``records`` read-modify-writes over ``keys`` keys."""
    keys, records = int(args["keys"]), int(args["records"])
    p = Pipeline()
    (p.source(GeneratorSource(records=records, fn=lambda g: churn_record(g, keys, records)))
      .key_by(_first)
      .process(CheckedValue())
      .sink(FileSink(str(args["output"]))))
    return p


def _first(record: tuple[Any, ...]) -> Any:
    return record[0]
