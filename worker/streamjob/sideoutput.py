"""Side outputs: a second stream out of an operator, into a sink of its own.

An operator that has side outputs keeps ``side_outputs: dict[tag, emit]``; the task puts a
:class:`SideBranch` behind each tag the pipeline took (``Pipeline.side_output``): the branch
runs its chain (map, filter, flat_map) on what the operator emits and writes the result to
its sink on a thread of its own, in stream order. At every barrier the task cuts and stages
the branch's output exactly like the main sink's (same checkpoint, same two-phase commit), so
a side output is as exactly-once as the main output. The coordinator recovers every sink of
the job at a restore (:class:`SinkGroup`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from streamjob.pipeline import SideOutput


def chain(steps: list[Any]) -> list[Callable[[list[Any]], list[Any]]]:
    """The batch functions of map / filter / flat_map steps."""
    out: list[Callable[[list[Any]], list[Any]]] = []
    for step in steps:
        fn = step.fn
        if step.kind == "map":
            out.append(lambda b, f=fn: [f(x) for x in b])
        elif step.kind == "filter":
            out.append(lambda b, f=fn: [x for x in b if f(x)])
        elif step.kind == "flat_map":
            out.append(lambda b, f=fn: [y for x in b for y in f(x)])
    return out


class SideBranch:
    """One side output of one subtask: its chain and its sink's writer."""

    def __init__(self, side: SideOutput, subtask: int, job_id: str, task_name: str):
        self.tag = side.tag
        self.transforms = chain(side.steps[:-1])
        self.writer = side.sink.create_writer(subtask, job_id)
        self.executor = ThreadPoolExecutor(max_workers=1,
                                           thread_name_prefix=f"side-{task_name}-{side.tag}")
        self.error: BaseException | None = None
        self.records_out = 0

    def emit(self, batch: list[Any]) -> None:
        """Called by the operator (on the task's thread, between two barriers)."""
        for transform in self.transforms:
            batch = transform(batch)
            if not batch:
                return
        self.records_out += len(batch)
        self.executor.submit(self._write, batch)

    def _write(self, batch: list[Any]) -> None:
        if self.error is not None:
            return
        try:
            self.writer.write(batch)
        except Exception as err:  # noqa: BLE001 - fails the next staging (and the task)
            self.error = err

    def stage(self, checkpoint_id: int) -> Future[Any]:
        """Cut at barrier ``checkpoint_id`` and stage what was written before it (after every
        write submitted before, on the branch's thread)."""

        def stage() -> Any:
            if self.error is not None:
                raise RuntimeError(f"side output {self.tag!r}: write failed: {self.error}")
            return self.writer.pre_commit(checkpoint_id)()

        return self.executor.submit(stage)

    def commit(self, checkpoint_id: int) -> None:
        self.writer.commit(checkpoint_id)

    def restore(self, states: list[Any]) -> None:
        restore = getattr(self.writer, "restore", None)
        if restore is not None:
            restore(states)

    def close(self) -> Future[Any]:
        return self.executor.submit(self.writer.close)


class SinkGroup:
    """The sinks of a job seen as one by the coordinator's restore: recover all, report what
    any committed after a checkpoint, set all aside."""

    def __init__(self, sinks: list[Any]):
        self.sinks = [s for s in sinks if s is not None]

    def recover(self, job_id: str, checkpoint_id: int | None) -> None:
        for sink in self.sinks:
            sink.recover(job_id, checkpoint_id)

    def committed_after(self, job_id: str, checkpoint_id: int) -> list[str]:
        return [f for sink in self.sinks for f in sink.committed_after(job_id, checkpoint_id)]

    def set_aside(self, job_id: str, checkpoint_id: int) -> str | None:
        kept = [k for sink in self.sinks if (k := sink.set_aside(job_id, checkpoint_id))]
        return ", ".join(kept) or None
