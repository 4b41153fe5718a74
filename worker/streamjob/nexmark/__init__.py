"""Nexmark: the online-auction benchmark (persons, auctions, bids) — generator, source,
writers and the queries (:mod:`streamjob.examples.nexmark`)."""

from streamjob.nexmark.generator import (
    AUCTION,
    BID,
    PERSON,
    NexmarkConfig,
    NexmarkGenerator,
    event_time,
)
from streamjob.nexmark.source import NexmarkSource, produce, write_file

__all__ = ["AUCTION", "BID", "PERSON", "NexmarkConfig", "NexmarkGenerator", "NexmarkSource",
           "event_time", "produce", "write_file"]
