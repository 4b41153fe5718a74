"""Recovery time of a local job: SIGKILL one worker, then measure

  * detection: kill -> the coordinator starts the failover (lost connection),
  * restore:   failover -> every subtask of the new attempt runs (new process, state load),
  * resumed:   kill -> records flow again (records_in grows past its value at the kill),

median over several kills, with small and with larger keyed state.

    python bench/recovery.py [--kills 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPATH = os.pathsep.join([str(ROOT / "worker"), str(ROOT)])  # this checkout's code


def children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                    out.append((int(entry), cmd.decode()))
            except (OSError, ValueError, IndexError):
                pass
    return out


def measure(words: int, kills: int, label: str) -> dict[str, list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix="sj-recovery-"))
    manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                "metadata": {"name": "rec"},
                "spec": {"pipeline": "streamjob.examples.wordcount:build", "parallelism": 2,
                         "args": {"records": 10**9, "words": words, "rate": 100_000,
                                  "output": str(tmp / "out")},
                         "checkpoint": {"interval": "1s"},
                         "restartStrategy": {"delay": "0s", "maxAttempts": 100},
                         "storage": f"file://{tmp}/ckpt"}}
    (tmp / "job.yaml").write_text(yaml.safe_dump(manifest))
    proc = subprocess.Popen([sys.executable, "-m", "streamjob", "run", "-q", "job.yaml"],
                            cwd=tmp, env=dict(os.environ, PYTHONPATH=PYPATH),
                            stderr=subprocess.DEVNULL)
    status_file = tmp / ".streamjob/runs/rec/status.json"

    def status() -> dict:
        try:
            return json.loads(status_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait(pred, timeout=120) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = status()
            if s and pred(s):
                return s
            time.sleep(0.005)
        raise TimeoutError(label)

    out: dict[str, list[float]] = {"detect": [], "restore": [], "resumed": []}
    try:
        wait(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint"))
        for k in range(kills):
            time.sleep(2.0)
            before = status()
            victim = [p for p, c in children(proc.pid) if "streamjob worker" in c][k % 2]
            t_kill = time.time()
            os.kill(victim, signal.SIGKILL)
            s = wait(lambda s, a=before["attempt"]: s.get("attempt", 0) > a
                     and s.get("state") == "RUNNING")
            failure = s["last_failure"]
            out["detect"].append(failure["detected_at"] - t_kill)
            out["restore"].append(s["attempt_running_at"] - failure["detected_at"])
            # records_in is reported once a second: the first report above the value of the
            # restored attempt marks records flowing again.
            n = s.get("records_in", 0)
            wait(lambda s, n=n: s.get("records_in", 0) > n)
            out["resumed"].append(s["attempt_running_at"] - t_kill)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=5)
    a = ap.parse_args()
    print(f"local recovery after SIGKILL of one of 2 workers, median of {a.kills} kills")
    print(f"{'state':<22}{'detection':>12}{'restore':>12}{'kill->running':>15}")
    for words, label in ((1_000, "1,000 keys"), (200_000, "200,000 keys")):
        r = measure(words, a.kills, label)
        med = {k: statistics.median(v) * 1000 for k, v in r.items()}
        print(f"{label:<22}{med['detect']:>10.0f}ms{med['restore']:>10.0f}ms"
              f"{med['resumed']:>13.0f}ms")


if __name__ == "__main__":
    main()
