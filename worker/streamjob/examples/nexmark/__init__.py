"""The Nexmark queries as streamjob pipelines (``streamjob.examples.nexmark:build``).

    streamjob run job.yaml --arg query=q1 --arg input=events.json --arg output=out

``input`` is a JSON-lines file of Nexmark events (``python -m streamjob.nexmark``); without it
the job generates ``events`` events itself (:class:`~streamjob.nexmark.NexmarkSource`, at
``events_per_second`` of event time, throttled to ``rate`` events/s of wall time if given).
Each result row is written as one compact JSON object per line, with times as epoch
milliseconds, to the exactly-once file sink at ``output``. ``rebalance=true`` parses the
JSON after a round-robin exchange instead of in the source (for the stateless queries at
p > 1 reading one file: the parse is the work to spread).

Queries (the Nexmark SQL of each is in :mod:`streamjob.examples.nexmark.queries`):
q0 pass-through, q1 currency conversion, q2 selection, q3 local item suggestion
(incremental join of persons and auctions), q4 average winning price per category (final
values at the end of input: its result is an updating table), q5 hot items (the sliding
window operator, then a tumbling window for the top auctions of each), q7 highest bid per
10 s window, q8 new users (tumbling-window join of persons and auctions), q11 user sessions
(session windows, with event-time timers), q12 bids per bidder in processing-time windows of
10 s (not deterministic: the windows follow the wall clock).
"""

from __future__ import annotations

from typing import Any

import orjson

from streamjob import Pipeline
from streamjob.connectors import FileSink, FileSource
from streamjob.examples.nexmark import queries
from streamjob.nexmark import NexmarkConfig, NexmarkSource, event_time

WATERMARK_DELAY_MS = 4000  # Nexmark's: WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND

QUERIES = queries.QUERIES


def dumps(row: dict[str, Any]) -> str:
    return orjson.dumps(row).decode()


def truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def build(args: dict[str, Any]) -> Pipeline:
    name = str(args.get("query", "q0"))
    if name not in QUERIES:
        raise ValueError(f"nexmark: unknown query {name!r}; implemented: "
                         f"{', '.join(QUERIES)}")
    query = QUERIES[name]
    output = str(args.get("output", "output"))
    rebalance = truthy(args.get("rebalance", False)) and not query.event_time
    p = Pipeline()
    if args.get("input"):
        source = FileSource(str(args["input"]), rate=float(args.get("rate", 0)),
                            decode=None if rebalance else orjson.loads)
        stream = p.source(source, "Source: nexmark file")
    else:
        config = NexmarkConfig(events_per_second=int(args.get("events_per_second", 10_000)))
        stream = p.source(NexmarkSource(int(args.get("events", 1_000_000)), config,
                                        rate=float(args.get("rate", 0))),
                          "Source: nexmark")
    if rebalance:
        stream = stream.rebalance().map(orjson.loads, "Parse JSON")
    if query.event_time:
        stream = stream.assign_timestamps(event_time, max_out_of_orderness=WATERMARK_DELAY_MS)
    query.build(stream).sink(FileSink(output, fmt=dumps), "Sink: files")
    return p
