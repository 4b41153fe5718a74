"""Recovery time of a local job (the wordcount into the transactional file sink, p = 2,
a checkpoint every 1 s): SIGKILL one worker, then measure

  * detection: kill -> the coordinator starts the failover (lost connection),
  * deployed:  kill -> every subtask of the new attempt runs, restored from the last
               checkpoint (includes the restart strategy's delay),
  * committed: kill -> records committed again: the first output file of the new attempt
               (a checkpoint after the restored one) is visible in the output folder; this
               includes waiting for the next checkpoint (up to one interval),

median over several kills, with small and with larger keyed state, with the manifest's
default restart delay (fixed delay, 1 s) and with ``delay: 0s``. The committed output is
checked at the end: every word's lines ``w 1`` ... ``w n`` each exactly once.

    python bench/recovery.py [--kills 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.procs import children, runtime_path  # noqa: E402

PYPATH = runtime_path(ROOT)  # this checkout's code

_PART = re.compile(r"^part-[0-9a-f]{8}-\d+-(\d+)$")


def committed_checkpoints(out: Path) -> set[int]:
    """Checkpoint ids of the part files committed to ``out`` so far."""
    try:
        return {int(m.group(1)) for n in os.listdir(out) if (m := _PART.match(n))}
    except FileNotFoundError:
        return set()


def check_exactly_once(out: Path) -> str:
    """Empty when every word's committed lines are ``w 1`` ... ``w n``, each once."""
    seen: Counter[str] = Counter()
    for part in out.glob("part-*"):
        seen.update(part.read_text().splitlines())
    dup = sum(c - 1 for c in seen.values() if c > 1)
    top: dict[str, int] = {}
    for line in seen:
        w, n = line.split()
        top[w] = max(top.get(w, 0), int(n))
    gaps = sum(top.values()) - len(seen)
    return "" if dup == gaps == 0 else f"{dup} duplicate lines, {gaps} missing lines"


def measure(words: int, kills: int, delay: str | None, label: str) -> dict[str, list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix="sj-recovery-"))
    restart: dict[str, object] = {"maxAttempts": 100}
    if delay is not None:
        restart["delay"] = delay
    manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                "metadata": {"name": "rec"},
                "spec": {"pipeline": "streamjob.examples.wordcount:build", "parallelism": 2,
                         "args": {"records": 10**9, "words": words, "rate": 100_000,
                                  "output": str(tmp / "out")},
                         "checkpoint": {"interval": "1s"},
                         "restartStrategy": restart,
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

    out: dict[str, list[float]] = {"detect": [], "deployed": [], "committed": []}
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
            out["deployed"].append(s["attempt_running_at"] - t_kill)
            # The new attempt's output: parts of checkpoints after the one it restored.
            restored = s.get("restored_from") or 0
            end = time.monotonic() + 120
            while not any(c > restored for c in committed_checkpoints(tmp / "out")):
                if time.monotonic() > end:
                    raise TimeoutError(f"{label}: nothing committed after the restore")
                time.sleep(0.002)
            out["committed"].append(time.time() - t_kill)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    error = check_exactly_once(tmp / "out")
    if error:
        raise SystemExit(f"{label}: committed output is wrong: {error}")
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=5)
    a = ap.parse_args()
    print(f"local recovery after SIGKILL of one of 2 workers (wordcount, file sink, checkpoint "
          f"every 1 s), median of {a.kills} kills; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; committed output checked exactly-once")
    print(f"{'state':<15}{'restart delay':<16}{'detection':>11}{'deployed':>11}"
          f"{'committed again':>17}")
    for words, keys in ((1_000, "1,000 keys"), (200_000, "200,000 keys")):
        for delay, label in ((None, "1 s (default)"), ("0s", "0 s")):
            r = measure(words, a.kills, delay, f"{keys}, delay {label}")
            med = {k: statistics.median(v) * 1000 for k, v in r.items()}
            print(f"{keys:<15}{label:<16}{med['detect']:>9.0f}ms{med['deployed']:>9.0f}ms"
                  f"{med['committed']:>15.0f}ms")


if __name__ == "__main__":
    main()
