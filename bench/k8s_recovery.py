"""Recovery and rescale of a StreamJob on Kubernetes (the e2e cluster, operator via helm).

Recovery: a worker pod is deleted (default grace period); medians over several deletions of

  * detection:  delete request -> the coordinator fails the job over (``last_failure``) and
                -> the operator's replacement pod exists (pod watch, seen from here),
  * scheduling: replacement pod created -> bound to the node (watch),
  * container:  bound -> its container runs (watch),
  * restore:    container runs -> every subtask of the new attempt runs with its restored state
                (coordinator ``attempt_running_at``: worker start-up, registration, state download),
  * resumed:    delete -> the coordinator reports records flowing again (``records_in`` grows
                between two reports; workers report about once a second, so +0-1 s).

Rescale 2 -> 4 through the scale subresource (``kubectl scale``): request -> savepoint taken ->
new pods created -> all containers run -> the new revision's coordinator runs -> records flow.

The host, the node and the pods share one clock (single node), so pod-side timestamps
(coordinator status) and watch times here are comparable.

    python bench/k8s_recovery.py [--deletions 5]      # needs $KUBECONFIG (scripts/cluster up)
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "scripts"))

import sjenv  # noqa: E402

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PodTimeline:
    """Watches the job's pods; first local time each pod was seen created, bound, running."""

    def __init__(self, core, ns: str, job: str):
        self.core, self.ns, self.job = core, ns, job
        self.created: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop:
            w = watch.Watch()
            try:
                for ev in w.stream(self.core.list_namespaced_pod, self.ns,
                                   label_selector=f"{sjenv.LABEL_JOB}={self.job}",
                                   timeout_seconds=30):
                    now = time.time()
                    pod = ev["object"]
                    name = pod.metadata.name
                    self.created.setdefault(name, now)
                    if pod.spec.node_name:
                        self.bound.setdefault(name, now)
                    if any(cs.state and cs.state.running
                           for cs in pod.status.container_statuses or []):
                        self.running.setdefault(name, now)
                    if self._stop:
                        break
            except Exception:  # noqa: BLE001 - a dropped watch is restarted
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop = True


