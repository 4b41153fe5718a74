"""Event-time windows under failure: every (window, word) sum is committed exactly once."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.conftest import kill_worker_and_finish

pytestmark = pytest.mark.integration

RECORDS, WORDS, EPS = 300_000, 200, 20_000  # 15 one-second event-time windows


def test_windowsum_survives_a_killed_worker_with_each_window_committed_once(run_job):
    from streamjob.examples.windowsum import check_output

    job = run_job("streamjob.examples.windowsum:build", name="windows",
                  args={"records": RECORDS, "words": WORDS, "events_per_second": EPS,
                        "lateness_ms": 500, "rate": 50_000})
    output = job.cwd / "output"
    # Kill once windows have fired and been committed: a restore must not fire them again.
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint") is not None
                 and any(output.glob("part-*")), what="committed windows")
    time.sleep(0.4)
    kill_worker_and_finish(job, 1)
    result = check_output(str(output), RECORDS, WORDS, EPS)
    assert (result["duplicates"], result["missing"], result["unexpected"],
            result["wrong"]) == (0, 0, 0, 0), result


def test_open_windows_move_with_their_key_groups_from_p2_to_p3(run_job):
    from streamjob.examples.windowsum import check_output
    from tests.integration.conftest import savepoint

    args = {"records": RECORDS, "words": WORDS, "events_per_second": EPS, "lateness_ms": 500,
            "rate": 50_000}
    # Slower, so that it still runs when the savepoint is asked for on a loaded machine
    # (the records do not depend on the rate).
    job = run_job("streamjob.examples.windowsum:build", name="win2",
                  args={**args, "rate": 20_000})
    job.wait_for(lambda s: s.get("records_in", 0) > RECORDS // 3, what="a third done")
    uri = savepoint(job, stop=True)
    assert job.wait() == 0, job.output()
    job3 = run_job("streamjob.examples.windowsum:build", name="win3", args=args,
                   parallelism=3, extra=["--from-savepoint", uri])
    assert job3.wait() == 0, job3.output()
    result = check_output(str(job.cwd / "output"), RECORDS, WORDS, EPS)
    assert (result["duplicates"], result["missing"], result["unexpected"],
            result["wrong"]) == (0, 0, 0, 0), result


def test_records_late_beyond_the_bound_never_reopen_a_fired_window_after_restore(run_job):
    """Replayed late records must meet the watermark of the snapshot: with it forgotten,
    they would open windows that had fired (and been committed) again, a second line."""
    from collections import Counter, defaultdict

    from streamjob.examples.wordcount import MULTIPLIER

    late_every, late_ms = 37, 3000
    job = run_job("tests.integration.jobs:late_windowsum", name="late",
                  args={"records": RECORDS, "words": WORDS, "events_per_second": EPS,
                        "lateness_ms": 200, "late_every": late_every, "late_ms": late_ms,
                        "rate": 50_000})
    output = job.cwd / "output"
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint") is not None
                 and any(output.glob("part-*")), what="committed windows")
    for victim in (0, 1):
        time.sleep(0.6)
        os.kill(job.workers()[victim], signal.SIGKILL)
        job.wait_for(lambda s, n=victim + 1: s.get("restarts", 0) >= n
                     and s.get("state") == "RUNNING", what=f"restart {victim + 1}")
    assert job.wait() == 0, job.output()

    on_time: dict[tuple[int, str], int] = defaultdict(int)
    at_most: dict[tuple[int, str], int] = defaultdict(int)
    for g in range(RECORDS):
        word = f"w{((g * MULTIPLIER) & 0xFFFFFFFF) % WORDS}"
        ts = g * 1000 // EPS
        if g % late_every == 0:
            at_most[(max(0, ts - late_ms) // 1000 * 1000, word)] += g % 100
        else:
            on_time[(ts // 1000 * 1000, word)] += g % 100
            at_most[(ts // 1000 * 1000, word)] += g % 100
    lines: Counter[tuple[int, str]] = Counter()
    got: dict[tuple[int, str], int] = {}
    for part in output.glob("part-*"):
        for line in part.read_text().splitlines():
            start, word, total = line.split()
            lines[(int(start), word)] += 1
            got[(int(start), word)] = int(total)
    assert [k for k, n in lines.items() if n > 1] == []
    assert on_time.keys() <= got.keys() <= at_most.keys()
    # Each window holds all its on-time records and at most all of its late ones.
    assert [k for k in got if not on_time.get(k, 0) <= got[k] <= at_most[k]] == []
