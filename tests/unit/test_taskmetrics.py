"""Task metrics: rates and ratios from cumulative STATS samples over a sliding window."""

from __future__ import annotations

import pytest

from streamjob.jobgraph import Exchange, InputEdge, Step, TaskSpec
from streamjob.taskmetrics import (
    MAX_WINDOW,
    Sample,
    TaskInfo,
    TaskMetrics,
    clamp_window,
    job_graph,
)

GRAPH = [TaskInfo("t0", "Source", ()), TaskInfo("t1", "Count", ("t0",))]


def feed(m: TaskMetrics, subtask: int, task: str, seconds: int, per_s: tuple[float, ...],
         start: float = 0.0, backlog=None) -> None:
    """One sample per second for ``seconds`` seconds: records in/out per second, busy and
    backpressured seconds per second."""
    rin, rout, busy, bp = per_s
    for t in range(1, seconds + 1):
        m.on_stats(start + t, subtask, {task: [int(rin * t), int(rout * t), busy * t, bp * t,
                                               float(t), backlog]})


def test_rates_and_ratios_of_a_steady_subtask():
    m = TaskMetrics()
    feed(m, 0, "t1", 30, (1000, 500, 0.6, 0.3))
    r = m.subtask("t1", 0, 10)
    assert (r.records_in_per_s, r.records_out_per_s) == (1000.0, 500.0)
    assert (r.busy_ratio, r.backpressured_ratio, r.idle_ratio) == (0.6, 0.3, 0.1)
    assert r.backlog is None


def test_window_sees_only_recent_change():
    m = TaskMetrics()
    # 20 s idle, then 10 s fully busy at 2000/s.
    for t in range(1, 21):
        m.on_stats(t, 0, {"t1": [0, 0, 0.0, 0.0, float(t), None]})
    for t in range(21, 31):
        k = t - 20
        m.on_stats(t, 0, {"t1": [2000 * k, 2000 * k, float(k), 0.0, float(t), None]})
    recent = m.subtask("t1", 0, 10)
    assert recent.busy_ratio == 1.0 and recent.records_in_per_s == 2000.0
    whole = m.subtask("t1", 0, 30)
    assert whole.busy_ratio == pytest.approx(1 / 3, abs=0.001)
    assert whole.records_in_per_s == pytest.approx(20000 / 30, abs=0.1)


def test_a_young_subtask_is_measured_from_its_start():
    m = TaskMetrics()
    m.on_stats(1.0, 0, {"t0": [500, 500, 0.25, 0.5, 1.0, 7]})
    r = m.subtask("t0", 0, 10)
    assert r.records_in_per_s == 500.0
    assert (r.busy_ratio, r.backpressured_ratio, r.idle_ratio) == (0.25, 0.5, 0.25)
    assert r.backlog == 7


def test_a_restarted_subtask_starts_a_new_series():
    m = TaskMetrics()
    feed(m, 0, "t1", 20, (1000, 1000, 0.9, 0.0))
    # Counters back to zero (a new attempt): no negative rate, only the new series counts.
    m.on_stats(21, 0, {"t1": [100, 100, 0.1, 0.0, 1.0, None]})
    r = m.subtask("t1", 0, 10)
    assert r.records_in_per_s == 100.0 and r.busy_ratio == 0.1


def test_backlog_growth_is_the_change_per_second_over_the_window():
    m = TaskMetrics()
    for t in range(1, 21):  # falls behind by 300 records a second
        m.on_stats(t, 0, {"t0": [1000 * t, 1000 * t, 0.5 * t, 0.5 * t, float(t), 300 * t]})
    r = m.subtask("t0", 0, 10)
    assert r.backlog == 6000 and r.backlog_growth_per_s == 300.0
    # measured from the start, the origin's backlog is not known: no growth yet
    m2 = TaskMetrics()
    m2.on_stats(1.0, 0, {"t0": [10, 10, 0.1, 0.1, 1.0, 5]})
    assert m2.subtask("t0", 0, 10).backlog_growth_per_s is None


