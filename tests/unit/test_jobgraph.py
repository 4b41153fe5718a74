"""The job graph the pipeline API builds (several sources and sinks, union, connect, side
outputs) and the errors that explain a graph that cannot run."""

from __future__ import annotations

from operator import itemgetter

import pytest

from streamjob import Pipeline
from streamjob.connectors import FileSink, GeneratorSource, PrintSink
from streamjob.examples import activity
from streamjob.jobgraph import (
    FORWARD,
    KEYED,
    Exchange,
    InputEdge,
    Step,
    TaskSpec,
    channel_layout,
    outputs_of,
    sides_of_channels,
    validate,
)
from streamjob.operators import CoProcessFunction
from streamjob.pipeline import PipelineError, SinkSet


def test_activity_graph_has_three_sources_a_connected_task_and_two_sinks(tmp_path):
    p = activity.build({"output": str(tmp_path / "out")})
    p.validate()
    t = p.tasks
    assert [task.is_source for task in t] == [True, True, True, False, False]
    co = t[3]
    assert [(e.source, e.exchange.kind, e.side, e.tag) for e in co.inputs] == [
        (0, KEYED, 0, None), (1, KEYED, 1, None), (2, KEYED, 1, None)]
    assert [s.kind for s in co.steps] == ["co_keyed", "sink"]
    # The side output leaves t3 on a forward edge to a sink task of its own.
    assert [(e.source, e.exchange.kind, e.tag) for e in t[4].inputs] == [(3, FORWARD, "views")]
    assert [(o.target, o.tag) for o in outputs_of(t, 3)] == [(4, "views")]
    assert [(o.target, o.input) for o in outputs_of(t, 2)] == [(3, 2)]
    # Gate channels: p per keyed edge, one per forward edge; the side each feeds.
    assert channel_layout(co, 2) == [0, 2, 4] and co.num_channels(2) == 6
    assert sides_of_channels(co, 2) == [0, 0, 1, 1, 1, 1]
    assert t[4].num_channels(3) == 1
    assert isinstance(p.sink_connector, SinkSet) and len(p.sink_connector.sinks) == 2
    assert len(p.sources) == 3
    assert p.describe()[3]["inputs"][1] == {"from": "t1", "exchange": KEYED, "side": 1}


def test_union_then_map_reads_forward_and_union_then_key_by_reads_keyed():
    p = Pipeline()
    a, b = p.source(GeneratorSource(10)), p.source(GeneratorSource(10))
    a.union(b).map(str).sink(PrintSink())
    p.validate()
    assert [(e.source, e.exchange.kind) for e in p.tasks[2].inputs] == [(0, FORWARD),
                                                                          (1, FORWARD)]
    q = Pipeline()
    a, b = q.source(GeneratorSource(10)), q.source(GeneratorSource(10))
    c = q.source(GeneratorSource(10))
    a.union(b, c).key_by(str).count().sink(PrintSink())
    q.validate()
    assert [e.exchange.kind for e in q.tasks[3].inputs] == [KEYED] * 3
    assert q.tasks[3].num_channels(2) == 6


def test_fan_out_from_the_end_of_a_stream_starts_a_forward_task():
    p = Pipeline()
    s = p.source(GeneratorSource(10)).map(str)
    s.key_by(str).count().sink(PrintSink())
    s.filter(bool).sink(PrintSink())  # a second consumer of s: its own task
    p.validate()
    assert [(e.source, e.exchange.kind) for e in p.tasks[2].inputs] == [(0, FORWARD)]
    assert {o.target for o in outputs_of(p.tasks, 0)} == {1, 2}


@pytest.mark.parametrize("build, message", [
    (lambda p: p.source(GeneratorSource(1)).map(str), "goes nowhere"),
    (lambda p: p.source(GeneratorSource(1)).key_by(str), "goes nowhere"),
    (lambda p: None, "no source"),
])
def test_validation_says_what_is_missing(build, message):
    p = Pipeline()
    build(p)
    with pytest.raises(PipelineError, match=message):
        p.validate()


