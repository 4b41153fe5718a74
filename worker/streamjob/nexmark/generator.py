"""The Nexmark event generator: persons, auctions and bids of an online auction, as a pure
function of the event number (so any range can be regenerated, replayed from a position or
split between subtasks).

It follows the Nexmark specification as the Beam and Flink Nexmark generators define it:

* **Proportions.** Out of every 50 consecutive event ids, 1 is a person, 3 are auctions and 46
  are bids (``id % 50``: 0 person, 1..3 auction, 4..49 bid).
* **Ids.** Person and auction ids count up from 1000 in the order they are created (the id of
  event ``e``'s person is the number of persons before it plus 1000). A new auction's seller
  and a bid's bidder are recent persons (one of the last 1000 "active" ones, or up to 10 ids
  ahead: a person not yet created); a bid's auction is one of the last 100 "in flight"
  auctions (or up to 10 ahead).
* **Skew.** With probability ``1 - 1/hot_sellers_ratio`` (3/4) a seller is the hot seller of
  its block of 100 persons; with ``1 - 1/hot_auction_ratio`` (1/2) a bid goes to the hot
  auction of its block of 100 auctions; with ``1 - 1/hot_bidders_ratio`` (3/4) the bidder is
  the hot bidder of its block of 100 persons. Half of the bids come from one of 4 hot channels
  (Google, Facebook, Baidu, Apple), the rest from one of 10,000 channels.
* **Prices** are ``round(10 ** (6 u) * 100)`` cents for a uniform ``u``: log-uniform between
  1 and 1,000,000 dollars. An auction's reserve is its initial bid plus another such price.
  Categories are 10..14. An auction lasts ``1 + uniform(2 * horizon)`` ms, where the horizon
  is the event time 100 auctions (1666 events) later minus now.
* **Event time.** Event number ``n`` happens at ``base_time_ms + n * 1000 // events_per_second``
  (the inter-event delay of a constant rate; base time 2015-07-15T00:00:00Z as in Beam), so
  event time never decreases with the event number. With ``out_of_order_group_size`` g > 1
  the ids within each group of g events are permuted (``base + (n * 953) % g``, as Beam does)
  while the timestamps stay in order.
* **Sizes.** Each event carries an ``extra`` string padding it to an average of 200 (person),
  500 (auction) or 100 (bid) bytes (+- 20 %).

Randomness is counter based: draw ``k`` of event id ``e`` is ``splitmix64`` of ``(seed, e,
k)``, computed for a whole batch of events at once with numpy. (Beam seeds a
``java.util.Random`` with the event id instead: the same idea, per event; the draws are not
bit-identical to Beam's, the distributions are.) Strings are slices of two fixed pools of
random text made the same way, so building an event is a few slices and one format.

An event is the JSON object the Flink Nexmark table reads, one nested row per kind:
``{"event_type": 0|1|2, "person"|"auction"|"bid": {...}}`` with ``dateTime`` (and an auction's
``expires``) in epoch milliseconds. :meth:`NexmarkGenerator.json_lines` writes exactly the
text ``json.dumps(event, separators=(",", ":"))`` of :meth:`NexmarkGenerator.events` (every
string is plain ASCII without quotes or backslashes, so no escaping is needed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PERSON, AUCTION, BID = 0, 1, 2
KINDS = ("person", "auction", "bid")

FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
HOT_AUCTION_RATIO = 100   # one hot auction per block of 100 auctions
HOT_SELLER_RATIO = 100
HOT_BIDDER_RATIO = 100
HOT_CHANNELS_RATIO = 2
CHANNELS_NUMBER = 10_000
PERSON_ID_LEAD = 10
AUCTION_ID_LEAD = 10
MIN_STRING_LENGTH = 3
BASE_TIME_MS = 1_436_918_400_000  # 2015-07-15T00:00:00Z, Beam's BASE_TIME

FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah",
               "Deiter", "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones",
              "Noris")
US_CITIES = ("Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond",
             "Seattle", "Kent", "Cheyenne")
US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
HOT_URLS = tuple(f"https://www.nexmark.com/{a}/{b}/cidro/item.htm?query=1"
                 for a, b in (("abo", "eoci"), ("eoax", "oad"), ("abo", "jack"),
                              ("abo", "micah")))

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SLOT = np.uint64(0xD1B54A32D192ED03)
_POOL_SIZE = 1 << 16


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def draws(ids: np.ndarray, slots: int, seed: int = 0) -> np.ndarray:
    """``slots`` independent uniform 64-bit draws per event id: shape (len(ids), slots)."""
    with np.errstate(over="ignore"):
        base = ids.astype(np.uint64)[:, None] * _GOLDEN + np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        k = (np.arange(1, slots + 1, dtype=np.uint64) * _SLOT)[None, :]
        return _mix(base + k)


def below(r: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Uniform integers in ``[0, n)`` from 64-bit draws (53 bits of each, as a double)."""
    u = (r >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return np.floor(u * n).astype(np.int64)


def unit(r: np.ndarray) -> np.ndarray:
    return (r >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _pool(salt: int, spaces: bool) -> str:
    """A fixed pool of random lowercase text; with ``spaces`` one character in 13 is a space
    (Beam's ``nextString``); the same on every machine and every numpy version."""
    r = _mix(np.arange(_POOL_SIZE, dtype=np.uint64) + np.uint64(salt))
    letters = (below(r, 26) + ord("a")).astype(np.uint8)
    if spaces:
        letters[below(_mix(r), 13) == 0] = ord(" ")
    return letters.tobytes().decode("ascii")


TEXT_POOL = _pool(0x5EED_0001, spaces=True)     # names and descriptions
LETTER_POOL = _pool(0x5EED_0002, spaces=False)  # the exact-length ``extra`` padding


def _channel_urls(count: int) -> tuple[str, ...]:
    """The URLs of non-hot channels ``0 .. count - 1``: three short path parts and the channel
    id. Drawn for all channels in one batch (one ``draws`` call per channel took ~0.6 s of CPU
    at every import, in every process of a Nexmark job)."""
    r = draws(np.arange(count, dtype=np.uint64), 6, seed=0x0C4A)
    start = below(r[:, 1::2], _POOL_SIZE - 16)
    end = start + MIN_STRING_LENGTH + below(r[:, 0::2], 5)
    pool = LETTER_POOL
    return tuple(f"https://www.nexmark.com/{pool[s0:e0]}/{pool[s1:e1]}/{pool[s2:e2]}"
                 f"/item.htm?query=1&channel_id={n}"
                 for n, (s0, s1, s2), (e0, e1, e2)
                 in zip(range(count), start.tolist(), end.tolist(), strict=True))


CHANNELS = tuple(f"channel-{n}" for n in range(CHANNELS_NUMBER))
CHANNEL_URLS = _channel_urls(CHANNELS_NUMBER)
# The channel and url fields of a bid as JSON text, hot channels first.
_CHANNEL_JSON = tuple(f'"channel":"{c}","url":"{u}"'
                      for c, u in zip(HOT_CHANNELS + CHANNELS, HOT_URLS + CHANNEL_URLS,
                                      strict=True))


@dataclass(frozen=True)
class NexmarkConfig:
    """The generator's parameters (Nexmark's names; the defaults are Nexmark's)."""

    events_per_second: int = 10_000     # event-time rate: sets the inter-event delay
    base_time_ms: int = BASE_TIME_MS
    first_event_id: int = 0
    person_proportion: int = 1
    auction_proportion: int = 3
    bid_proportion: int = 46
    hot_auction_ratio: int = 2
    hot_sellers_ratio: int = 4
    hot_bidders_ratio: int = 4
    num_active_people: int = 1000
    num_in_flight_auctions: int = 100
    avg_person_byte_size: int = 200
    avg_auction_byte_size: int = 500
    avg_bid_byte_size: int = 100
    out_of_order_group_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.events_per_second < 1:
            raise ValueError(f"events_per_second must be at least 1, got "
                             f"{self.events_per_second}")
        if min(self.person_proportion, self.auction_proportion, self.bid_proportion) < 1:
            raise ValueError("every proportion must be at least 1")
        if min(self.hot_auction_ratio, self.hot_sellers_ratio, self.hot_bidders_ratio) < 1:
            raise ValueError("hot ratios must be at least 1 (1: no hot items)")
        if self.out_of_order_group_size < 1:
            raise ValueError("out_of_order_group_size must be at least 1")

    @property
    def total_proportion(self) -> int:
        return self.person_proportion + self.auction_proportion + self.bid_proportion


class NexmarkGenerator:
    """Events by number: :meth:`events` (dicts) and :meth:`json_lines` (their JSON text) for
    any sequence of event numbers, in the order given."""

    def __init__(self, config: NexmarkConfig | None = None):
        self.config = c = config or NexmarkConfig()
        self._pp, self._ap, self._tp = c.person_proportion, c.auction_proportion, \
            c.total_proportion
        # Events between an auction and the one 100 auctions later (its horizon).
        self._events_for_auctions = c.num_in_flight_auctions * self._tp // self._ap

    # -------------------------------------------------------------- pure arithmetic of ids

    def event_ids(self, numbers: np.ndarray) -> np.ndarray:
        g = self.config.out_of_order_group_size
        if g > 1:
            numbers = numbers // g * g + (numbers * 953) % g
        return numbers + self.config.first_event_id

    def timestamps(self, numbers: np.ndarray) -> np.ndarray:
        c = self.config
        return c.base_time_ms + numbers * 1000 // c.events_per_second

    def kinds(self, ids: np.ndarray) -> np.ndarray:
        rem = ids % self._tp
        return np.where(rem < self._pp, PERSON, np.where(rem < self._pp + self._ap, AUCTION, BID))

    def last_person(self, ids: np.ndarray) -> np.ndarray:
        """Base-0 id of the newest person at event ``id`` (its own, for a person event)."""
        epoch, offset = ids // self._tp, ids % self._tp
        return epoch * self._pp + np.minimum(offset, self._pp - 1)

    def last_auction(self, ids: np.ndarray) -> np.ndarray:
        """Base-0 id of the newest auction at event ``id`` (its own, for an auction event)."""
        epoch, offset = ids // self._tp, ids % self._tp
        before = offset < self._pp
        epoch = np.where(before, epoch - 1, epoch)
        offset = np.where(before | (offset >= self._pp + self._ap), self._ap - 1,
                          offset - self._pp)
        return epoch * self._ap + offset

    def next_person(self, ids: np.ndarray, r: np.ndarray) -> np.ndarray:
        """A recent (active) person, or one up to 10 ids ahead, base 0."""
        people = self.last_person(ids) + 1
        active = np.minimum(people, self.config.num_active_people)
        return people - active + below(r, active + PERSON_ID_LEAD)

    def next_auction(self, ids: np.ndarray, r: np.ndarray) -> np.ndarray:
        """An auction in flight, or one up to 10 ids ahead, base 0."""
        newest = self.last_auction(ids)
        oldest = np.maximum(newest - self.config.num_in_flight_auctions, 0)
        return oldest + below(r, newest - oldest + 1 + AUCTION_ID_LEAD)

    @staticmethod
    def prices(r: np.ndarray) -> np.ndarray:
        return np.rint(np.power(10.0, unit(r) * 6.0) * 100.0).astype(np.int64)

    # -------------------------------------------------------------- events

    def json_lines(self, numbers: Sequence[int] | np.ndarray) -> list[str]:
        """The events of ``numbers`` as compact JSON text (no newline)."""
        return self._build(numbers, as_json=True)

    def events(self, numbers: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        return self._build(numbers, as_json=False)

    def _build(self, numbers: Sequence[int] | np.ndarray, as_json: bool) -> list[Any]:
        n = (np.arange(numbers.start, numbers.stop, numbers.step, dtype=np.int64)
             if isinstance(numbers, range)  # the generator source's batches (record_ids)
             else np.asarray(numbers, dtype=np.int64))
        if n.size == 0:
            return []
        if n.min() < 0:
            raise ValueError("event numbers are 0 or more")
        ids = self.event_ids(n)
        ts = self.timestamps(n)
        kind = self.kinds(ids)
        out: list[Any] = [None] * n.size
        for k, build in ((PERSON, self._persons), (AUCTION, self._auctions), (BID, self._bids)):
            idx = np.flatnonzero(kind == k)
            if idx.size:
                for i, e in zip(idx.tolist(), build(n[idx], ids[idx], ts[idx], as_json),
                                strict=True):
                    out[i] = e
        return out

    def _bids(self, numbers: np.ndarray, ids: np.ndarray, ts: np.ndarray,
              as_json: bool) -> Iterable[Any]:
        c = self.config
        r = draws(ids, 9, c.seed)
        hot_auction = below(r[:, 0], c.hot_auction_ratio) > 0
        auction = np.where(hot_auction,
                           self.last_auction(ids) // HOT_AUCTION_RATIO * HOT_AUCTION_RATIO,
                           self.next_auction(ids, r[:, 1])) + FIRST_AUCTION_ID
        hot_bidder = below(r[:, 2], c.hot_bidders_ratio) > 0
        bidder = np.where(hot_bidder,
                          self.last_person(ids) // HOT_BIDDER_RATIO * HOT_BIDDER_RATIO + 1,
                          self.next_person(ids, r[:, 3])) + FIRST_PERSON_ID
        price = self.prices(r[:, 4])
        hot_channel = below(r[:, 5], HOT_CHANNELS_RATIO) > 0
        channel = np.where(hot_channel, below(r[:, 6], len(HOT_CHANNELS)),
                           len(HOT_CHANNELS) + below(r[:, 6], CHANNELS_NUMBER))
        # Beam's nextExtra: a bid's fixed fields count 32 bytes.
        desired = c.avg_bid_byte_size - 32
        delta = int(desired * 0.2 + 0.5)
        length = (desired - delta + (below(r[:, 7], 2 * delta) if delta else 0)) \
            if desired > 0 else np.zeros(ids.size, dtype=np.int64)
        # A bound that does not depend on the batch: an event is a function of its number.
        offset = below(r[:, 8], _POOL_SIZE - max(desired + delta, 0) - 1)
        names = HOT_CHANNELS + CHANNELS
        urls = HOT_URLS + CHANNEL_URLS
        pool = LETTER_POOL
        rows = zip(auction.tolist(), bidder.tolist(), price.tolist(), channel.tolist(),
                   ts.tolist(), offset.tolist(), (offset + length).tolist(), strict=True)
        if as_json:
            fields = _CHANNEL_JSON
            return [f'{{"event_type":2,"bid":{{"auction":{a},"bidder":{b},"price":{p},'
                    f'{fields[ch]},"dateTime":{t},"extra":"{pool[o:e]}"}}}}'
                    for a, b, p, ch, t, o, e in rows]
        return [{"event_type": 2, "bid": {"auction": a, "bidder": b, "price": p,
                                          "channel": names[ch], "url": urls[ch],
                                          "dateTime": t, "extra": pool[o:e]}}
                for a, b, p, ch, t, o, e in rows]

    def _persons(self, numbers: np.ndarray, ids: np.ndarray, ts: np.ndarray,
                 as_json: bool) -> Iterable[Any]:
        c = self.config
        r = draws(ids, 14, c.seed)
        pid = (self.last_person(ids) + FIRST_PERSON_ID).tolist()
        first = below(r[:, 0], len(FIRST_NAMES)).tolist()
        last = below(r[:, 1], len(LAST_NAMES)).tolist()
        user = _strings(r[:, 2], r[:, 3], 7)
        domain = _strings(r[:, 4], r[:, 5], 5)
        card = below(r[:, 6:10], 10_000).tolist()
        city = below(r[:, 10], len(US_CITIES)).tolist()
        state = below(r[:, 11], len(US_STATES)).tolist()
        extra_u, extra_off = unit(r[:, 12]).tolist(), below(r[:, 13], _POOL_SIZE - 512).tolist()
        out = []
        for i, t in enumerate(ts.tolist()):
            name = f"{FIRST_NAMES[first[i]]} {LAST_NAMES[last[i]]}"
            email = f"{user[i]}@{domain[i]}.com"
            a, b, c4, d = card[i]
            cc = f"{a:04d} {b:04d} {c4:04d} {d:04d}"
            size = (8 + len(name) + len(email) + len(cc) + len(US_CITIES[city[i]])
                    + len(US_STATES[state[i]]) + 8)
            extra = _extra(size, c.avg_person_byte_size, extra_u[i], extra_off[i])
            person = {"id": pid[i], "name": name, "emailAddress": email, "creditCard": cc,
                      "city": US_CITIES[city[i]], "state": US_STATES[state[i]], "dateTime": t,
                      "extra": extra}
            out.append(_json({"event_type": 0, "person": person}) if as_json
                       else {"event_type": 0, "person": person})
        return out

    def _auctions(self, numbers: np.ndarray, ids: np.ndarray, ts: np.ndarray,
                  as_json: bool) -> Iterable[Any]:
        c = self.config
        r = draws(ids, 12, c.seed)
        aid = (self.last_auction(ids) + FIRST_AUCTION_ID).tolist()
        hot_seller = below(r[:, 0], c.hot_sellers_ratio) > 0
        seller = (np.where(hot_seller,
                           self.last_person(ids) // HOT_SELLER_RATIO * HOT_SELLER_RATIO,
                           self.next_person(ids, r[:, 1])) + FIRST_PERSON_ID).tolist()
        category = (FIRST_CATEGORY_ID + below(r[:, 2], NUM_CATEGORIES)).tolist()
        initial = self.prices(r[:, 3])
        reserve = (initial + self.prices(r[:, 9])).tolist()
        # Length: up to twice the event-time distance to the auction 100 auctions later.
        horizon = self.timestamps(numbers + self._events_for_auctions) - ts
        expires = (ts + 1 + below(r[:, 4], np.maximum(horizon * 2, 1))).tolist()
        item = _strings(r[:, 5], r[:, 6], 20)
        desc = _strings(r[:, 7], r[:, 8], 100)
        extra_u, extra_off = unit(r[:, 10]).tolist(), below(r[:, 11], _POOL_SIZE - 1024).tolist()
        initial = initial.tolist()
        out = []
        for i, t in enumerate(ts.tolist()):
            size = 8 + len(item[i]) + len(desc[i]) + 8 + 8 + 8 + 8 + 8
            auction = {"id": aid[i], "itemName": item[i], "description": desc[i],
                       "initialBid": initial[i], "reserve": reserve[i], "dateTime": t,
                       "expires": expires[i], "seller": seller[i], "category": category[i],
                       "extra": _extra(size, c.avg_auction_byte_size, extra_u[i], extra_off[i])}
            out.append(_json({"event_type": 1, "auction": auction}) if as_json
                       else {"event_type": 1, "auction": auction})
        return out


def _strings(r_len: np.ndarray, r_off: np.ndarray, max_length: int) -> list[str]:
    """Beam's ``nextString(max_length)``: 3 to max_length - 1 characters, some of them spaces,
    trimmed."""
    length = MIN_STRING_LENGTH + below(r_len, max_length - MIN_STRING_LENGTH)
    off = below(r_off, _POOL_SIZE - max_length)
    pool = TEXT_POOL
    return [pool[o:o + n].strip() for o, n in zip(off.tolist(), length.tolist(), strict=True)]


def _extra(size: int, average: int, u: float, offset: int) -> str:
    """Beam's ``nextExtra``: padding that brings ``size`` bytes to ``average`` +- 20 %."""
    if size > average:
        return ""
    desired = average - size
    delta = int(desired * 0.2 + 0.5)
    length = desired - delta + (int(u * 2 * delta) if delta else 0)
    return LETTER_POOL[offset:offset + length]


def _json(event: dict[str, Any]) -> str:
    """Compact JSON of a generated event (its strings never need escaping)."""
    kind = KINDS[event["event_type"]]
    fields = ",".join(f'"{k}":"{v}"' if isinstance(v, str) else f'"{k}":{v}'
                      for k, v in event[kind].items())
    return f'{{"event_type":{event["event_type"]},"{kind}":{{{fields}}}}}'


def event_time(event: dict[str, Any]) -> int:
    """Event time of an event (epoch ms): its row's ``dateTime``."""
    return event[KINDS[event["event_type"]]]["dateTime"]
