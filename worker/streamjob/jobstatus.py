"""Status and reporting of the coordinator: record counts and rate from the workers' STATS,
the status document (served by the API, written to the status file the local supervisor and
tests read)."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

log = logging.getLogger("streamjob.coordinator")


class RecordCounter:
    """Records read by the sources and records written into the sinks: the
    current attempt from the workers' STATS (a worker sends one just before COMMITTED, so the
    count is exact at the end) plus what earlier attempts did (replays included)."""

    def __init__(self, source_tasks: list[str], sink_tasks: list[str] | None = None):
        self.source_tasks = source_tasks
        self.sink_tasks = sink_tasks or []
        self.latest: dict[int, dict[str, list[int]]] = {}
        self.lag: dict[int, dict[str, int]] = {}  # per worker: split -> records not read
        self.base = self.base_out = 0
        self.rate = self.rate_out = 0.0
        self._mark: tuple[float, int, int] | None = None

    def on_stats(self, worker: int, tasks: dict[str, list[int]],
                 lag: dict[str, int] | None = None) -> None:
        self.latest[worker] = tasks
        if lag is not None:
            self.lag[worker] = lag

    def source_lag(self) -> dict[str, int]:
        return {split: n for per_worker in self.lag.values() for split, n in per_worker.items()}

    def new_attempt(self) -> None:
        """Subtasks of the next attempt count from 0: keep the total cumulative."""
        self.base += self.current()
        self.base_out += self.current_out()
        self.latest = {}
        self.lag = {}

    def current(self) -> int:
        return sum(v.get(task, [0, 0])[0] for v in self.latest.values()
                   for task in self.source_tasks)

    def total(self) -> int:
        return self.base + self.current()

    def current_out(self) -> int:
        return sum(v.get(task, [0, 0])[1] for v in self.latest.values()
                   for task in self.sink_tasks)

    def total_out(self) -> int:
        return self.base_out + self.current_out()

    def update_rate(self, now: float) -> bool:
        """Once a second: the rate over the last second; True when it changed."""
        total, out = self.total(), self.total_out()
        if self._mark is None:
            self._mark = (now, total, out)
            return False
        if now - self._mark[0] < 1.0:
            return False
        t0, n0, o0 = self._mark
        self.rate = max(0.0, (total - n0) / (now - t0))
        self.rate_out = max(0.0, (out - o0) / (now - t0))
        self._mark = (now, total, out)
        return True


def status_document(c: Any) -> dict[str, Any]:
    """The job status (``openapi.yaml`` JobStatus) of a coordinator."""
    from streamjob import jobstate as js

    cc = c.checkpoints
    completed = [h for h in cc.history if h["status"] == "COMPLETED"
                 and h["kind"] == "checkpoint"]
    last = completed[-1] if completed else None
    return {
        "job_id": c.job_id, "name": c.job.metadata.name,
        "state": js.public_state(c.state, c.attempt),
        "scheduler_state": c.state.value,
        "message": c.message, "parallelism": c.p, "attempt": c.attempt,
        "restarts": c.restarts, "coordinator_restarts": c.coordinator_restarts,
        "restored_from": cc.restored_from,
        "skipped_checkpoints": {str(n): why for n, why in sorted(c.restore_problems.items())},
        "records_per_second": round(c.records.rate, 1),
        "records_in": c.records.total(),
        "records_out_per_second": round(c.records.rate_out, 1),
        "records_out": c.records.total_out(),
        "source_lag": c.records.source_lag(),
        "last_checkpoint": None if last is None else {
            k: last[k] for k in ("id", "completed_at", "duration_ms", "size_bytes")},
        "failed_checkpoints": sum(1 for h in cc.history if h["status"] == "FAILED"),
        "checkpoint_timeout_s": cc.cfg.timeout,
        "savepoints": [{k: s[k] for k in ("id", "path", "completed_at", "size_bytes")}
                       for s in cc.savepoints],
        "coordinator": {"port": c.port, "api_port": c.api.port if c.api else None,
                        "pid": os.getpid()},
        "running_since": c.running_since, "finished_at": c.finished_at,
        "attempt_running_at": c.attempt_running_at, "last_failure": c.last_failure,
        "updated_at": time.time(),
    }


def tasks_document(c: Any, window: float | None) -> dict[str, Any]:
    """The task metrics (``openapi.yaml`` TaskMetrics) of a coordinator: per task of the job
    graph, rates and ratios over the last ``window`` seconds (see ``taskmetrics.py``)."""
    from streamjob import jobstate as js
    from streamjob.taskmetrics import clamp_window

    w = clamp_window(window)
    cc = c.checkpoints
    return {
        "window_s": w,
        "state": js.public_state(c.state, c.attempt),
        "checkpoint_in_progress": bool(cc.pending or cc.completing),
        "restoring": c.state in (js.JobState.CREATED, js.JobState.DEPLOYING,
                                 js.JobState.RESTARTING),
        "tasks": c.task_metrics.tasks(c.graph, c.p, w),
    }


def write_status_file(path: str | None, status: dict[str, Any]) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(status, f)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot write the status file %s: %s", path, err)
