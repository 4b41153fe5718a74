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
A job may have several sources and several sinks; ``a.union(b)`` merges streams,
``a.key_by(f).connect(b.key_by(g)).process(fn)`` runs a :class:`CoProcessFunction` over two
keyed streams with shared keyed state, and ``stream.side_output(tag)`` is what the stream's
functions emitted with ``out.side(tag, value)``. The tasks and their input edges form the
job graph (``jobgraph.py``). Worker i runs subtask i of every task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from streamjob import jobgraph
from streamjob.jobgraph import (
    FORWARD,
    KEYED,
    REBALANCE,
    Exchange,
    InputEdge,
    PipelineError,
    Step,
    TaskSpec,
)

__all__ = ["ConnectedStreams", "Exchange", "KeyedStream", "Pipeline", "PipelineError", "Step",
           "Stream", "TaskSpec"]


@dataclass(frozen=True)
class _Origin:
    """Where a stream's records come from before they reach a task: the main output (tag
    None) or a side output of task ``task``, crossing ``exchange``."""

    task: int
    tag: str | None
    exchange: Exchange


class Stream:
    """A stream of records: the end of a task's chain (operators chain onto it), or records
    still on their way to a task (after ``rebalance``, ``union``, ``side_output``; the next
    operator starts a task that reads them)."""

    def __init__(self, pipeline: Pipeline, task: int | None = None,
                 origins: tuple[_Origin, ...] = ()):
        self._p = pipeline
        self._task = task
        self._origins = origins
        # The chain length when this stream was made: operators may only be added at the end.
        self._at = len(pipeline.tasks[task].steps) if task is not None else 0

    def _chain(self, step: Step) -> Stream:
        return self._p._chain(self, step)

    def map(self, fn: Callable[[Any], Any], name: str = "Map") -> Stream:
        return self._chain(Step("map", name, fn))

    def filter(self, fn: Callable[[Any], bool], name: str = "Filter") -> Stream:
        return self._chain(Step("filter", name, fn))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], name: str = "FlatMap") -> Stream:
        return self._chain(Step("flat_map", name, fn))

    def assign_timestamps(self, fn: Callable[[Any], int], max_out_of_orderness: int = 0,
                          interval: float = 0.2) -> Stream:
        """Declare event time (``fn(record)``, in ms) right after the source: its subtasks
        emit watermarks ``max event time seen - max_out_of_orderness`` every ``interval``
        seconds (between batches), and a final one at the end of their input."""
        from streamjob.windows import WatermarkStrategy

        task = self._p.tasks[self._task] if self._task is not None else None
        if task is None or [s.kind for s in task.steps] != ["source"]:
            raise PipelineError("assign_timestamps(...) must directly follow source(...)")
        task.watermarks = WatermarkStrategy(fn, int(max_out_of_orderness), float(interval))
        if self._p.watermarks is None:
            self._p.watermarks = task.watermarks
        return self._chain(Step("timestamps", "Timestamps/Watermarks", task.watermarks))

    def _exchanged(self, exchange: Exchange) -> tuple[_Origin, ...]:
        return tuple(_Origin(o.task, o.tag, exchange) for o in self._p._origins(self))

    def key_by(self, key_fn: Callable[[Any], Any]) -> KeyedStream:
        return KeyedStream(self._p, self._exchanged(Exchange(KEYED, key_fn)))

    def rebalance(self) -> Stream:
        return Stream(self._p, origins=self._exchanged(Exchange(REBALANCE)))

    def union(self, *others: Stream) -> Stream:
        """The records of this stream and of ``others``, in no particular order between
        them. The next operator starts a task with one input edge per stream."""
        origins = list(self._p._origins(self))
        for other in others:
            if not isinstance(other, Stream) or other._p is not self._p:
                raise PipelineError("union(...) takes streams of the same pipeline")
            origins += self._p._origins(other)
        return Stream(self._p, origins=tuple(origins))

    def side_output(self, tag: str) -> Stream:
        """What the functions of this stream's task emitted with ``out.side(tag, value)``."""
        if self._task is None:
            raise PipelineError("side_output(...) needs the stream of an operator (not of a "
                                "rebalance, union or another side output)")
        return Stream(self._p, origins=(_Origin(self._task, str(tag), Exchange(FORWARD)),))

    def sink(self, sink: Any, name: str | None = None) -> None:
        self._chain(Step("sink", name or f"Sink: {type(sink).__name__}", sink))

    def print(self) -> None:
        from streamjob.connectors.printsink import PrintSink

        self.sink(PrintSink(), "Sink: print")