def test_task_aggregates_max_ratios_and_sums_rates_and_backlog():
    m = TaskMetrics()
    feed(m, 0, "t0", 15, (3000, 3000, 0.2, 0.7), backlog=100)
    feed(m, 1, "t0", 15, (1000, 1000, 0.1, 0.9), backlog=50)
    feed(m, 0, "t1", 15, (2000, 2000, 0.95, 0.0))
    feed(m, 1, "t1", 15, (2000, 2000, 0.5, 0.0))
    tasks = m.tasks(GRAPH, 2, 10)
    source, count = tasks
    assert source["id"] == "t0" and source["inputs"] == [] and count["inputs"] == ["t0"]
    assert source["records_in_per_s"] == 4000.0 and source["backlog"] == 150
    assert source["backlog_growth_per_s"] == 0.0 and count["backlog_growth_per_s"] is None
    assert source["backpressured_ratio"] == 0.9 and source["busy_ratio"] == 0.2
    assert count["busy_ratio"] == 0.95 and count["backlog"] is None
    assert [s["index"] for s in count["subtasks"]] == [0, 1]
    assert count["parallelism"] == 2


def test_subtasks_beyond_the_parallelism_or_without_reports_are_left_out():
    m = TaskMetrics()
    feed(m, 0, "t1", 5, (10, 10, 0.5, 0.0))
    feed(m, 3, "t1", 5, (10, 10, 0.5, 0.0))  # from a larger, earlier attempt
    entry = m.tasks(GRAPH, 2, 10)[1]
    assert [s["index"] for s in entry["subtasks"]] == [0]
    assert m.tasks(GRAPH, 2, 10)[0]["subtasks"] == []


def test_clear_forgets_everything():
    m = TaskMetrics()
    feed(m, 0, "t1", 5, (10, 10, 0.5, 0.0))
    m.clear()
    assert m.subtask("t1", 0, 10) is None


def test_old_samples_are_dropped_but_the_window_stays_covered():
    m = TaskMetrics(keep=60)
    feed(m, 0, "t1", 1000, (10, 10, 0.5, 0.0))
    assert len(m.series[("t1", 0)]) <= 62
    assert m.subtask("t1", 0, 60).records_in_per_s == 10.0


@pytest.mark.parametrize("values", [
    [1, 2], "x", [1, 2, 3, 4, 5], [-1, 0, 0, 0, 1, None], [0, 0, float("nan"), 0, 1, None],
    [0, 0, 0, 0, 1, -5], [0, 0, 0, 0, 1, "many"], [True, 0, 0, 0, 1, None],
])
def test_malformed_samples_are_ignored(values):
    m = TaskMetrics()
    m.on_stats(1.0, 0, {"t1": values})
    assert m.subtask("t1", 0, 10) is None
    assert Sample.parse(1.0, values) is None


def test_ratios_stay_within_bounds_on_clock_noise():
    m = TaskMetrics()
    m.on_stats(1.0, 0, {"t1": [10, 10, 1.02, 0.0, 1.0, None]})
    r = m.subtask("t1", 0, 10)
    assert r.busy_ratio == 1.0 and r.idle_ratio == 0.0


def test_window_is_clamped():
    assert clamp_window(None) == 10.0
    assert clamp_window(0) == 1.0
    assert clamp_window(1e9) == MAX_WINDOW
    assert clamp_window(float("nan")) == 10.0


def test_job_graph_lists_the_tasks_that_feed_each_task():
    keyed, rebalance = Exchange("keyed", str), Exchange("rebalance")
    specs = [TaskSpec(0, [], [Step("source", "Source")]),
             TaskSpec(1, [], [Step("source", "Other")]),
             TaskSpec(2, [InputEdge(0, keyed), InputEdge(1, keyed, side=1)],
                      [Step("co_keyed", "Join"), Step("map", "Fmt")]),
             TaskSpec(3, [InputEdge(2, rebalance), InputEdge(2, rebalance, tag="late")],
                      [Step("sink", "Sink")])]
    assert job_graph(specs) == [TaskInfo("t0", "Source", ()), TaskInfo("t1", "Other", ()),
                                TaskInfo("t2", "Join -> Fmt", ("t0", "t1")),
                                TaskInfo("t3", "Sink", ("t2",))]
