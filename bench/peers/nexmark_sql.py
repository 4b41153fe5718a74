"""One Nexmark query on Flink SQL, over the JSON-lines events file that bench/nexmark.py
wrote (Flink's ``filesystem`` connector, ``json`` format), into JSON-lines files.

Run by ``bench/nexmark.py`` inside the PyFlink virtual environment of ``bench/peers``. The
table, views and queries are the Nexmark suite's own for Flink SQL, with one change of
representation: times arrive as epoch milliseconds and become the ``dateTime`` rowtime
column with ``TO_TIMESTAMP_LTZ`` (watermark 4 s behind, as Nexmark defines it), and
``dateTime`` is quoted (Flink 2's parser reserves the word).
"""

from __future__ import annotations

import argparse
import os
import sys


def quoted(sql: str) -> str:
    return sql.replace("dateTime", "`dateTime`")

EVENTS = """
CREATE TABLE nexmark (
  event_type INT,
  person ROW<id BIGINT, name STRING, emailAddress STRING, creditCard STRING, city STRING,
             state STRING, dateTime BIGINT, extra STRING>,
  auction ROW<id BIGINT, itemName STRING, description STRING, initialBid BIGINT,
              reserve BIGINT, dateTime BIGINT, expires BIGINT, seller BIGINT,
              category BIGINT, extra STRING>,
  bid ROW<auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,
          dateTime BIGINT, extra STRING>,
  dateTime AS TO_TIMESTAMP_LTZ(CASE WHEN event_type = 0 THEN person.dateTime
                                    WHEN event_type = 1 THEN auction.dateTime
                                    ELSE bid.dateTime END, 3),
  WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = 'file://{path}', 'format' = 'json')
"""

VIEWS = [
    """CREATE VIEW person AS SELECT person.id, person.name, person.emailAddress,
         person.creditCard, person.city, person.state, dateTime, person.extra
       FROM nexmark WHERE event_type = 0""",
    """CREATE VIEW auction AS SELECT auction.id, auction.itemName, auction.description,
         auction.initialBid, auction.reserve, dateTime,
         TO_TIMESTAMP_LTZ(auction.expires, 3) AS expires, auction.seller, auction.category,
         auction.extra
       FROM nexmark WHERE event_type = 1""",
    """CREATE VIEW bid AS SELECT bid.auction, bid.bidder, bid.price, bid.channel, bid.url,
         dateTime, bid.extra
       FROM nexmark WHERE event_type = 2""",
]