class KeyedStream:
    def __init__(self, pipeline: Pipeline, origins: tuple[_Origin, ...]):
        self._p = pipeline
        self._origins = origins

    @property
    def key_fn(self) -> Callable[[Any], Any]:
        return self._origins[0].exchange.key_fn

    def _add_keyed(self, factory: Any, name: str) -> Stream:
        return self._p._start_task([(o, 0) for o in self._origins], Step("keyed", name, factory))

    def process(self, fn: Any, name: str | None = None) -> Stream:
        """Keyed processing with state: ``fn`` is a :class:`KeyedProcessFunction`."""
        from streamjob.operators import ProcessOperatorFactory

        return self._add_keyed(ProcessOperatorFactory(fn), name or f"Keyed {type(fn).__name__}")

    def connect(self, other: KeyedStream) -> ConnectedStreams:
        """Two keyed streams into one :class:`CoProcessFunction` (``process1`` for this one,
        ``process2`` for ``other``) that shares keyed state between them: records of both
        with equal keys meet in the same subtask."""
        if not isinstance(other, KeyedStream) or other._p is not self._p:
            raise PipelineError("connect(...) takes a keyed stream of the same pipeline "
                                "(key_by(...) both sides)")
        return ConnectedStreams(self, other)

    def join(self, other: KeyedStream) -> Any:
        """Window join with ``other`` on equal keys: ``.window(size_ms[, slide_ms])
        .apply(fn)`` (see ``joins.py``)."""
        from streamjob.joins import JoinedStreams

        return JoinedStreams(self.connect(other))

    def interval_join(self, other: KeyedStream) -> Any:
        """Interval join with ``other`` on equal keys and event time:
        ``.between(lower_ms, upper_ms).apply(fn)`` (see ``joins.py``)."""
        from streamjob.joins import IntervalJoin

        return IntervalJoin(self.connect(other))

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
        watermarks = self._p.event_time(o.task for o in self._origins)
        if watermarks is None:
            raise PipelineError("window(...) needs event time: call "
                                "assign_timestamps(...) right after source(...)")
        return WindowedStream(self, assigner, timestamp or watermarks.timestamp_fn)

    def reduce(self, fn: Callable[[Any, Any], Any], name: str = "Keyed reduce") -> Stream:
        """Emit ``(key, acc)`` after each record, ``acc = fn(acc, record)``."""
        from streamjob.operators import ReduceOperatorFactory

        return self._add_keyed(ReduceOperatorFactory(fn), name)

    def count(self, name: str = "Keyed count") -> Stream:
        """Emit ``(key, n)`` after each record: the running count of its key."""
        from streamjob.operators import CountOperatorFactory

        return self._add_keyed(CountOperatorFactory(), name)


