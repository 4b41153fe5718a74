"""Prometheus metrics of the operator: reconciles by result, failures, jobs per phase.

* ``streamjob_operator_reconciles_total{result}``: one per reconcile pass of one job;
  ``ok``, ``retry`` (not now: a savepoint is pending, the job is busy...), ``error`` (an
  unexpected exception), ``deferred`` (a pod event or timer found the job locked and marked it
  dirty; the lock holder reconciles again).
* ``streamjob_operator_failures_total{kind}``: ``reconcile`` (a pass ended in an unexpected
  exception) and ``job`` (a job entered phase Failed).
* ``streamjob_operator_reconcile_duration_seconds``: time of one pass (any result).
* ``streamjob_operator_jobs{phase}``: jobs this operator handles, per phase, read at scrape time
  from the phase each job's last reconcile wrote (every phase is listed, 0 when none).
* ``streamjob_operator_autoscaler_decisions_total{action}``: autoscaler polls by decision:
  ``scale`` (a rescale was started), ``hold`` (stabilising or cooling down), ``none`` (at the
  parallelism it needs), ``wait`` (no usable metrics: checkpoint, restore, not RUNNING).
* ``streamjob_operator_autoscaler_recommended_parallelism{namespace,job}``: the parallelism
  the autoscaler recommends for each job (its last poll with metrics).

Everything lives in :data:`REGISTRY` (not the process-wide default one) and is served with
prometheus-client's HTTP server on ``STREAMJOB_OPERATOR_METRICS_PORT`` (off when unset).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

from streamjob_operator.phases import Phase

RESULTS = ("ok", "retry", "error", "deferred")
AUTOSCALER_ACTIONS = ("scale", "hold", "none", "wait")
FAILURE_KINDS = ("reconcile", "job")


class JobPhases:
    """The phase of every job (``namespace/name``) as last written; a collector of the gauge."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[str, str] = {}

    def set(self, namespace: str, name: str, phase: str) -> None:
        with self._lock:
            self._phases[f"{namespace}/{name}"] = phase

    def drop(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop(f"{namespace}/{name}", None)

    def counts(self) -> dict[str, int]:
        counts = {p.value: 0 for p in Phase}
        with self._lock:
            for phase in self._phases.values():
                counts[phase] = counts.get(phase, 0) + 1
        return counts

    def collect(self) -> list[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("streamjob_operator_jobs",
                                  "StreamJobs handled by this operator, per phase",
                                  labels=["phase"])
        for phase, count in self.counts().items():
            gauge.add_metric([phase], count)
        return [gauge]

    def describe(self) -> list[GaugeMetricFamily]:
        return self.collect()


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None,
                 process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.reconciles = Counter("streamjob_operator_reconciles",
                                  "Reconcile passes of one job, by result", ["result"],
                                  registry=r)
        self.failures = Counter("streamjob_operator_failures",
                                "Failed reconcile passes (kind=reconcile) and jobs that "
                                "entered phase Failed (kind=job)", ["kind"], registry=r)
        self.duration = Histogram("streamjob_operator_reconcile_duration_seconds",
                                  "Duration of one reconcile pass of one job", registry=r,
                                  buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                           300))
        for result in RESULTS:                  # every series exists from the start, at 0
            self.reconciles.labels(result)
        for kind in FAILURE_KINDS:
            self.failures.labels(kind)
        self.autoscaler_decisions = Counter(
            "streamjob_operator_autoscaler_decisions", "Autoscaler polls, by decision",
            ["action"], registry=r)
        for action in AUTOSCALER_ACTIONS:
            self.autoscaler_decisions.labels(action)
        self.recommended = Gauge("streamjob_operator_autoscaler_recommended_parallelism",
                                 "Parallelism the autoscaler recommends", ["namespace", "job"],
                                 registry=r)
        self.phases = JobPhases()
        r.register(self.phases)

    @contextmanager
    def reconcile_pass(self, retry: type[BaseException] | tuple[type[BaseException], ...]
                       ) -> Iterator[None]:
        """Count one pass: ``retry`` exceptions (and status conflicts) are retries, any other
        one an error."""
        start = time.perf_counter()
        try:
            yield
        except retry:
            self.reconciles.labels("retry").inc()
            raise
        except Exception:
            self.reconciles.labels("error").inc()
            self.failures.labels("reconcile").inc()
            raise
        else:
            self.reconciles.labels("ok").inc()
        finally:
            self.duration.observe(time.perf_counter() - start)

    def deferred(self) -> None:
        self.reconciles.labels("deferred").inc()

    def autoscaler_decision(self, namespace: str, name: str, action: str,
                            recommended: int | None) -> None:
        self.autoscaler_decisions.labels(action).inc()
        if recommended is not None:
            self.recommended.labels(namespace, name).set(recommended)

    def forget_job(self, namespace: str, name: str) -> None:
        """A deleted job: its recommendation series goes too."""
        try:
            self.recommended.remove(namespace, name)
        except KeyError:
            pass

    def job_phase(self, namespace: str, name: str, phase: str | None,
                  changed: bool = False) -> None:
        """Record the phase a reconcile wrote (``None``: the job is gone)."""
        if phase is None:
            self.phases.drop(namespace, name)
            return
        self.phases.set(namespace, name, phase)
        if changed and phase == Phase.FAILED.value:
            self.failures.labels("job").inc()

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


#: The operator process's metrics (the reconcile hooks write here).
METRICS = OperatorMetrics()
