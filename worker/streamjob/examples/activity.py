"""Two inputs: clicks and views of users, from three sources, into two sinks.

Clicks come from one source; views from two (``union``). Both are keyed by user and
``connect``-ed into one :class:`CoProcessFunction` that keeps a per-user event count *shared*
by both inputs, and a per-user view count. Every event emits ``"<user> <events so far>"`` to
the main output; every view also emits ``"<user> <views so far>"`` to the side output
``views``, which goes to a sink of its own (``<output>-views``).

For a user with c clicks and v views, exactly-once commits exactly the lines ``u 1`` ...
``u c+v`` to the main output and ``u 1`` ... ``u v`` to the views output, whatever the
order in which the inputs interleave: :func:`check_output` compares with that reference.
"""

from __future__ import annotations

from collections import Counter
from operator import itemgetter
from pathlib import Path
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import FileSink, GeneratorSource
from streamjob.operators import CoProcessFunction, KeyedContext

MULTIPLIER = 2654435761
VIEWS = "views"


def user_of(g: int, users: int, salt: int) -> str:
    return f"u{(((g + salt) * MULTIPLIER) & 0xFFFFFFFF) % users}"


def streams(args: dict[str, Any]) -> tuple[int, int, int, int]:
    return (int(args.get("clicks", 100_000)), int(args.get("views_a", 60_000)),
            int(args.get("views_b", 40_000)), int(args.get("users", 500)))


class Activity(CoProcessFunction):
    def open(self, ctx: KeyedContext) -> None:
        self.events = ctx.value_state("events", 0)  # both inputs
        self.views = ctx.value_state("views", 0)    # the second input only

    def _event(self, key: str, out: Any) -> None:
        n = self.events.value() + 1
        self.events.update(n)
        out.append(f"{key} {n}")

    def process1(self, key: str, value: Any, out: Any) -> None:
        self._event(key, out)

    def process2(self, key: str, value: Any, out: Any) -> None:
        self._event(key, out)
        v = self.views.value() + 1
        self.views.update(v)
        out.side(VIEWS, f"{key} {v}")


def build(args: dict[str, Any]) -> Pipeline:
    clicks, views_a, views_b, users = streams(args)
    rate = float(args.get("rate", 0))
    output = str(args.get("output", "output"))
    p = Pipeline()
    click = p.source(GeneratorSource(clicks, lambda g: (user_of(g, users, 0), "click"), rate),
                     "Source: clicks")
    view_a = p.source(GeneratorSource(views_a, lambda g: (user_of(g, users, 1), "view"), rate),
                      "Source: views A")
    view_b = p.source(GeneratorSource(views_b, lambda g: (user_of(g, users, 2), "view"), rate),
                      "Source: views B")
    activity = (click.key_by(itemgetter(0))
                .connect(view_a.union(view_b).key_by(itemgetter(0)))
                .process(Activity(), "Activity"))
    activity.sink(FileSink(output), "Sink: events")
    activity.side_output(VIEWS).sink(FileSink(f"{output}-{VIEWS}"), "Sink: views")
    return p


def expected(args: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The pure-Python reference: the lines of the main and of the views output."""
    clicks, views_a, views_b, users = streams(args)
    c = Counter(user_of(g, users, 0) for g in range(clicks))
    v = Counter(user_of(g, users, 1) for g in range(views_a))
    v.update(user_of(g, users, 2) for g in range(views_b))
    events = {f"{u} {i}" for u in c.keys() | v.keys() for i in range(1, c[u] + v[u] + 1)}
    views = {f"{u} {i}" for u in v for i in range(1, v[u] + 1)}
    return events, views


def committed_lines(folder: str | Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    for part in sorted(Path(folder).glob("part-*")):
        with open(part, encoding="utf-8") as f:
            seen.update(line.rstrip("\n") for line in f)
    return seen


def compare(seen: Counter[str], expected_lines: set[str]) -> dict[str, int]:
    return {"lines": sum(seen.values()),
            "duplicates": sum(n - 1 for n in seen.values() if n > 1),
            "missing": len(expected_lines - seen.keys()),
            "unexpected": len(seen.keys() - expected_lines)}


def check_output(output: str, args: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Both outputs against the reference (all counts but ``lines`` 0 when exactly once)."""
    events, views = expected(args)
    return {"events": compare(committed_lines(output), events),
            "views": compare(committed_lines(f"{output}-{VIEWS}"), views)}
