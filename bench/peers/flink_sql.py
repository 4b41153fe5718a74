"""Flink SQL job (Flink's own Java operators: the upper bound for Flink).

Run by ``run.py`` inside the PyFlink virtual environment; Python only submits the SQL. The
records come from Flink's ``datagen`` sequence and are turned into words by the same arithmetic
(and the same per-record string formatting) as ``gen.py``. Results are the same text lines the
other systems write (``<word> <count>``, ``<window_start_ms> <word> <sum>``), written through
Flink's buffered ``filesystem`` connector (``raw`` format: one line per row) into
``--output``, or into Flink's ``blackhole`` connector (``--sink blackhole``: the cost of
Flink's processing alone; nothing to check). Flink's ``print`` connector is not used: it makes
one ``write(2)`` per row, while every other system here buffers its output.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gen  # noqa: E402


def main() -> None:
    ap = gen.flink_arguments()
    ap.add_argument("--sink", choices=["filesystem", "blackhole"], default="filesystem")
    ap.add_argument("--output", default="out")
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
    if a.sink == "filesystem":
        sink = (f"'connector' = 'filesystem', 'format' = 'raw', "
                f"'path' = 'file://{os.path.abspath(a.output)}'")
    else:
        sink = "'connector' = 'blackhole'"
    t_env.execute_sql(f"CREATE TABLE out_lines (line STRING) WITH ({sink})")
    if a.job == "count":
        # One output row per input record with the word's running count, like the other
        # systems: an unbounded OVER window in processing order.
        query = """INSERT INTO out_lines
            SELECT CONCAT(word, ' ', CAST(cnt AS STRING)) FROM (
              SELECT word, COUNT(*) OVER (PARTITION BY word ORDER BY pt
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                     AS cnt
              FROM records)"""
    else:
        query = """INSERT INTO out_lines
            SELECT CONCAT(CAST(TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00',
                                             window_start) * 1000 AS STRING),
                          ' ', word, ' ', CAST(SUM(v) AS STRING))
            FROM TABLE(TUMBLE(TABLE records, DESCRIPTOR(ts), INTERVAL '1' SECOND))
            GROUP BY window_start, window_end, word"""
    result = t_env.execute_sql(query)
    result.wait()
    job = result.get_job_client().get_job_execution_result().result()
    # Submission to finish, without the JVM and gateway start-up: run.py's "job seconds".
    print(f"NET_RUNTIME_MS={job.get_net_runtime()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
