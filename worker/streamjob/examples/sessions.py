"""Sessions: per-user click sessions (event-time session windows), written exactly once.

Click g happens at event time ``g * 1000 // events_per_second`` ms, by user ``u<i>`` with
``i = ((g * 2654435761) & 0xFFFFFFFF) % users``, on page ``g % 50``. A user is away one
period in three (``(ts + 997 * i) // period_ms % 3 == 2``: those clicks are dropped), so
sessions with a ``gap_ms`` gap end and start again. Each session is committed as one line
``<user> <start_ms> <end_ms> <clicks> <sum of pages>`` (``end`` = last click + gap), computed
with ``aggregate(create, add, merge, result)``.

Late clicks (both off by default): every ``delay_every``-th click is ``delay_ms`` older than
it should be (with an ``allowed_lateness_ms`` above the delay, it still lands in its session,
which fires again if it had fired); every ``late_every``-th click is moved back to the middle
of one of its user's away stretches that ended at least 5 s earlier (:func:`late_ts`): too
late for any session, it goes to the side output ``late_records()``, committed to
``late_output`` as ``<user> <ts> <page> <g>``.

    python -m streamjob.examples.sessions OUTPUT RECORDS [USERS [EVENTS_PER_SECOND]]

checks a run without late clicks line by line (``check_output``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from operator import itemgetter
from pathlib import Path
from typing import Any

from streamjob import Pipeline
from streamjob.connectors import FileSink, GeneratorSource
from streamjob.windows import EventTimeSessionWindows

MULTIPLIER = 2654435761
PAGES = 50
DEFAULTS = {"users": 500, "events_per_second": 20_000, "gap_ms": 1000, "period_ms": 4500}


LATE_MARGIN_MS = 5000  # a very late click goes to an away stretch that ended this long ago


def click_of(users: int, eps: int, period_ms: int, late_every: int = 0,
             delay_every: int = 0, delay_ms: int = 0):
    """Record g as ``(ts, user, page, g)``; user None when the user is away."""
    names = [f"u{i}" for i in range(users)]

    def away(ts: int, i: int) -> bool:
        return (ts + 997 * i) // period_ms % 3 == 2

    def click(g: int) -> tuple[int, str | None, int, int]:
        ts = g * 1000 // eps
        i = ((g * MULTIPLIER) & 0xFFFFFFFF) % users
        if away(ts, i):
            return (ts, None, 0, g)
        if late_every and g % late_every == 0:
            late = late_ts(ts, i, period_ms)
            if late is not None:
                return (late, names[i], g % PAGES, g)
        if delay_every and g % delay_every == 0 and ts >= delay_ms \
                and not away(ts - delay_ms, i):
            ts -= delay_ms
        return (ts, names[i], g % PAGES, g)

    return click


def late_ts(ts: int, i: int, period_ms: int) -> int | None:
    """Where user i's very late click at ``ts`` goes: the middle of the user's latest away
    stretch (a third of each period) that ended ``LATE_MARGIN_MS`` or more before ``ts``.
    There, a ``gap`` shorter than half the stretch keeps it clear of every session; None if
    no such stretch exists yet."""
    off = 997 * i
    k = (ts - LATE_MARGIN_MS + off) // (3 * period_ms) - 1
    late = (3 * k + 2) * period_ms - off + period_ms // 6
    return late if late >= 0 else None


def is_late(g: int, args: dict[str, Any]) -> bool:
    """Whether click g is one of the very late ones (beyond any allowed lateness)."""
    a = _args(args)
    if not a["late_every"] or g % a["late_every"]:
        return False
    ts = g * 1000 // a["events_per_second"]
    i = ((g * MULTIPLIER) & 0xFFFFFFFF) % a["users"]
    return (ts + 997 * i) // a["period_ms"] % 3 != 2 and \
        late_ts(ts, i, a["period_ms"]) is not None


def _create() -> tuple[int, int]:
    return (0, 0)


def _add(acc: tuple[int, int], click: tuple[Any, ...]) -> tuple[int, int]:
    return (acc[0] + 1, acc[1] + click[2])


def _merge(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return (a[0] + b[0], a[1] + b[1])


def _format(session: tuple[Any, ...]) -> str:
    start, end, user, (clicks, pages) = session
    return f"{user} {start} {end} {clicks} {pages}"


def _format_click(click: tuple[Any, ...]) -> str:
    return f"{click[1]} {click[0]} {click[2]} {click[3]}"


def _args(args: dict[str, Any]) -> dict[str, int]:
    out = {k: int(args.get(k, v)) for k, v in DEFAULTS.items()}
    out["records"] = int(args.get("records", 200_000))
    for k in ("late_every", "delay_every", "delay_ms"):
        out[k] = int(args.get(k, 0))
    if out["users"] < 1 or out["events_per_second"] < 1 or out["gap_ms"] < 1:
        raise ValueError("users, events_per_second and gap_ms must be at least 1")
    if out["late_every"] and 2 * out["gap_ms"] >= out["period_ms"] // 3:
        raise ValueError("late clicks need gap_ms below half an away stretch (period_ms / 6)")
    return out


def build(args: dict[str, Any]) -> Pipeline:
    a = _args(args)
    click = click_of(a["users"], a["events_per_second"], a["period_ms"], a["late_every"],
                     a["delay_every"], a["delay_ms"])
    p = Pipeline()
    sessions = (
        p.source(GeneratorSource(records=a["records"], fn=click,
                                 rate=float(args.get("rate", 0))), "Source: clicks")
         .assign_timestamps(itemgetter(0), max_out_of_orderness=int(args.get("bound_ms", 1000)))
         .filter(lambda c: c[1] is not None, "Present users")
         .key_by(itemgetter(1))
         .window(EventTimeSessionWindows(a["gap_ms"]))
         .allowed_lateness(int(args.get("allowed_lateness_ms", 0)))
         .aggregate(_create, _add, _merge, name="Sessions"))
    sessions.map(_format, "Format").sink(FileSink(str(args.get("output", "output"))),
                                         "Sink: sessions")
    if args.get("late_output"):
        (sessions.late_records()
                 .map(_format_click, "Format late")
                 .sink(FileSink(str(args["late_output"])), "Sink: late clicks"))
    return p


def clicks_by_user(args: dict[str, Any]) -> dict[str, list[tuple[int, int, int]]]:
    """Every click that belongs in a session (all but the very late ones), ``(ts, page, g)``
    per user."""
    a = _args(args)
    click = click_of(a["users"], a["events_per_second"], a["period_ms"], a["late_every"],
                     a["delay_every"], a["delay_ms"])
    out: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for g in range(a["records"]):
        ts, user, page, _ = click(g)
        if user is not None and not is_late(g, args):
            out[user].append((ts, page, g))
    return out


def expected_lines(args: dict[str, Any]) -> set[str]:
    """The final sessions of every user, in plain Python: sorted clicks, a new session
    wherever two clicks are more than ``gap_ms`` apart."""
    gap = _args(args)["gap_ms"]
    lines = set()
    for user, clicks in clicks_by_user(args).items():
        clicks.sort()
        start = last = clicks[0][0]
        n = pages = 0
        for ts, page, _ in clicks:
            if ts - last > gap:
                lines.add(f"{user} {start} {last + gap} {n} {pages}")
                start, n, pages = ts, 0, 0
            last = ts
            n += 1
            pages += page
        lines.add(f"{user} {start} {last + gap} {n} {pages}")
    return lines


def expected_late_lines(args: dict[str, Any]) -> set[str]:
    """The side output: every very late click, once."""
    a = _args(args)
    click = click_of(a["users"], a["events_per_second"], a["period_ms"], a["late_every"],
                     a["delay_every"], a["delay_ms"])
    return {_format_click(c) for g in range(a["records"])
            if (c := click(g))[1] is not None and is_late(g, args)}


def read_lines(folder: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    for part in sorted(Path(folder).glob("part-*")):
        with open(part, encoding="utf-8") as f:
            seen.update(line.rstrip("\n") for line in f)
    return seen


def final_sessions(lines: Counter[str]) -> set[str]:
    """The last version of each session: sessions only grow (a late click adds to one or
    merges two, and it fires again), so an emitted session that another emitted session of
    the same user contains, with at least as many clicks, was superseded."""
    by_user: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
    for line in lines:
        user, start, end, n, pages = line.split()
        by_user[user].append((int(start), int(end), int(n), int(pages)))
    final = set()
    for user, mine in by_user.items():
        for s in mine:
            if not any(o != s and o[0] <= s[0] and s[1] <= o[1] and o[2] >= s[2]
                       for o in mine):
                final.add(f"{user} {s[0]} {s[1]} {s[2]} {s[3]}")
    return final


def check_output(folder: str, args: dict[str, Any],
                 late_folder: str | None = None) -> dict[str, Any]:
    """Committed sessions (the final version of each) against :func:`expected_lines`:
    ``duplicates`` (a line committed twice), ``missing`` (a session absent), ``unexpected``
    (a line no session explains); with ``late_folder``, the same for the late side output
    (``late_duplicates``, ``late_missing``, ``late_unexpected``)."""
    seen = read_lines(folder)
    final = final_sessions(seen)
    want = expected_lines(args)
    result = {"lines": sum(seen.values()), "sessions": len(final),
              "duplicates": sum(c - 1 for c in seen.values() if c > 1),
              "missing": len(want - final), "unexpected": len(final - want)}
    if late_folder is not None:
        late = read_lines(late_folder)
        want_late = expected_late_lines(args)
        result.update({"late": sum(late.values()),
                       "late_duplicates": sum(c - 1 for c in late.values() if c > 1),
                       "late_missing": len(want_late - late.keys()),
                       "late_unexpected": len(late.keys() - want_late)})
    return result


if __name__ == "__main__":
    import json
    import sys

    run_args: dict[str, Any] = {"records": int(sys.argv[2])}
    if len(sys.argv) > 3:
        run_args["users"] = int(sys.argv[3])
    if len(sys.argv) > 4:
        run_args["events_per_second"] = int(sys.argv[4])
    result = check_output(sys.argv[1], run_args)
    print(json.dumps(result))
    sys.exit(0 if result["duplicates"] == result["missing"] == result["unexpected"] == 0
             else 1)
