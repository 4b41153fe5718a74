"""Quix Streams: Kafka -> keyed running count -> Kafka, exactly once.

Run by ``bench/kafka.py`` inside its Quix Streams virtual environment, one process per unit
of parallelism (the processes share a consumer group, so Kafka splits the partitions). The
input is keyed by word, so the count is Quix's per-key state with no repartition step; the
output is ``<word> <count>`` keyed by the word, in Kafka transactions committed every second
(``processing_guarantee="exactly-once"``). Runs until stopped (SIGTERM).
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("bootstrap", "input", "output", "group", "state-dir"):
        ap.add_argument(f"--{name}", required=True)
    a = ap.parse_args()

    from quixstreams import Application

    app = Application(broker_address=a.bootstrap, consumer_group=a.group,
                      auto_offset_reset="earliest", processing_guarantee="exactly-once",
                      commit_interval=1.0, state_dir=a.state_dir, loglevel="WARNING",
                      use_changelog_topics=True)
    source = app.topic(a.input, key_deserializer="str", value_deserializer="str")
    sink = app.topic(a.output, key_serializer="str", value_serializer="str")

    def count(word: str, state) -> str:
        n = state.get("n", 0) + 1
        state.set("n", n)
        return f"{word} {n}"

    sdf = app.dataframe(source)
    sdf = sdf.apply(count, stateful=True)
    sdf.to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
