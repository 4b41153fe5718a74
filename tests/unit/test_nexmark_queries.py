"""Each Nexmark query's pipeline on small hand-checked inputs, run in process through its
operators (the same functions and keyed operators the runtime chains)."""

import math
from collections import Counter

from streamjob import Pipeline
from streamjob.connectors import DiscardSink
from streamjob.examples.nexmark import QUERIES
from streamjob.nexmark import event_time
from streamjob.operators import KeyedStateBackend

T0 = 1_436_918_400_000  # a multiple of 10 s, like every window start


def bid(auction, price, t, bidder=7, extra="x"):
    return {"event_type": 2, "bid": {"auction": auction, "bidder": bidder, "price": price,
                                     "channel": "Google", "url": "u", "dateTime": T0 + t,
                                     "extra": extra}}


def person(pid, state, t, name="Kate Smith"):
    return {"event_type": 0, "person": {"id": pid, "name": name, "emailAddress": "e",
                                        "creditCard": "c", "city": "Bend", "state": state,
                                        "dateTime": T0 + t, "extra": ""}}


def auction(aid, seller, category, t):
    return {"event_type": 1, "auction": {"id": aid, "itemName": "i", "description": "d",
                                         "initialBid": 1, "reserve": 2, "dateTime": T0 + t,
                                         "expires": T0 + t + 5, "seller": seller,
                                         "category": category, "extra": ""}}


def run(query: str, events: list[dict]) -> list[dict]:
    """The rows of ``query`` over ``events``: its steps applied in order, keyed operators fed
    one batch then the end-of-input watermark (every window fires)."""
    p = Pipeline()
    stream = p.source(object())
    if QUERIES[query].event_time:
        stream = stream.assign_timestamps(event_time)
    QUERIES[query].build(stream).sink(DiscardSink())
    records = events
    for task in p.tasks:
        for step in task.steps:
            if step.kind == "map":
                records = [step.fn(r) for r in records]
            elif step.kind == "filter":
                records = [r for r in records if step.fn(r)]
            elif step.kind == "flat_map":
                records = [y for r in records for y in step.fn(r)]
            elif step.kind == "keyed":
                backend = KeyedStateBackend()
                backend.max_parallelism = 128
                op = step.fn.create(backend, task.exchange.key_fn)
                records = op.process_batch(records)
                if hasattr(op, "on_watermark"):
                    records += op.on_watermark(math.inf)
    return records


def rows(dicts):
    return Counter(tuple(sorted(d.items())) for d in dicts)


def test_q0_passes_bids_through_and_drops_persons_and_auctions():
    got = run("q0", [person(1, "OR", 0), bid(1000, 250, 5, extra="e"), auction(1, 1, 10, 6)])
    assert got == [{"auction": 1000, "bidder": 7, "price": 250, "dateTime": T0 + 5,
                    "extra": "e"}]


def test_q1_converts_prices_exactly_to_three_decimals():
    got = run("q1", [bid(1, 1000, 0), bid(2, 123, 1), bid(3, 99_999_999, 2)])
    assert [r["price"] for r in got] == [908.0, 111.684, 90_799_999.092]


def test_q2_keeps_the_bids_of_auctions_divisible_by_123():
    got = run("q2", [bid(246, 10, 0), bid(247, 11, 1), bid(1230, 12, 2), person(1, "OR", 3)])
    assert got == [{"auction": 246, "price": 10}, {"auction": 1230, "price": 12}]


def test_q3_joins_sellers_in_or_id_ca_with_their_category_10_auctions_in_any_order():
    events = [person(1, "OR", 0, "Ann A"), auction(100, 1, 10, 1),   # person first
              auction(101, 1, 11, 2),                                  # wrong category
              auction(102, 2, 10, 3), person(2, "CA", 4, "Bob B"),     # auction first
              person(3, "WA", 5), auction(103, 3, 10, 6),              # wrong state
              auction(104, 1, 10, 7)]
    assert rows(run("q3", events)) == rows([
        {"name": "Ann A", "city": "Bend", "state": "OR", "id": 100},
        {"name": "Bob B", "city": "Bend", "state": "CA", "id": 102},
        {"name": "Ann A", "city": "Bend", "state": "OR", "id": 104}])