def test_building_errors_are_raised_where_the_mistake_is(tmp_path):
    p = Pipeline()
    src = p.source(GeneratorSource(1))
    mapped = src.map(str)
    with pytest.raises(PipelineError, match="already continued with Map"):
        src.filter(bool)  # src's chain now goes on with the map
    with pytest.raises(PipelineError, match="side_output"):
        mapped.rebalance().side_output("late")
    with pytest.raises(PipelineError, match="connect"):
        mapped.key_by(str).connect(mapped)
    with pytest.raises(TypeError, match="CoProcessFunction"):
        p.source(GeneratorSource(1)).key_by(str).connect(
            p.source(GeneratorSource(1)).key_by(str)).process(object())


def test_two_sinks_to_one_folder_are_refused(tmp_path):
    p = Pipeline()
    s = p.source(GeneratorSource(1)).map(str)
    s.rebalance().sink(FileSink(str(tmp_path / "out")))
    s.rebalance().sink(FileSink(str(tmp_path / "out")))
    with pytest.raises(PipelineError, match="two sinks write to"):
        p.validate()


def test_a_stream_that_fed_a_sink_can_be_used_again():
    p = Pipeline()
    s = p.source(GeneratorSource(1)).map(str)
    s.map(repr).sink(PrintSink())
    s.filter(bool).print()  # the first branch moves to a task of its own
    s.key_by(str).count().print()
    p.validate()
    assert [[st.kind for st in t.steps] for t in p.tasks] == [
        ["source", "map"], ["map", "sink"], ["filter", "sink"], ["keyed", "sink"]]
    assert [(e.source, e.exchange.kind) for t in p.tasks[1:] for e in t.inputs] == [
        (0, FORWARD), (0, FORWARD), (0, KEYED)]
    t = Pipeline()
    src = t.source(GeneratorSource(1))
    src.map(str).key_by(str).count().print()
    with pytest.raises(PipelineError, match="already continued with Map"):
        src.filter(bool)  # the map's output is read by another task: it cannot be moved


def _task(index, inputs, *kinds):
    return TaskSpec(index, inputs, [Step(k, k, PrintSink() if k == "sink" else str)
                                    for k in kinds])


def test_hand_built_graphs_that_cannot_run_are_explained():
    keyed = Exchange(KEYED, str)
    src = _task(0, [], "source")
    with pytest.raises(PipelineError, match="does not come before it"):
        validate([src, _task(1, [InputEdge(2, keyed)], "keyed", "sink"),
                  _task(2, [InputEdge(0, keyed)], "keyed", "sink")])
    with pytest.raises(PipelineError, match="needs two inputs"):
        validate([src, _task(1, [InputEdge(0, keyed)], "co_keyed", "sink")])
    with pytest.raises(PipelineError, match="needs keyed inputs"):
        validate([src, _task(1, [InputEdge(0, Exchange(FORWARD))], "keyed", "sink")])
    with pytest.raises(PipelineError, match="only a connected operator"):
        validate([src, _task(1, [InputEdge(0, Exchange(FORWARD), side=1)], "map", "sink")])
    with pytest.raises(PipelineError, match="must be followed by process"):
        validate([src, _task(1, [InputEdge(0, keyed)], "map", "sink")])
    with pytest.raises(PipelineError, match="cannot be chained"):
        validate([src, _task(1, [InputEdge(0, keyed)], "keyed", "keyed", "sink")])
    with pytest.raises(PipelineError, match="starts with a source exactly"):
        validate([src, _task(1, [InputEdge(0, Exchange(FORWARD))], "source", "sink")])
    # A side output may leave a task that ends in a sink; its main output may not go on.
    validate([_task(0, [], "source", "sink"),
              _task(1, [InputEdge(0, Exchange(FORWARD), tag="late")], "sink")])
    with pytest.raises(PipelineError, match="nothing can follow a sink"):
        validate([_task(0, [], "source", "sink"), _task(1, [InputEdge(0, Exchange(FORWARD))],
                                                        "sink")])


class _Pair(CoProcessFunction):
    def process1(self, key, value, out):
        out.append(value)

    def process2(self, key, value, out):
        out.side("two", value)


def test_connect_takes_the_key_function_of_each_side():
    p = Pipeline()
    a = p.source(GeneratorSource(1)).key_by(itemgetter(0))
    b = p.source(GeneratorSource(1)).key_by(itemgetter(1))
    s = a.connect(b).process(_Pair())
    s.sink(PrintSink())
    s.side_output("two").print()
    p.validate()
    factory = p.tasks[2].steps[0].fn
    assert factory.key_fns == (a.key_fn, b.key_fn)
