"""State backends side by side: a keyed job with many keys on RocksDB and in memory.

The large-state job (``bench.jobs.large_state_checked``, p = 2) loads ``--keys`` keys with a
100-byte value each (20,000,000 keys: about 2 GB of state), then changes 1 % of them in each
of ``--rounds`` rounds, then reads every 20th key back. The source is held at each phase and
round boundary until a checkpoint has completed there (by default the benchmark takes that
one checkpoint through the coordinator API, ``POST /api/v1/checkpoints``, as soon as the
sources have read up to the boundary, and the job has no periodic ones; with ``--interval``
periodic checkpoints run instead, so a round's changes may be spread over several), so that

  * the checkpoint after the load holds exactly the loaded state (its duration: a full one),
  * the upload of each round is what 1 % of changed keys costs (bytes of the files new in
    the checkpoint storage since the round before): the flush of the changes and whatever
    compactions wrote since. Their mean over the rounds is the figure; a round with a merge
    of sorted runs uploads more than one without (``bench/compaction.py`` follows that over
    hundreds of rounds, without a job, full merges included),
  * a worker killed while the job is held restores exactly that (kill -> job RUNNING again),
  * a stop-savepoint and a restart at p = 3 from it is the rescale (request -> RUNNING),

and the peak RSS of the workers (``VmHWM``) is followed all along. The few-keys job
(``bench.jobs.churn_checked``, 10,000 keys, p = 2) gives records/s of each backend.

Every record is a read-modify-write checked against the key's previous version (a lost,
doubled or badly restored value writes a ``BAD`` line); the committed output must be exactly
the expected lines (the read-back keys with their versions; the few-keys job's final
versions). Runs are local process trees (``streamjob run``), checkpoints in a local folder
(``file://``) or, with ``--minio``, in the MinIO that ``eval "$(scripts/minio up)"`` started
(``AWS_ENDPOINT_URL`` and credentials from the environment).

    python bench/state.py --keys 1000000                     # quick: both backends
    python bench/state.py --keys 20000000 --memory-max-keys 0   # the issue's size, rocksdb
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, median
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker"), str(ROOT)]

from bench.jobs import (  # noqa: E402
    VALUE_BYTES,
    expected_churn_lines,
    expected_verify_lines,
    state_phases,
)
from bench.procs import children, runtime_path, status_kb  # noqa: E402
from streamjob.cli import api_call, local_api  # noqa: E402

PYPATH = runtime_path(ROOT)  # this checkout's code

NAME = "state"
TIMEOUT_S = 3600          # any one wait (the 20 M load on a loaded 2-core machine is long)
TARGETS = {"rss_gb": 1.0, "rate_ratio": 0.40, "upload_ratio": 0.03}


def tree_bytes(path: Path) -> dict[str, int]:
    """Every file under ``path`` with its size."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            try:
                out[p] = os.path.getsize(p)
            except OSError:
                pass
    return out


class Storage:
    """Where checkpoints go, and how many bytes were written there since a mark."""

    def __init__(self, tmp: Path, minio: bool):
        self.minio = minio
        if minio:
            from minio import Minio

            endpoint = os.environ["AWS_ENDPOINT_URL"]
            self.client = Minio(endpoint.split("://", 1)[1],
                                access_key=os.environ["AWS_ACCESS_KEY_ID"],
                                secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                                secure=endpoint.startswith("https"))
            self.bucket, self.prefix = "bench-state", f"{tmp.name}/"
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
            self.uri = f"s3://{self.bucket}/{tmp.name}"
        else:
            self.dir = tmp / "ckpt"
            self.uri = f"file://{self.dir}"

    def files(self) -> dict[str, int]:
        if self.minio:
            return {o.object_name: o.size for o in self.client.list_objects(
                self.bucket, prefix=self.prefix, recursive=True)}
        return tree_bytes(self.dir)

    def cleanup(self) -> None:
        if self.minio:
            for name in self.files():
                self.client.remove_object(self.bucket, name)


