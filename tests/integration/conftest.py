"""Helpers to run ``streamjob run`` as a real process tree and hurt it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Child processes import this checkout's code whatever is installed (worker/, operator/) and
# the test pipelines (tests.integration.jobs, bench.jobs) from the repository root.
PYPATH = os.pathsep.join(str(p) for p in (ROOT / "worker", ROOT / "operator", ROOT))
# ``rocksdb``: every job of the tier that names no state backend runs on rocksdb.
STATE_BACKEND_ENV = "STREAMJOB_TEST_STATE_BACKEND"


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                out.append((int(entry), cmd))
        except (OSError, IndexError, ValueError):
            continue
    return out


class Job:
    def __init__(self, cwd: Path, proc: subprocess.Popen[str], name: str, log: Path,
                 env: dict[str, str]):
        self.cwd, self.proc, self.name, self.log, self.env = cwd, proc, name, log, env

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.cwd / ".streamjob/runs" / self.name / "status.json")
                              .read_text())
        except (OSError, ValueError):
            return {}

    def wait_for(self, predicate, timeout: float = 60, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if s and predicate(s):
                return s
            if self.proc.poll() is not None:
                raise AssertionError(f"job exited ({self.proc.returncode}) while waiting for "
                                     f"{what}:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; status {self.status()}")

    def workers(self) -> list[int]:
        return [pid for pid, cmd in children(self.proc.pid) if "streamjob worker" in cmd]

    def coordinator(self) -> int:
        [pid] = [pid for pid, cmd in children(self.proc.pid) if "streamjob coordinator" in cmd]
        return pid

    def wait(self, timeout: float = 180) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"job did not finish in {timeout}s:\n"
                                 f"{self.output()[-3000:]}") from None

    def output(self) -> str:
        return self.log.read_text()

    def checkpoints(self) -> Path:
        return self.cwd / "ckpt"


@pytest.fixture
def run_job(tmp_path: Path):
    started: list[Job] = []

    def start(pipeline: str = "streamjob.examples.wordcount:build", *, name: str = "wc",
              parallelism: int = 2, args: dict[str, Any] | None = None,
              checkpoint: dict[str, Any] | None = None, restart: dict[str, Any] | None = None,
              extra: list[str] | None = None, max_parallelism: int = 128,
              storage: str | None = None, env: dict[str, str] | None = None,
              state_backend: dict[str, Any] | None = None) -> Job:
        manifest = {
            "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": name},
            "spec": {"pipeline": pipeline, "parallelism": parallelism,
                     "maxParallelism": max_parallelism,
                     "args": {"output": str(tmp_path / "output"), **(args or {})},
                     "checkpoint": {"interval": "300ms", "timeout": "30s", "retained": 2,
                                    **(checkpoint or {})},
                     "storage": storage or f"file://{tmp_path / 'ckpt'}",
                     "restartStrategy": {"type": "fixed-delay", "delay": "100ms",
                                         "maxAttempts": 20, **(restart or {})}},
        }
        if state_backend is None and os.environ.get(STATE_BACKEND_ENV) == "rocksdb":
            # The whole tier on the rocksdb backend (docs/state-backends.md).
            state_backend = {"type": "rocksdb",
                             "rocksdb": {"localDir": str(tmp_path / "state")}}
        if state_backend is not None:  # {"type": "rocksdb", "rocksdb": {...}}
            manifest["spec"]["stateBackend"] = state_backend
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        log = tmp_path / f"{name}.log"
        env = dict(os.environ, **(env or {}),
                   PYTHONPATH=f"{PYPATH}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        proc = subprocess.Popen([sys.executable, "-m", "streamjob", "run", str(path),
                                 *(extra or [])], cwd=tmp_path, env=env,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)
        job = Job(tmp_path, proc, name, log, env)
        started.append(job)
        return job

    yield start
    for job in started:
        if job.proc.poll() is None:
            for pid, _ in children(job.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            job.proc.kill()
            job.proc.wait()


def assert_exactly_once(folder: Path, records: int, words: int) -> dict[str, Any]:
    from streamjob.examples.wordcount import check_output

    result = check_output(str(folder), records, words)
    assert result["duplicates"] == 0, result
    assert result["missing"] == 0, result
    assert result["unexpected"] == 0, result
    return result


def kill_worker_and_finish(job, worker: int) -> dict[str, Any]:
    """SIGKILL one worker of a running job, wait for the restart and the job's clean end: it
    must have FINISHED from a restored checkpoint. Returns the final status."""
    os.kill(job.workers()[worker], signal.SIGKILL)
    job.wait_for(lambda s: s.get("restarts", 0) >= 1 and s.get("state") == "RUNNING",
                 what="the restart")
    assert job.wait() == 0, job.output()
    status = job.status()
    assert status["state"] == "FINISHED" and status["restored_from"] is not None, status
    return status


def savepoint(job, stop: bool) -> str:
    """Take a savepoint of a running job (``--stop``: and stop it); its URI. Through the
    coordinator API as ``streamjob savepoint`` does, but from this process: a new CLI process
    took 5 s to start on a loaded machine, long enough for the job to finish first (the CLI
    itself is tested in test_coordinator_faults.py)."""
    from streamjob.cli import local_api, take_savepoint

    base, token = local_api(job.name, job.cwd)
    return take_savepoint(base, token, stop)["uri"]
