"""Checkpoints on a real MinIO: durations, incremental upload size, rescale time.

    python bench/checkpoints.py [--keys 1000000] [--value-bytes 100] [--quick]

Prints, measured in one run on this machine:
  * checkpoint duration p50 / p99 with small state (wordcount, 1,000 keys) and with about
    keys * value_bytes of keyed state (full snapshots), on MinIO;
  * bytes uploaded per incremental checkpoint with ~1 % of the keys changed, as a fraction
    of the full state;
  * rescale 2 -> 4 with the large state: from the stop-with-savepoint request to processing
    resumed at p = 4, split into savepoint, stop, start and restore.
MinIO is built (cached) and started by scripts/minio_server.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from minio_server import MinioServer  # noqa: E402

from bench.procs import runtime_path  # noqa: E402

PYPATH = runtime_path(ROOT)  # this checkout's code


class Run:
    def __init__(self, tmp: Path, name: str, spec: dict, env: dict, extra: list[str] = ()):
        manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                    "metadata": {"name": name}, "spec": spec}
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        self.tmp, self.name = tmp, name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamjob", "run", "-q", str(path), *extra], cwd=tmp,
            env=dict(os.environ, **env, PYTHONPATH=PYPATH), stderr=subprocess.DEVNULL)

    def status(self) -> dict:
        try:
            return json.loads((self.tmp / ".streamjob/runs" / self.name / "status.json")
                              .read_text())
        except (OSError, ValueError):
            return {}

    def wait_for(self, pred, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if s and pred(s):
                return s
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise TimeoutError(self.name)

    def api(self, path: str, body: dict | None = None):
        run_dir = self.tmp / ".streamjob/runs" / self.name
        token = (run_dir / "api-token").read_text().strip()
        port = self.status()["coordinator"]["api_port"]
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def completed(run: Run, since_id: int = 0) -> list[dict]:
    return [h for h in run.api("/api/v1/checkpoints")["checkpoints"]
            if h["status"] == "COMPLETED" and h["kind"] == "checkpoint" and h["id"] > since_id]


def durations(run: Run, count: int, skip: int = 1) -> list[dict]:
    run.wait_for(lambda s: (s.get("last_checkpoint") or {}).get("id", 0) >= count + skip)
    return completed(run)[skip:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--checkpoints", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="100k keys, 8 checkpoints")
    a = ap.parse_args()
    if a.quick:
        a.keys, a.checkpoints = 100_000, 8
    load_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="sj-bench-"))
    server = MinioServer(tmp / "minio").start()
    env = server.env
    bucket = f"s3://bench-{int(time.time())}"
    try:
        # 1. small state
        small = Run(tmp, "small", {
            "pipeline": "streamjob.examples.wordcount:build", "parallelism": 2,
            "args": {"records": 10**9, "words": 1000, "rate": 50_000,
                     "output": str(tmp / "out")},
            "checkpoint": {"interval": "200ms"}, "storage": f"{bucket}/small"}, env)
        d_small = [h["duration_ms"] for h in durations(small, a.checkpoints)]
        small.stop()

        # 2. large state, full and incremental
        rate = max(1000, a.keys // 100)  # ~1 % of the keys rewritten per 1 s checkpoint
        results = {}
        for mode in ("full", "incremental"):
            run = Run(tmp, f"large-{mode}", {
                "pipeline": "bench.jobs:large_state", "parallelism": 2,
                "args": {"records": 10**9, "keys": a.keys, "value_bytes": a.value_bytes,
                         "rate": rate},
                "checkpoint": {"interval": "1s", "timeout": "5m",
                               "incremental": mode == "incremental", "maxDeltas": 1000},
                "storage": f"{bucket}/{mode}"}, env)
            hs = durations(run, max(4, a.checkpoints // 3), skip=2)
            results[mode] = hs
            if mode == "full":
                # 3. rescale 2 -> 4 from a stop-with-savepoint
                t0 = time.time()
                sp = run.api("/api/v1/savepoints", {"stop": True})
                t_sp = time.time()
                run.proc.wait(120)
                t_stopped = time.time()
                new = Run(tmp, "large-full-p4", {
                    "pipeline": "bench.jobs:large_state", "parallelism": 4,
                    "args": {"records": 10**9, "keys": a.keys, "value_bytes": a.value_bytes,
                             "rate": rate},
                    "checkpoint": {"interval": "1s", "timeout": "5m"},
                    "storage": f"{bucket}/{mode}"}, env, ["--from-savepoint", sp["uri"]])
                s = new.wait_for(lambda s: s.get("state") == "RUNNING")
                running = s["running_since"]
                n0 = new.wait_for(lambda s: s.get("records_in", 0) > 0)["records_in"]
                new.wait_for(lambda s, n0=n0: s.get("records_in", 0) > n0)
                results["rescale"] = {"total": running - t0, "savepoint": t_sp - t0,
                                      "stop": t_stopped - t_sp, "start+restore": running -
                                      t_stopped, "savepoint_bytes": sp["size_bytes"]}
                new.stop()
            else:
                run.stop()
    finally:
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)  # MinIO's data: over 1 GB after a full run

    full, inc = results["full"], results["incremental"]
    state_bytes = statistics.median(h["size_bytes"] for h in full)
    inc_bytes = statistics.median(h["size_bytes"] for h in inc)
    print(f"checkpoints on MinIO ({server.endpoint}), p = 2, {os.cpu_count()} cores, load "
          f"average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end (a shared "
          f"machine: durations grow with the load)")
    print(f"small state (1,000 keys): p50 {pct(d_small, .5):.0f} ms, p99 "
          f"{pct(d_small, .99):.0f} ms over {len(d_small)} checkpoints")
    df = [h["duration_ms"] for h in full]
    di = [h["duration_ms"] for h in inc]
    print(f"large state ({a.keys:,} keys x {a.value_bytes} B = {state_bytes / 1e6:.0f} MB), "
          f"full: p50 {pct(df, .5):.0f} ms, p99 {pct(df, .99):.0f} ms")
    print(f"large state, incremental: p50 {pct(di, .5):.0f} ms, p99 {pct(di, .99):.0f} ms, "
          f"uploaded {inc_bytes / 1e6:.2f} MB per checkpoint = "
          f"{inc_bytes / state_bytes * 100:.2f} % of the full state "
          f"(keys changed per checkpoint: ~{rate / a.keys * 100:.1f} %)")
    print(f"incremental ÷ full, same state, same run: duration p50 "
          f"{pct(di, .5) / pct(df, .5):.3f}, bytes uploaded {inc_bytes / state_bytes:.4f}")
    r = results["rescale"]
    print(f"rescale 2 -> 4 with {r['savepoint_bytes'] / 1e6:.0f} MB: {r['total']:.1f} s from "
          f"request to running (savepoint {r['savepoint']:.1f} s, stop {r['stop']:.1f} s, "
          f"start + restore {r['start+restore']:.1f} s)")


if __name__ == "__main__":
    main()