@dataclass
class Run:
    """One ``streamjob run`` process tree of the benchmark."""
    cwd: Path
    manifest: Path
    extra: list[str]
    proc: subprocess.Popen = field(init=False)
    rss: dict[int, int] = field(default_factory=dict)      # worker pid -> peak RSS

    def __post_init__(self) -> None:
        log = open(self.cwd / "run.log", "a")  # noqa: SIM115 (the child writes it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamjob", "run", "-q", str(self.manifest), *self.extra],
            cwd=self.cwd, env=dict(os.environ, PYTHONPATH=PYPATH), stdout=log,
            stderr=subprocess.STDOUT)

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.cwd / ".streamjob/runs" / NAME / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def workers(self) -> list[int]:
        return [p for p, c in children(self.proc.pid) if "streamjob worker" in c]

    def sample(self) -> None:
        for pid in self.workers():
            self.rss[pid] = max(self.rss.get(pid, 0), status_kb(pid, "VmHWM") * 1024)

    def wait_for(self, what: str, pred) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            self.sample()
            s = self.status()
            if s and pred(s):
                return s
            if self.proc.poll() is not None:
                if s and pred(s):
                    return s
                raise SystemExit(f"job exited ({self.proc.returncode}) waiting for {what}; "
                                 f"see {self.cwd}/run.log")
            time.sleep(0.05)
        raise SystemExit(f"timed out after {TIMEOUT_S}s waiting for {what}: {self.status()}")

    def wait_exit(self) -> int:
        deadline = time.monotonic() + TIMEOUT_S
        while self.proc.poll() is None:
            self.sample()
            if time.monotonic() > deadline:
                raise SystemExit(f"job did not end in {TIMEOUT_S}s; see {self.cwd}/run.log")
            time.sleep(0.05)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            for pid, _ in children(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()


def manifest(tmp: Path, pipeline: str, args: dict[str, Any], backend: str, storage: str,
             block_cache_mb: int, interval: str = "2s") -> Path:
    spec = {
        "pipeline": pipeline, "parallelism": 2, "args": args, "storage": storage,
        "checkpoint": {"interval": interval, "timeout": "30m", "retained": 2, "incremental": True},
        "restartStrategy": {"type": "fixed-delay", "delay": "0s", "maxAttempts": 5},
        "stateBackend": {"type": backend, "rocksdb": {
            "blockCacheMB": block_cache_mb, "localDir": str(tmp / "rocksdb")}},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "streamjob.dev/v1alpha1",
                                    "kind": "StreamJob", "metadata": {"name": NAME},
                                    "spec": spec}))
    return path


def committed_lines(out: Path) -> Counter[str]:
    lines: Counter[str] = Counter()
    for part in out.glob("part-*"):
        lines.update(part.read_text().splitlines())
    return lines


def check_lines(label: str, got: Counter[str], expected: set[str]) -> None:
    bad = [line for line in got if line.startswith("BAD")]
    dup = sum(n - 1 for n in got.values() if n > 1)
    missing, extra = len(expected - set(got)), len(set(got) - expected)
    if bad or dup or missing or extra:
        raise SystemExit(f"{label}: output wrong: {len(bad)} BAD ({bad[:3]}), {dup} "
                         f"duplicates, {missing} missing, {extra} unexpected lines")


def churn(backend: str, keys: int, records: int, block_cache_mb: int, minio: bool) -> float:
    """records/s of the few-keys job on ``backend`` (output checked)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"sj-state-churn-{backend}-"))
    storage = Storage(tmp, minio)
    path = manifest(tmp, "bench.jobs:churn_checked",
                    {"keys": keys, "records": records, "output": str(tmp / "out")},
                    backend, storage.uri, block_cache_mb)
    run = Run(tmp, path, [])
    try:
        if run.wait_exit() != 0:
            raise SystemExit(f"churn job on {backend} failed; see {tmp}/run.log")
        s = run.status()
        if s.get("state") != "FINISHED" or s.get("records_in") != records:
            raise SystemExit(f"churn job on {backend}: {s}")
        check_lines(f"churn {backend}", committed_lines(tmp / "out"),
                    expected_churn_lines(keys, records))
        return records / (s["finished_at"] - s["running_since"])
    finally:
        run.stop()
        storage.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def checkpoint_after(run: Run, records: int, what: str, trigger: bool) -> tuple[float,
                                                                             dict[str, Any]]:
    """Wait until the sources read ``records`` (held at a gate), then for a checkpoint after
    that: with ``trigger`` one taken there through the coordinator API (``POST
    /api/v1/checkpoints``: its barrier follows every record read, so it holds all of them
    and nothing more), else a periodic one (two ids on: one may have been in flight); when
    the records were read, and the checkpoint's summary."""
    s = run.wait_for(f"{what}: {records:,} records read",
                     lambda s: s.get("records_in", 0) >= records)
    read_at = time.time()
    if s["records_in"] != records:
        raise SystemExit(f"{what}: read {s['records_in']} records, the gate is at {records}")
    if trigger:
        base, token = local_api(NAME, run.cwd)
        return read_at, api_call(base, token, "POST", "/api/v1/checkpoints", {},
                                 timeout=TIMEOUT_S)
    first = ((s.get("last_checkpoint") or {}).get("id") or 0) + 2
    s = run.wait_for(f"{what}: checkpoint {first}",
                     lambda s: (s.get("last_checkpoint") or {}).get("id", 0) >= first)
    return read_at, s["last_checkpoint"]


