"""Flink SQL with Flink's Kafka connector: Kafka -> keyed running count -> Kafka, exactly once.

Run by ``bench/kafka.py`` inside the PyFlink virtual environment (bench/peers/run.py makes it),
with the ``flink-sql-connector-kafka`` jar from Maven Central. The source is bounded at the
end offsets seen at start (``scan.bounded.mode = latest-offset``); the sink writes
``<word> <count>`` keyed by the word in Kafka transactions committed on checkpoints (every
second, and the final one when the bounded input is done).
"""

from __future__ import annotations

import argparse
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("bootstrap", "input", "output", "jar", "txn-prefix"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--checkpoint-ms", type=int, default=1000)
    a = ap.parse_args()

    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    c = t_env.get_config()
    c.set("pipeline.jars", f"file://{a.jar}")
    c.set("parallelism.default", str(a.parallelism))
    c.set("execution.checkpointing.interval", f"{a.checkpoint_ms} ms")
    c.set("state.backend.type", "hashmap")
    common = f"'connector' = 'kafka', 'properties.bootstrap.servers' = '{a.bootstrap}'"
    t_env.execute_sql(f"""
        CREATE TABLE words (word STRING, pt AS PROCTIME()) WITH (
          {common}, 'topic' = '{a.input}', 'properties.group.id' = '{a.txn_prefix}',
          'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
          'format' = 'raw')""")
    # The broker caps transactions at 15 min; Flink's producer default (1 h) would be refused.
    t_env.execute_sql(f"""
        CREATE TABLE counts (word STRING, line STRING) WITH (
          {common}, 'topic' = '{a.output}',
          'key.format' = 'raw', 'key.fields' = 'word',
          'value.format' = 'raw', 'value.fields-include' = 'EXCEPT_KEY',
          'sink.delivery-guarantee' = 'exactly-once',
          'sink.transactional-id-prefix' = '{a.txn_prefix}',
          'properties.transaction.timeout.ms' = '600000')""")
    result = t_env.execute_sql("""
        INSERT INTO counts
        SELECT word, CONCAT(word, ' ', CAST(cnt AS STRING)) FROM (
          SELECT word, COUNT(*) OVER (PARTITION BY word ORDER BY pt
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cnt
          FROM words)""")
    result.wait()
    print("FLINK_DONE", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
