"""``streamjob run``: the whole job on one machine, as local processes.

The ``streamjob run`` process supervises: it starts the coordinator and one worker per
subtask as child processes (``python -m streamjob coordinator|worker``), restarts a worker
process that dies (the coordinator restores the whole job from the latest checkpoint) and
the coordinator if it dies (the new one finds the latest checkpoint in storage), and prints
progress. This is what the Kubernetes operator does with pods.

The run folder ``.streamjob/runs/<name>/`` (mode 0700) holds:

- ``lock``: an ``flock`` held for the life of the supervisor. A second ``streamjob run`` of the
  same job in the same folder refuses to start; a killed supervisor releases it by dying.
- ``run.json``: the job id of the run, its state (``running`` until it ends, then
  ``finished``/``stopped``/``failed``), the storage and savepoint it started with and the pids
  of its processes. A run that never ended (its supervisor was killed, or interrupted) is
  resumed by the next ``streamjob run`` of the same job: same job id, so the coordinator
  restores the latest checkpoint in storage and the file sink keeps its output exact (Flink's
  HA job id). Its leftover processes are killed first.
- ``job.yaml`` (the validated manifest the children read), ``api-token`` (0600 from its
  creation), ``status.json`` (written by the coordinator).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamjob import checkpoints as ckpt
from streamjob.errors import ManifestError
from streamjob.names import EXIT_FAILED as COORDINATOR_FAILED
from streamjob.names import EXIT_RUN_FAILED as EXIT_FAILED
from streamjob.storage import Storage, StorageError, _open_backend, open_storage

if TYPE_CHECKING:
    from streamjob.manifest import StreamJob

OVER = ("FINISHED", "STOPPED", "FAILED")  # coordinator states after which nothing restarts
RUNS = Path(".streamjob/runs")


class SupervisorError(RuntimeError):
    """The supervisor cannot go on; the message is one line."""


def _die_with_parent() -> None:
    """Children get SIGKILL if ``streamjob run`` dies, so no process outlives the run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _log(msg: str) -> None:
    print(f"streamjob: {msg}", file=sys.stderr, flush=True)