def large(backend: str, keys: int, rounds: int, interval: str | None, block_cache_mb: int,
          minio: bool) -> dict[str, Any]:
    """The large-state job on ``backend``: see the module docstring."""
    tmp = Path(tempfile.mkdtemp(prefix=f"sj-state-{backend}-"))
    storage = Storage(tmp, minio)
    gates = tmp / "gates"
    gates.mkdir()
    load, change, verify = state_phases(keys)
    args = {"keys": keys, "rounds": rounds, "output": str(tmp / "out"),
            "gate_dir": str(gates)}
    path = manifest(tmp, "bench.jobs:large_state_checked", args, backend, storage.uri,
                    block_cache_mb, interval or "1h")
    trigger = interval is None
    r: dict[str, Any] = {"backend": backend}
    run = Run(tmp, path, [])
    runs = [run]
    try:
        s = run.wait_for("RUNNING", lambda s: s.get("state") == "RUNNING")
        t0 = time.time()
        read_at, full = checkpoint_after(run, load, "load", trigger)
        r["load_s"] = read_at - t0
        r["full_checkpoint_s"] = full["duration_ms"] / 1000
        known = storage.files()
        r["storage_bytes"] = sum(known.values())
        r["uploads"], r["checkpoint_s"] = [], []
        for i in range(rounds):     # each: open the gate, 1 % changed, the next checkpoint
            (gates / f"gate-{load + change * i}").touch()
            _, incr = checkpoint_after(run, load + change * (i + 1), f"change round {i + 1}",
                                       trigger)
            after = storage.files()
            r["uploads"].append(sum(n for f, n in after.items() if f not in known))
            r["checkpoint_s"].append(incr["duration_ms"] / 1000)
            known.update(after)

        # restore: a worker killed while the job is held after that checkpoint
        s = run.status()
        victim = run.workers()[0]
        t_kill = time.time()
        os.kill(victim, signal.SIGKILL)
        s = run.wait_for("the restore", lambda x, a=s["attempt"]: x.get("attempt", 0) > a
                         and x.get("state") == "RUNNING")
        r["restore_s"] = s["attempt_running_at"] - t_kill
        if (s.get("restored_from") or 0) < incr["id"]:
            raise SystemExit(f"restored {s.get('restored_from')}, expected >= {incr['id']}")

        # rescale 2 -> 3: stop with a savepoint, start at p = 3 from it
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "streamjob", "savepoint", NAME, "--stop"],
                             cwd=tmp, env=dict(os.environ, PYTHONPATH=PYPATH),
                             capture_output=True, text=True, timeout=TIMEOUT_S)
        if out.returncode != 0:
            raise SystemExit(f"savepoint failed: {out.stderr[-2000:]}")
        uri = out.stdout.strip().splitlines()[-1]
        r["savepoint_s"] = time.time() - t0
        run.wait_exit()
        run = Run(tmp, path, ["-p", "3", "--from-savepoint", uri])
        runs.append(run)
        s = run.wait_for("RUNNING at p = 3", lambda s: s.get("state") == "RUNNING"
                         and s.get("parallelism") == 3 and s.get("attempt_running_at"))
        r["rescale_s"] = s["attempt_running_at"] - t0
        (gates / f"gate-{load + change * rounds}").touch()
        if run.wait_exit() != 0 or run.status().get("state") != "FINISHED":
            raise SystemExit(f"{backend}: the job did not finish; see {tmp}/run.log")
        check_lines(f"large state {backend}", committed_lines(tmp / "out"),
                    expected_verify_lines(keys, rounds))
        r["checked_lines"] = verify
        r["rss_p2"] = max(runs[0].rss.values())
        r["rss_p3"] = max(runs[1].rss.values())
        return r
    finally:
        for each in runs:
            each.stop()
        storage.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "worker",
                            "bench"], capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + (" (modified)" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000, help="keys of the large-state job")
    ap.add_argument("--memory-max-keys", type=int, default=5_000_000,
                    help="run the large-state job on the memory backend up to this many keys")
    ap.add_argument("--rounds", type=int, default=10,
                    help="rounds of 1 %% of the keys changed, a checkpoint after each")
    ap.add_argument("--interval", metavar="DURATION",
                    help="periodic checkpoints of the large-state job (e.g. 2s): a round then "
                         "spans as many as fall into it; by default one checkpoint is taken "
                         "at each phase and round boundary through the coordinator API")
    ap.add_argument("--churn-keys", type=int, default=10_000)
    ap.add_argument("--churn-records", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the few-keys job per backend")
    ap.add_argument("--block-cache-mb", type=int, default=256)
    ap.add_argument("--minio", action="store_true", help="checkpoints in MinIO (see above)")
    ap.add_argument("--backends", default="rocksdb,memory",
                    help="comma-separated (the ratios need both)")
    ap.add_argument("--skip-churn", action="store_true")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    chosen = a.backends.split(",")
    gb = 1e9
    state_bytes = a.keys * VALUE_BYTES
    print(f"# bench/state.py --keys {a.keys:,} (commit {commit()}); {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start; p = 2, block cache "
          f"{a.block_cache_mb} MB, storage {'MinIO' if a.minio else 'file://'}; large-state "
          f"job: {a.rounds} rounds, checkpoints "
          + (f"every {a.interval}" if a.interval else "one per phase and round (triggered)"))
    if not a.skip_churn:
        runs: dict[str, list[float]] = {b: [] for b in ("memory", "rocksdb") if b in chosen}
        for i in range(a.repeat):           # interleaved: the machine's load hits both alike
            for b in (list(runs) if i % 2 == 0 else list(reversed(runs))):
                runs[b].append(churn(b, a.churn_keys, a.churn_records, a.block_cache_mb,
                                     a.minio))
        rates = {b: median(v) for b, v in runs.items()}
        print(f"\n{a.churn_keys:,}-key job, {a.churn_records:,} checked read-modify-writes, "
              f"output checked, median of {a.repeat} interleaved runs:")
        print("  records/s  " + "  ".join(
            f"{b} {n:,.0f} ({', '.join(f'{x:,.0f}' for x in runs[b])})"
            for b, n in rates.items()))
        if len(rates) == 2:
            ratio = rates["rocksdb"] / rates["memory"]
            print(f"  rocksdb / memory {ratio:.0%}  (target >= {TARGETS['rate_ratio']:.0%}: "
                  f"{'met' if ratio >= TARGETS['rate_ratio'] else 'NOT met'})")
    backends = [b for b in ("rocksdb", "memory") if b in chosen
                and (b == "rocksdb" or a.keys <= a.memory_max_keys)]
    results = [large(b, a.keys, a.rounds, a.interval, a.block_cache_mb, a.minio)
               for b in backends]
    print(f"\n{a.keys:,} keys x {VALUE_BYTES} B = {state_bytes / gb:.2f} GB of state, "
          f"output checked ({results[0]['checked_lines']:,} keys read back, every record "
          f"checked against its previous version):")
    rows = [
        ("peak RSS per worker, p = 2", lambda r: f"{r['rss_p2'] / gb:.2f} GB",
         lambda r: r["rss_p2"] < TARGETS["rss_gb"] * gb, f"< {TARGETS['rss_gb']:.0f} GB"),
        ("peak RSS per worker, p = 3", lambda r: f"{r['rss_p3'] / gb:.2f} GB", None, ""),
        ("load (every key once, read by sources)", lambda r: f"{r['load_s']:.1f} s "
         f"({a.keys / r['load_s']:,.0f}/s)", None, ""),
        ("checkpoint after the load", lambda r: f"{r['full_checkpoint_s']:.2f} s", None, ""),
        ("checkpoint storage after the load", lambda r: f"{r['storage_bytes'] / gb:.2f} GB",
         None, ""),
        ("upload per 1 % of keys changed, mean", lambda r: f"{mean(r['uploads']) / 1e6:.1f}"
         f" MB = {mean(r['uploads']) / state_bytes:.2%}",
         lambda r: mean(r["uploads"]) <= TARGETS["upload_ratio"] * state_bytes,
         f"<= {TARGETS['upload_ratio']:.0%} of the state"),
        ("  the largest round", lambda r: f"{max(r['uploads']) / 1e6:.1f} MB = "
         f"{max(r['uploads']) / state_bytes:.2%}", None, ""),
        ("checkpoint after a change, median", lambda r: f"{median(r['checkpoint_s']):.2f} s",
         None, ""),
        ("restore after a kill (kill -> RUNNING)", lambda r: f"{r['restore_s']:.2f} s", None,
         ""),
        ("stop-savepoint", lambda r: f"{r['savepoint_s']:.2f} s", None, ""),
        ("rescale 2 -> 3 (savepoint -> RUNNING)", lambda r: f"{r['rescale_s']:.2f} s", None,
         ""),
    ]
    head = "".join(f"{r['backend']:>26}" for r in results)
    print(f"  {'':<40}{head}   target")
    for label, fmt, ok, target in rows:
        cells = "".join(f"{fmt(r):>26}" for r in results)
        verdict = ""
        if ok is not None:
            verdict = (f"   {target}: {'met' if ok(results[0]) else 'NOT met'} "
                       f"({results[0]['backend']})")
        print(f"  {label:<40}{cells}{verdict}")
    for r in results:
        print(f"  {r['backend']}: upload per round, % of the state: "
              + " ".join(f"{u / state_bytes:.2%}" for u in r["uploads"]))
    if "memory" in chosen and "memory" not in backends:
        print(f"  (memory backend skipped: more than --memory-max-keys {a.memory_max_keys:,})")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