def test_q7_emits_the_top_bids_of_each_window_and_a_tie_on_its_end():
    events = [bid(1, 5, 1000), bid(2, 9, 2000), bid(3, 9, 3000),
              bid(4, 9, 10_000),                 # on window 0's end: a candidate of both
              bid(5, 3, 15_000), bid(6, 8, 25_000)]
    got = rows({"auction": r["auction"], "start": (r["dateTime"] - T0) // 10_000}
               for r in run("q7", events))
    # window 0 (max 9): bids 2, 3 and 4 (at its end); window 1 (max 9): bid 4; window 2: 6
    assert got == Counter({(("auction", 2), ("start", 0)): 1, (("auction", 3), ("start", 0)): 1,
                           (("auction", 4), ("start", 1)): 2, (("auction", 6), ("start", 2)): 1})
    assert rows(run("q7", events)) == rows(QUERIES["q7"].reference(events))


def test_q8_reports_persons_who_opened_an_auction_in_the_same_10_second_window():
    events = [person(5, "OR", 1000, "Ann A"), auction(100, 5, 10, 5000),  # same window
              person(6, "OR", 9000), auction(101, 6, 10, 11_000),        # next window
              person(7, "OR", 12_000), auction(102, 7, 10, 13_000), auction(103, 7, 11, 14_000)]
    assert rows(run("q8", events)) == rows([
        {"id": 5, "name": "Ann A", "starttime": T0},
        {"id": 7, "name": "Kate Smith", "starttime": T0 + 10_000}])


def test_q5_reports_the_auctions_with_most_bids_in_each_sliding_window():
    # auction 1: bids at 1 s and 3 s; auction 2: one bid at 9 s; auction 3: two at 11 s
    events = [bid(1, 1, 1000), bid(1, 1, 3000), bid(2, 1, 9000), bid(3, 1, 11_000),
              bid(3, 1, 11_500)]
    by_window = Counter()
    for r in run("q5", events):
        by_window[(r["auction"], r["num"])] += 1
    # Window -8 s holds only the bid at 1 s (top: auction 1, 1 bid); windows -6 s .. 0 s
    # hold both of auction 1's (4 windows); windows 2 s .. 10 s hold auction 3's two bids
    # beside at most one of auctions 1 and 2 (5 windows).
    assert by_window == Counter({(1, 1): 1, (1, 2): 4, (3, 2): 5})
    assert rows(run("q5", events)) == rows(QUERIES["q5"].reference(events))


def test_q11_counts_each_bidders_bids_per_session_of_10_seconds_gap():
    events = [bid(1, 1, 0, bidder=8), bid(1, 1, 4000, bidder=8),
              bid(1, 1, 14_000, bidder=8),   # exactly 10 s after: Flink merges (ends touch)
              bid(1, 1, 30_000, bidder=8),   # a new session
              bid(1, 1, 5000, bidder=9)]
    assert rows(run("q11", events)) == rows([
        {"bidder": 8, "bid_count": 3, "starttime": T0, "endtime": T0 + 24_000},
        {"bidder": 8, "bid_count": 1, "starttime": T0 + 30_000, "endtime": T0 + 40_000},
        {"bidder": 9, "bid_count": 1, "starttime": T0 + 5000, "endtime": T0 + 15_000}])
    assert rows(run("q11", events)) == rows(QUERIES["q11"].reference(events))


def test_q12_counts_bids_per_bidder_in_processing_time_windows_of_a_given_clock():
    """q12 on a hand-made clock: a bid counts in the 10-second window of the wall clock when
    it is processed (not of its event time); a window is emitted when its processing-time
    timer fires, and the windows still open at the end of input by the final watermark."""
    from streamjob.examples.nexmark.queries import Q12Count
    from streamjob.operators import ProcessOperator

    now = [T0 + 3000]
    backend = KeyedStateBackend()
    backend.max_parallelism = 128
    op = ProcessOperator(backend, lambda e: e["bid"]["bidder"], Q12Count(),
                         clock=lambda: now[0])
    # event times are irrelevant: the bids at 50 s of event time fall in the wall clock's
    assert op.process_batch([bid(1, 1, 50_000, bidder=8), bid(1, 1, 0, bidder=8),
                             bid(1, 1, 0, bidder=9)]) == []
    now[0] = T0 + 9998
    assert op.on_processing_time() == []                 # the window [0 s, 10 s) is open
    op.process_batch([bid(1, 1, 0, bidder=8)])
    now[0] = T0 + 12_000
    op.process_batch([bid(1, 1, 0, bidder=9)])           # in the next window
    assert rows(op.on_processing_time()) == rows([
        {"bidder": 8, "bid_count": 3, "starttime": T0, "endtime": T0 + 10_000},
        {"bidder": 9, "bid_count": 1, "starttime": T0, "endtime": T0 + 10_000}])
    assert op.on_watermark(T0 + 60_000) == []            # event time does not fire them
    assert op.on_watermark(math.inf) == [                # the end of input does
        {"bidder": 9, "bid_count": 1, "starttime": T0 + 10_000, "endtime": T0 + 20_000}]
    assert op.on_processing_time() == [] and op.on_watermark(math.inf) == []


def test_q12_counts_every_bid_once_whatever_the_clock():
    from streamjob.examples.nexmark.queries import q12_totals

    events = [bid(1, 1, t, bidder=b) for t, b in ((0, 8), (1, 9), (20_000, 8), (3, 8))]
    assert rows(q12_totals(run("q12", events))) == rows(QUERIES["q12"].reference(events)) \
        == rows([{"bidder": 8, "bid_count": 3}, {"bidder": 9, "bid_count": 1}])


def test_q4_averages_the_winning_bid_in_range_of_each_auction_per_category():
    events = [bid(100, 70, 1),                       # before its auction arrives, in range
              auction(100, 1, 10, 0), bid(100, 50, 2), bid(100, 90, 6),  # 6 > expires (5)
              auction(101, 1, 10, 10), bid(101, 5, 11), bid(101, 8, 12),
              auction(102, 1, 11, 20), bid(102, 3, 19),  # before its start: no winner
              auction(103, 1, 12, 30), bid(103, 7, 31)]
    # category 10: winners 70 and 8 -> (70 + 8) // 2 = 39; category 12: 7; category 11: none
    assert rows(run("q4", events)) == rows([{"category": 10, "final": 39},
                                            {"category": 12, "final": 7}])
    assert rows(run("q4", events)) == rows(QUERIES["q4"].reference(events))
