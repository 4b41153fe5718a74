"""Flink SQL job (Flink's own Java operators: the upper bound for Flink).

Run by ``run.py`` inside the PyFlink virtual environment; Python only submits the SQL. The
records come from Flink's ``datagen`` sequence and are turned into words by the same arithmetic
as ``gen.py``. Results go to stdout through Flink's ``print`` connector.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gen  # noqa: E402


def main() -> None:
    ap = gen.flink_arguments()
    a = ap.parse_args()

    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    c = t_env.get_config()
    c.set("parallelism.default", str(a.parallelism))
    c.set("table.local-time-zone", "UTC")
    c.set("restart-strategy.type", "fixed-delay")
    c.set("restart-strategy.fixed-delay.attempts", "5")
    c.set("restart-strategy.fixed-delay.delay", "1 s")
    if a.checkpoint_ms:
        c.set("execution.checkpointing.interval", f"{a.checkpoint_ms} ms")
        c.set("execution.checkpointing.dir", "file://" + os.path.abspath(a.checkpoint_dir))
        c.set("state.backend.type", "hashmap")

    word = (f"CONCAT('w', CAST(MOD(MOD(g * 2654435761, 4294967296), {a.words}) AS STRING))")
    t_env.execute_sql(f"""
        CREATE TABLE records (
          g BIGINT,
          word AS {word},
          v AS MOD(g, 100),
          ts AS TO_TIMESTAMP_LTZ(g * 1000 / {a.eps}, 3),
          pt AS PROCTIME(),
          WATERMARK FOR ts AS ts - INTERVAL '{a.lateness_ms / 1000:.3f}' SECOND
        ) WITH (
          'connector' = 'datagen',
          'rows-per-second' = '1000000000',
          'fields.g.kind' = 'sequence',
          'fields.g.start' = '0',
          'fields.g.end' = '{a.records - 1}'
        )""")
    if a.job == "count":
        t_env.execute_sql("CREATE TABLE out_rows (word STRING, cnt BIGINT) "
                          "WITH ('connector' = 'print')")
        # One output row per input record with the word's running count, like the other
        # systems: an unbounded OVER window in processing order.
        query = """INSERT INTO out_rows
            SELECT word, COUNT(*) OVER (PARTITION BY word ORDER BY pt
                                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
            FROM records"""
    else:
        t_env.execute_sql("CREATE TABLE out_rows (window_start TIMESTAMP(3), word STRING, "
                          "total BIGINT) WITH ('connector' = 'print')")
        query = """INSERT INTO out_rows
            SELECT window_start, word, SUM(v)
            FROM TABLE(TUMBLE(TABLE records, DESCRIPTOR(ts), INTERVAL '1' SECOND))
            GROUP BY window_start, window_end, word"""
    result = t_env.execute_sql(query)
    result.wait()
    job = result.get_job_client().get_job_execution_result().result()
    # Submission to finish, without the JVM and gateway start-up: run.py's "job seconds".
    print(f"NET_RUNTIME_MS={job.get_net_runtime()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
