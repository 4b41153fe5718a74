"""Prometheus metrics of the coordinator and the workers.

Workers expose counters read from their subtasks when scraped (nothing is done per record):
records in/out and time spent backpressured, per task and subtask. The coordinator exposes
checkpoint durations, sizes and alignment times, the last completed checkpoint, restarts.
Served with prometheus-client's HTTP server on ``--metrics-port`` (off unless given), without
authentication (as Prometheus expects), on the process's ``--bind`` address: 127.0.0.1 unless
told otherwise, so only this machine can read them (in Kubernetes pods bind 0.0.0.0 and the
job's NetworkPolicy decides who may scrape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerCollector:
    """Reads the live subtasks of a worker at scrape time."""

    def __init__(self, runners: Callable[[], Iterable[Any]], worker: int):
        self.runners, self.worker = runners, worker

    def collect(self):
        rin = CounterMetricFamily("streamjob_records_in", "Records a subtask received",
                                  labels=["task", "subtask"])
        rout = CounterMetricFamily("streamjob_records_out", "Records a subtask emitted",
                                   labels=["task", "subtask"])
        bp = CounterMetricFamily("streamjob_backpressure_seconds",
                                 "Time a subtask waited for room downstream",
                                 labels=["task", "subtask"])
        late = CounterMetricFamily("streamjob_late_records",
                                   "Records dropped because their event-time window had fired",
                                   labels=["task", "subtask"])
        lag = GaugeMetricFamily("streamjob_source_lag_records",
                                "Records of a source split (Kafka partition) not read yet",
                                labels=["task", "subtask", "split"])
        bad = CounterMetricFamily("streamjob_source_bad_records",
                                  "Source records that could not be deserialized",
                                  labels=["task", "subtask"])
        for r in self.runners():
            labels = [r.spec.task_id, str(r.subtask)]
            rin.add_metric(labels, r.records_in)
            rout.add_metric(labels, r.records_out)
            bp.add_metric(labels, r.backpressured_s)
            late.add_metric(labels, r.late_records)
            reader_lag = getattr(r.reader, "lag", None)
            if reader_lag is not None:
                for split, n in sorted(reader_lag().items()):
                    lag.add_metric([*labels, split], n)
                bad.add_metric(labels, r.reader.bad_records)
        up = GaugeMetricFamily("streamjob_worker_index", "Index of this worker", value=self.worker)
        return [rin, rout, bp, late, lag, bad, up]


def serve_worker_metrics(port: int, runners: Callable[[], Iterable[Any]], worker: int,
                         bind: str = "127.0.0.1") -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(WorkerCollector(runners, worker))
    start_http_server(port, addr=bind, registry=registry)
    return registry


class CoordinatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.duration = Histogram("streamjob_checkpoint_duration_seconds",
                                  "Trigger to completion of checkpoints", ["kind"],
                                  buckets=_DURATION_BUCKETS, registry=r)
        self.size = Gauge("streamjob_checkpoint_size_bytes", "Size of the last completed "
                          "checkpoint", registry=r)
        self.alignment = Histogram("streamjob_checkpoint_alignment_seconds",
                                   "Alignment time per subtask", ["task"],
                                   buckets=_DURATION_BUCKETS, registry=r)
        self.last_id = Gauge("streamjob_last_completed_checkpoint_id",
                             "Id of the last completed checkpoint", registry=r)
        self.failed = Counter("streamjob_checkpoints_failed", "Checkpoints aborted or declined",
                              registry=r)
        self.restarts = Gauge("streamjob_restarts", "Job restarts (failovers)", registry=r)
        self.running = Gauge("streamjob_running_subtasks", "Workers running the current "
                             "attempt", registry=r)

    def completed(self, summary: dict[str, Any]) -> None:
        self.duration.labels(summary["kind"]).observe(summary["duration_ms"] / 1000)
        if summary["kind"] == "checkpoint":
            self.size.set(summary["size_bytes"])
            self.last_id.set(summary["id"])
        for task, timings in summary.get("timings", {}).items():
            for t in timings:
                self.alignment.labels(task).observe(t.get("alignment_ms", 0) / 1000)

    def serve(self, port: int, bind: str = "127.0.0.1") -> None:
        start_http_server(port, addr=bind, registry=self.registry)
