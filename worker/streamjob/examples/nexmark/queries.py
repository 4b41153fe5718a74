"""Each Nexmark query: its SQL (as the Nexmark suite states it for Flink), the streamjob
pipeline that computes the same rows, and a plain-Python reference over a list of events.

Rows are dicts with Nexmark's column names; times are epoch milliseconds. Events are the
generator's dicts (``{"event_type": 2, "bid": {...}}``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from streamjob.operators import KeyedProcessFunction
from streamjob.windows import (
    EventTimeSessionWindows,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
)

WINDOW_MS = 10_000  # q7, q8: 10-second tumbling windows
_head, _second = itemgetter(0), itemgetter(1)  # of the pairs q5 and q11 key and window by
Q3_STATES = ("OR", "ID", "CA")


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    build: Callable[[Any], Any]          # Stream of events -> Stream of rows
    reference: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    event_time: bool = False             # needs timestamps and watermarks
    deterministic: bool = True           # False: rows depend on the wall clock (q12)
    flink: bool = True                   # False: not compared with Flink SQL in the bench


def is_bid(e: dict[str, Any]) -> bool:
    return e["event_type"] == 2


# ------------------------------------------------------------------------ q0 pass-through

def q0_row(e: dict[str, Any]) -> dict[str, Any]:
    b = e["bid"]
    return {"auction": b["auction"], "bidder": b["bidder"], "price": b["price"],
            "dateTime": b["dateTime"], "extra": b["extra"]}


def q0(stream: Any) -> Any:
    return stream.filter(is_bid, "Bids").map(q0_row, "q0")


def q0_reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [q0_row(e) for e in events if e["event_type"] == 2]


# ------------------------------------------------------------------------ q1 currency

def q1_row(e: dict[str, Any]) -> dict[str, Any]:
    b = e["bid"]
    # 0.908 * price, exact to Flink's DECIMAL(.., 3): the float nearest the 3-decimal value.
    return {"auction": b["auction"], "bidder": b["bidder"],
            "price": round(b["price"] * 908 / 1000, 3), "dateTime": b["dateTime"],
            "extra": b["extra"]}


def q1(stream: Any) -> Any:
    return stream.filter(is_bid, "Bids").map(q1_row, "q1")


def q1_reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [q1_row(e) for e in events if e["event_type"] == 2]


# ------------------------------------------------------------------------ q2 selection

def q2_keep(e: dict[str, Any]) -> bool:
    return e["event_type"] == 2 and e["bid"]["auction"] % 123 == 0


def q2_row(e: dict[str, Any]) -> dict[str, Any]:
    return {"auction": e["bid"]["auction"], "price": e["bid"]["price"]}


def q2(stream: Any) -> Any:
    return stream.filter(q2_keep, "auction % 123 = 0").map(q2_row, "q2")


def q2_reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [q2_row(e) for e in events if q2_keep(e)]


# ------------------------------------------------------------------------ q3 local items

def q3_relevant(e: dict[str, Any]) -> bool:
    t = e["event_type"]
    if t == 0:
        return e["person"]["state"] in Q3_STATES
    return t == 1 and e["auction"]["category"] == 10


def q3_key(e: dict[str, Any]) -> int:
    return e["person"]["id"] if e["event_type"] == 0 else e["auction"]["seller"]


class Q3Join(KeyedProcessFunction):
    """The incremental inner join of persons and auctions on ``seller = id``, keyed by the
    person id: a person is kept to meet its later auctions, auctions are kept to meet a
    person who comes later (Nexmark sellers may be up to 10 ids ahead of the newest person).
    Both inputs are append-only, so every match is emitted once, when its second side
    arrives (Flink's regular join emits the same rows)."""

    def open(self, ctx: Any) -> None:
        self.person = ctx.value_state("person")            # [name, city, state]
        self.waiting = ctx.value_state("auctions", None)    # auction ids before the person

    def process(self, key: Any, e: dict[str, Any], out: list[Any]) -> None:
        if e["event_type"] == 0:
            p = e["person"]
            self.person.update((p["name"], p["city"], p["state"]))
            for aid in self.waiting.value() or ():
                out.append({"name": p["name"], "city": p["city"], "state": p["state"],
                            "id": aid})
            self.waiting.clear()
            return
        person = self.person.value()
        if person is not None:
            out.append({"name": person[0], "city": person[1], "state": person[2],
                        "id": e["auction"]["id"]})
        else:
            self.waiting.update((*(self.waiting.value() or ()), e["auction"]["id"]))


def q3(stream: Any) -> Any:
    return (stream.filter(q3_relevant, "Persons in OR/ID/CA, auctions of category 10")
            .key_by(q3_key).process(Q3Join(), "q3 join"))


def q3_reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    persons = {e["person"]["id"]: e["person"] for e in events
               if e["event_type"] == 0 and e["person"]["state"] in Q3_STATES}
    return [{"name": p["name"], "city": p["city"], "state": p["state"], "id": a["id"]}
            for e in events if e["event_type"] == 1 and (a := e["auction"])["category"] == 10
            and (p := persons.get(a["seller"])) is not None]


# ------------------------------------------------------------------------ q7 highest bid

def q7_bids(e: dict[str, Any]) -> tuple[tuple, ...]:
    """A bid as the row q7 emits, ``(auction, price, bidder, dateTime, extra)`` (only what
    the query reads crosses the exchange, as Flink's planner prunes columns). A bid counts
    for its own window's maximum, and a bid exactly on a window's end is also a candidate of
    the window before (Nexmark's ``BETWEEN end - 10 s AND end`` includes it): that copy
    carries a sixth field."""
    b = e["bid"]
    row = (b["auction"], b["price"], b["bidder"], b["dateTime"], b["extra"])
    if b["dateTime"] % WINDOW_MS == 0:
        return (row, (*row, True))
    return (row,)


def q7_time(p: tuple) -> int:
    """A bid's event time; a boundary copy's is 1 ms before, in the window it ends."""
    return p[3] if len(p) == 5 else p[3] - 1


def q7_no_bids() -> tuple[int, tuple, tuple]:
    return (-1, (), ())


def q7_add(acc: tuple[int, tuple, tuple], p: tuple) -> tuple[int, tuple, tuple]:
    """``(max price, bids at it, boundary bids at least at it)`` of a window, one bid (or
    boundary copy) at a time. A bid below the maximum so far changes nothing (the common
    case: no allocation); the maximum only grows, so such a bid can never be a top bid."""
    price = p[1]
    if price < acc[0]:
        return acc
    if len(p) == 6:
        return (acc[0], acc[1], (*acc[2], p[:5]))
    if price > acc[0]:
        return (price, (p,), acc[2])
    return (price, (*acc[1], p), acc[2])


def q7_rows(fired: tuple[int, Any, tuple]) -> list[dict[str, Any]]:
    _, _, (price, top, boundary) = fired
    if price < 0:
        return []  # no bid of its own: the window does not exist
    return [{"auction": r[0], "price": r[1], "bidder": r[2], "dateTime": r[3], "extra": r[4]}
            for r in top + tuple(r for r in boundary if r[1] == price)]


def _zero(_: Any) -> int:
    return 0


def _first(p: tuple) -> int:
    return p[0]


def q7(stream: Any) -> Any:
    return (stream.filter(is_bid, "Bids").flat_map(q7_bids, "Bids and boundary copies")
            .key_by(_zero).window(WINDOW_MS, timestamp=q7_time)
            .aggregate(q7_no_bids, q7_add, name="Max price").flat_map(q7_rows, "q7"))


def q7_reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bids = [e["bid"] for e in events if e["event_type"] == 2]
    top: dict[int, int] = {}
    for b in bids:
        w = b["dateTime"] // WINDOW_MS * WINDOW_MS
        top[w] = max(top.get(w, -1), b["price"])
    out = []
    for w, price in top.items():
        for b in bids:
            if b["price"] == price and w <= b["dateTime"] <= w + WINDOW_MS:
                out.append({"auction": b["auction"], "price": b["price"],
                            "bidder": b["bidder"], "dateTime": b["dateTime"],
                            "extra": b["extra"]})
    return out


# ------------------------------------------------------------------------ q8 new users

def q8_relevant(e: dict[str, Any]) -> bool:
    return e["event_type"] != 2


def q8_partial(e: dict[str, Any]) -> tuple[int, str | None, bool]:
    """``(event time, the person's name or None, whether it is an auction)``."""
    if e["event_type"] == 0:
        return (e["person"]["dateTime"], e["person"]["name"], False)
    return (e["auction"]["dateTime"], None, True)


def q8_key(p: tuple) -> int:
    return p[3]


def q8_keyed(e: dict[str, Any]) -> tuple[int, str | None, bool, int]:
    ts, name, auction = q8_partial(e)
    return (ts, name, auction, e["auction"]["seller"] if auction else e["person"]["id"])


def q8_merge(a: tuple, b: tuple) -> tuple:
    return (a[0], a[1] if a[1] is not None else b[1], a[2] or b[2], a[3])


def q8_rows(fired: tuple[int, Any, tuple]) -> list[dict[str, Any]]:
    start, pid, (_, name, auction, _) = fired
    return [{"id": pid, "name": name, "starttime": start}] if name is not None and auction \
        else []


def q8(stream: Any) -> Any:
    return (stream.filter(q8_relevant, "Persons and auctions").map(q8_keyed, "Partials")
            .key_by(q8_key).window(WINDOW_MS, timestamp=_first).reduce(q8_merge, "Window")
            .flat_map(q8_rows, "q8"))


def q8_reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sellers: dict[int, set[int]] = defaultdict(set)
    for e in events:
        if e["event_type"] == 1:
            a = e["auction"]
            sellers[a["dateTime"] // WINDOW_MS * WINDOW_MS].add(a["seller"])
    out = []
    for e in events:
        if e["event_type"] == 0:
            p = e["person"]
            w = p["dateTime"] // WINDOW_MS * WINDOW_MS
            if p["id"] in sellers[w]:
                out.append({"id": p["id"], "name": p["name"], "starttime": w})
    return out


# ------------------------------------------------------------------------ q5 hot items

SLIDE_MS, HOP_MS = 2_000, 10_000  # q5: 10-second windows every 2 seconds


def q5_bid(e: dict[str, Any]) -> tuple[int, int]:
    """``(auction, dateTime)``: only what q5 reads crosses the exchange."""
    return (e["bid"]["auction"], e["bid"]["dateTime"])


def _one(_: Any) -> int:
    return 1


def q5_last_ms(r: tuple[int, int, int]) -> int:
    """A window count's event time: its window's last ms (as Flink stamps window results)."""
    return r[0] + HOP_MS - 1


def q5_window(r: tuple[int, int, int]) -> int:
    return r[0]


def q5_top(top: tuple[int, tuple[int, ...]], r: tuple[int, int, int]) -> tuple:
    """``(most bids, auctions with that many)`` of a window, one count ``(start, auction,
    bids)`` at a time."""
    _, auction, n = r
    if n > top[0]:
        return (n, (auction,))
    if n == top[0]:
        return (n, (*top[1], auction))
    return top


def q5_no_bids() -> tuple[int, tuple[int, ...]]:
    return (0, ())


def q5_rows(fired: tuple[int, int, tuple]) -> list[dict[str, Any]]:
    _, _, (n, auctions) = fired
    return [{"auction": a, "num": n} for a in auctions]


def q5(stream: Any) -> Any:
    """Bids per auction in each sliding window (the sliding window operator), then the
    auctions with the most bids of each window: the counts of window ``[s, s + 10 s)`` carry
    the time ``s + 10 s - 1``, so each window's counts fall in one 2-second tumbling window
    of their own, keyed by ``s``, which fires when the watermark passes ``s + 10 s``, once
    every count of it has arrived."""
    return (stream.filter(is_bid, "Bids").map(q5_bid, "Auction and time").key_by(_head)
            .window(SlidingEventTimeWindows(HOP_MS, SLIDE_MS), timestamp=_second)
            .sum(_one, "Bids per window")
            .key_by(q5_window).window(TumblingEventTimeWindows(SLIDE_MS), timestamp=q5_last_ms)
            .aggregate(q5_no_bids, q5_top, name="Top auctions").flat_map(q5_rows, "q5"))


def q5_reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts: dict[int, Counter[int]] = defaultdict(Counter)
    for e in events:
        if e["event_type"] == 2:
            t = e["bid"]["dateTime"]
            last = t - t % SLIDE_MS
            for start in range(last - HOP_MS + SLIDE_MS, last + 1, SLIDE_MS):
                counts[start][e["bid"]["auction"]] += 1
    out = []
    for window in counts.values():
        most = max(window.values())
        out += [{"auction": a, "num": n} for a, n in window.items() if n == most]
    return out


# ------------------------------------------------------------------------ q11 sessions

GAP_MS = 10_000  # q11: a bidder's session ends after 10 s without bids


def q11_bidder(e: dict[str, Any]) -> int:
    return e["bid"]["bidder"]


def q11_bid(e: dict[str, Any]) -> tuple[int, int]:
    """``(bidder, dateTime)``: only what q11 reads crosses the exchange."""
    return (e["bid"]["bidder"], e["bid"]["dateTime"])


def q11_row(fired: tuple[int, int, int, int]) -> dict[str, Any]:
    start, end, bidder, bids = fired
    return {"bidder": bidder, "bid_count": bids, "starttime": start, "endtime": end}


def q11(stream: Any) -> Any:
    """Session windows of each bidder (gap 10 s) on the session window operator, counting
    bids: a bid opens ``[t, t + 10 s)``, merged with every session it touches; a session is
    emitted when the watermark passes its end."""
    return (stream.filter(is_bid, "Bids").map(q11_bid, "Bidder and time")
            .key_by(_head).window(EventTimeSessionWindows(GAP_MS), timestamp=_second)
            .sum(_one, "Sessions").map(q11_row, "q11"))


def q11_reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    times: dict[int, list[int]] = defaultdict(list)
    for e in events:
        if e["event_type"] == 2:
            times[e["bid"]["bidder"]].append(e["bid"]["dateTime"])
    out = []
    for bidder, ts in times.items():
        ts.sort()
        first = prev = ts[0]
        n = 0
        for t in ts:
            if t > prev + GAP_MS:
                out.append({"bidder": bidder, "bid_count": n, "starttime": first,
                            "endtime": prev + GAP_MS})
                first, n = t, 0
            prev, n = t, n + 1
        out.append({"bidder": bidder, "bid_count": n, "starttime": first,
                    "endtime": prev + GAP_MS})
    return out


# ------------------------------------------------------------------------ q12 processing time

END_OF_INPUT = 1 << 62  # an event-time timer no watermark reaches before the end of input


class Q12Count(KeyedProcessFunction):
    """Bids per bidder in processing-time tumbling windows of 10 s, keyed by bidder: a bid
    counts in the window of the wall clock when it is processed; a window is emitted when a
    processing-time timer at its end fires. At the end of input (the final watermark) the
    windows still open are emitted too, so every bid is counted exactly once (an event-time
    timer far in the future, set while the bidder has an open window, does that)."""

    def open(self, ctx: Any) -> None:
        self.ctx = ctx
        self.windows = ctx.map_state("windows")  # window start -> bids

    def process(self, key: Any, e: dict[str, Any], out: list[Any]) -> None:
        timers = self.ctx.timers
        now = timers.current_processing_time()
        start = now - now % WINDOW_MS
        n = self.windows.get(start)
        if n is None:
            if not self.windows.items():
                timers.register_event_time(END_OF_INPUT)
            timers.register_processing_time(start + WINDOW_MS - 1)
            n = 0
        self.windows.put(start, n + 1)

    def on_timer(self, ts: Any, key: Any, out: Any) -> None:
        for start, n in list(self.windows.items()):
            if ts == END_OF_INPUT or start + WINDOW_MS - 1 <= ts:
                out.append({"bidder": key, "bid_count": n, "starttime": start,
                            "endtime": start + WINDOW_MS})
                self.windows.remove(start)
        if ts != END_OF_INPUT and not self.windows.items():
            self.ctx.timers.delete_event_time(END_OF_INPUT)


def q12(stream: Any) -> Any:
    return stream.filter(is_bid, "Bids").key_by(q11_bidder).process(Q12Count(), "q12")


def q12_reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What is deterministic in q12: each bidder's bids over all windows."""
    totals = Counter(e["bid"]["bidder"] for e in events if e["event_type"] == 2)
    return [{"bidder": b, "bid_count": n} for b, n in totals.items()]


def q12_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """q12's rows summed over windows per bidder: comparable with :func:`q12_reference`."""
    totals: Counter[int] = Counter()
    for r in rows:
        totals[r["bidder"]] += r["bid_count"]
    return [{"bidder": b, "bid_count": n} for b, n in totals.items()]


# ------------------------------------------------------------------------ q4 average price

def q4_relevant(e: dict[str, Any]) -> bool:
    return e["event_type"] != 0


def q4_auction_id(e: dict[str, Any]) -> int:
    return e["auction"]["id"] if e["event_type"] == 1 else e["bid"]["auction"]


class Q4Winning(KeyedProcessFunction):
    """The highest bid of each auction among its bids within ``[dateTime, expires]``, keyed
    by auction id (Nexmark's inner join of auctions and bids). A bid may come before its
    auction (bids go to auctions up to 10 ids ahead): it waits in state until the auction
    arrives. Q4's result is an updating table; this emits each auction's final
    ``(category, max price)`` once, at the end of input (an event-time timer no watermark but
    the final one reaches), so the averages downstream are the table's final values."""

    def open(self, ctx: Any) -> None:
        self.ctx = ctx
        self.auction = ctx.value_state("auction")    # (dateTime, expires, category)
        self.top = ctx.value_state("top")            # highest price in range so far
        self.waiting = ctx.value_state("waiting")    # ((dateTime, price), ...) before it

    def _bid(self, auction: tuple, t: int, price: int) -> None:
        if auction[0] <= t <= auction[1]:
            top = self.top.value()
            if top is None:
                self.ctx.timers.register_event_time(END_OF_INPUT)
                self.top.update(price)
            elif price > top:
                self.top.update(price)

    def process(self, key: Any, e: dict[str, Any], out: list[Any]) -> None:
        if e["event_type"] == 1:
            a = e["auction"]
            auction = (a["dateTime"], a["expires"], a["category"])
            self.auction.update(auction)
            for t, price in self.waiting.value() or ():
                self._bid(auction, t, price)
            self.waiting.clear()
            return
        b = e["bid"]
        auction = self.auction.value()
        if auction is None:
            self.waiting.update((*(self.waiting.value() or ()), (b["dateTime"], b["price"])))
        else:
            self._bid(auction, b["dateTime"], b["price"])

    def on_timer(self, ts: Any, key: Any, out: Any) -> None:
        out.append((self.auction.value()[2], self.top.value()))


def q4_category(r: tuple) -> int:
    return r[0]


class Q4Average(KeyedProcessFunction):
    """The average winning price per category, keyed by category, emitted at the end of
    input as Flink's ``AVG`` of a BIGINT: an integer (the sum divided by the count, the
    fraction dropped)."""

    def open(self, ctx: Any) -> None:
        self.ctx = ctx
        self.sum = ctx.value_state("sum")  # (total, auctions)

    def process(self, key: Any, r: tuple, out: list[Any]) -> None:
        total = self.sum.value()
        if total is None:
            self.ctx.timers.register_event_time(END_OF_INPUT)
            total = (0, 0)
        self.sum.update((total[0] + r[1], total[1] + 1))

    def on_timer(self, ts: Any, key: Any, out: Any) -> None:
        total, n = self.sum.value()
        out.append({"category": key, "final": total // n})


def q4(stream: Any) -> Any:
    return (stream.filter(q4_relevant, "Auctions and bids").key_by(q4_auction_id)
            .process(Q4Winning(), "Winning bids").key_by(q4_category)
            .process(Q4Average(), "q4 average per category"))


def q4_reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    auctions = {e["auction"]["id"]: e["auction"] for e in events if e["event_type"] == 1}
    top: dict[int, int] = {}
    for e in events:
        if e["event_type"] == 2:
            b = e["bid"]
            a = auctions.get(b["auction"])
            if a is not None and a["dateTime"] <= b["dateTime"] <= a["expires"]:
                top[a["id"]] = max(top.get(a["id"], b["price"]), b["price"])
    sums: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for aid, price in top.items():
        s = sums[auctions[aid]["category"]]
        s[0] += price
        s[1] += 1
    return [{"category": c, "final": t // n} for c, (t, n) in sums.items()]


QUERIES: dict[str, Query] = {
    "q0": Query("q0", "SELECT auction, bidder, price, dateTime, extra FROM bid",
                q0, q0_reference),
    "q1": Query("q1", "SELECT auction, bidder, 0.908 * price AS price, dateTime, extra "
                      "FROM bid", q1, q1_reference),
    "q2": Query("q2", "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
                q2, q2_reference),
    "q3": Query("q3", "SELECT P.name, P.city, P.state, A.id FROM auction AS A INNER JOIN "
                      "person AS P ON A.seller = P.id WHERE A.category = 10 AND "
                      "(P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')",
                q3, q3_reference),
    "q7": Query("q7", "SELECT B.auction, B.price, B.bidder, B.dateTime, B.extra FROM bid B "
                      "JOIN (SELECT MAX(price) AS maxprice, window_end AS dateTime FROM "
                      "TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND)) "
                      "GROUP BY window_start, window_end) B1 ON B.price = B1.maxprice "
                      "WHERE B.dateTime BETWEEN B1.dateTime - INTERVAL '10' SECOND "
                      "AND B1.dateTime", q7, q7_reference, event_time=True),
    "q8": Query("q8", "SELECT P.id, P.name, P.starttime FROM (SELECT id, name, window_start "
                      "AS starttime, window_end AS endtime FROM TABLE(TUMBLE(TABLE person, "
                      "DESCRIPTOR(dateTime), INTERVAL '10' SECOND)) GROUP BY id, name, "
                      "window_start, window_end) P JOIN (SELECT seller, window_start AS "
                      "starttime, window_end AS endtime FROM TABLE(TUMBLE(TABLE auction, "
                      "DESCRIPTOR(dateTime), INTERVAL '10' SECOND)) GROUP BY seller, "
                      "window_start, window_end) A ON P.id = A.seller AND P.starttime = "
                      "A.starttime AND P.endtime = A.endtime", q8, q8_reference,
                event_time=True),
    "q5": Query("q5", "SELECT AuctionBids.auction, AuctionBids.num FROM (SELECT auction, "
                      "count(*) AS num, window_start AS starttime, window_end AS endtime FROM "
                      "TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, "
                      "INTERVAL '10' SECOND)) GROUP BY auction, window_start, window_end) AS "
                      "AuctionBids JOIN (SELECT max(CountBids.num) AS maxn, "
                      "CountBids.starttime, CountBids.endtime FROM (SELECT count(*) AS num, "
                      "window_start AS starttime, window_end AS endtime FROM TABLE(HOP(TABLE "
                      "bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND)) "
                      "GROUP BY auction, window_start, window_end) AS CountBids GROUP BY "
                      "CountBids.starttime, CountBids.endtime) AS MaxBids ON "
                      "AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = "
                      "MaxBids.endtime AND AuctionBids.num >= MaxBids.maxn",
                q5, q5_reference, event_time=True),
    "q11": Query("q11", "SELECT B.bidder, count(*) AS bid_count, SESSION_START(B.dateTime, "
                        "INTERVAL '10' SECOND) AS starttime, SESSION_END(B.dateTime, "
                        "INTERVAL '10' SECOND) AS endtime FROM bid B GROUP BY B.bidder, "
                        "SESSION(B.dateTime, INTERVAL '10' SECOND)",
                 q11, q11_reference, event_time=True),
    "q12": Query("q12", "SELECT B.bidder, count(*) AS bid_count, TUMBLE_START(B.p_time, "
                        "INTERVAL '10' SECOND) AS starttime, TUMBLE_END(B.p_time, INTERVAL "
                        "'10' SECOND) AS endtime FROM (SELECT *, PROCTIME() AS p_time FROM bid) "
                        "B GROUP BY B.bidder, TUMBLE(B.p_time, INTERVAL '10' SECOND)",
                 q12, q12_reference, event_time=True, deterministic=False,
                 flink=False),
    "q4": Query("q4", "SELECT Q.category, AVG(Q.final) AS final FROM (SELECT MAX(B.price) "
                      "AS final, A.category FROM auction A, bid B WHERE A.id = B.auction AND "
                      "B.dateTime BETWEEN A.dateTime AND A.expires GROUP BY A.id, A.category) "
                      "Q GROUP BY Q.category", q4, q4_reference, event_time=True),
}
