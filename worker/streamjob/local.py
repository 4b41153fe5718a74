"""``streamjob run``: the whole job on one machine, as local processes.

The ``streamjob run`` process supervises: it starts the coordinator and one worker per
subtask as child processes (``python -m streamjob coordinator|worker``), restarts a worker
process that dies (the coordinator restores the whole job from the latest checkpoint) and
the coordinator if it dies (the new one finds the latest checkpoint in storage), and prints
progress. This is what the Kubernetes operator does with pods.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from streamjob import checkpoints as ckpt
from streamjob.manifest import StreamJob, import_pipeline, load_manifest
from streamjob.storage import StorageError, open_storage

EXIT_FAILED = 1


def _die_with_parent() -> None:
    """Children get SIGKILL if ``streamjob run`` dies, so no process outlives the run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _log(msg: str) -> None:
    print(f"streamjob: {msg}", file=sys.stderr, flush=True)


class LocalRun:
    def __init__(self, job: StreamJob, manifest_dir: Path, run_dir: Path, job_id: str,
                 from_savepoint: str | None, progress: bool = True):
        self.job = job
        self.manifest_dir = manifest_dir
        self.run_dir = run_dir
        self.job_id = job_id
        self.from_savepoint = from_savepoint
        self.progress = progress
        self.p = job.spec.parallelism
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.status_file = run_dir / "status.json"
        self.manifest_file = run_dir / "job.yaml"
        self.coordinator_restarts = 0
        self.address: str | None = None
        self.worker_token = secrets.token_urlsafe(24)

    def _base(self) -> list[str]:
        return [sys.executable, "-m", "streamjob"]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, STREAMJOB_WORKER_TOKEN=self.worker_token)
        paths = [str(self.manifest_dir), os.getcwd(), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env

    def start_coordinator(self) -> None:
        self.status_file.unlink(missing_ok=True)
        cmd = [*self._base(), "coordinator", "--manifest", str(self.manifest_file),
               "--job-id", self.job_id, "--status-file", str(self.status_file),
               "--api-port", "0", "--api-token-file", str(self.run_dir / "api-token")]
        if self.from_savepoint:
            cmd += ["--from-savepoint", self.from_savepoint]
        self.coordinator = subprocess.Popen(cmd, env=self._env(), preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = self.status()
            if status and status.get("coordinator", {}).get("pid") == self.coordinator.pid:
                self.address = f"127.0.0.1:{status['coordinator']['port']}"
                return
            if self.coordinator.poll() is not None:
                return
            time.sleep(0.02)
        raise RuntimeError("the coordinator did not start within 60 s")

    def start_worker(self, index: int) -> None:
        cmd = [*self._base(), "worker", "--manifest", str(self.manifest_file),
               "--coordinator", self.address, "--index", str(index)]
        self.workers[index] = subprocess.Popen(cmd, env=self._env(), preexec_fn=_die_with_parent)

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None

    def stop_workers(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.workers.values():
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def kill_all(self) -> None:
        for proc in [*self.workers.values(), self.coordinator]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    def supervise(self) -> int:
        max_coordinator_restarts = max(1, self.job.spec.restart_strategy.max_attempts)
        self.start_coordinator()
        for i in range(self.p):
            self.start_worker(i)
        last_print = 0.0
        while True:
            time.sleep(0.02)
            code = self.coordinator.poll()
            if code is not None:
                status = self.status() or {}
                if code == 0:
                    self.stop_workers()
                    _log(f"{self.job.metadata.name}: {status.get('message', 'finished')}")
                    return 0
                if code == 2:
                    self.stop_workers(1.0)
                    _log(f"{self.job.metadata.name} failed: {status.get('message', 'see above')}")
                    return EXIT_FAILED
                self.coordinator_restarts += 1
                if self.coordinator_restarts > max_coordinator_restarts:
                    self.kill_all()
                    _log(f"the coordinator died {self.coordinator_restarts} times "
                         f"(last exit code {code}); giving up")
                    return EXIT_FAILED
                _log(f"the coordinator exited with code {code}; restarting it "
                     f"({self.coordinator_restarts}/{max_coordinator_restarts})")
                for proc in self.workers.values():
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                self.start_coordinator()
                for i in range(self.p):
                    self.start_worker(i)
                continue
            for i, proc in list(self.workers.items()):
                # Exit 0 is a worker told to shut down (the job is over): not a failure.
                if proc.poll() not in (None, 0) and self.coordinator.poll() is None:
                    self.start_worker(i)
            if self.progress and time.monotonic() - last_print >= 2.0:
                last_print = time.monotonic()
                self.print_progress()

    def print_progress(self) -> None:
        s = self.status()
        if not s:
            return
        last = s.get("last_checkpoint")
        chk = (f"checkpoint {last['id']} ({last['duration_ms']:.0f} ms, "
               f"{last['size_bytes'] / 1e6:.2f} MB)" if last else "no checkpoint yet")
        restarts = s.get("restarts", 0) + self.coordinator_restarts
        _log(f"{s['name']} {s['state']}: {s.get('records_per_second', 0):,.0f} records/s, "
             f"{s.get('records_in', 0):,} in, last {chk}, restarts {restarts}")


def _absolute_storage(location: str) -> str:
    if location.startswith("file://"):
        location = location.removeprefix("file://")
    elif "://" in location:
        return location
    return f"file://{Path(location).absolute()}"


def run_local(manifest: str, args: dict[str, Any], parallelism: int | None,
              checkpoint_dir: str | None, from_savepoint: str | None,
              progress: bool = True) -> int:
    job = load_manifest(manifest, args, parallelism)
    manifest_dir = Path(manifest).absolute().parent
    spec = job.spec
    # Child processes may run elsewhere: relative folders become absolute file:// URIs.
    storage_uri = _absolute_storage(checkpoint_dir or spec.storage)
    if storage_uri != spec.storage:
        job = job.model_copy(update={"spec": spec.model_copy(update={"storage": storage_uri})})
    sys.path[:0] = [str(manifest_dir), os.getcwd()]
    import_pipeline(job.spec)  # a pipeline that cannot be built stops us before anything runs
    storage = open_storage(job.spec.storage)
    storage.list(f"{job.metadata.name}-probe/")  # unreachable storage: fail now, clearly
    if from_savepoint:
        _, body = ckpt.resolve_savepoint(storage, from_savepoint)
        ckpt.check_compatible(body, job.spec.max_parallelism)
    run_id = uuid.uuid4().hex[:8]
    job_id = f"{job.metadata.name}-{run_id}"
    run_dir = Path(".streamjob/runs") / job.metadata.name
    run_dir.mkdir(parents=True, exist_ok=True)
    data = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    (run_dir / "job.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    token_file = run_dir / "api-token"
    token_file.write_text(secrets.token_urlsafe(24))
    token_file.chmod(0o600)
    _log(f"running {job.metadata.name} as {job_id}: parallelism {spec.parallelism}, "
         f"checkpoints to {job.spec.storage}")
    run = LocalRun(job, manifest_dir, run_dir.absolute(), job_id, from_savepoint, progress)

    def on_signal(signum: int, _frame: Any) -> None:
        run.kill_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run.supervise()
    except StorageError as err:
        _log(str(err))
        return EXIT_FAILED
    finally:
        run.kill_all()
