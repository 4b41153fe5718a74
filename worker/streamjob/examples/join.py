"""Joins: orders and their shipments, joined two ways, each into a sink of its own.

Order g (0 <= g < orders) is ``("o", g, customer, ts)`` with event time ``ts = g * 1000 //
events_per_second``; its shipment is ``("s", g, customer, ts + delay)`` with a delay of 0 to
3 s (a hash of g), so the shipments come up to 3 s out of event-time order. Two joins:

* interval join on the order id: each shipment that left within ``max_delay_ms`` of its
  order, as ``"<order> <delay>"`` in ``<output>-interval``;
* window join on the customer, 1 s tumbling windows: every (order, shipment) pair of one
  customer in the same window, as ``"<order> <shipment>"`` in ``<output>-window``.

Both outputs are sets of distinct lines: :func:`check_output` compares them with the
pure-Python reference (:func:`expected`); exactly-once means no duplicate, none missing,
none unexpected.

    streamjob run examples/join.yaml
    python -m streamjob.examples.join check examples/join.yaml
"""

from __future__ import annotations

from collections import Counter, defaultdict
from operator import itemgetter
from pathlib import Path
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import FileSink, GeneratorSource

MULTIPLIER = 2654435761
MAX_SHIP_DELAY = 3000  # ms
WINDOW = 1000  # ms


def _hash(g: int, salt: int) -> int:
    return (((g + salt) * MULTIPLIER) & 0xFFFFFFFF)


def settings(args: dict[str, Any]) -> dict[str, int]:
    return {"orders": int(args.get("orders", 40_000)),
            "customers": int(args.get("customers", 1000)),
            "events_per_second": int(args.get("events_per_second", 2000)),
            "max_delay_ms": int(args.get("max_delay_ms", 2000))}


def order_of(g: int, s: dict[str, int]) -> tuple[str, int, int, int]:
    return ("o", g, _hash(g, 0) % s["customers"], g * 1000 // s["events_per_second"])


def shipment_of(g: int, s: dict[str, int]) -> tuple[str, int, int, int]:
    _, _, customer, ts = order_of(g, s)
    return ("s", g, customer, ts + _hash(g, 7) % (MAX_SHIP_DELAY + 1))


def build(args: dict[str, Any]) -> Pipeline:
    s = settings(args)
    rate = float(args.get("rate", 0))
    output = str(args.get("output", "output"))
    p = Pipeline()
    ts = itemgetter(3)
    orders = (p.source(GeneratorSource(s["orders"], lambda g: order_of(g, s), rate),
                       "Source: orders")
              .assign_timestamps(ts, max_out_of_orderness=500))
    shipments = (p.source(GeneratorSource(s["orders"], lambda g: shipment_of(g, s), rate),
                          "Source: shipments")
                 .assign_timestamps(ts, max_out_of_orderness=MAX_SHIP_DELAY + 500))
    by_id = itemgetter(1)
    (orders.key_by(by_id)
     .interval_join(shipments.key_by(by_id))
     .between(0, s["max_delay_ms"])
     .apply(lambda o, sh: f"{o[1]} {sh[3] - o[3]}", "Interval join: shipped in time")
     .sink(FileSink(f"{output}-interval"), "Sink: interval"))
    by_customer = itemgetter(2)
    (orders.key_by(by_customer)  # a second keyed edge out of each source task
     .join(shipments.key_by(by_customer))
     .window(WINDOW)
     .apply(lambda o, sh: f"{o[1]} {sh[1]}", "Window join: same customer, same second")
     .sink(FileSink(f"{output}-window"), "Sink: window"))
    return p


def expected(args: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The pure-Python reference: the lines of the interval and of the window output."""
    s = settings(args)
    orders = [order_of(g, s) for g in range(s["orders"])]
    shipments = [shipment_of(g, s) for g in range(s["orders"])]
    interval = {f"{o[1]} {sh[3] - o[3]}" for o, sh in zip(orders, shipments, strict=True)
                if 0 <= sh[3] - o[3] <= s["max_delay_ms"]}
    cells: dict[tuple[int, int], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for o in orders:
        cells[(o[2], o[3] // WINDOW)][0].append(o[1])
    for sh in shipments:
        cells[(sh[2], sh[3] // WINDOW)][1].append(sh[1])
    window = {f"{a} {b}" for lefts, rights in cells.values() for a in lefts for b in rights}
    return interval, window


def committed_lines(folder: str | Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    for part in sorted(Path(folder).glob("part-*")):
        with open(part, encoding="utf-8") as f:
            seen.update(line.rstrip("\n") for line in f)
    return seen


def check_output(output: str, args: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Both outputs against the reference: all counts but ``lines`` are 0 when exact."""
    result = {}
    for name, lines in zip(("interval", "window"), expected(args), strict=True):
        seen = committed_lines(f"{output}-{name}")
        result[name] = {"lines": sum(seen.values()),
                        "duplicates": sum(n - 1 for n in seen.values() if n > 1),
                        "missing": len(lines - seen.keys()),
                        "unexpected": len(seen.keys() - lines)}
    return result


def main(argv: list[str]) -> int:
    import json

    import yaml

    if len(argv) != 2 or argv[0] != "check":
        print("usage: python -m streamjob.examples.join check MANIFEST.yaml")
        return 2
    manifest = yaml.safe_load(Path(argv[1]).read_text())
    args = manifest["spec"].get("args", {})
    result = check_output(str(args.get("output", "output")), args)
    print(json.dumps(result))
    exact = all(r["duplicates"] == r["missing"] == r["unexpected"] == 0
                for r in result.values())
    return 0 if exact else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
