"""The pipeline API: what a user's ``module:function`` builds.

    def build(args):
        p = Pipeline()
        (p.source(GeneratorSource(records=args["records"], fn=word))
          .key_by(lambda w: w)
          .count()
          .map(lambda kv: f"{kv[0]} {kv[1]}")
          .sink(FileSink(args["output"])))
        return p

Operators between exchanges are chained into one *task* (no serialization between them);
``key_by`` (hash partitioned by key group) and ``rebalance`` (round robin) start a new task.
Worker i runs subtask i of every task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


class PipelineError(ValueError):
    """A pipeline that cannot run (for example a key_by not followed by keyed processing)."""


@dataclass(frozen=True)
class Step:
    kind: str  # source | timestamps | map | filter | flat_map | keyed | sink
    name: str
    fn: Any = None


@dataclass
class Exchange:
    kind: str  # keyed | rebalance
    key_fn: Callable[[Any], Any] | None = None


@dataclass
class SideOutput:
    """A second output of step ``step`` of a task (records the operator hands to its side
    output ``tag``), through ``steps`` (map, filter, flat_map) into a sink of its own, in the
    same task and subtask, committed with the same checkpoints as the main output."""

    tag: str
    step: int
    steps: list[Step] = field(default_factory=list)

    @property
    def sink(self) -> Any:
        last = self.steps[-1] if self.steps else None
        return last.fn if last is not None and last.kind == "sink" else None


@dataclass
class TaskSpec:
    """One chain of operators: a task. ``exchange`` says how records reach it (None: source)."""

    index: int
    exchange: Exchange | None
    steps: list[Step] = field(default_factory=list)
    side_outputs: list[SideOutput] = field(default_factory=list)

    @property
    def task_id(self) -> str:
        return f"t{self.index}"

    @property
    def name(self) -> str:
        return " -> ".join(s.name for s in self.steps)


class Stream:
    def __init__(self, pipeline: Pipeline):
        self._p = pipeline

    def map(self, fn: Callable[[Any], Any], name: str = "Map") -> Stream:
        return self._p._add(Step("map", name, fn))

    def filter(self, fn: Callable[[Any], bool], name: str = "Filter") -> Stream:
        return self._p._add(Step("filter", name, fn))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], name: str = "FlatMap") -> Stream:
        return self._p._add(Step("flat_map", name, fn))

    def assign_timestamps(self, fn: Callable[[Any], int], max_out_of_orderness: int = 0,
                          interval: float = 0.2) -> Stream:
        """Declare event time (``fn(record)``, in ms) right after the source: its subtasks
        emit watermarks ``max event time seen - max_out_of_orderness`` every ``interval``
        seconds (between batches), and a final one at the end of their input."""
        from streamjob.windows import WatermarkStrategy

        last = self._p.tasks[-1]
        if len(self._p.tasks) != 1 or [s.kind for s in last.steps] != ["source"]:
            raise PipelineError("assign_timestamps(...) must directly follow source(...)")
        self._p.watermarks = WatermarkStrategy(fn, int(max_out_of_orderness), float(interval))
        return self._p._add(Step("timestamps", "Timestamps/Watermarks", self._p.watermarks))

    def key_by(self, key_fn: Callable[[Any], Any]) -> KeyedStream:
        self._p._exchange(Exchange("keyed", key_fn))
        return KeyedStream(self._p)

    def rebalance(self) -> Stream:
        self._p._exchange(Exchange("rebalance"))
        return self

    def sink(self, sink: Any, name: str | None = None) -> None:
        self._p._add(Step("sink", name or f"Sink: {type(sink).__name__}", sink))

    def print(self) -> None:
        from streamjob.connectors.printsink import PrintSink

        self.sink(PrintSink(), "Sink: print")


class SideStream:
    """The records of an operator's side output (for example a window's ``late_records()``):
    ``map``, ``filter``, ``flat_map``, then a ``sink`` (no exchange: it stays in the task)."""

    def __init__(self, side: SideOutput):
        self._side = side

    def _add(self, step: Step) -> SideStream:
        if self._side.sink is not None:
            raise PipelineError("nothing can follow a sink")
        self._side.steps.append(step)
        return self

    def map(self, fn: Callable[[Any], Any], name: str = "Map") -> SideStream:
        return self._add(Step("map", name, fn))

    def filter(self, fn: Callable[[Any], bool], name: str = "Filter") -> SideStream:
        return self._add(Step("filter", name, fn))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], name: str = "FlatMap") -> SideStream:
        return self._add(Step("flat_map", name, fn))

    def sink(self, sink: Any, name: str | None = None) -> None:
        self._add(Step("sink", name or f"Sink: {type(sink).__name__}", sink))


class KeyedStream:
    def __init__(self, pipeline: Pipeline):
        self._p = pipeline

    def _add_keyed(self, factory: Any, name: str) -> Stream:
        return self._p._add(Step("keyed", name, factory))

    def process(self, fn: Any, name: str | None = None) -> Stream:
        """Keyed processing with state: ``fn`` is a :class:`KeyedProcessFunction`."""
        from streamjob.operators import ProcessOperatorFactory

        return self._p._add(Step("keyed", name or f"Keyed {type(fn).__name__}",
                                 ProcessOperatorFactory(fn)))

    def window(self, assigner: Any, timestamp: Callable[[Any], int] | None = None) -> Any:
        """Event-time windows: ``assigner`` is ``TumblingEventTimeWindows(size)`` (or just
        the size in ms), ``SlidingEventTimeWindows(size, slide)`` or
        ``EventTimeSessionWindows(gap)`` (``streamjob.windows``); then optionally
        ``.allowed_lateness(ms)``, and ``.sum(value_fn)``, ``.reduce(fn)`` or
        ``.aggregate(create, add, merge, result)``. Each record's event time is read with the
        source's ``assign_timestamps`` function (records must still carry it) unless
        ``timestamp`` gives another one for the records as they reach the window."""
        from streamjob.windows.assigners import TumblingEventTimeWindows
        from streamjob.windows.stream import WindowedStream

        if isinstance(assigner, int | float):
            if int(assigner) <= 0:
                raise PipelineError(f"window size must be a positive number of ms, got "
                                    f"{assigner}")
            assigner = TumblingEventTimeWindows(int(assigner))
        if self._p.watermarks is None:
            raise PipelineError("window(...) needs event time: call "
                                "assign_timestamps(...) right after source(...)")
        return WindowedStream(self, assigner, timestamp or self._p.watermarks.timestamp_fn)

    def reduce(self, fn: Callable[[Any, Any], Any], name: str = "Keyed reduce") -> Stream:
        """Emit ``(key, acc)`` after each record, ``acc = fn(acc, record)``."""
        from streamjob.operators import ReduceOperatorFactory

        return self._p._add(Step("keyed", name, ReduceOperatorFactory(fn)))

    def count(self, name: str = "Keyed count") -> Stream:
        """Emit ``(key, n)`` after each record: the running count of its key."""
        from streamjob.operators import CountOperatorFactory

        return self._p._add(Step("keyed", name, CountOperatorFactory()))


class Pipeline:
    def __init__(self) -> None:
        self.source_connector: Any = None
        self.tasks: list[TaskSpec] = []
        self.watermarks: Any = None  # the source's WatermarkStrategy, if it has event time

    def source(self, source: Any, name: str | None = None) -> Stream:
        if self.source_connector is not None:
            raise PipelineError("a pipeline has exactly one source")
        self.source_connector = source
        # A source that makes its own watermarks (KafkaSource(event_time=fn)) names how
        # windows read its records' event time.
        self.watermarks = getattr(source, "watermarks", None)
        self.tasks.append(TaskSpec(0, None, [Step("source", name or
                                                  f"Source: {type(source).__name__}", source)]))
        return Stream(self)

    def _add(self, step: Step) -> Stream:
        if not self.tasks:
            raise PipelineError("call Pipeline.source(...) before adding operators")
        last = self.tasks[-1]
        if last.steps and last.steps[-1].kind == "sink":
            raise PipelineError("nothing can follow a sink")
        if step.kind == "keyed":
            if last.exchange is None or last.exchange.kind != "keyed" or last.steps:
                raise PipelineError(f"{step.name} must directly follow key_by(...)")
        elif last.exchange is not None and last.exchange.kind == "keyed" and not last.steps:
            raise PipelineError("key_by(...) must be followed by process, reduce, count or "
                                "window")
        last.steps.append(step)
        return Stream(self)

    def _exchange(self, exchange: Exchange) -> None:
        last = self.tasks[-1]
        if last.steps and last.steps[-1].kind == "sink":
            raise PipelineError("nothing can follow a sink")
        if not last.steps:
            raise PipelineError("an exchange must follow an operator")
        self.tasks.append(TaskSpec(len(self.tasks), exchange))

    def side_output(self, task: TaskSpec, step: int, tag: str, name: str) -> SideStream:
        """The stream of side output ``tag`` of step ``step`` of ``task``."""
        if any(o.step == step and o.tag == tag for o in task.side_outputs):
            raise PipelineError(f"{name}: this side output was taken already")
        side = SideOutput(tag, step)
        task.side_outputs.append(side)
        return SideStream(side)

    @property
    def sinks(self) -> Any:
        """Every sink of the job, the main one first (side outputs' sinks after it), as one
        object the coordinator recovers (``sideoutput.SinkGroup``)."""
        from streamjob.sideoutput import SinkGroup

        return SinkGroup([self.sink_connector, *(o.sink for t in self.tasks
                                                  for o in t.side_outputs)])

    @property
    def sink_connector(self) -> Any:
        last = self.tasks[-1].steps[-1] if self.tasks and self.tasks[-1].steps else None
        return last.fn if last is not None and last.kind == "sink" else None

    def validate(self) -> None:
        if self.source_connector is None:
            raise PipelineError("the pipeline has no source")
        for task in self.tasks:
            if not task.steps:
                raise PipelineError("key_by(...) or rebalance() at the end needs an operator "
                                    "after it")
        if self.sink_connector is None:
            raise PipelineError("the pipeline must end with a sink")
        folders = [getattr(self.sink_connector, "output", None)]
        for task in self.tasks:
            for side in task.side_outputs:
                if side.sink is None:
                    raise PipelineError(f"the side output {side.tag!r} of "
                                        f"{task.steps[side.step].name} must end with a sink")
                folder = getattr(side.sink, "output", None)
                if folder is not None and folder in folders:
                    raise PipelineError(f"the side output {side.tag!r} needs a sink folder of "
                                        f"its own ({folder} is taken)")
                folders.append(folder)

    def describe(self) -> list[dict[str, Any]]:
        return [{"id": t.task_id, "name": t.name,
                 "input": t.exchange.kind if t.exchange else "source"} for t in self.tasks]
