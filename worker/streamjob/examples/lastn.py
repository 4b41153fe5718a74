"""Last N: per key, the last N values in list- and dict-valued keyed state, written exactly once.

Record g belongs to key ``k<g % keys>``; its value is g. For every record the keyed function
reads two value states of the key, **mutates them in place** and writes them back:

- ``last``: a Python list of the key's last N values (``lst.append(g)``, ``del lst[:-N]``);
- ``info``: a dict ``{"n": count, "sum": sum of all values}`` (``d["n"] += 1`` ...).

and emits ``"k<key> <n> <sum> <v1,v2,...>"``. That is the pattern that catches a snapshot that
shares the live list or dict with the state being uploaded (or restored): the snapshot must
not see later appends, the restored state must not be shared with anything else.

Output is deterministic whatever the parallelism, restarts or rescales: ``keys`` is a
multiple of the generator's 128 splits, so all records of one key come from one split, in
order, over one channel at a time. For the key with index k the n-th record is
``g = k + (n - 1) * keys``, so the committed output must hold, for every key seen n times,
exactly the lines for 1 ... n, each once.

    python -m streamjob.examples.lastn OUTPUT RECORDS [KEYS [N]]
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import FileSink, GeneratorSource
from streamjob.operators import KeyedProcessFunction

SPLITS = 128  # GeneratorSource's default number of splits
DEFAULT_KEYS = 256
DEFAULT_N = 5


def key_of(keys: int):
    names = [f"k{i}" for i in range(keys)]

    def key(g: int) -> str:
        return names[g % keys]

    return key


def line(key: str, n: int, total: int, last: list[int]) -> str:
    return f"{key} {n} {total} {','.join(map(str, last))}"


class LastN(KeyedProcessFunction):
    """Keeps the last ``n`` values of each key in a list, and a count and sum in a dict."""

    def __init__(self, n: int):
        self.n = n

    def open(self, ctx):
        self.last = ctx.value_state("last", None)  # never a shared mutable default
        self.info = ctx.value_state("info", None)

    def process(self, key, value, out):
        last = self.last.value()
        if last is None:
            last = []
        last.append(value)           # in place: the list held by the state
        del last[:-self.n]
        self.last.update(last)
        info = self.info.value()
        if info is None:
            info = {"n": 0, "sum": 0}
        info["n"] += 1               # in place: the dict held by the state
        info["sum"] += value
        self.info.update(info)
        out.append(line(key, info["n"], info["sum"], last))


def _check_args(keys: int, n: int) -> None:
    if keys < 1 or keys % SPLITS:
        raise ValueError(f"keys must be a positive multiple of {SPLITS} (one split per key "
                         f"keeps each key's records in order), got {keys}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")


def build(args: dict[str, Any]) -> Pipeline:
    records = int(args.get("records", 1_000_000))
    keys = int(args.get("keys", DEFAULT_KEYS))
    n = int(args.get("n", DEFAULT_N))
    rate = float(args.get("rate", 0))
    output = str(args.get("output", "output"))
    _check_args(keys, n)
    key = key_of(keys)
    p = Pipeline()
    (p.source(GeneratorSource(records=records, rate=rate, splits=SPLITS), "Source: numbers")
      .key_by(key)
      .process(LastN(n), "LastN")
      .sink(FileSink(output), "Sink: files"))
    return p


def consumed(g: int, positions: dict[int, int] | None) -> bool:
    """Whether record g was read by sources at ``positions`` (split -> records read from it,
    as recorded in a checkpoint or savepoint); all records when ``positions`` is None."""
    return positions is None or g // SPLITS < positions.get(g % SPLITS, 0)


def expected_lines(records: int, keys: int = DEFAULT_KEYS, n: int = DEFAULT_N,
                   positions: dict[int, int] | None = None) -> set[str]:
    """Every line exactly-once output holds after all ``records`` (or, with ``positions``,
    after the records read up to those source positions)."""
    _check_args(keys, n)
    out = set()
    for k in range(min(keys, records)):
        last: list[int] = []
        total = 0
        for i, g in enumerate(range(k, records, keys), start=1):
            if not consumed(g, positions):
                break  # one key, one split: the records read are a prefix
            last.append(g)
            del last[:-n]
            total += g
            out.add(line(f"k{k}", i, total, last))
    return out


def check_output(folder: str, records: int, keys: int = DEFAULT_KEYS,
                 n: int = DEFAULT_N, positions: dict[int, int] | None = None) -> dict[str, Any]:
    """Compare committed ``part-*`` lines with what exactly-once must produce (with
    ``positions``: what must be committed when the sources stopped there, e.g. a savepoint).

    Same report as :func:`streamjob.examples.wordcount.check_output`: ``duplicates`` (a line
    committed twice), ``missing`` (an expected line absent), ``unexpected`` (a line that
    should not exist: for example state that saw a later value or lost one)."""
    from pathlib import Path

    seen: Counter[str] = Counter()
    for part in sorted(Path(folder).glob("part-*")):
        with open(part, encoding="utf-8") as f:
            seen.update(line.rstrip("\n") for line in f)
    expected = expected_lines(records, keys, n, positions)
    return {
        "lines": sum(seen.values()),
        "duplicates": sum(c - 1 for c in seen.values() if c > 1),
        "missing": len(expected - seen.keys()),
        "unexpected": len(seen.keys() - expected),
    }


def check_at_least_once(folder: str, records: int, keys: int = DEFAULT_KEYS) -> dict[str, Any]:
    """The at-least-once rule: every record reached the output (``gaps``: records g with no
    committed line of key ``k<g % keys>`` ending in g); replays are allowed and counted
    (``overcount``: committed lines beyond one per record)."""
    from pathlib import Path

    _check_args(keys, DEFAULT_N)
    ends: set[tuple[str, int]] = set()
    lines = 0
    for part in sorted(Path(folder).glob("part-*")):
        with open(part, encoding="utf-8") as f:
            for text in f:
                fields = text.split()
                lines += 1
                if len(fields) == 4 and fields[3]:
                    ends.add((fields[0], int(fields[3].rsplit(",", 1)[-1])))
    key = key_of(keys)
    gaps = sum(1 for g in range(records) if (key(g), g) not in ends)
    return {"lines": lines, "gaps": gaps, "overcount": max(0, lines - records)}


if __name__ == "__main__":
    import json
    import sys

    folder, n_records = sys.argv[1], int(sys.argv[2])
    n_keys = int(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_KEYS
    n_last = int(sys.argv[4]) if len(sys.argv) > 4 else DEFAULT_N
    result = check_output(folder, n_records, n_keys, n_last)
    print(json.dumps(result))
    sys.exit(0 if result["duplicates"] == result["missing"] == result["unexpected"] == 0 else 1)