class Coordinator:
    def __init__(self, jobs: sjenv.Jobs, name: str):
        self.jobs, self.name = jobs, name
        secret = jobs.core.read_namespaced_secret(f"{name}-api-token", jobs.ns)
        self.token = base64.b64decode(secret.data["token"]).decode()

    def url(self) -> str | None:
        for p in self.jobs.live_pods(self.name, "coordinator"):
            if p.status.pod_ip and p.status.phase == "Running":
                return f"http://{p.status.pod_ip}:8081/api/v1/job"
        return None

    def status(self, url: str | None = None) -> dict:
        url = url or self.url()
        if not url:
            return {}
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with _NO_PROXY.open(req, timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return {}

    def wait(self, pred, timeout: float = 180, period: float = 0.05) -> dict:
        end = time.monotonic() + timeout
        url = None
        while time.monotonic() < end:
            url = url or self.url()
            s = self.status(url)
            if not s:
                url = None
            elif pred(s):
                return s
            time.sleep(period)
        raise TimeoutError("coordinator condition not reached")


def _flowing(coord: Coordinator, timeout: float = 60) -> float:
    """Local time at which ``records_in`` first grows between two successive reports.

    Not "grows past its value when the attempt came up": right after a failover the coordinator
    still sums the previous attempt's per-worker counts (stale until each worker's next STATS),
    and a new attempt's counters start from 0, so that value can be far too high."""
    prev = coord.wait(lambda s: True).get("records_in", 0)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        cur = coord.wait(lambda s: True).get("records_in", 0)
        if cur > prev:
            return time.time()
        prev = cur
        time.sleep(0.05)
    raise TimeoutError("records do not flow")


def recovery(jobs: sjenv.Jobs, name: str, deletions: int) -> dict[str, list[float]]:
    jobs.wait_ready(name)
    coord = Coordinator(jobs, name)
    timeline = PodTimeline(jobs.core, jobs.ns, name)
    out: dict[str, list[float]] = {k: [] for k in (
        "coordinator detects", "replacement created", "scheduling", "container start",
        "restore", "delete -> running", "delete -> records flow")}
    try:
        for k in range(deletions):
            jobs.wait_ready(name)
            before = coord.wait(lambda s: s.get("state") == "RUNNING"
                                and s.get("last_checkpoint"))
            time.sleep(3)  # a checkpoint or two after the restore
            old = {p.metadata.name for p in jobs.live_pods(name, "worker")}
            victim = sorted(old)[k % len(old)]
            t0 = time.time()
            jobs.core.delete_namespaced_pod(victim, jobs.ns)
            s = coord.wait(lambda s, a=before["attempt"]: s.get("attempt", 0) > a
                           and s.get("state") == "RUNNING" and s.get("attempt_running_at"))
            t_flow = _flowing(coord)
            new = [p for p in timeline.created if p not in old and "worker" in p
                   and timeline.created[p] > t0]
            if len(new) != 1 or new[0] not in timeline.running:
                print(f"  deletion {k}: replacement pods {new}; skipped", file=sys.stderr)
                continue
            pod = new[0]
            out["coordinator detects"].append(s["last_failure"]["detected_at"] - t0)
            out["replacement created"].append(timeline.created[pod] - t0)
            out["scheduling"].append(timeline.bound[pod] - timeline.created[pod])
            out["container start"].append(timeline.running[pod] - timeline.bound[pod])
            out["restore"].append(s["attempt_running_at"] - timeline.running[pod])
            out["delete -> running"].append(s["attempt_running_at"] - t0)
            out["delete -> records flow"].append(t_flow - t0)
            print(f"  deletion {k}: " + ", ".join(f"{key} {v[-1]:.2f}s" for key, v in out.items()),
                  file=sys.stderr)
    finally:
        timeline.stop()
    return out


def rescale(jobs: sjenv.Jobs, name: str, to: int) -> dict[str, float]:
    coord = Coordinator(jobs, name)
    timeline = PodTimeline(jobs.core, jobs.ns, name)
    try:
        jobs.wait_ready(name)
        coord.wait(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint"))
        time.sleep(3)
        old = {p.metadata.name for p in jobs.live_pods(name)}
        t0 = time.time()
        jobs.scale(name, to)
        t_sp = None
        while time.time() - t0 < 300:
            st = jobs.status(name)
            if t_sp is None and (st.get("lastSavepoint") or {}).get("reason") == "rescale" \
                    and "savepoint" in (st.get("message") or ""):
                t_sp = time.time()
            if st.get("phase") == "Running" and st.get("parallelism") == to \
                    and (st.get("deployment") or {}).get("parallelism") == to:
                break
            time.sleep(0.05)
        s = coord.wait(lambda s: s.get("parallelism") == to and s.get("state") == "RUNNING"
                       and s.get("attempt_running_at"))
        t_flow = _flowing(coord)
        new = [p for p in timeline.created if p not in old]
        return {
            "request -> savepoint seen": (t_sp or float("nan")) - t0,
            "request -> new pods created": max(timeline.created[p] for p in new) - t0,
            "request -> all containers run": max(timeline.running.get(p, float("nan"))
                                                 for p in new) - t0,
            "request -> job running": s["attempt_running_at"] - t0,
            "request -> records flow": t_flow - t0,
        }
    finally:
        timeline.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deletions", type=int, default=5)
    ap.add_argument("--words", type=int, default=10_000, help="keys of state")
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--cpu", default="300m", help="cpu request/limit of each job pod")
    a = ap.parse_args()

    from devcluster.testing import image_ref, kubeconfig_path
    from kubernetes import client, config

    kc = kubeconfig_path()
    api = config.new_client_from_config(config_file=kc)
    core = client.CoreV1Api(api)
    minio = sjenv.start_minio(core)
    rel = sjenv.helm_install(core, kc, image_ref(), prefix="bench")
    try:
        sjenv.storage_secret(core, rel.jobs_ns, "minio-creds", sjenv.s3_env(minio))
        jobs = sjenv.Jobs(api, rel.jobs_ns)
        name = "rec"
        body = sjenv.wordcount_job(name, records=10**9, words=a.words, rate=a.rate,
                                   interval="1s", cpu=a.cpu)
        body["spec"]["restartStrategy"] = {"delay": "0s", "maxAttempts": 100}
        jobs.create(body)
        r = recovery(jobs, name, a.deletions)
        n = len(r["restore"])
        print(f"Kubernetes recovery: worker pod deleted (1 of 2, {a.words:,} keys, "
              f"checkpoint every 1 s, pods {a.cpu} CPU), median of {n} deletions")
        for key, values in r.items():
            if values:
                print(f"  {key:<26}{statistics.median(values):>7.2f} s   "
                      f"(min {min(values):.2f}, max {max(values):.2f})")
        sc = rescale(jobs, name, 4)
        print("Kubernetes rescale 2 -> 4 (scale subresource), one run")
        for key, v in sc.items():
            print(f"  {key:<32}{v:>7.2f} s")
        jobs.delete(name)
    finally:
        sjenv.helm_uninstall(core, rel)
        minio.close()


if __name__ == "__main__":
    main()
