"""The dashboard's pure parts: where the job graph puts each task, and what it draws."""

from __future__ import annotations

import re
from types import SimpleNamespace

from streamjob import dashboard
from streamjob.jobgraph import Exchange, InputEdge, Step, TaskSpec

KEYED, FORWARD = Exchange("keyed"), Exchange("forward")


def two_sources_joined() -> list[TaskSpec]:
    """t0, t1 sources; t2 joins both (keyed); t3 reads t2's side output 'late'; t4 reads t2."""
    return [TaskSpec(0, [], [Step("source", "Source: a")]),
            TaskSpec(1, [], [Step("source", "Source: b")]),
            TaskSpec(2, [InputEdge(0, KEYED), InputEdge(1, KEYED, side=1)],
                     [Step("co_keyed", "Join")]),
            TaskSpec(3, [InputEdge(2, FORWARD, tag="late")], [Step("sink", "Sink: late")]),
            TaskSpec(4, [InputEdge(2, FORWARD)], [Step("sink", "Sink: out")])]


def test_tasks_are_placed_by_their_distance_from_the_sources():
    assert dashboard.layout(two_sources_joined()) == {
        0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (2, 0), 4: (2, 1)}


def test_the_graph_has_a_box_per_task_a_row_per_subtask_and_an_edge_per_input():
    c = SimpleNamespace(pipeline=SimpleNamespace(tasks=two_sources_joined()), p=3)
    html = dashboard.graph(c)
    assert re.findall(r'data-task="(t\d)"', html) == ["t0", "t1", "t2", "t3", "t4"]
    assert len(re.findall(r'class="subtask" id="st-t\d-\d"', html)) == 15
    assert re.findall(r'class="edge-label"[^>]*>([^<]*)<', html) == [
        "KEYED", "KEYED", "FORWARD (late)", "FORWARD"]
    assert "data-tasks-api" not in html  # this coordinator has no per-task metrics


def test_names_are_escaped():
    tasks = [TaskSpec(0, [], [Step("source", "Source: <script>x</script>")])]
    html = dashboard.graph(SimpleNamespace(pipeline=SimpleNamespace(tasks=tasks), p=1))
    assert "<script>" not in html and "&lt;script&gt;" in html
