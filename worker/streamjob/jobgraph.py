"""The job graph: tasks (chains of operators) and the edges that feed them.

A task has zero inputs (a source task) or one or more *input edges*. An edge comes from the
main output of an upstream task, or from one of its side outputs (``tag``), and says how
records cross it (:class:`Exchange`): ``keyed`` (hash partitioned by key group, every
upstream subtask to every downstream subtask), ``rebalance`` (round robin, all to all) or
``forward`` (subtask i to subtask i only: all tasks of a job run at the same parallelism).
``side`` tells a two-input operator (``connect``) which of its inputs the edge feeds (0 or
1); edges of a ``union`` all feed side 0.

Each subtask of a task has one input gate whose channels are the edges' channels one after
the other (:func:`channel_layout`): barrier alignment and the watermark (the minimum) run
over all of them, whatever edge they belong to. Worker i runs subtask i of every task.

Pure data and pure functions: the pipeline API builds it, :func:`validate` explains what
cannot run, the worker wires channels by it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KEYED, REBALANCE, FORWARD = "keyed", "rebalance", "forward"


class PipelineError(ValueError):
    """A pipeline that cannot run (for example a key_by not followed by keyed processing)."""


@dataclass(frozen=True)
class Step:
    kind: str  # source | timestamps | map | filter | flat_map | keyed | co_keyed | sink
    name: str
    fn: Any = None


@dataclass
class Exchange:
    kind: str  # keyed | rebalance | forward
    key_fn: Callable[[Any], Any] | None = None


@dataclass
class InputEdge:
    """Records of task ``source`` (its main output, or side output ``tag``) reach this task
    through ``exchange``, into input ``side`` of its first operator."""

    source: int
    exchange: Exchange
    tag: str | None = None
    side: int = 0

    def channels(self, parallelism: int) -> int:
        """Channels of this edge in one downstream subtask's input gate."""
        return 1 if self.exchange.kind == FORWARD else parallelism


@dataclass
class TaskSpec:
    """One chain of operators: a task. ``inputs`` says how records reach it (none: a source)."""

    index: int
    inputs: list[InputEdge] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    watermarks: Any = None  # a source task's WatermarkStrategy (event time), if any

    @property
    def task_id(self) -> str:
        return f"t{self.index}"

    @property
    def name(self) -> str:
        return " -> ".join(s.name for s in self.steps)

    @property
    def is_source(self) -> bool:
        return not self.inputs

    @property
    def exchange(self) -> Exchange | None:
        """The exchange of the first input (None: a source). Keyed operators read their key
        function here: every keyed input of a one-input keyed task has the same one."""
        return self.inputs[0].exchange if self.inputs else None

    @property
    def sink(self) -> Any:
        return self.steps[-1].fn if self.steps and self.steps[-1].kind == "sink" else None

    def num_channels(self, parallelism: int) -> int:
        return sum(e.channels(parallelism) for e in self.inputs)


def channel_layout(task: TaskSpec, parallelism: int) -> list[int]:
    """The first gate channel of each input edge of ``task`` (edge k's channels are
    ``offsets[k] .. offsets[k] + edge.channels(p) - 1``)."""
    offsets, at = [], 0
    for edge in task.inputs:
        offsets.append(at)
        at += edge.channels(parallelism)
    return offsets


def sides_of_channels(task: TaskSpec, parallelism: int) -> list[int]:
    """For each gate channel of ``task``, the operator input (side) its records feed."""
    return [e.side for e in task.inputs for _ in range(e.channels(parallelism))]


@dataclass(frozen=True)
class OutputEdge:
    """Seen from the upstream task: edge ``input`` of task ``target``."""

    target: int
    input: int
    tag: str | None
    exchange: Exchange


def outputs_of(tasks: list[TaskSpec], index: int) -> list[OutputEdge]:
    """Every edge leaving task ``index`` (main output first, then side outputs)."""
    out = [OutputEdge(t.index, k, e.tag, e.exchange)
           for t in tasks for k, e in enumerate(t.inputs) if e.source == index]
    return sorted(out, key=lambda o: o.tag is not None)


def source_tasks(tasks: list[TaskSpec]) -> list[TaskSpec]:
    return [t for t in tasks if t.is_source]


def sinks(tasks: list[TaskSpec]) -> list[Any]:
    return [t.sink for t in tasks if t.sink is not None]


def validate(tasks: list[TaskSpec]) -> None:
    """Raise :class:`PipelineError` saying what is wrong with the graph, if anything."""
    if not source_tasks(tasks):
        raise PipelineError("the pipeline has no source")
    for position, task in enumerate(tasks):
        if task.index != position:
            raise PipelineError(f"task {task.task_id} is at position {position} of the graph")
        if not task.steps:
            raise PipelineError("key_by(...) or rebalance() at the end needs an operator "
                                "after it")
        first = task.steps[0].kind
        if task.is_source != (first == "source"):
            raise PipelineError(f"{task.task_id} ({task.name}): a task starts with a source "
                                "exactly when it has no inputs")
        for edge in task.inputs:
            if not 0 <= edge.source < task.index:
                raise PipelineError(f"{task.task_id} ({task.name}) reads from task "
                                    f"{edge.source}, which does not come before it (the graph "
                                    "must be acyclic, in order)")
            if tasks[edge.source].sink is not None and edge.tag is None:
                raise PipelineError(f"nothing can follow a sink ({tasks[edge.source].name})")
        keyed = {e.exchange.kind == KEYED for e in task.inputs}
        if first in ("keyed", "co_keyed") and keyed != {True}:
            raise PipelineError(f"{task.steps[0].name} needs keyed inputs: key_by(...) "
                                "every input stream")
        if first not in ("keyed", "co_keyed") and True in keyed:
            raise PipelineError("key_by(...) must be followed by process, reduce, count, "
                                "window or connect")
        sides = {e.side for e in task.inputs}
        if first == "co_keyed" and sides != {0, 1}:
            raise PipelineError(f"{task.steps[0].name} needs two inputs (connect)")
        if first != "co_keyed" and sides - {0}:
            raise PipelineError(f"{task.name}: only a connected operator has a second input")
        for step in task.steps[1:]:
            if step.kind in ("source", "keyed", "co_keyed"):
                raise PipelineError(f"{step.name} cannot be chained after {task.steps[0].name}")
        if task.sink is None and not any(o.tag is None for o in outputs_of(tasks, task.index)):
            raise PipelineError(f"the stream of {task.task_id} ({task.name}) goes nowhere: "
                                "end it with .sink(...)")
    if not sinks(tasks):
        raise PipelineError("the pipeline must end with a sink")
    seen: dict[str, str] = {}
    for task in tasks:
        where = getattr(task.sink, "output", None)
        if where is not None:
            if str(where) in seen:
                raise PipelineError(f"two sinks write to {where} ({seen[str(where)]} and "
                                    f"{task.task_id}): each sink needs its own output")
            seen[str(where)] = task.task_id


def describe(tasks: list[TaskSpec]) -> list[dict[str, Any]]:
    """Tasks as the job status shows them: id, name, and how each input arrives."""
    out = []
    for t in tasks:
        entry: dict[str, Any] = {"id": t.task_id, "name": t.name,
                                 "input": t.exchange.kind if t.exchange else "source"}
        if len(t.inputs) > 1 or any(e.tag for e in t.inputs):
            entry["inputs"] = [{"from": tasks[e.source].task_id, "exchange": e.exchange.kind,
                                "side": e.side, **({"tag": e.tag} if e.tag else {})}
                               for e in t.inputs]
        out.append(entry)
    return out
