"""Timers under failure and rescale: a job built on event- and processing-time timers commits
exactly the lines a plain-Python reference computes, after kill -9 and after p 2 -> 3."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.integration.conftest import kill_worker_and_finish
from tests.integration.jobs import timer_buckets_expected

pytestmark = pytest.mark.integration

RECORDS, KEYS, EPS = 240_000, 256, 20_000   # 12 s of event time, 256 keys
# Event time runs 2.5x faster than the (rate-limited) wall clock: buckets starting before
# 9 s have at least 1.2 s of wall time after them, well beyond the 300 ms processing delay.
ARGS = {"records": RECORDS, "keys": KEYS, "events_per_second": EPS, "lateness_ms": 1000,
        "rate": 50_000, "processing_until": 9000, "delay_ms": 300}


def committed(folder: Path) -> Counter[str]:
    lines: Counter[str] = Counter()
    for part in folder.glob("part-*"):
        lines.update(part.read_text().splitlines())
    return lines


def assert_exact(folder: Path) -> None:
    lines = committed(folder)
    want = timer_buckets_expected(RECORDS, KEYS, EPS, ARGS["processing_until"])
    assert [k for k, n in lines.items() if n > 1] == []
    assert sorted(want - lines.keys())[:10] == []
    assert sorted(lines.keys() - want)[:10] == []


def test_timer_job_survives_a_killed_worker_with_exact_output(run_job):
    job = run_job("tests.integration.jobs:timer_buckets", name="timers", args=ARGS)
    output = job.cwd / "output"
    # Kill while processing-time timers are pending and some buckets were committed.
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint") is not None
                 and any(output.glob("part-*")) and s.get("records_in", 0) > RECORDS // 2,
                 what="committed timer output")
    kill_worker_and_finish(job, 1)
    assert_exact(output)


def test_timers_move_with_their_key_groups_from_p2_to_p3(run_job):
    from tests.integration.conftest import savepoint

    # Slower, so that it still runs when the savepoint is asked for (same records).
    job = run_job("tests.integration.jobs:timer_buckets", name="tim2",
                  args={**ARGS, "rate": 25_000})
    job.wait_for(lambda s: s.get("records_in", 0) > RECORDS // 3, what="a third done")
    uri = savepoint(job, stop=True)
    assert job.wait() == 0, job.output()
    job3 = run_job("tests.integration.jobs:timer_buckets", name="tim3", args=ARGS,
                   parallelism=3, extra=["--from-savepoint", uri])
    assert job3.wait() == 0, job3.output()
    assert_exact(job.cwd / "output")
