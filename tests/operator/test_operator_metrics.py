"""The operator's Prometheus metrics: the collector, the reconcile hooks, the HTTP endpoint."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sj_bodies import streamjob_body

from streamjob_operator import kube, reconcile
from streamjob_operator.config import Settings
from streamjob_operator.metrics import METRICS, OperatorMetrics
from streamjob_operator.phases import Phase

SETTINGS = Settings(api_url="http://fake:8081")


def fresh() -> OperatorMetrics:
    return OperatorMetrics(CollectorRegistry(), process=False)


def value(m: OperatorMetrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    assert got is not None, (name, labels)
    return got


def jobs(m: OperatorMetrics) -> dict[str, float]:
    return {p.value: value(m, "streamjob_operator_jobs", phase=p.value) for p in Phase}


def test_every_series_exists_at_zero():
    m = fresh()
    for result in ("ok", "retry", "error", "deferred"):
        assert value(m, "streamjob_operator_reconciles_total", result=result) == 0
    for kind in ("reconcile", "job"):
        assert value(m, "streamjob_operator_failures_total", kind=kind) == 0
    assert jobs(m) == {p.value: 0 for p in Phase}


def test_jobs_per_phase_follow_the_last_written_phase_and_forget_deleted_jobs():
    m = fresh()
    m.job_phase("a", "j1", "Running")
    m.job_phase("a", "j2", "Running")
    m.job_phase("b", "j1", "Pending")
    assert jobs(m)["Running"] == 2 and jobs(m)["Pending"] == 1
    m.job_phase("a", "j2", "Rescaling")
    m.job_phase("b", "j1", None)
    counts = jobs(m)
    assert counts["Running"] == 1 and counts["Rescaling"] == 1 and counts["Pending"] == 0
    assert sum(counts.values()) == 1 + 1


def test_autoscaler_decisions_are_counted_and_recommendations_kept_per_job():
    m = fresh()
    for action in ("scale", "hold", "none", "wait"):
        assert value(m, "streamjob_operator_autoscaler_decisions_total", action=action) == 0
    m.autoscaler_decision("a", "j1", "hold", 4)
    m.autoscaler_decision("a", "j1", "scale", 4)
    m.autoscaler_decision("a", "j1", "wait", None)
    assert value(m, "streamjob_operator_autoscaler_decisions_total", action="hold") == 1
    assert value(m, "streamjob_operator_autoscaler_decisions_total", action="wait") == 1
    assert value(m, "streamjob_operator_autoscaler_recommended_parallelism",
                 namespace="a", job="j1") == 4
    m.forget_job("a", "j1")
    m.forget_job("a", "j1")  # twice: harmless
    assert m.registry.get_sample_value("streamjob_operator_autoscaler_recommended_parallelism",
                                       {"namespace": "a", "job": "j1"}) is None


def test_a_job_failure_counts_once_when_the_phase_changes_to_failed():
    m = fresh()
    m.job_phase("a", "j", "Failed", changed=True)
    m.job_phase("a", "j", "Failed", changed=False)          # the next reconcile, same phase
    m.job_phase("a", "k", "Running", changed=True)
    assert value(m, "streamjob_operator_failures_total", kind="job") == 1


class Later(Exception):
    pass


def test_reconcile_pass_counts_ok_retry_and_error():
    m = fresh()
    with m.reconcile_pass(Later):
        pass
    with pytest.raises(Later), m.reconcile_pass(Later):
        raise Later
    with pytest.raises(KeyError), m.reconcile_pass(Later):
        raise KeyError("boom")
    assert value(m, "streamjob_operator_reconciles_total", result="ok") == 1
    assert value(m, "streamjob_operator_reconciles_total", result="retry") == 1
    assert value(m, "streamjob_operator_reconciles_total", result="error") == 1
    assert value(m, "streamjob_operator_failures_total", kind="reconcile") == 1
    assert value(m, "streamjob_operator_reconcile_duration_seconds_count") == 3


def test_served_over_http():
    m = fresh()
    m.job_phase("a", "j", "Running")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m.serve(port, addr="127.0.0.1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'streamjob_operator_jobs{phase="Running"} 1.0' in text
    assert 'streamjob_operator_reconciles_total{result="ok"} 0.0' in text


def test_settings_read_the_metrics_ports():
    s = Settings.from_env({"STREAMJOB_OPERATOR_METRICS_PORT": "9090",
                           "STREAMJOB_OPERATOR_JOB_METRICS_PORT": "9249"})
    assert (s.metrics_port, s.job_metrics_port) == (9090, 9249)
    assert Settings.from_env({}).metrics_port is None
    assert Settings.from_env({}).job_metrics_port is None


# ---------------------------------------------------------------- the hooks in reconcile


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An in-memory API with one StreamJob jobs/wc (no pods ever run)."""
    state: dict[str, Any] = {"body": streamjob_body()}

    def patch_status(ns: str, name: str, status: dict[str, Any], rv: Any = None) -> None:
        state["body"].setdefault("status", {}).update(status)

    monkeypatch.setattr(kube, "get_job", lambda ns, name: state["body"])
    monkeypatch.setattr(kube, "patch_status", patch_status)
    monkeypatch.setattr(kube, "list_pods", lambda ns, job: [])
    monkeypatch.setattr(kube, "create", lambda obj: True)
    monkeypatch.setattr(kube, "delete_pod", lambda *a, **k: True)
    monkeypatch.setattr(kube, "read_secret_key", lambda *a: "tok")
    return state


