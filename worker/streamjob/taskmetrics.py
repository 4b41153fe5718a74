"""Task metrics: rates and ratios per task and subtask over a sliding window.

Every second each worker sends STATS with, per task, the cumulative counters of its subtask
(``[records_in, records_out, busy_s, backpressured_s, elapsed_s, backlog]``, see
``SubtaskRunner.stats``). This module keeps a window of those samples per subtask and turns
differences between them into what the dashboard draws and the autoscaler decides on:

- ``records_in_per_s`` / ``records_out_per_s``: records over the worker's elapsed time;
- ``busy_ratio``: time spent processing records per second (Flink's busyTimeMsPerSecond);
- ``backpressured_ratio``: time blocked sending downstream per second;
- ``idle_ratio``: the rest (waiting for input, or a rate-limited source waiting for its pace);
- ``backlog``: a source's records behind (Kafka lag; a generator behind its rate), else None;
  ``backlog_growth_per_s`` its change per second over the window (records arriving faster
  than the source reads them: arrival rate = ``records_in_per_s + backlog_growth_per_s``).

A task's ratios are the maximum over its subtasks (one hot subtask is what slows a job),
rates and backlog are sums. Rates use the workers' own clocks (``elapsed_s``), so a late
STATS message does not distort them. Pure: no I/O, the caller passes ``now``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_WINDOW = 10.0
MAX_WINDOW = 300.0  # also how long samples are kept
MIN_WINDOW = 1.0


@dataclass(frozen=True)
class Sample:
    """One STATS entry of one subtask; ``at`` is when the coordinator received it."""

    at: float
    records_in: int
    records_out: int
    busy_s: float
    backpressured_s: float
    elapsed_s: float
    backlog: int | None

    @classmethod
    def parse(cls, at: float, values: Any) -> Sample | None:
        """From a STATS list; None if it is not one (an old worker sends two counts only)."""
        if not isinstance(values, list | tuple) or len(values) < 6:
            return None
        rin, rout, busy, bp, elapsed, backlog = values[:6]
        numbers = (rin, rout, busy, bp, elapsed)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                   and v >= 0 for v in numbers):
            return None
        if backlog is not None and (not isinstance(backlog, int) or isinstance(backlog, bool)
                                    or backlog < 0):
            return None
        return cls(at, int(rin), int(rout), float(busy), float(bp), float(elapsed), backlog)


ORIGIN = Sample(0.0, 0, 0, 0.0, 0.0, 0.0, None)  # every subtask starts from zero


@dataclass(frozen=True)
class SubtaskRates:
    index: int
    records_in_per_s: float
    records_out_per_s: float
    busy_ratio: float
    backpressured_ratio: float
    idle_ratio: float
    backlog: int | None
    backlog_growth_per_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "records_in_per_s": self.records_in_per_s,
                "records_out_per_s": self.records_out_per_s, "busy_ratio": self.busy_ratio,
                "backpressured_ratio": self.backpressured_ratio,
                "idle_ratio": self.idle_ratio, "backlog": self.backlog,
                "backlog_growth_per_s": self.backlog_growth_per_s}


@dataclass(frozen=True)
class TaskInfo:
    """What the job graph says about a task (from the pipeline)."""

    id: str
    name: str
    inputs: tuple[str, ...]


def clamp_window(window: float | None) -> float:
    if window is None or not math.isfinite(window):
        return DEFAULT_WINDOW
    return min(MAX_WINDOW, max(MIN_WINDOW, window))


def rates(index: int, base: Sample, last: Sample) -> SubtaskRates:
    """The rates between two samples of one subtask (``base`` older)."""
    span = last.elapsed_s - base.elapsed_s
    if span <= 0:
        return SubtaskRates(index, 0.0, 0.0, 0.0, 0.0, 1.0, last.backlog)
    growth = (None if last.backlog is None or base.backlog is None
              else round((last.backlog - base.backlog) / span, 1))

    def ratio(a: float, b: float) -> float:
        return min(1.0, max(0.0, (b - a) / span))

    busy = ratio(base.busy_s, last.busy_s)
    bp = ratio(base.backpressured_s, last.backpressured_s)
    return SubtaskRates(
        index,
        round(max(0, last.records_in - base.records_in) / span, 1),
        round(max(0, last.records_out - base.records_out) / span, 1),
        round(busy, 3), round(bp, 3), round(max(0.0, 1.0 - busy - bp), 3), last.backlog,
        growth)


class TaskMetrics:
    """Sliding windows of samples, per task and subtask, of the current attempt."""

    def __init__(self, keep: float = MAX_WINDOW):
        self.keep = keep
        self.series: dict[tuple[str, int], deque[Sample]] = {}

    def clear(self) -> None:
        """A new attempt: its subtasks count from zero (and may be fewer)."""
        self.series.clear()

    def on_stats(self, now: float, subtask: int, tasks: Mapping[str, Any]) -> None:
        for task_id, values in tasks.items():
            sample = Sample.parse(now, values)
            if sample is None:
                continue
            series = self.series.setdefault((str(task_id), subtask), deque())
            if series and sample.elapsed_s < series[-1].elapsed_s:
                series.clear()  # the subtask restarted: its counters did too
            series.append(sample)
            while len(series) > 2 and series[1].at < now - self.keep:
                series.popleft()

    def subtask(self, task_id: str, index: int, window: float) -> SubtaskRates | None:
        """Rates over at least ``window`` seconds before the newest sample (or since the
        subtask started, if it is younger); None before its first sample."""
        series = self.series.get((task_id, index))
        if not series:
            return None
        last = series[-1]
        # Samples older than ``keep`` (>= any window) are dropped only once a younger one
        # spans the window, so when none does the series is complete since the start.
        base = ORIGIN
        for s in series:
            if s.elapsed_s > last.elapsed_s - window:
                break
            base = s
        return rates(index, base, last)

    def tasks(self, graph: Iterable[TaskInfo], parallelism: int,
              window: float) -> list[dict[str, Any]]:
        """The ``tasks`` list of ``GET /api/v1/tasks``: one entry per task, with the
        subtasks that have reported (up to ``parallelism``)."""
        out = []
        for info in graph:
            subs = [r for i in range(parallelism)
                    if (r := self.subtask(info.id, i, window)) is not None]
            backlogs = [r.backlog for r in subs if r.backlog is not None]
            growths = [r.backlog_growth_per_s for r in subs
                       if r.backlog_growth_per_s is not None]
            out.append({
                "id": info.id, "name": info.name, "inputs": list(info.inputs),
                "parallelism": parallelism,
                "records_in_per_s": round(sum(r.records_in_per_s for r in subs), 1),
                "records_out_per_s": round(sum(r.records_out_per_s for r in subs), 1),
                "busy_ratio": max((r.busy_ratio for r in subs), default=0.0),
                "backpressured_ratio": max((r.backpressured_ratio for r in subs), default=0.0),
                "backlog": sum(backlogs) if backlogs else None,
                "backlog_growth_per_s": round(sum(growths), 1) if growths else None,
                "subtasks": [r.as_dict() for r in subs],
            })
        return out


def job_graph(task_specs: Iterable[Any]) -> list[TaskInfo]:
    """Tasks and the tasks that feed them, from the pipeline's job graph (``jobgraph.py``):
    a source has none; several edges from one task (main and side outputs) count once."""
    return [TaskInfo(spec.task_id, spec.name,
                     tuple(dict.fromkeys(f"t{edge.source}" for edge in spec.inputs)))
            for spec in task_specs]