# query -> (sink columns, the Nexmark statement)
QUERIES = {
    "q0": ("auction BIGINT, bidder BIGINT, price BIGINT, dateTime TIMESTAMP_LTZ(3), "
           "extra STRING",
           "SELECT auction, bidder, price, dateTime, extra FROM bid"),
    "q1": ("auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), dateTime TIMESTAMP_LTZ(3), "
           "extra STRING",
           "SELECT auction, bidder, 0.908 * price AS price, dateTime, extra FROM bid"),
    "q2": ("auction BIGINT, price BIGINT",
           "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0"),
    "q3": ("name STRING, city STRING, state STRING, id BIGINT",
           """SELECT P.name, P.city, P.state, A.id
              FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
              WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID'
                                         OR P.state = 'CA')"""),
    "q4": ("category BIGINT, final BIGINT",
           """SELECT Q.category, AVG(Q.final) AS final
              FROM (SELECT MAX(B.price) AS final, A.category
                    FROM auction A, bid B
                    WHERE A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires
                    GROUP BY A.id, A.category) Q
              GROUP BY Q.category"""),
    "q5": ("auction BIGINT, num BIGINT",
           """SELECT AuctionBids.auction, AuctionBids.num
              FROM (SELECT auction, count(*) AS num, window_start AS starttime,
                           window_end AS endtime
                    FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND,
                                   INTERVAL '10' SECOND))
                    GROUP BY auction, window_start, window_end) AS AuctionBids
              JOIN (SELECT max(CountBids.num) AS maxn, CountBids.starttime,
                           CountBids.endtime
                    FROM (SELECT count(*) AS num, window_start AS starttime,
                                 window_end AS endtime
                          FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND,
                                         INTERVAL '10' SECOND))
                          GROUP BY auction, window_start, window_end) AS CountBids
                    GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids
              ON AuctionBids.starttime = MaxBids.starttime
                 AND AuctionBids.endtime = MaxBids.endtime
                 AND AuctionBids.num >= MaxBids.maxn"""),
    "q7": ("auction BIGINT, price BIGINT, bidder BIGINT, dateTime TIMESTAMP_LTZ(3), "
           "extra STRING",
           """SELECT B.auction, B.price, B.bidder, B.dateTime, B.extra
              FROM bid B
              JOIN (SELECT MAX(price) AS maxprice, window_end AS dateTime
                    FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
                    GROUP BY window_start, window_end) B1
              ON B.price = B1.maxprice
              WHERE B.dateTime BETWEEN B1.dateTime - INTERVAL '10' SECOND
                                   AND B1.dateTime"""),
    "q8": ("id BIGINT, name STRING, starttime TIMESTAMP(3)",
           """SELECT P.id, P.name, P.starttime
              FROM (SELECT id, name, window_start AS starttime, window_end AS endtime
                    FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(dateTime),
                                      INTERVAL '10' SECOND))
                    GROUP BY id, name, window_start, window_end) P
              JOIN (SELECT seller, window_start AS starttime, window_end AS endtime
                    FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(dateTime),
                                      INTERVAL '10' SECOND))
                    GROUP BY seller, window_start, window_end) A
              ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime"""),
    "q11": ("bidder BIGINT, bid_count BIGINT, starttime TIMESTAMP(3), endtime TIMESTAMP(3)",
            """SELECT B.bidder, count(*) AS bid_count,
                      SESSION_START(B.dateTime, INTERVAL '10' SECOND) AS starttime,
                      SESSION_END(B.dateTime, INTERVAL '10' SECOND) AS endtime
               FROM bid B
               GROUP BY B.bidder, SESSION(B.dateTime, INTERVAL '10' SECOND)"""),
}

# Queries whose result is an updating table: the filesystem sink takes only appends, so their
# changelog is collected (TableResult.collect) and the final row per key written as JSON lines.
UPDATING = {"q4"}


def collect_final(t_env, select: str, output: str) -> None:
    import json

    from pyflink.common import RowKind

    result = t_env.execute_sql(select)
    final: dict = {}
    with result.collect() as rows:
        for row in rows:
            if row.get_row_kind() in (RowKind.INSERT, RowKind.UPDATE_AFTER):
                final[row[0]] = row[1]
            else:  # UPDATE_BEFORE, DELETE: the row is retracted
                final.pop(row[0], None)
    job = result.get_job_client().get_job_execution_result().result()
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "part-0"), "w", encoding="utf-8") as f:
        for category, value in final.items():
            f.write(json.dumps({"category": category, "final": value}) + "\n")
    print(f"NET_RUNTIME_MS={job.get_net_runtime()}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--query", choices=sorted(QUERIES), required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--checkpoint-ms", type=int, default=0)
    ap.add_argument("--checkpoint-dir", default="")
    a = ap.parse_args()

    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    c = t_env.get_config()
    c.set("parallelism.default", str(a.parallelism))
    c.set("table.local-time-zone", "UTC")
    if a.checkpoint_ms:
        c.set("execution.checkpointing.interval", f"{a.checkpoint_ms} ms")
        c.set("execution.checkpointing.dir", "file://" + os.path.abspath(a.checkpoint_dir))
        c.set("state.backend.type", "hashmap")
    t_env.execute_sql(quoted(EVENTS).format(path=os.path.abspath(a.input)))
    for view in VIEWS:
        t_env.execute_sql(quoted(view))
    columns, select = (quoted(s) for s in QUERIES[a.query])
    if a.query in UPDATING:
        collect_final(t_env, select, a.output)
        return
    t_env.execute_sql(f"""CREATE TABLE sink ({columns}) WITH (
        'connector' = 'filesystem', 'path' = 'file://{os.path.abspath(a.output)}',
        'format' = 'json')""")
    result = t_env.execute_sql(f"INSERT INTO sink {select}")
    result.wait()
    job = result.get_job_client().get_job_execution_result().result()
    print(f"NET_RUNTIME_MS={job.get_net_runtime()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