# -- the run folder ------------------------------------------------------------------------


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only from the first byte: created 0600
    (never written first and chmod'ed after), then renamed over any older file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def supervisor_running(run_dir: Path) -> bool:
    """Whether a ``streamjob run`` holds the run folder's lock (is alive) right now."""
    try:
        fd = os.open(run_dir / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # also releases a shared lock we may have taken
    return False


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class RunFolder:
    """``.streamjob/runs/<name>/`` of one job: its lock and what a rerun needs to resume."""

    def __init__(self, path: Path):
        self.path = path.absolute()
        self.run_file = self.path / "run.json"
        self.lock_fd: int | None = None

    def lock(self, name: str) -> None:
        """Take the lock for the life of this process, or ManifestError if another
        ``streamjob run`` of the job is running in this folder."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.chmod(0o700)
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            other = (read_json(self.run_file) or {}).get("supervisor_pid")
            pid = f", pid {other}" if other else ""
            raise ManifestError(f"job {name!r} is already running in this folder (streamjob "
                                f"run{pid}); stop it first, or run from another folder") from None
        self.lock_fd = fd  # non-inheritable: children never hold the lock

    def unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def previous(self, failed_too: bool = False) -> dict[str, Any] | None:
        """run.json of the last run if it never ended (else None); with ``failed_too`` also
        a run that failed (``--allow-fresh-start`` resumes a job that refused to restore
        behind its committed output)."""
        info = read_json(self.run_file)
        if not info or not info.get("job_id"):
            return None
        if failed_too and info.get("state") == "failed":
            return info
        if info.get("state") != "running":
            return None
        status = read_json(self.path / "status.json") or {}
        if status.get("job_id") == info["job_id"] and status.get("state") in OVER:
            return None  # the job ended; only its supervisor died before noting it
        return info

    def clean(self, previous: dict[str, Any] | None, timeout: float = 10.0) -> None:
        """Kill what is left of an earlier run (its children normally die with their
        supervisor) and remove its status and API token."""
        if previous:
            manifest = str(self.path / "job.yaml")
            pids = previous.get("pids") or {}
            for pid in [pids.get("coordinator"), *(pids.get("workers") or [])]:
                if isinstance(pid, int) and pid != os.getpid() and _is_ours(pid, manifest):
                    _log(f"killing process {pid} left over from {previous['job_id']}")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    deadline = time.monotonic() + timeout
                    while _alive(pid) and time.monotonic() < deadline:
                        time.sleep(0.02)
        for leftover in ("status.json", "status.json.tmp", "api-token"):
            (self.path / leftover).unlink(missing_ok=True)

    def record(self, info: dict[str, Any]) -> None:
        _write_json(self.run_file, info)


def _is_ours(pid: int, manifest: str) -> bool:
    """Whether ``pid`` is still a child process of this run (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return manifest.encode() in cmdline and b"streamjob" in cmdline


def probe_storage(storage: Storage, uri: str) -> None:
    """Write and delete a small object, so that a storage we cannot use stops the run before
    anything starts (StorageError, one line)."""
    key = f".streamjob-probe-{uuid.uuid4().hex[:8]}"
    try:
        storage.put(key, b"probe")
        storage.delete(key)
    except StorageError as err:
        raise StorageError(f"storage {uri} is not usable: {err}") from None
    except OSError as err:
        raise StorageError(f"storage {uri} is not usable: {err.strerror or err}") from None


def total_restarts(lives: list[tuple[int, int] | None]) -> int:
    """Job restarts across the coordinator processes of one supervisor, for the progress line.

    ``lives``: per coordinator process, oldest first, the ``restarts`` of its first and its
    latest status (None if it died before writing one). A coordinator that persists its
    count across restarts starts from the previous count (or one above it, if it counts its
    own restart); one that does not starts from 0 and the supervisor adds up. Each coordinator
    restart is counted once either way.
    """
    total, last_seen, first_life = 0, 0, True
    for life in lives:
        if first_life:
            first_life = False
            if life is not None:
                total = last_seen = life[1]
            continue
        if life is None:
            total += 1
            continue
        first, last = life
        if first == 0 and last_seen > 0:
            total += last + 1  # a fresh count: add it, and the coordinator restart
        else:  # a persisted count: only its growth, plus the restart if it did not count it
            total += max(0, last - last_seen) + (1 if first == last_seen else 0)
        last_seen = last
    return total


def progress_restarts(status: dict[str, Any], lives: list[tuple[int, int] | None]) -> int:
    """Restarts for the progress line. A coordinator that persists both counts in storage
    (``restarts``: job failovers, ``coordinator_restarts``: earlier coordinators of this job
    id, also those of an earlier ``streamjob run``) is the one source; otherwise the
    supervisor adds up what it saw (:func:`total_restarts`)."""
    restarts, coordinator = status.get("restarts"), status.get("coordinator_restarts")
    if isinstance(restarts, int) and isinstance(coordinator, int):
        return restarts + coordinator
    return total_restarts(lives)


# -- the supervisor ------------------------------------------------------------------------


class LocalRun:
    def __init__(self, job: StreamJob, manifest_dir: Path, run_dir: Path, job_id: str,
                 from_savepoint: str | None, progress: bool = True,
                 allow_fresh_start: bool = False, folder: RunFolder | None = None):
        self.job = job
        self.manifest_dir = manifest_dir
        self.run_dir = run_dir
        self.job_id = job_id
        self.from_savepoint = from_savepoint
        self.progress = progress
        self.allow_fresh_start = allow_fresh_start
        self.folder = folder
        self.p = job.spec.parallelism
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.worker_started: dict[int, float] = {}
        self.worker_due: dict[int, float] = {}  # when an exited worker is restarted
        self.worker_delay: dict[int, float] = {}  # its last restart delay
        self.status_file = run_dir / "status.json"
        self.manifest_file = run_dir / "job.yaml"
        self.coordinator_restarts = 0
        self.lives: list[tuple[int, int] | None] = []  # restarts seen per coordinator process
        self.address: str | None = None
        self.worker_token = secrets.token_urlsafe(24)
        self.info: dict[str, Any] = {}

    def _base(self) -> list[str]:
        return [sys.executable, "-m", "streamjob"]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, STREAMJOB_WORKER_TOKEN=self.worker_token)
        paths = [str(self.manifest_dir), os.getcwd(), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env

    def _record(self, state: str = "running") -> None:
        if self.folder is None:
            return
        self.info.update(state=state, pids={
            "coordinator": self.coordinator.pid if self.coordinator else None,
            "workers": [w.pid for w in self.workers.values()]})
        self.folder.record(self.info)

    def start_coordinator(self) -> None:
        self.status_file.unlink(missing_ok=True)
        cmd = [*self._base(), "coordinator", "--manifest", str(self.manifest_file),
               "--job-id", self.job_id, "--status-file", str(self.status_file),
               "--api-port", "0", "--api-token-file", str(self.run_dir / "api-token")]
        if self.from_savepoint:
            cmd += ["--from-savepoint", self.from_savepoint]
        if self.allow_fresh_start:
            cmd += ["--allow-fresh-start"]
        self.address = None
        self.coordinator = subprocess.Popen(cmd, env=self._env(), preexec_fn=_die_with_parent)
        self.lives.append(None)
        self._record()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = self.status()
            if status and status.get("coordinator", {}).get("pid") == self.coordinator.pid:
                self.address = f"127.0.0.1:{status['coordinator']['port']}"
                return
            if self.coordinator.poll() is not None:
                return
            time.sleep(0.02)
        raise SupervisorError("the coordinator did not start within 60 s")

    def start_all(self) -> None:
        self.worker_due.clear()
        self.start_coordinator()
        if self.address is not None:  # else it died before listening: restarted as such
            for i in range(self.p):
                self.start_worker(i)

    def start_worker(self, index: int) -> None:
        if self.address is None:
            return
        cmd = [*self._base(), "worker", "--manifest", str(self.manifest_file),
               "--coordinator", self.address, "--index", str(index)]
        self.workers[index] = subprocess.Popen(cmd, env=self._env(), preexec_fn=_die_with_parent)
        self.worker_started[index] = time.monotonic()
        self._record()

    def status(self) -> dict[str, Any] | None:
        status = read_json(self.status_file)
        if status and self.coordinator is not None and \
                status.get("coordinator", {}).get("pid") == self.coordinator.pid:
            restarts = status.get("restarts", 0)
            if isinstance(restarts, int) and self.lives:
                life = self.lives[-1]
                self.lives[-1] = (restarts if life is None else life[0], restarts)
        return status

    def job_over(self) -> bool:
        """Whether the current coordinator says the job ended (then nothing is restarted)."""
        status = self.status()
        return bool(status and status.get("coordinator", {}).get("pid") ==
                    (self.coordinator.pid if self.coordinator else None)
                    and status.get("state") in OVER)

    def workers_to_restart(self) -> list[int]:
        """Workers that exited, whatever their exit code, while the job is not over."""
        exited = [i for i, proc in self.workers.items() if proc.poll() is not None]
        return exited if exited and not self.job_over() else []

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

    def _restart_worker_when_due(self, index: int, now: float) -> None:
        """Restart a worker that exited while the job is not over; one that keeps dying
        within a second of its start waits longer each time (0.1 s doubling up to 2 s)."""
        due = self.worker_due.get(index)
        if due is None:
            quick = now - self.worker_started.get(index, 0.0) < 1.0
            delay = min(2.0, 2 * max(0.05, self.worker_delay.get(index, 0.0))) if quick else 0.0
            self.worker_delay[index] = delay
            self.worker_due[index] = due = now + delay
        if now >= due:
            del self.worker_due[index]
            code = self.workers[index].returncode
            _log(f"worker {index} exited with code {code} while the job runs; restarting it")
            self.start_worker(index)

    def supervise(self) -> int:
        max_coordinator_restarts = max(1, self.job.spec.restart_strategy.max_attempts)
        self.start_all()
        last_print = 0.0
        while True:
            time.sleep(0.02)
            code = self.coordinator.poll()
            if code is not None:
                status = self.status() or {}
                over = status.get("coordinator", {}).get("pid") == self.coordinator.pid and \
                    status.get("state") in OVER
                if code == 0 and over:
                    self.stop_workers()
                    self._record(status["state"].lower())
                    _log(f"{self.job.metadata.name}: {status.get('message', 'finished')}")
                    return 0
                if code == COORDINATOR_FAILED:
                    self.stop_workers(1.0)
                    self._record("failed")
                    _log(f"{self.job.metadata.name} failed: {status.get('message', 'see above')}")
                    return EXIT_FAILED
                self.coordinator_restarts += 1
                if self.coordinator_restarts > max_coordinator_restarts:
                    self.kill_all()
                    self._record("failed")
                    _log(f"the coordinator died {self.coordinator_restarts} times "
                         f"(last exit code {code}); giving up")
                    return EXIT_FAILED
                _log(f"the coordinator exited with code {code}; restarting it "
                     f"({self.coordinator_restarts}/{max_coordinator_restarts})")
                for proc in self.workers.values():
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                self.start_all()
                continue
            # Any worker that exits while the job is not over is restarted, whatever its exit
            # code: only the coordinator's state says the job is over.
            exited = self.workers_to_restart()
            if exited:
                now = time.monotonic()
                for i in exited:
                    self._restart_worker_when_due(i, now)
            if self.progress and time.monotonic() - last_print >= 2.0:
                last_print = time.monotonic()
                self.print_progress()

    def restarts(self, status: dict[str, Any]) -> int:
        """Job restarts for the progress line: the coordinator's count (persisted across its
        restarts or not) and the coordinator restarts, each counted once."""
        return progress_restarts(status, self.lives)

    def print_progress(self) -> None:
        s = self.status()
        if not s:
            return
        last = s.get("last_checkpoint")
        chk = (f"checkpoint {last['id']} ({last['duration_ms']:.0f} ms, "
               f"{last['size_bytes'] / 1e6:.2f} MB)" if last else "no checkpoint yet")
        _log(f"{s['name']} {s['state']}: {s.get('records_per_second', 0):,.0f} records/s, "
             f"{s.get('records_in', 0):,} in, last {chk}, restarts {self.restarts(s)}")


def _absolute_storage(location: str) -> str:
    if location.startswith("file://"):
        location = location.removeprefix("file://")
    elif "://" in location:
        return location
    return f"file://{Path(location).absolute()}"


def run_local(manifest: str, args: dict[str, Any], parallelism: int | None,
              checkpoint_dir: str | None, from_savepoint: str | None,
              progress: bool = True, allow_fresh_start: bool = False) -> int:
    # The manifest's models (pydantic) and YAML are imported here, not with the module: the
    # commands that only read a run's folder (`streamjob savepoint NAME`, `checkpoints`, `ui`)
    # import this module and start faster without them.
    import yaml

    from streamjob.manifest import import_pipeline, load_manifest

    job = load_manifest(manifest, args, parallelism)
    manifest_dir = Path(manifest).absolute().parent
    spec = job.spec
    name = job.metadata.name
    # Child processes may run elsewhere: relative folders become absolute file:// URIs.
    storage_uri = _absolute_storage(checkpoint_dir or spec.storage)
    if storage_uri != spec.storage:
        job = job.model_copy(update={"spec": spec.model_copy(update={"storage": storage_uri})})
    sys.path[:0] = [str(manifest_dir), os.getcwd()]
    import_pipeline(job.spec)  # a pipeline that cannot be built stops us before anything runs
    # Unusable storage: fail now, clearly (on the storage itself: no fault rule of a test
    # fires on the probe).
    probe_storage(_open_backend(job.spec.storage), job.spec.storage)
    storage = open_storage(job.spec.storage)
    if from_savepoint:
        _, body = ckpt.resolve_savepoint(storage, from_savepoint)
        ckpt.check_compatible(body, job.spec.max_parallelism)

    folder = RunFolder(RUNS / name)
    folder.lock(name)  # held until this process exits
    previous = folder.previous(failed_too=allow_fresh_start)
    resume = previous is not None and previous.get("storage") == job.spec.storage and \
        previous.get("from_savepoint") == from_savepoint
    if previous is not None and not resume:
        _log(f"not resuming the unfinished run {previous['job_id']}: it used storage "
             f"{previous.get('storage')} and savepoint {previous.get('from_savepoint')}")
    folder.clean(previous)
    job_id = previous["job_id"] if resume else f"{name}-{uuid.uuid4().hex[:8]}"
    data = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    (folder.path / "job.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    write_secret(folder.path / "api-token", secrets.token_urlsafe(24))
    if resume and previous.get("state") == "failed":
        _log(f"resuming the failed run {job_id} (--allow-fresh-start): it may restore behind "
             "its committed output, which is then moved aside and kept")
    elif resume:
        _log(f"resuming the unfinished run {job_id} (its streamjob run, pid "
             f"{previous.get('supervisor_pid')}, is gone) from its latest checkpoint")
    _log(f"running {name} as {job_id}: parallelism {spec.parallelism}, "
         f"checkpoints to {job.spec.storage}")
    run = LocalRun(job, manifest_dir, folder.path, job_id, from_savepoint, progress,
                   allow_fresh_start, folder)
    run.info = {"job_id": job_id, "supervisor_pid": os.getpid(), "storage": job.spec.storage,
                "from_savepoint": from_savepoint, "started_at": time.time()}
    run._record()

    def on_signal(signum: int, _frame: Any) -> None:
        run.kill_all()
        _log(f"interrupted; `streamjob run` of the same job here resumes {job_id} from its "
             "latest checkpoint")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run.supervise()
    except (StorageError, SupervisorError) as err:
        _log(str(err))
        run._record("failed")
        return EXIT_FAILED
    finally:
        run.kill_all()
        folder.unlock()