def sample(name: str, **labels: str) -> float:
    return METRICS.registry.get_sample_value(name, labels) or 0.0


def phase_of_wc() -> str | None:
    return METRICS.phases._phases.get("jobs/wc")


def test_a_reconcile_records_the_jobs_phase_and_its_result(api):
    ok = sample("streamjob_operator_reconciles_total", result="ok")
    reconcile.reconcile("jobs", "wc", SETTINGS, emit=lambda *a: None)
    assert sample("streamjob_operator_reconciles_total", result="ok") == ok + 1
    assert phase_of_wc() == "Pending" == api["body"]["status"]["phase"]

    failed = sample("streamjob_operator_failures_total", kind="job")
    api["body"]["spec"]["parallelism"] = 0                     # invalid: the job fails
    reconcile.reconcile("jobs", "wc", SETTINGS, emit=lambda *a: None)
    reconcile.reconcile("jobs", "wc", SETTINGS, emit=lambda *a: None)
    assert phase_of_wc() == "Failed"
    assert sample("streamjob_operator_failures_total", kind="job") == failed + 1

    reconcile.forget("jobs", "wc", "uid-1")
    assert phase_of_wc() is None


def test_a_gone_job_leaves_the_gauge(api):
    reconcile.reconcile("jobs", "wc", SETTINGS, emit=lambda *a: None)
    assert phase_of_wc() is not None
    api["body"] = None
    reconcile.reconcile("jobs", "wc", SETTINGS, emit=lambda *a: None)
    assert phase_of_wc() is None


def test_retries_errors_and_busy_jobs_are_counted(monkeypatch: pytest.MonkeyPatch):
    def once(ns, name, settings, emit):
        raise outcome

    monkeypatch.setattr(reconcile, "_reconcile_once", once)
    before = {r: sample("streamjob_operator_reconciles_total", result=r)
              for r in ("retry", "error", "deferred")}
    errors = sample("streamjob_operator_failures_total", kind="reconcile")
    outcome: Exception = reconcile.Retry("later")
    with pytest.raises(reconcile.Retry):
        reconcile.reconcile("jobs", "m1", SETTINGS)
    outcome = RuntimeError("api down")
    with pytest.raises(RuntimeError):
        reconcile.reconcile("jobs", "m1", SETTINGS)
    lock = reconcile.lock_for("jobs", "m1")
    with lock:
        reconcile.reconcile("jobs", "m1", SETTINGS, wait=False)     # busy: marked dirty
    reconcile.forget("jobs", "m1", None)
    assert sample("streamjob_operator_reconciles_total", result="retry") == before["retry"] + 1
    assert sample("streamjob_operator_reconciles_total", result="error") == before["error"] + 1
    assert sample("streamjob_operator_reconciles_total",
                  result="deferred") == before["deferred"] + 1
    assert sample("streamjob_operator_failures_total", kind="reconcile") == errors + 1
