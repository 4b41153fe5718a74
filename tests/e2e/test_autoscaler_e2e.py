"""The autoscaler end to end on the real cluster (issue 16, end-to-end tier).

`helm install` of helm/streamjob → a StreamJob with `spec.autoscaler.enabled` at parallelism 1:
the keyed count of `streamjob.examples.scheduled` (a CPU cost per record in the keyed task)
under a generator schedule base → peak → base (bench/autoscale.py's scenario, shortened). One
subtask at the pods' CPU limit cannot keep up with the peak: the operator scales the job up by
itself (status.autoscaler, an `Autoscaled` event, workers at the new parallelism), and once the
peak's backlog is read and the rate is back at base, scales it down. The bounded input runs
out: Finished, and the committed output in MinIO is exactly the expected set.
"""
from __future__ import annotations

import re
import threading
import time

import pytest
from sjenv import (
    Jobs,
    assert_committed_exactly_once,
    helm_install,
    helm_uninstall,
    is_ready,
    poll_until,
    s3_env,
    start_minio,
    storage_secret,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# The keyed task spins COST_US of wall time per record, so one subtask handles at most
# 1e6 / COST_US = 1,000 records/s however idle or loaded the machine (the CPU limit only caps
# what the spinning takes from the other tests): PEAK is 1.5x that (a growing backlog, busy
# 1.0, needs 3 at targetUtilization 0.7), BASE a small share of one subtask. (A full batch,
# 2,048 records, then holds a worker's event loop for 2 s: more would stall barriers.)
COST_US, CPU = 1000, "250m"
BASE, PEAK = 50, 1500
# TAIL (s of base rate after the peak) must outlast reading the peak's backlog and the
# scale-down: with 100 s the input ran out just as the scale-down came (149 s after the
# start, in two runs on 2026-12-07, the code before this change too).
UP_AT, DOWN_AT, TAIL = 10, 50, 200          # s from start_at: peak from UP_AT to DOWN_AT
WORDS = 200
RECORDS = int(BASE * UP_AT + PEAK * (DOWN_AT - UP_AT) + BASE * TAIL)
MAX_P = 3


@pytest.fixture(scope="module")
def minio(kube):
    server = start_minio(kube.core)
    yield server
    server.close()


@pytest.fixture(scope="module")
def jobs(kube, minio):
    from devcluster.testing import kubeconfig_path

    rel = helm_install(kube.core, kubeconfig_path(), kube.image, prefix="e2e-auto")
    try:
        storage_secret(kube.core, rel.jobs_ns, "minio-creds", s3_env(minio))
        yield Jobs(kube.api, rel.jobs_ns)
    finally:
        helm_uninstall(kube.core, rel)


def autoscaled_job(name: str, start_at: float) -> dict:
    schedule = f"0s:{BASE},{UP_AT}s:{PEAK},{DOWN_AT}s:{BASE}"
    return {
        "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
        "metadata": {"name": name},
        "spec": {
            "pipeline": "streamjob.examples.scheduled:build",
            "args": {"records": RECORDS, "words": WORDS, "schedule": schedule,
                     "start_at": start_at, "cost_us": COST_US, "output": "s3://bucket/out"},
            "storage": "s3://bucket/checkpoints",
            "storageSecret": "minio-creds",
            "parallelism": 1,
            "checkpoint": {"interval": "3s", "timeout": "120s", "tolerableFailures": 5},
            "resources": {"cpu": CPU, "memory": "384Mi"},
            "autoscaler": {"enabled": True, "minParallelism": 1, "maxParallelism": MAX_P,
                           "targetUtilization": 0.7, "metricsWindow": "5s",
                           "stabilization": "5s", "catchUpDuration": "20s",
                           "scaleUpCooldown": "10s", "scaleDownInterval": "15s",
                           "maxScaleDownFactor": 0.5},
        },
    }


def running_at(body: dict, pred) -> bool:
    st = body.get("status") or {}
    return is_ready(body) and st.get("phase") == "Running" and pred(st.get("parallelism") or 0)


def autoscaled_events(jobs: Jobs, name: str) -> list[tuple[int, int]]:
    """(from, to) of every `Autoscaled` event of the job, e.g. 'parallelism 1 -> 3: ...'."""
    out = []
    for e in jobs.events(name):
        m = re.match(r"Autoscaled: parallelism (\d+) -> (\d+):", e)
        if m:
            out.append((int(m[1]), int(m[2])))
    return out


class DecisionRecorder(threading.Thread):
    """Keeps every change of status.autoscaler.lastDecision (printed with the result)."""

    def __init__(self, jobs: Jobs, name: str):
        super().__init__(daemon=True)
        self.jobs, self.name, self.seen = jobs, name, []
        self.done = threading.Event()

    def run(self) -> None:
        last = None
        while not self.done.wait(0.5):
            try:
                st = self.jobs.status(self.name)
            except Exception:  # noqa: BLE001 - a blip; keep polling
                continue
            d = (st.get("autoscaler") or {}).get("lastDecision") or {}
            cur = (st.get("parallelism"), d.get("action"), d.get("reason"))
            if cur != last:
                self.seen.append((time.strftime("%H:%M:%S"), *cur))
                last = cur


def test_the_operator_scales_a_job_up_under_a_peak_and_down_after_it(jobs, minio):
    name = "autoscaled"
    jobs.create(autoscaled_job(name, time.time()))
    trace: list[str] = []
    rec = DecisionRecorder(jobs, name)
    rec.start()
    try:
        body = jobs.wait(name, lambda b: running_at(b, lambda p: p == 1), 240, "Running at 1")
        assert len(jobs.live_pods(name, "worker")) == 1

        # Nobody touches it: under the peak the operator scales it up.
        body = jobs.wait(name, lambda b: running_at(b, lambda p: p > 1), 300, "scaled up")
        up = body["status"]["parallelism"]
        trace.append(f"up to {up}")
        assert 1 < up <= MAX_P
        assert body["spec"]["parallelism"] == 1            # the spec was not edited
        auto = body["status"]["autoscaler"]
        assert auto["target"] > 1, auto          # (it may already aim higher than `up`)
        assert auto["lastScale"]["action"] == "scale", auto
        assert poll_until(lambda: len(jobs.live_pods(name, "worker")) == up, 120, 1.0), [
            p.metadata.name for p in jobs.live_pods(name, "worker")]
        assert any(a == 1 and b > 1 for a, b in autoscaled_events(jobs, name)), (
            jobs.events(name))
        assert body["status"]["phase"] != "Finished"

        # The peak is over and its backlog read: scaled down, still by the operator alone.
        body = jobs.wait(name, lambda b: running_at(b, lambda p: 0 < p < up)
                         or (b.get("status") or {}).get("phase") == "Finished",
                         360, "scaled down")
        assert body["status"]["phase"] != "Finished", (
            "the input ran out before the scale-down; raise TAIL", body["status"])
        down = body["status"]["parallelism"]
        trace.append(f"down to {down}")
        assert poll_until(lambda: len(jobs.live_pods(name, "worker")) == down, 120, 1.0)
        events = autoscaled_events(jobs, name)
        assert any(b > a for a, b in events) and any(b < a for a, b in events), jobs.events(name)
        assert body["status"]["autoscaler"]["target"] < up, body["status"]["autoscaler"]

        # The bounded input runs out: Finished, every line committed exactly once.
        jobs.wait(name, lambda b: (b.get("status") or {}).get("phase") == "Finished",
                  420, "Finished")
        assert_committed_exactly_once(minio, RECORDS, WORDS)
    finally:
        rec.done.set()
        rec.join(5)
        print("\n".join(map(str, rec.seen)))
        print("autoscaler:", trace, [e for e in jobs.events(name) if e.startswith("Autoscaled")])
