"""Write Nexmark events once: ``python -m streamjob.nexmark --events N --out FILE`` (JSON
lines) or ``--kafka HOST:PORT --topic T``; ``--events-per-second`` sets the event-time rate."""

from __future__ import annotations

import argparse
import sys
import time

from streamjob.nexmark.generator import NexmarkConfig
from streamjob.nexmark.source import produce, write_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamjob.nexmark", description=__doc__)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--events-per-second", type=int, default=NexmarkConfig.events_per_second,
                    help="event-time rate (the inter-event delay is 1/rate)")
    ap.add_argument("--out", help="JSON-lines file to write")
    ap.add_argument("--kafka", help="bootstrap servers to produce to")
    ap.add_argument("--topic", default="nexmark")
    a = ap.parse_args(argv)
    if bool(a.out) == bool(a.kafka):
        ap.error("give exactly one of --out and --kafka")
    config = NexmarkConfig(events_per_second=a.events_per_second)
    t0 = time.perf_counter()
    if a.out:
        size = write_file(a.out, a.events, config)
        what = f"{a.out} ({size / 1e6:.1f} MB)"
    else:
        produce(a.kafka, a.topic, a.events, config)
        what = f"Kafka topic {a.topic} at {a.kafka}"
    secs = time.perf_counter() - t0
    print(f"{a.events} Nexmark events to {what} in {secs:.1f}s "
          f"({a.events / max(secs, 1e-9):,.0f} events/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
