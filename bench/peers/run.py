#!/usr/bin/env python3
"""Side-by-side benchmark of streamjob against Bytewax, PyFlink DataStream and Flink SQL.

    python bench/peers/run.py            # full run (3 rounds), about an hour on 2 cores
    python bench/peers/run.py --quick    # one round, smaller inputs, p=1 only
    python bench/peers/run.py --systems bytewax,flink-sql --jobs count

Each peer lives in its own virtual environment under ~/.cache/streamjob/peers/ (created and
filled from PyPI on first use; nothing is installed globally). Every system reads the same
records (``gen.py``), every result is checked against the expected answer (a wrong answer is not
a fast answer), and the systems take turns inside each round so a noisy machine slows them all
alike. The table gives records/s as the median over the rounds: end to end (process start to
exit), steady (start-up, measured by a tiny run of the same job, subtracted) and marginal (the
extra records of the full run over a run of a fifth of them, divided by the extra job time: the
warm rate, once a JIT has compiled the hot path), records per CPU-second on the same marginal
basis (CPU time of every process of the run, all threads), and our ratio to each peer.

Every system does the same per-record work (the word is formatted for each record, nobody gets
a precomputed vocabulary) and writes the same text lines through a buffered file writer; Flink
SQL is also run into its ``blackhole`` sink (``flink-sql-bh``: no output, nothing to check).

Jobs:
  count   keyed running count over 10,000 words, one output line per record (job 1)
  window  1 s tumbling event-time windows summing a value per word, watermarks 2 s behind
          (job 2)
  state   job 1 over 1,000,000 words with a checkpoint every second (job 3: ~100 MB of
          in-memory state in a Python runtime once the words have all been seen)
and `count` is also run with a checkpoint every second. Recovery: a worker is killed (SIGKILL)
mid-run and the time until output grows again is measured, for the systems where one worker
can be killed locally.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import gen  # noqa: E402

sys.path.insert(0, str(REPO))
from bench.cpu import become_subreaper, children_cpu, reap_orphans  # noqa: E402

CACHE = Path(os.environ.get("STREAMJOB_PEERS_CACHE", Path.home() / ".cache/streamjob/peers"))
BYTEWAX_SPEC = "bytewax==0.21.1"
FLINK_SPEC = "apache-flink==2.3.0"
SYSTEMS = ("streamjob", "bytewax", "flink-ds", "flink-sql", "flink-sql-bh")
PEERS = SYSTEMS[1:]
EPS = 100_000          # events per event-time second: record g has event time g / EPS s
LATENESS_MS = 2000     # watermark delay, the same for every system
CHECKPOINT_S = 1.0
RUN_TIMEOUT_S = 600

# Records per run, per system, sized so one run takes several seconds of processing on a
# loaded 2-core machine; Flink SQL gets 10 M so that its JIT is warm for most of the run. All
# systems read a prefix of the same record stream; the marginal rate (full run minus a run of
# SMALL_FRACTION of the records) makes runs of different lengths comparable.
RECORDS = {
    "streamjob": {"count": 10_000_000, "window": 10_000_000, "state": 5_000_000},
    "bytewax": {"count": 1_000_000, "window": 300_000, "state": 300_000},
    "flink-ds": {"count": 100_000, "window": 100_000, "state": 100_000},  # thread mode
    "flink-sql": {"count": 10_000_000, "window": 10_000_000, "state": 10_000_000},
    "flink-sql-bh": {"count": 10_000_000, "window": 10_000_000, "state": 10_000_000},
}
SMALL_FRACTION = 0.2
# Recovery runs are longer: the kill comes 2.5 s after the first output. Ours is throttled to
# RECOVERY_RATE records/s (its wordcount's `rate` argument) so the run lasts long enough.
RECOVERY_RECORDS = {"streamjob": 5_000_000, "bytewax": 4_000_000, "flink-ds": 60_000}
RECOVERY_RATE = 500_000
STARTUP_RECORDS = 1000
WORDS = {"count": 10_000, "window": 10_000, "state": 1_000_000}


@dataclass(frozen=True)
class Cell:
    job: str            # count | window | state
    parallelism: int
    checkpoint: bool

    @property
    def label(self) -> str:
        return f"{self.job} p={self.parallelism} ckpt={'on' if self.checkpoint else 'off'}"


@dataclass
class Result:
    system: str
    job: str
    parallelism: int
    checkpoint: bool
    records: int
    seconds: list[float] = field(default_factory=list)      # wall, measured runs
    job_secs: list[float] = field(default_factory=list)     # job time, measured runs
    startups: list[float] = field(default_factory=list)     # wall, start-up runs
    startup_jobs: list[float] = field(default_factory=list)  # job time, start-up runs
    cpu_secs: list[float] = field(default_factory=list)     # CPU (all processes), measured
    small_jobs: list[float] = field(default_factory=list)   # job time, SMALL_FRACTION runs
    small_cpus: list[float] = field(default_factory=list)   # CPU, SMALL_FRACTION runs
    ok: bool = True
    checked: bool = True    # False: the output could not be checked (Flink's blackhole sink)
    error: str = ""
    state_mb: float | None = None

    @property
    def startup(self) -> float | None:
        return statistics.median(self.startups) if self.startups else None

    @property
    def e2e(self) -> float | None:
        return self.records / statistics.median(self.seconds) if self.seconds else None

    @property
    def steady(self) -> float | None:
        if not self.job_secs or not self.startup_jobs:
            return None
        busy = statistics.median(self.job_secs) - statistics.median(self.startup_jobs)
        return self.records / busy if busy > 0.05 else None

    @property
    def small_records(self) -> int:
        return int(self.records * SMALL_FRACTION)

    def _marginal(self, big: list[float], small: list[float]) -> float | None:
        if not big or not small:
            return None
        extra = statistics.median(big) - statistics.median(small)
        return (self.records - self.small_records) / extra if extra > 0.05 else None

    @property
    def marginal(self) -> float | None:
        """Records/s of the records beyond the small run: the warm rate."""
        return self._marginal(self.job_secs, self.small_jobs)

    @property
    def per_cpu(self) -> float | None:
        """Records per CPU-second (every process and thread of the run), marginal too."""
        return self._marginal(self.cpu_secs, self.small_cpus)


@dataclass
class Recovery:
    system: str
    parallelism: int
    records: int
    downtime: float | None = None
    ok: bool = True
    note: str = ""


# ----------------------------------------------------------------------------- environments

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def venv(name: str, spec: str, python: str) -> Path:
    """The virtual environment ``CACHE/name`` with ``spec`` installed; created on first use."""
    root = CACHE / name
    py = root / "bin" / "python"
    marker = root / f".installed-{spec}"
    if not py.exists():
        log(f"creating {root}")
        root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([python, "-m", "venv", str(root)], check=True)
    if not marker.exists():
        log(f"installing {spec} into {root} (from PyPI; takes a few minutes the first time)")
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        spec], check=True)
        marker.touch()
    return root


def java_major() -> int | None:
    java = shutil.which("java")
    if not java:
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def ensure_java() -> bool:
    """Flink 2 needs a Java 17 runtime (11 and 21 work too); installs Debian's if missing."""
    major = java_major()
    if major is not None and major >= 11:
        if major != 17:
            log(f"note: java {major} found; Flink is measured here on 17")
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("no Java 17 runtime: installing openjdk-17-jre-headless with apt-get")
        subprocess.run(["apt-get", "update", "-q"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", "openjdk-17-jre-headless"],
                       check=False)
        major = java_major()
        return major is not None and major >= 11
    log("no Java 17 runtime found and cannot install one: skipping the Flink peers")
    return False


def version_of(root: Path, dist: str) -> str:
    out = subprocess.run([str(root / "bin/python"), "-c",
                          f"import importlib.metadata as m; print(m.version('{dist}'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


# ----------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            found.append(c)
            todo.append(c)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_group(proc: subprocess.Popen) -> None:
    """Ends a run that this script started (its own session, so its own process group),
    including what its leader left running (a JVM, a worker) after it exited."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def dir_mb(path: Path) -> float | None:
    if not path.exists():
        return None
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total / 1e6 if total else None   # Flink deletes its checkpoints when a job ends


# ----------------------------------------------------------------------------- systems


def kill_newest(procs: list[subprocess.Popen], is_worker, missing: str) -> str:
    """SIGKILL the newest descendant whose command line ``is_worker``; '' or why not."""
    workers = [p for p in descendants(procs[0].pid) if is_worker(cmdline(p))]
    if not workers:
        return missing
    os.kill(max(workers), signal.SIGKILL)
    return ""

class System:
    name = ""
    can_kill_worker = False
    checks_output = True

    def available(self, cell: Cell) -> str:
        """Empty when the system can run ``cell``, else why not."""
        return ""

    def start(self, cell: Cell, records: int, work: Path) -> list[subprocess.Popen]:
        raise NotImplementedError

    def output_files(self, work: Path) -> list[Path]:
        raise NotImplementedError

    def job_seconds(self, work: Path) -> float | None:
        """The run's own measure of its job time (no process start-up), if it gives one."""
        return None

    def kill_worker(self, procs: list[subprocess.Popen]) -> str:
        return "cannot kill one worker"

    def restart_after_kill(self, cell: Cell, records: int, work: Path,
                           procs: list[subprocess.Popen]) -> list[subprocess.Popen]:
        return procs   # the system restarts its own workers

    def popen(self, argv: list[str], work: Path, env: dict[str, str] | None = None,
              stdout: Path | None = None, cwd: Path | None = None) -> subprocess.Popen:
        full_env = {**os.environ, **(env or {})}
        out = open(stdout, "ab") if stdout else subprocess.DEVNULL  # noqa: SIM115
        err = open(work / "stderr.log", "ab")  # noqa: SIM115
        return subprocess.Popen(argv, stdout=out, stderr=err, env=full_env, cwd=cwd or work,
                                start_new_session=True)


class Streamjob(System):
    """Our runtime through its CLI: ``streamjob run JOB.yaml -p N --arg k=v --checkpoint-dir``.

    The CLI, ``streamjob.examples.wordcount:build`` (args records, words, rate, output; lines
    ``<word> <count>``) and ``streamjob.examples.windowsum:build`` (args records, words,
    events_per_second, lateness_ms, output; lines ``<window_start_ms> <word> <sum>``) come
    from the runtime; until they exist the cells are reported as not available.
    """

    name = "streamjob"
    can_kill_worker = True
    PIPELINES = {"count": "streamjob.examples.wordcount:build",
                 "window": "streamjob.examples.windowsum:build",
                 "state": "streamjob.examples.wordcount:build"}

    def __init__(self, python: str):
        self.python = python
        self.rate = 0   # records/s, 0 = unlimited; recovery runs throttle ours (see below)
        self.env = {"PYTHONPATH": os.pathsep.join(
            [str(REPO / "worker"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self._missing: dict[str, str] = {}

    def _importable(self, module: str) -> str:
        if module not in self._missing:
            r = subprocess.run([self.python, "-c", f"import {module}"], capture_output=True,
                               text=True, env={**os.environ, **self.env})
            self._missing[module] = "" if r.returncode == 0 else f"{module} not importable"
        return self._missing[module]

    def available(self, cell: Cell) -> str:
        return (self._importable("streamjob.cli")
                or self._importable(self.PIPELINES[cell.job].split(":")[0]))

    def start(self, cell: Cell, records: int, work: Path) -> list[subprocess.Popen]:
        (work / "out").mkdir(exist_ok=True)
        ckpt = ("  checkpoint:\n    enabled: true\n    interval: 1s\n" if cell.checkpoint
                else "  checkpoint:\n    enabled: false\n")
        manifest = work / "job.yaml"
        manifest.write_text(
            "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\n"
            f"metadata:\n  name: bench-{cell.job}\n"
            f"spec:\n  pipeline: {self.PIPELINES[cell.job]}\n  parallelism: {cell.parallelism}\n"
            f"  storage: file://{work / 'ckpt'}\n" + ckpt)
        args = {"records": records, "words": WORDS[cell.job], "output": work / "out"}
        if cell.job == "window":
            args |= {"events_per_second": EPS, "lateness_ms": LATENESS_MS}
        else:
            args["rate"] = self.rate
        argv = [self.python, "-c", "import sys; from streamjob.cli import main; sys.exit(main())",
                "run", str(manifest), "-p", str(cell.parallelism),
                "--checkpoint-dir", str(work / "ckpt")]
        for k, v in args.items():
            argv += ["--arg", f"{k}={v}"]
        return [self.popen(argv, work, env=self.env, stdout=work / "stdout.log")]

    def output_files(self, work: Path) -> list[Path]:
        return sorted((work / "out").glob("part-*"))

    def job_seconds(self, work: Path) -> float | None:
        # The coordinator's status: from all subtasks running to finished and committed.
        for status in (work / ".streamjob" / "runs").glob("*/status.json"):
            try:
                st = json.loads(status.read_text())
                return float(st["finished_at"]) - float(st["running_since"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return None

    def kill_worker(self, procs: list[subprocess.Popen]) -> str:
        # A worker is a process under `streamjob run`; kill the newest one.
        return kill_newest(procs, lambda cmd: "streamjob worker" in cmd,
                           "no worker process under `streamjob run` (single process?)")


class Bytewax(System):
    name = "bytewax"
    can_kill_worker = True

    def __init__(self, root: Path):
        self.py = str(root / "bin/python")

    def _env(self, cell: Cell, records: int, work: Path) -> dict[str, str]:
        return {"BENCH_JOB": "window" if cell.job == "window" else "count",
                "BENCH_RECORDS": str(records), "BENCH_WORDS": str(WORDS[cell.job]),
                "BENCH_EPS": str(EPS), "BENCH_PARTS": str(cell.parallelism),
                "BENCH_OUTPUT": str(work / "out"), "BENCH_LATENESS_MS": str(LATENESS_MS),
                "PYTHONPATH": str(HERE)}

    def start(self, cell: Cell, records: int, work: Path) -> list[subprocess.Popen]:
        (work / "out").mkdir(exist_ok=True)
        argv = [self.py, "-m", "bytewax.run", "bytewax_job:flow"]
        if cell.checkpoint:
            db = work / "ckpt"
            if not db.exists():
                db.mkdir()
                subprocess.run([self.py, "-m", "bytewax.recovery", str(db),
                                str(cell.parallelism)], check=True, capture_output=True)
            argv += ["-r", str(db), "-s", str(int(CHECKPOINT_S)), "-b", "0"]
        env = self._env(cell, records, work)
        if cell.parallelism == 1:
            return [self.popen(argv, work, env=env)]
        # One process per worker (threads in one process would share the GIL).
        addresses = ";".join(f"localhost:{free_port()}" for _ in range(cell.parallelism))
        return [self.popen(argv + ["-i", str(i), "-a", addresses], work, env=env)
                for i in range(cell.parallelism)]

    def output_files(self, work: Path) -> list[Path]:
        return sorted((work / "out").glob("part_*"))

    def kill_worker(self, procs: list[subprocess.Popen]) -> str:
        os.kill(procs[-1].pid, signal.SIGKILL)
        return ""

    def restart_after_kill(self, cell: Cell, records: int, work: Path,
                           procs: list[subprocess.Popen]) -> list[subprocess.Popen]:
        # Bytewax does not restart workers itself (its docs leave that to e.g. Kubernetes):
        # the cluster is stopped and started again on the same recovery folder, at once.
        for p in procs:
            stop_group(p)
        return self.start(cell, records, work)


class FlinkBase(System):
    script = ""

    def __init__(self, root: Path):
        self.root = root
        self.py = str(root / "bin/python")

    def start(self, cell: Cell, records: int, work: Path) -> list[subprocess.Popen]:
        argv = [self.py, str(HERE / self.script),
                "--job", "window" if cell.job == "window" else "count",
                "--records", str(records), "--words", str(WORDS[cell.job]), "--eps", str(EPS),
                "--parallelism", str(cell.parallelism), "--lateness-ms", str(LATENESS_MS)]
        if cell.checkpoint:
            argv += ["--checkpoint-ms", str(int(CHECKPOINT_S * 1000)),
                     "--checkpoint-dir", str(work / "ckpt")]
        argv += ["--output", str(work / "out"), *self.extra_args()]
        env = {"PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        return [self.popen(argv, work, env=env, stdout=work / "stdout.log")]

    def extra_args(self) -> list[str]:
        return []

    def output_files(self, work: Path) -> list[Path]:
        # Finished part files only (Flink keeps in-progress and pending ones hidden,
        # ".part-..."), written by the FileSink (DataStream) or the filesystem connector (SQL).
        return sorted((work / "out").glob("part-*"))

    def job_seconds(self, work: Path) -> float | None:
        # Flink's net runtime of the job: submission to finish, without JVM start-up.
        m = re.search(r"NET_RUNTIME_MS=(\d+)", (work / "stderr.log").read_text(errors="replace"))
        return int(m.group(1)) / 1000 if m else None


class FlinkDS(FlinkBase):
    name = "flink-ds"
    script = "flink_ds.py"
    can_kill_worker = True
    mode = "thread"   # python.execution-mode; recovery switches to "process" (see main)

    def extra_args(self) -> list[str]:
        return ["--mode", self.mode]

    def kill_worker(self, procs: list[subprocess.Popen]) -> str:
        # The Python functions run in Python worker processes started by the JVM; kill one
        # and Flink restarts the job from its last checkpoint.
        return kill_newest(procs, lambda cmd: "pyflink.fn_execution" in cmd or "beam" in cmd,
                           "no PyFlink Python worker process found")


class FlinkSQL(FlinkBase):
    """Flink SQL into the buffered ``filesystem`` connector: the same lines as ours."""

    name = "flink-sql"
    script = "flink_sql.py"
    # Locally Flink runs a MiniCluster: the TaskManager lives in the job's own JVM.
    can_kill_worker = False
    sink = "filesystem"

    def extra_args(self) -> list[str]:
        return ["--sink", self.sink]


class FlinkSQLBlackhole(FlinkSQL):
    """The same job into Flink's ``blackhole`` sink: Flink's processing alone."""

    name = "flink-sql-bh"
    sink = "blackhole"
    checks_output = False


# ----------------------------------------------------------------------------- results

_expected_cache: dict[tuple, dict] = {}


def read_rows(files: Iterable[Path]) -> Iterator[list[str]]:
    """Output rows as fields: every system writes `a b c` text lines to files."""
    for f in files:
        if not f.exists():
            continue
        with open(f, errors="replace") as fh:
            for line in fh:
                if line.strip():
                    yield line.split()


def _ms(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    dt = datetime.fromisoformat(text.replace(" ", "T")).replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def check(cell: Cell, records: int, files: list[Path], exact_lines: bool) -> str:
    """Empty when the output is right, else what is wrong."""
    words = WORDS[cell.job]
    try:
        if cell.job == "window":
            key = ("window", records, words)
            if key not in _expected_cache:
                _expected_cache[key] = gen.expected_window_sums(records, words, EPS)
            got: dict = {}
            for r in read_rows(files):
                got[(_ms(r[0]), r[1])] = int(r[2])
        else:
            key = ("count", records, words)
            if key not in _expected_cache:
                _expected_cache[key] = gen.expected_counts(records, words)
            got = {}
            lines = 0
            for r in read_rows(files):
                lines += 1
                c = int(r[1])
                if c > got.get(r[0], 0):
                    got[r[0]] = c
            if exact_lines and lines != records:
                return f"{lines} update lines for {records} records"
    except (IndexError, ValueError) as e:
        return f"unparsable output: {e}"
    want = _expected_cache[key]
    if got == want:
        return ""
    missing = len(want.keys() - got.keys())
    extra = len(got.keys() - want.keys())
    wrong = [k for k in want.keys() & got.keys() if want[k] != got[k]]
    sample = f" e.g. {wrong[0]}: got {got[wrong[0]]}, want {want[wrong[0]]}" if wrong else ""
    return f"wrong result: {missing} keys missing, {extra} extra, {len(wrong)} differ{sample}"


# ----------------------------------------------------------------------------- running

def run_once(system: System, cell: Cell, records: int, work: Path,
             verify: bool = True) -> tuple[float, float, float, str]:
    """Wall seconds, job seconds (the system's own figure, else wall), CPU seconds of all its
    processes and an error."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    reap_orphans()
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    procs = system.start(cell, records, work)
    error = ""
    deadline = t0 + RUN_TIMEOUT_S
    for p in procs:
        try:
            rc = p.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            error = f"timed out after {RUN_TIMEOUT_S}s"
            rc = 0
        if rc != 0 and not error:
            error = f"exit code {rc}"
    elapsed = time.perf_counter() - t0
    for p in procs:
        stop_group(p)
    reap_orphans()
    cpu = children_cpu() - cpu0
    if error:
        tail = (work / "stderr.log").read_text(errors="replace")[-1500:] \
            if (work / "stderr.log").exists() else ""
        return elapsed, elapsed, cpu, \
            f"{error}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"
    job = system.job_seconds(work)
    if verify and system.checks_output:
        error = check(cell, records, system.output_files(work), exact_lines=True)
    return elapsed, elapsed if job is None else job, cpu, error


def output_size(system: System, work: Path) -> int:
    total = 0
    for f in system.output_files(work):
        try:
            total += f.stat().st_size
        except OSError:
            pass
    return total


def run_recovery(system: System, cell: Cell, records: int, work: Path) -> Recovery:
    """Kill one worker once output has flowed for 2.5 s (two checkpoints); downtime is the
    time from the kill until output grows again after having stalled (0.1 s without growth,
    or shrunk)."""
    rec = Recovery(system.name, cell.parallelism, records)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    procs = system.start(cell, records, work)
    start = time.perf_counter()
    first_output = None
    try:
        while True:
            now = time.perf_counter()
            if now - start > RUN_TIMEOUT_S or all(p.poll() is not None for p in procs):
                rec.ok, rec.note = False, "finished or failed before the kill"
                return rec
            if output_size(system, work) > 0 and first_output is None:
                first_output = now
            if first_output is not None and now - first_output >= 2.5:
                break
            time.sleep(0.02)
        why = system.kill_worker(procs)
        t_kill = time.perf_counter()
        if why:
            rec.ok, rec.note = False, why
            return rec
        procs = system.restart_after_kill(cell, records, work, procs)
        last, stalled_since, t_resume = output_size(system, work), time.perf_counter(), None
        stalled = False
        while time.perf_counter() - t_kill < RUN_TIMEOUT_S:
            time.sleep(0.02)
            now, size = time.perf_counter(), output_size(system, work)
            if size > last and stalled:
                t_resume = now
                break
            if size < last:                 # Bytewax truncates its files to the snapshot
                stalled = True
            elif size > last:
                stalled_since = now
            elif now - stalled_since >= 0.1:
                stalled = True
            last = size
            if all(p.poll() is not None for p in procs):
                break
        if t_resume is None:
            rec.ok, rec.note = False, "output did not resume"
            return rec
        rec.downtime = t_resume - t_kill
        for p in procs:
            p.wait(timeout=RUN_TIMEOUT_S)
        if any(p.returncode for p in procs):
            rec.ok, rec.note = False, f"exit codes {[p.returncode for p in procs]}"
            return rec
        err = check(cell, records, system.output_files(work), exact_lines=False)
        if err:
            rec.ok, rec.note = False, err
        return rec
    finally:
        for p in procs:
            stop_group(p)


def dict_floor(records: int = 2_000_000, words: int = 10_000) -> float:
    """Records/s of a bare Python dict count over the same records, each word formatted per
    record as every system does: the reference floor (no I/O, no output)."""
    counts: dict[str, int] = {}
    mult, mask = gen.MULT, gen.MASK
    t0 = time.perf_counter()
    for g in range(records):
        w = f"w{((g * mult) & mask) % words}"
        counts[w] = counts.get(w, 0) + 1
    return records / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- report

def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def table(results: list[Result], recoveries: list[Recovery]) -> str:
    ours = {(r.job, r.parallelism, r.checkpoint): r for r in results
            if r.system == "streamjob" and r.ok}
    head = ["system", "job", "p", "ckpt", "records", "runs", "startup s", "e2e rec/s",
            "steady rec/s", "marginal rec/s", "rec/CPU-s", "ckpt MB", "ours ÷ this (marginal)",
            "ours ÷ this (per CPU-s)", "ours ÷ this (e2e)", "result"]

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}×" if a and b else "-"

    rows = []
    for r in results:
        mine = ours.get((r.job, r.parallelism, r.checkpoint))
        ratios = ["-", "-", "-"]
        if r.system != "streamjob" and mine and r.ok:
            ratios = [ratio(mine.marginal, r.marginal), ratio(mine.per_cpu, r.per_cpu),
                      ratio(mine.e2e, r.e2e)]
        result = ("ok" if r.checked else "ran (output not checkable)") if r.ok else r.error[:70]
        rows.append([r.system, r.job, str(r.parallelism), "on" if r.checkpoint else "off",
                     f"{r.records:,}", str(len(r.seconds)),
                     "-" if r.startup is None else f"{r.startup:.1f}",
                     fmt_rate(r.e2e), fmt_rate(r.steady), fmt_rate(r.marginal),
                     fmt_rate(r.per_cpu),
                     "-" if r.state_mb is None else f"{r.state_mb:.1f}", *ratios, result])
    lines = [head] + rows
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]

    def md(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
    out = [md(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [md(r) for r in rows]
    if recoveries:
        out += ["", "| system | p | records | downtime after kill | result |",
                "|---|---|---|---|---|"]
        for v in recoveries:
            down = "-" if v.downtime is None else f"{v.downtime:.2f} s"
            out.append(f"| {v.system} | {v.parallelism} | {v.records:,} | {down} | "
                       f"{'ok' if v.ok else v.note[:80]} |")
    return "\n".join(out)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


_LOG_LINE = re.compile(
    r"^(?P<system>\S+)\s+(?P<job>\w+) p=(?P<p>\d+) ckpt=(?P<ckpt>on|off)\s+round \d+: "
    r"start-up\s+(?P<s0>[\d.]+)s \(job\s+(?P<j0>[\d.]+)s\);\s+(?P<n1>[\d,]+) records job\s+"
    r"(?P<j1>[\d.]+)s;\s+(?P<n>[\d,]+) records\s+(?P<s>[\d.]+)s \(job\s+(?P<j>[\d.]+)s, cpu\s+"
    r"(?P<c>[\d.]+)s; marginal\s+[\d,]+/s,\s+(?P<pc>[\d,]+)/CPU-s\)\s*(?P<err>.*)$")


def results_from_log(path: Path) -> list[Result]:
    """The results of the rounds a run logged (its stderr), for a run stopped before its
    end: the same medians, from figures rounded to 0.1 s (the CPU time of the fifth run is
    recovered from the logged per-CPU-second rate)."""
    found: dict[tuple[str, str, int, bool], Result] = {}
    for line in path.read_text().splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        key = (m["system"], m["job"], int(m["p"]), m["ckpt"] == "on")
        n = int(m["n"].replace(",", ""))
        r = found.setdefault(key, Result(*key, n, checked=m["system"] != "flink-sql-bh"))
        if m["err"]:
            r.ok, r.error = False, m["err"]
            continue
        extra = n - int(m["n1"].replace(",", ""))
        r.startups.append(float(m["s0"]))
        r.startup_jobs.append(float(m["j0"]))
        r.small_jobs.append(float(m["j1"]))
        r.seconds.append(float(m["s"]))
        r.job_secs.append(float(m["j"]))
        r.cpu_secs.append(float(m["c"]))
        r.small_cpus.append(float(m["c"]) - extra / max(1, int(m["pc"].replace(",", ""))))
    return list(found.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="one round, a quarter of the records, p=1 only (about 5 minutes)")
    ap.add_argument("--runs", type=int, help="rounds (median over them); default 3, quick 1")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--jobs", default="count,count-ckpt,window,state",
                    help="count, count-ckpt, window, state")
    ap.add_argument("--parallelism", help="comma list; default 1,2 for count and 1 otherwise")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every record count")
    ap.add_argument("--no-recovery", action="store_true")
    ap.add_argument("--pyflink-mode", choices=["thread", "process"], default="thread",
                    help="PyFlink python.execution-mode for flink-ds (recovery always uses "
                         "process: the worker to kill)")
    ap.add_argument("--peer-python", default=sys.executable,
                    help="Python that creates the peer venvs (bytewax 0.21 needs 3.8-3.12)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--from-log", type=Path,
                    help="print the table of the rounds logged by an earlier (stopped) run")
    a = ap.parse_args()
    if a.from_log:
        for line in a.from_log.read_text().splitlines()[:2]:
            print(line)
        print()
        print(table(results_from_log(a.from_log), []))
        return 0

    runs = a.runs or (1 if a.quick else 3)
    scale = a.scale * (0.25 if a.quick else 1.0)
    wanted = [s.strip() for s in a.systems.split(",") if s.strip()]
    jobs = [j.strip() for j in a.jobs.split(",") if j.strip()]
    cells: list[Cell] = []
    for j in jobs:
        base, ckpt = {"count": ("count", False), "count-ckpt": ("count", True),
                      "window": ("window", False), "state": ("state", True)}[j]
        ps = ([int(p) for p in a.parallelism.split(",")] if a.parallelism
              else [1] if a.quick or j != "count" else [1, 2])
        cells += [Cell(base, p, ckpt) for p in ps]

    systems: dict[str, System] = {}
    versions = []
    if "streamjob" in wanted:
        systems["streamjob"] = Streamjob(sys.executable)
    if "bytewax" in wanted:
        root = venv("bytewax", BYTEWAX_SPEC, a.peer_python)
        systems["bytewax"] = Bytewax(root)
        versions.append(f"bytewax {version_of(root, 'bytewax')}")
    if {"flink-ds", "flink-sql"} & set(wanted) and ensure_java():
        root = venv("flink", FLINK_SPEC, a.peer_python)
        versions.append(f"apache-flink {version_of(root, 'apache-flink')}, "
                        f"Java {java_major()}")
        if "flink-ds" in wanted:
            systems["flink-ds"] = FlinkDS(root)
            systems["flink-ds"].mode = a.pyflink_mode
            versions.append(f"flink-ds python.execution-mode={a.pyflink_mode}")
        if "flink-sql" in wanted:
            systems["flink-sql"] = FlinkSQL(root)
        if "flink-sql-bh" in wanted:
            systems["flink-sql-bh"] = FlinkSQLBlackhole(root)

    scratch = a.work or Path(tempfile.mkdtemp(prefix="streamjob-peers-"))
    log(f"machine: {machine()}; load {os.getloadavg()[0]:.1f}")
    log(f"peers: {'; '.join(versions)}; scratch {scratch}")
    t_start = time.time()
    results: dict[tuple[str, Cell], Result] = {}
    for cell in cells:
        for name, sysm in systems.items():
            records = max(STARTUP_RECORDS * 10, int(RECORDS[name][cell.job] * scale))
            res = results[(name, cell)] = Result(name, cell.job, cell.parallelism,
                                                 cell.checkpoint, records,
                                                 checked=sysm.checks_output)
            why = sysm.available(cell)
            if why:
                res.ok, res.error = False, f"n/a: {why}"
    # Each round runs every system on every cell, each time a start-up run (a tiny input) and
    # a run of a fifth of the records right before the measured one, so that all three see
    # the same machine load.
    become_subreaper()
    floors = []
    for rnd in range(runs):
        floors.append(dict_floor())
        for cell in cells:
            for name, sysm in systems.items():
                res = results[(name, cell)]
                if not res.ok:
                    continue
                work = scratch / name / f"{cell.job}-p{cell.parallelism}-{int(cell.checkpoint)}"
                secs0, job0, _, err = run_once(sysm, cell, STARTUP_RECORDS, work / "startup")
                if not err:
                    _, job1, cpu1, err = run_once(sysm, cell, res.small_records, work / "small")
                if err:
                    res.ok, res.error = False, f"start-up or small run: {err}"
                    log(f"{name:12} {cell.label:24} start-up or small run failed: {err}")
                    continue
                res.startups.append(secs0)
                res.startup_jobs.append(job0)
                res.small_jobs.append(job1)
                res.small_cpus.append(cpu1)
                secs, job, cpu, err = run_once(sysm, cell, res.records, work / "run")
                extra = res.records - res.small_records
                log(f"{name:12} {cell.label:24} round {rnd + 1}: start-up {secs0:5.1f}s (job "
                    f"{job0:5.1f}s); {res.small_records:>9,} records job {job1:6.1f}s; "
                    f"{res.records:>9,} records {secs:6.1f}s (job {job:6.1f}s, cpu {cpu:6.1f}s; "
                    f"marginal {extra / max(job - job1, 1e-3):>10,.0f}/s, "
                    f"{extra / max(cpu - cpu1, 1e-3):>10,.0f}/CPU-s) {err}")
                if err:
                    res.ok, res.error = False, err
                    continue
                res.seconds.append(secs)
                res.job_secs.append(job)
                res.cpu_secs.append(cpu)
                if cell.checkpoint:
                    res.state_mb = dir_mb(work / "run" / "ckpt")

    recoveries: list[Recovery] = []
    if not a.no_recovery:
        cell = Cell("count", 1, True)
        for name, sysm in systems.items():
            if not sysm.can_kill_worker:
                recoveries.append(Recovery(name, 1, 0, ok=False,
                                           note="n/a: no separate worker process locally"))
                continue
            c = Cell("count", 2, True) if name == "streamjob" else cell
            if sysm.available(c):
                recoveries.append(Recovery(name, c.parallelism, 0, ok=False,
                                           note=f"n/a: {sysm.available(c)}"))
                continue
            records = RECOVERY_RECORDS[name]
            if isinstance(sysm, Streamjob):
                sysm.rate = RECOVERY_RATE
            if isinstance(sysm, FlinkDS):   # thread mode has no Python process to kill
                sysm.mode = "process"
            rec = run_recovery(sysm, c, records, scratch / name / "recovery")
            if isinstance(sysm, Streamjob):
                sysm.rate = 0
            if isinstance(sysm, FlinkDS):
                sysm.mode = a.pyflink_mode
            log(f"{name:10} recovery: downtime {rec.downtime} {rec.note}")
            recoveries.append(rec)

    ordered = [results[(n, c)] for c in cells for n in systems]
    print(f"\nMachine: {machine()}")
    print(f"Peers: {'; '.join(versions)}")
    print(f"Command: {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}; rounds: {runs}; "
          f"wall time {time.time() - t_start:.0f} s; load average at end "
          f"{os.getloadavg()[0]:.1f}\n")
    print(f"Bare Python dict loop over the same records (word formatted per record, no I/O): "
          f"{fmt_rate(statistics.median(floors))} records/s\n")
    print(table(ordered, recoveries))
    if a.json:
        a.json.write_text(json.dumps({"machine": machine(), "versions": versions,
                                      "results": [asdict(r) | {"e2e": r.e2e, "steady": r.steady,
                                                               "marginal": r.marginal,
                                                               "per_cpu": r.per_cpu}
                                                  for r in ordered],
                                      "recoveries": [asdict(v) for v in recoveries],
                                      "dict_floor": statistics.median(floors)}, indent=1))
    if a.work is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(r.ok or r.error.startswith("n/a") for r in ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
