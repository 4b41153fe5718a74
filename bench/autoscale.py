"""The operator's autoscaler, locally: its decision function driving `streamjob run` processes.

    python bench/autoscale.py [--base 150] [--peak 5000] [--cost-us 200] [--step 40]
                              [--peak-for 40] [--tail 60]

The job (``streamjob.examples.scheduled``) is a keyed count whose keyed task spends
``--cost-us`` of CPU per record, so one subtask handles about ``1e6 / cost_us`` records/s at
most (the default peak is that: at ``targetUtilization`` 0.7 one subtask never suffices,
however idle the machine); its generator follows the schedule ``base`` -> ``peak`` (from
``--step`` s) -> ``base`` (from ``step + peak-for`` s), counted from the job's first start
(``start_at``), and stops after ``tail`` more seconds' worth of records. It starts at
parallelism 1.

Every second this script reads the coordinator's ``GET /api/v1/tasks`` and calls the
operator's pure decision (``streamjob_operator.autoscaler.decide``) with the manifest's
``spec.autoscaler``, exactly as the operator does. A ``scale`` decision is applied the way
the operator applies it, with the local equivalents: a stop-with-savepoint
(``streamjob savepoint NAME --stop``), then ``streamjob run -p NEW --from-savepoint URI``.

It prints the parallelism over time, the time from each load step until the job runs at the
parallelism it ends that phase with, the source backlog at the peak, the rescales and the
output's exactness (every line of the keyed count committed exactly once), and last:
``autoscale: R rescales, parallelism P1 -> P2 -> P3, converged in S s after each step,
output exact`` (or what went wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

# A CPU-heavy batch (2,048 records x cost) on a loaded machine can keep a worker's event loop
# busy for longer than the default watchdog (30 s) would allow: give it more.
WATCHDOG = {"STREAMJOB_CANCEL_TIMEOUT": "300"}
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker"), str(ROOT / "operator"), str(ROOT)]

from bench.procs import runtime_path  # noqa: E402
from streamjob.examples.scheduled import check  # noqa: E402
from streamjob.manifest import load_manifest  # noqa: E402
from streamjob_operator import autoscaler as auto  # noqa: E402

PYPATH = runtime_path(ROOT)  # this checkout's code

NAME = "autoscale"
WORDS = 1000


class Run:
    """One ``streamjob run`` (one parallelism) of the job."""

    def __init__(self, cwd: Path, manifest: Path, p: int, savepoint: str | None, log: Path):
        self.cwd, self.p = cwd, p
        extra = ["--from-savepoint", savepoint] if savepoint else []
        env = dict(os.environ, PYTHONPATH=PYPATH, **WATCHDOG)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamjob", "run", "-q", str(manifest), "-p", str(p),
             *extra], cwd=cwd, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT)
        self.started = time.time()

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.cwd / f".streamjob/runs/{NAME}/status.json").read_text())
        except (OSError, ValueError):
            return {}

    def tasks(self, window: float) -> dict[str, Any] | None:
        st = self.status()
        port = (st.get("coordinator") or {}).get("api_port")
        if not port or st.get("parallelism") != self.p:
            return None
        token = (self.cwd / f".streamjob/runs/{NAME}/api-token").read_text().strip()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/tasks?window={window:g}",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.loads(resp.read())
        except OSError:
            return None

    def stop_with_savepoint(self) -> str:
        """Like the operator: a refused savepoint (the job restarting) is asked again once
        the job runs again, a few times."""
        env = dict(os.environ, PYTHONPATH=PYPATH, **WATCHDOG)
        for attempt in range(5):
            out = subprocess.run([sys.executable, "-m", "streamjob", "savepoint", NAME,
                                  "--stop"], cwd=self.cwd, env=env, capture_output=True,
                                 text=True, timeout=300)
            if out.returncode == 0:
                uri = out.stdout.strip().split()[-1]
                self.proc.wait(timeout=120)
                return uri
            print(f"  stop-with-savepoint refused (attempt {attempt + 1}): "
                  f"{out.stderr.strip()[-200:]}", flush=True)
            deadline = time.time() + 120
            while self.status().get("state") != "RUNNING":
                if time.time() > deadline or self.proc.poll() is not None:
                    break
                time.sleep(1.0)  # waiting for a condition (RUNNING), with a deadline
        raise SystemExit("autoscale: the stop-with-savepoint failed 5 times")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=float, default=150)
    ap.add_argument("--peak", type=float, default=5000)
    ap.add_argument("--cost-us", type=float, default=200)
    ap.add_argument("--step", type=float, default=40)
    ap.add_argument("--peak-for", type=float, default=40)
    ap.add_argument("--tail", type=float, default=60)
    ap.add_argument("--max-parallelism", type=int, default=4)
    a = ap.parse_args()
    down_at = a.step + a.peak_for
    schedule = f"0s:{a.base:g},{a.step:g}s:{a.peak:g},{down_at:g}s:{a.base:g}"
    end = down_at + a.tail
    records = int(a.base * a.step + a.peak * a.peak_for + a.base * a.tail)

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        start_at = time.time()
        manifest = {
            "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": NAME},
            "spec": {"pipeline": "streamjob.examples.scheduled:build", "parallelism": 1,
                     "maxParallelism": 128,
                     "args": {"records": records, "words": WORDS, "schedule": schedule,
                              "start_at": start_at, "cost_us": a.cost_us,
                              "output": str(cwd / "out")},
                     "checkpoint": {"interval": "5s", "timeout": "120s",
                                    "tolerableFailures": 5},
                     "storage": f"file://{tmp}/ckpt",
                     "autoscaler": {"enabled": True, "minParallelism": 1,
                                    "maxParallelism": a.max_parallelism,
                                    "targetUtilization": 0.7, "metricsWindow": "5s",
                                    "stabilization": "5s", "catchUpDuration": "30s",
                                    "scaleUpCooldown": "15s", "scaleDownInterval": "30s",
                                    "maxScaleDownFactor": 0.5}},
        }
        path = cwd / "job.yaml"
        path.write_text(yaml.safe_dump(manifest))
        spec = load_manifest(path).spec
        assert spec.autoscaler is not None
        policy = auto.policy_from_spec(spec.autoscaler, spec.max_parallelism)
        log = cwd / "run.log"
        print(f"autoscale: schedule {schedule} ({records:,} records), {a.cost_us:g} us of CPU "
              f"per record in the keyed task (one subtask: <= {1e6 / a.cost_us:,.0f}/s); "
              f"policy: utilization {policy.target_utilization}, window "
              f"{policy.metrics_window:g}s, stabilization {policy.stabilization:g}s, "
              f"max {policy.max_parallelism}", flush=True)
        run = Run(cwd, path, 1, None, log)
        memory = auto.Memory(last_rescale_at=run.started)
        timeline: list[tuple[float, int, int | None, str]] = []   # t, p, backlog, action
        rescales: list[tuple[float, int, int, str]] = []          # t, from, to, reason
        running_at: list[tuple[float, int]] = [(0.0, 1)]          # t the new p runs
        launched: list[tuple[float, int]] = []   # t a new p was started from its savepoint
        deadline = start_at + end + 600
        try:
            while run.proc.poll() is None:
                if time.time() > deadline:
                    raise SystemExit("autoscale: the job did not finish in time")
                time.sleep(1.0)  # the operator polls on a timer too
                doc = run.tasks(policy.metrics_window)
                if doc is None:
                    continue
                now = time.time()
                if running_at[-1][1] != run.p and doc.get("state") == "RUNNING":
                    running_at.append((now - start_at, run.p))
                metrics = auto.Metrics.from_json(doc)
                d = auto.decide(now, metrics, run.p, memory, policy)
                memory = d.memory
                backlog = next((t.get("backlog") for t in doc.get("tasks", [])
                                if not t.get("inputs")), None)
                timeline.append((now - start_at, run.p, backlog, d.action))
                if d.action == "scale" and d.target is not None:
                    print(f"  {now - start_at:6.1f}s  rescale {run.p} -> {d.target}: "
                          f"{d.reason}", flush=True)
                    rescales.append((now - start_at, run.p, d.target, d.reason))
                    uri = run.stop_with_savepoint()
                    run = Run(cwd, path, d.target, uri, log)
                    launched.append((run.started - start_at, run.p))
                    memory = auto.Memory(last_rescale_at=run.started)
            code = run.proc.wait()
        finally:
            if run.proc.poll() is None:   # SIGTERM: `streamjob run` stops its processes
                run.proc.terminate()
                try:
                    run.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    run.proc.kill()
        if code != 0:
            print(log.read_text()[-2000:])
            raise SystemExit(f"autoscale: the last run exited with {code}")
        result = check(str(cwd / "out"), records, WORDS)
        exact = (result["lines"] == records and
                 result["duplicates"] == result["missing"] == result["unexpected"] == 0)

    print("\n  time   parallelism  backlog   (every 5 s)")
    last = -5.0
    for t, p, backlog, action in timeline:
        if t - last >= 5:
            print(f"  {t:6.1f}s  {p:>4}        {backlog if backlog is not None else '-':>9}"
                  f"  {action}")
            last = t
    # Each load step owns the rescales decided until the next one; it has converged when the
    # job runs at the last of them (the time includes the savepoint and the restart).
    steps_at = [a.step, down_at]
    converged = []
    for k, at in enumerate(steps_at):
        until = steps_at[k + 1] if k + 1 < len(steps_at) else float("inf")
        mine = [r for r in rescales if at <= r[0] < until]
        if not mine:
            converged.append(0.0)
            continue
        decided, target = mine[-1][0], mine[-1][2]
        # (a run that finished before it was seen RUNNING: when it was started)
        ran = ([t for t, p in running_at if t >= decided and p == target] or
               [t for t, p in launched if t >= decided and p == target])
        converged.append(ran[0] - at if ran else float("nan"))
    sequence = [1] + [r[2] for r in rescales]
    down_decided = next((r[0] for r in rescales if r[0] >= down_at), float("inf"))
    peak_lag = max((b or 0 for t, _, b, _ in timeline if a.step <= t < down_decided), default=0)
    steps = " and ".join(f"{c:.0f}" for c in converged)
    print(f"\nmax backlog from the peak's start to the scale-down: {peak_lag:,} records; "
          f"rescales: {len(rescales)}; output: {result}")
    seq = " -> ".join(str(p) for p in sequence)
    verdict = "output exact" if exact else f"output NOT exact: {result}"
    print(f"autoscale: {len(rescales)} rescales, parallelism {seq}, converged in {steps} s "
          f"after each step, {verdict}")
    if not exact:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
