"""The join example (an interval join and a window join of two event-time sources, two sinks)
under kill -9 and rescale: both outputs compared line by line with the pure-Python
reference."""

from __future__ import annotations

import pytest

from tests.integration.conftest import kill_worker_and_finish, savepoint

pytestmark = pytest.mark.integration

ARGS = {"orders": 40_000, "customers": 1000, "events_per_second": 2000, "max_delay_ms": 2000}
PIPELINE = "streamjob.examples.join:build"


def exact(result: dict) -> dict:
    return {name: (r["duplicates"], r["missing"], r["unexpected"]) for name, r in result.items()}


@pytest.mark.parametrize("mode, incremental", [("exactly-once", False), ("unaligned", False),
                                               ("exactly-once", True)])
def test_killed_worker_of_a_join_job_recovers_with_exact_output(run_job, mode, incremental):
    from streamjob.examples.join import check_output

    job = run_job(PIPELINE, name=f"join-{mode}", args={**ARGS, "rate": 8_000},
                  checkpoint={"mode": mode, "interval": "200ms", "incremental": incremental})
    out = job.cwd / "output"
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint")
                 and any((job.cwd / "output-window").glob("part-*")),
                 what="committed window join output")
    kill_worker_and_finish(job, 0)
    result = check_output(str(out), ARGS)
    assert exact(result) == {"interval": (0, 0, 0), "window": (0, 0, 0)}, result


def test_join_job_rescales_from_2_to_3_with_its_buffered_records_and_timers(run_job):
    from streamjob.examples.join import check_output

    job = run_job(PIPELINE, name="join2", args={**ARGS, "rate": 8_000})
    job.wait_for(lambda s: s.get("records_in", 0) > 25_000, what="a third done")
    uri = savepoint(job, stop=True)
    assert job.wait() == 0, job.output()
    job3 = run_job(PIPELINE, name="join3", args={**ARGS, "rate": 0}, parallelism=3,
                   extra=["--from-savepoint", uri])
    assert job3.wait() == 0, job3.output()
    result = check_output(str(job.cwd / "output"), ARGS)
    assert exact(result) == {"interval": (0, 0, 0), "window": (0, 0, 0)}, result
    assert result["interval"]["lines"] > 20_000 and result["window"]["lines"] > 60_000


def _doc_expectations() -> list[tuple[str, set[str], set[str] | None]]:
    """Per example of docs/joins.md (in page order): its name, the lines of its output and
    of its side output (None: it has none), computed in plain Python."""
    from collections import Counter

    clicks = [f"u{g % 7}" for g in range(1000)]
    views = [f"u{g % 5}" for g in range(500)]
    total = Counter(clicks + views)
    union = {str((u, i)) for u, n in total.items() for i in range(1, n + 1)}
    connect = {f"{u} {i}" for u, n in total.items() for i in range(1, n + 1)}
    views_side = {f"u{g % 5} {g}" for g in range(500)}
    window = {f"{a} {b}" for a in range(1000) for b in range(1000)
              if a % 10 == b % 10 and (a * 10) // 1000 == (b * 10 + 250) // 1000}
    interval = {f"{g} {g % 300}" for g in range(1000) if g % 300 <= 200}
    return [("union", union, None), ("connect", connect, views_side),
            ("window", window, None), ("interval", interval, None)]


@pytest.mark.parametrize("index", range(4))
def test_every_example_of_the_joins_page_runs_to_its_expected_output(run_job, tmp_path, index):
    import re
    from pathlib import Path

    from streamjob.examples.join import committed_lines

    doc = Path(__file__).resolve().parents[2] / "docs" / "joins.md"
    block = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)[index]
    name, lines, side = _doc_expectations()[index]
    (tmp_path / f"doc_{name}.py").write_text(block)
    job = run_job(f"doc_{name}:build", name=f"doc-{name}")
    assert job.wait() == 0, job.output()
    seen = committed_lines(tmp_path / "output")
    assert set(seen) == lines and max(seen.values()) == 1
    if side is not None:
        seen = committed_lines(tmp_path / "output-views")
        assert set(seen) == side and max(seen.values()) == 1