class ConnectedStreams:
    """``a.key_by(f).connect(b.key_by(g))``: finish with ``.process(CoProcessFunction)``."""

    def __init__(self, first: KeyedStream, second: KeyedStream):
        self.first, self.second = first, second
        self._p = first._p

    @property
    def key_fns(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        return self.first.key_fn, self.second.key_fn

    def _add_co(self, factory: Any, name: str) -> Stream:
        inputs = ([(o, 0) for o in self.first._origins] +
                  [(o, 1) for o in self.second._origins])
        return self._p._start_task(inputs, Step("co_keyed", name, factory))

    def process(self, fn: Any, name: str | None = None) -> Stream:
        from streamjob.operators import CoProcessOperatorFactory

        return self._add_co(CoProcessOperatorFactory(fn, self.key_fns),
                            name or f"Co {type(fn).__name__}")


class Pipeline:
    def __init__(self) -> None:
        self.tasks: list[TaskSpec] = []
        # The event time of the first source that declared one (kept for code that asks the
        # pipeline; a stream's own is found through its sources, see event_time).
        self.watermarks: Any = None

    def source(self, source: Any, name: str | None = None) -> Stream:
        """Add a source: each is a task of its own (a job may have several)."""
        task = TaskSpec(len(self.tasks), [], [Step("source", name or
                                                   f"Source: {type(source).__name__}", source)])
        # A source that makes its own watermarks (KafkaSource(event_time=fn)) names how
        # windows read its records' event time.
        task.watermarks = getattr(source, "watermarks", None)
        if self.watermarks is None:
            self.watermarks = task.watermarks
        self.tasks.append(task)
        return Stream(self, task.index)

    @property
    def sources(self) -> list[Any]:
        return [t.steps[0].fn for t in jobgraph.source_tasks(self.tasks)]

    @property
    def source_connector(self) -> Any:
        """The first source (jobs with one source)."""
        return self.sources[0] if self.sources else None

    def event_time(self, tasks: Iterable[int]) -> Any:
        """The WatermarkStrategy of the sources upstream of ``tasks`` (the first found)."""
        todo, seen = list(tasks), set()
        while todo:
            t = self.tasks[todo.pop(0)]
            if t.index in seen:
                continue
            seen.add(t.index)
            if t.watermarks is not None:
                return t.watermarks
            todo += [e.source for e in t.inputs]
        return None

    def _origins(self, stream: Stream) -> tuple[_Origin, ...]:
        """Where records of ``stream`` come from, seen from a task that would read them."""
        if stream._task is None:
            return stream._origins
        self._check_end(stream)
        return (_Origin(stream._task, None, Exchange(FORWARD)),)

    def _check_end(self, stream: Stream) -> None:
        task = self.tasks[stream._task]
        tail = task.steps[stream._at:]
        if task.sink is not None and tail and all(st.kind != "timestamps" for st in tail):
            # The stream went on to a sink and is used again (fan-out): what followed it
            # moves to a task of its own, fed over a forward edge (nothing reads the task's
            # main output: it ended in a sink), so the stream is the end of its task again.
            del task.steps[stream._at:]
            self.tasks.append(TaskSpec(len(self.tasks), [InputEdge(task.index,
                                                                   Exchange(FORWARD))], tail))
        if task.sink is not None:
            raise PipelineError("nothing can follow a sink")
        if len(task.steps) != stream._at:
            raise PipelineError(f"this stream of {task.task_id} was already continued with "
                                f"{task.steps[stream._at].name}: operators chain onto the end "
                                "of a stream (to fan out, end every branch but the last with a "
                                "sink, or start it with rebalance() or key_by(...))")

    def _chain(self, stream: Stream, step: Step) -> Stream:
        """Add a one-input operator (or a sink) to ``stream``."""
        if stream._task is not None:
            self._check_end(stream)
            task = self.tasks[stream._task]
            fanned_out = any(o.tag is None for o in jobgraph.outputs_of(self.tasks, task.index))
            if not fanned_out:
                task.steps.append(step)
                return Stream(self, task.index)
        origins = self._origins(stream)
        if any(o.exchange.kind == KEYED for o in origins):
            raise PipelineError("key_by(...) must be followed by process, reduce, count, "
                                "window or connect")
        return self._start_task([(o, 0) for o in origins], step)

    def _start_task(self, inputs: list[tuple[_Origin, int]], step: Step) -> Stream:
        task = TaskSpec(len(self.tasks), [InputEdge(o.task, o.exchange, o.tag, side)
                                          for o, side in inputs], [step])
        self.tasks.append(task)
        return Stream(self, task.index)

    @property
    def sink_connector(self) -> Any:
        """What the coordinator recovers and commits: the sink, or a :class:`SinkSet` of
        every sink of the job."""
        found = jobgraph.sinks(self.tasks)
        if not found:
            return None
        return found[0] if len(found) == 1 else SinkSet(found)

    def validate(self) -> None:
        jobgraph.validate(self.tasks)

    def describe(self) -> list[dict[str, Any]]:
        return jobgraph.describe(self.tasks)


class SinkSet:
    """The sinks of a job seen as one by the coordinator: recover, check and set aside each
    (every sink is transactional on its own: staged at the barrier, committed when the
    checkpoint completes)."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def recover(self, job_id: str, checkpoint_id: int | None) -> None:
        for sink in self.sinks:
            sink.recover(job_id, checkpoint_id)

    def committed_after(self, job_id: str, checkpoint_id: int) -> list[str]:
        return [f for sink in self.sinks for f in sink.committed_after(job_id, checkpoint_id)]

    def set_aside(self, job_id: str, checkpoint_id: int) -> str | None:
        kept = [k for sink in self.sinks if (k := sink.set_aside(job_id, checkpoint_id))]
        return ", ".join(kept) if kept else None
