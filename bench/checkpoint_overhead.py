"""What a checkpoint every second costs with ~100 MB of keyed state, and which way of taking
snapshots costs least: processing rate and peak memory, side by side in one run.

    python bench/checkpoint_overhead.py [--keys 1000000] [--value-bytes 100] [--repeat 2]

Part 1, the strategies (one process per measurement, the same state and update loop: a key
rewritten per record, ``keys`` keys of ``value_bytes``):

* ``none``: no snapshot (the baseline);
* ``thread``: the runtime's full snapshot: ``freeze()`` (a dict copy) on the processing
  thread, then encoding and writing on a thread (it competes for the GIL);
* ``fork``: copy-on-write: the process forks at the barrier (after ``gc.freeze()``, so that
  the parent's collector does not write to the shared objects; the child disables its own),
  the parent goes on at once, the child encodes and writes the file and reports back over a
  pipe (the way Redis persists);
* ``delta``: incremental: only the keys written since the last snapshot are copied (on the
  processing thread) and encoded on a thread.

For each: records/s while snapshotting every second, its ratio to ``none`` of the same round,
snapshot duration, peak memory (the process's peak RSS, plus what a forked child copied:
its private dirty memory) over the RSS of the live state, how long ``fork()`` took, and the
page faults per second of the process (copy-on-write faults show up here).

Part 2, the runtime: ``bench.jobs:large_state`` (p = 1, the same state) on each state
backend, with checkpoints off and every 1 s. On the memory backend: full and incremental
checkpoints, each with both snapshot strategies (``spec.checkpoint.snapshotStrategy``:
``thread``, the default, and ``fork``); on the rocksdb backend (``spec.stateBackend: {type:
rocksdb}``, its defaults, files in the run's temporary folder): its checkpoints (the dirty
cached entries in one WriteBatch at the barrier, then a RocksDB checkpoint made on a thread
and the new SST files uploaded). The overhead of each is its records/s against the same
backend with checkpoints off, measured in the same round. Records/s from the moment the
state is loaded (the job's first record loads it; RocksDB takes seconds longer than a dict)
to "finished and committed"; CPU per record over the same span (``/proc``, sampled every 0.1
s): the worker's main thread, which runs the task, and the whole worker process (RocksDB's
flush, compaction and upload threads, snapshot children), a measure the load of other users
of the machine moves less than records/s; peak memory: the largest of the worker's VmHWM
and, sampled every 0.1 s, its RSS plus the private dirty memory
(``/proc/<pid>/smaps_rollup``) of its snapshot children, over the same backend's peak with
checkpoints off and over the live state (the memory backend's peak with checkpoints off).
The final checkpoint of every run is read back (a rocksdb one restored from storage, every
file checked against its sha256) and must hold every key with a value the job wrote.

With ``--baseline DIR`` (another checkout, e.g. ``git worktree add /tmp/base main``) every
runtime mode is run with that checkout's runtime as well, in the same round (``<mode>@base``,
its overhead against the baseline's own run without checkpoints): before and after a change,
side by side.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker"), str(ROOT)]

from bench.jobs import large_value  # noqa: E402
from bench.procs import git_head, runtime_path  # noqa: E402
from streamjob import state  # noqa: E402
from streamjob.checkpoints import latest_completed  # noqa: E402
from streamjob.keygroups import key_group  # noqa: E402
from streamjob.manifest import CheckpointSpec  # noqa: E402
from streamjob.operators import KeyedStateBackend  # noqa: E402
from streamjob.rocksdb_backend import RocksDBKeyedStateBackend  # noqa: E402
from streamjob.storage import LocalStorage  # noqa: E402

PYPATH = runtime_path(ROOT)  # this checkout's code

STRATEGIES = ("none", "thread", "fork", "delta")


def status_mb(pid: int | str = "self") -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def private_mb() -> float:
    """Memory this process has copied (private dirty pages): a forked child's own share."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) / 1024
    return 0.0


def strategy(name: str, keys: int, value_bytes: int, seconds: float) -> dict[str, float]:
    """One measurement (run in its own process: peak RSS is per process)."""
    backend = KeyedStateBackend(track_changes=name == "delta")
    table = backend.table("value", "value")
    value = b"v" * value_bytes
    for k in range(keys):  # distinct values, as after the update loop has touched every key
        table[k] = value[:-8] + k.to_bytes(8, "little")
    cache: dict[int, int] = {}

    def kg_of(k: int) -> int:
        kg = cache.get(k)
        if kg is None:
            kg = cache[k] = key_group(k, 128)
        return kg

    for k in range(keys):
        kg_of(k)
    live = status_mb()["VmRSS"]
    tmp = tempfile.mkdtemp(prefix="sj-ckpt-")
    durations: list[float] = []
    child_mb: list[float] = []
    fork_ms: list[float] = []

    def encode(frozen: dict, t0: float) -> None:
        with open(f"{tmp}/snap", "wb") as f:
            state.encode_snapshot_to(f, frozen, None, kg_of)
        durations.append(time.perf_counter() - t0)

    def snapshot() -> threading.Thread:
        t0 = time.perf_counter()
        if name == "fork":
            r, w = os.pipe()
            gc.freeze()  # the parent's collector leaves the objects shared with the child alone
            f0 = time.perf_counter()
            pid = os.fork()
            if pid == 0:  # the child: encode, write, report, exit (no other thread runs here)
                gc.disable()
                os.close(r)
                with open(f"{tmp}/snap-{os.getpid()}", "wb") as f:
                    state.encode_snapshot_to(f, {"value": ("value", table)}, None, kg_of)
                os.write(w, str(private_mb()).encode())
                os._exit(0)
            os.close(w)
            fork_ms.append((time.perf_counter() - f0) * 1000)

            def wait() -> None:
                copied = float(os.read(r, 64) or 0)
                os.close(r)
                os.waitpid(pid, 0)
                gc.unfreeze()
                child_mb.append(copied)
                durations.append(time.perf_counter() - t0)

            th = threading.Thread(target=wait)
        else:
            frozen = backend.freeze_delta() if name == "delta" else backend.freeze()
            th = threading.Thread(target=encode, args=(frozen, t0))
        th.start()
        return th

    n = g = 0
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pending: threading.Thread | None = None
    start = time.perf_counter()
    next_snapshot = start + 1.0
    dirty = backend.dirty
    while (now := time.perf_counter()) - start < seconds:
        batch = [(g + i) * 7919 % keys for i in range(2048)]
        for k in batch:
            table[k] = value[:-8] + g.to_bytes(8, "little")
            g += 1
        if dirty is not None:
            dirty.update(batch)
        n += len(batch)
        if name != "none" and now >= next_snapshot and (pending is None
                                                        or not pending.is_alive()):
            next_snapshot = now + 1.0
            pending = snapshot()
            dirty = backend.dirty
    rate = n / (time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    if pending is not None:
        pending.join()
    peak = status_mb()["VmHWM"] + (max(child_mb) if child_mb else 0.0)
    return {"rate": rate, "live_mb": live, "peak_mb": peak, "snapshots": len(durations),
            "faults_per_s": faults / seconds,
            "fork_ms": statistics.median(fork_ms) if fork_ms else 0.0,
            "duration": statistics.median(durations) if durations else 0.0,
            "child_mb": max(child_mb) if child_mb else 0.0}


def private_dirty_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cow_fault_us(mb: int = 300) -> float:
    """What one copy-on-write page fault costs here: the time to write one byte per 4 KiB
    page of a buffer right after a fork (the child waits), minus the same writes without."""
    buf = bytearray(mb << 20)
    pages = range(0, len(buf), 4096)
    for i in pages:
        buf[i] = 1
    t0 = time.perf_counter()
    for i in pages:
        buf[i] = 2
    plain = time.perf_counter() - t0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(r, 1)
        os._exit(0)
    t0 = time.perf_counter()
    for i in pages:
        buf[i] = 3
    forked = time.perf_counter() - t0
    os.write(w, b"x")
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    return (forked - plain) / len(pages) * 1e6


def cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of a worker's main thread (its task loop) and of the whole
    worker process with its reaped children (snapshot children, RocksDB's threads)."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(path: str) -> list[str]:
        return Path(path).read_text().rsplit(")", 1)[1].split()

    main = fields(f"/proc/{pid}/task/{pid}/stat")
    proc = fields(f"/proc/{pid}/stat")
    return ((int(main[11]) + int(main[12])) / tick,
            sum(int(x) for x in proc[11:15]) / tick)


def worker_pids(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"worker" in cmd:
                found.append(int(entry))
    return found


RUNTIME_MODES = ("off", "full", "full-fork", "incremental", "incremental-fork",
                 "rocksdb-off", "rocksdb")


BASE = "@base"  # the suffix of a mode run with the --baseline checkout's runtime


def baseline(mode: str) -> str:
    """The run without checkpoints that ``mode``'s overhead is measured against."""
    tree = BASE if mode.endswith(BASE) else ""
    return ("rocksdb-off" if mode.startswith("rocksdb") else "off") + tree


def check_values(pairs: Iterable[tuple[Any, Any]], keys: int, value_bytes: int,
                 what: str) -> None:
    """Every key once, each with the loaded value or the one the job writes for it."""
    seen = 0
    for k, v in pairs:
        seen += 1
        if not (isinstance(k, int) and 0 <= k < keys) or (
                v != large_value(k, 0, value_bytes) and v != large_value(k, 1, value_bytes)):
            raise SystemExit(f"{what}: key {k!r} holds {v!r}")
    if seen != keys:
        raise SystemExit(f"{what}: final checkpoint holds {seen} entries, not {keys}")


def held_memory(storage: LocalStorage, body: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    held: dict[Any, Any] = {}  # an incremental handle: full snapshot, then deltas
    for task in body["tasks"].values():
        for h in task["subtasks"]:
            for _n, _k, entries, deleted in state.read_keyed_state(storage, h, range(128)):
                held.update(entries)
                for k in deleted:
                    held.pop(k, None)
    return iter(held.items())


def held_rocksdb(storage: LocalStorage, body: dict[str, Any], tmp: str,
                 ) -> Iterator[tuple[Any, Any]]:
    """The checkpoint restored from storage into a new database (no local recovery: every
    file downloaded and checked against its sha256)."""
    handles = [h["rocksdb"] for task in body["tasks"].values() for h in task["subtasks"]
               if "rocksdb" in h]
    backend = RocksDBKeyedStateBackend(f"{tmp}/verify", range(128), 128)
    try:
        backend.restore(storage, handles)
        yield from backend.tables["value"].decoded_items()
    finally:
        backend.close()


def runtime(mode: str, keys: int, value_bytes: int, records: int,
            pypath: str = PYPATH) -> dict[str, float]:
    """One run of ``mode`` (a RUNTIME_MODES name) with the runtime found on ``pypath``."""
    with tempfile.TemporaryDirectory() as tmp:
        on_rocksdb = mode.startswith("rocksdb")
        ckpt = {"enabled": mode not in ("off", "rocksdb-off"), "interval": "1s",
                "incremental": mode.startswith("incremental"),
                "snapshotStrategy": "fork" if mode.endswith("fork") else "thread"}
        spec = {"pipeline": "bench.jobs:large_state", "parallelism": 1,
                "args": {"records": records, "keys": keys, "value_bytes": value_bytes,
                         "loaded_mark": f"{tmp}/loaded"},
                "checkpoint": ckpt, "storage": f"file://{tmp}/ckpt"}
        if on_rocksdb:
            spec["stateBackend"] = {"type": "rocksdb", "rocksdb": {"localDir": f"{tmp}/db"}}
        manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                    "metadata": {"name": "bench"}, "spec": spec}
        Path(tmp, "job.yaml").write_text(yaml.safe_dump(manifest))
        log = open(Path(tmp, "run.log"), "w")  # workers log each snapshot child at INFO
        proc = subprocess.Popen([sys.executable, "-m", "streamjob", "run", "-q", "job.yaml"],
                                cwd=tmp, env=dict(os.environ, PYTHONPATH=pypath,
                                                  STREAMJOB_LOG="INFO"),
                                stderr=log)
        peak = child_peak = 0.0
        samples: list[tuple[float, float, float]] = []  # (time, task thread, worker) CPU s
        while proc.poll() is None:
            for pid in worker_pids(proc.pid):
                try:
                    samples.append((time.time(), *cpu_s(pid)))
                    mb = status_mb(pid)
                    # A snapshot child is a child of the worker: its copied pages count.
                    children = [c for c in worker_pids(pid)]
                    copied = sum(private_dirty_mb(c) for c in children)
                    peak = max(peak, mb["VmHWM"], mb["VmRSS"] + copied)
                    child_peak = max(child_peak, copied)
                except (OSError, KeyError):
                    pass
            time.sleep(0.1)
        log.close()
        if proc.returncode:
            raise SystemExit(f"runtime {mode}: exit code {proc.returncode}")
        children = len(re.findall(r"snapshot child \d+ encodes",
                                  Path(tmp, "run.log").read_text()))
        status = json.loads(Path(tmp, ".streamjob/runs/bench/status.json").read_text())
        storage = LocalStorage(Path(tmp, "ckpt"))
        body = latest_completed(storage, status["job_id"])
        if body is None:
            raise SystemExit(f"runtime {mode}: no completed checkpoint")
        held = held_rocksdb(storage, body, tmp) if on_rocksdb else held_memory(storage, body)
        check_values(held, keys, value_bytes, f"runtime {mode}")
        if mode.endswith("fork") and not children:
            raise SystemExit(f"runtime {mode}: no snapshot was taken by a child")
        loaded = max(float(p.read_text()) for p in Path(tmp).glob("loaded.*"))
        after = [s for s in samples if s[0] >= loaded]
        if len(after) < 2:
            raise SystemExit(f"runtime {mode}: too few CPU samples after the load")
        return {"rate": records / (status["finished_at"] - loaded),
                "task_us": (after[-1][1] - after[0][1]) / records * 1e6,
                "worker_us": (after[-1][2] - after[0][2]) / records * 1e6,
                "load_s": loaded - status["running_since"],
                "peak_mb": peak, "child_mb": child_peak, "checkpoints": body["checkpoint_id"],
                "children": children}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=8.0, help="per strategy measurement")
    ap.add_argument("--records", type=int, default=4_000_000, help="per runtime run")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", choices=["strategies", "runtime"])
    ap.add_argument("--modes", default=",".join(RUNTIME_MODES),
                    help="runtime modes, comma-separated (off is always run)")
    ap.add_argument("--baseline", type=Path,
                    help="another checkout: each runtime mode is also run with its code")
    ap.add_argument("--strategy", choices=STRATEGIES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    base_path = ""
    if a.baseline:
        if not (a.baseline / "worker" / "streamjob").is_dir():
            ap.error(f"--baseline {a.baseline}: not a streamjob checkout (no worker/streamjob)")
        base_path = runtime_path(a.baseline)
    if a.strategy:  # one measurement, in a process of its own
        print(json.dumps(strategy(a.strategy, a.keys, a.value_bytes, a.seconds)))
        return
    mb = a.keys * a.value_bytes / 1e6
    print(f"{a.keys:,} keys x {a.value_bytes} B = {mb:.0f} MB of values; snapshot every 1 s; "
          f"median of {a.repeat}; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} (a shared machine: read the ratios)")
    if a.only != "runtime":
        res: dict[str, list[dict[str, float]]] = {s: [] for s in STRATEGIES}
        for _ in range(a.repeat):
            for s in STRATEGIES:
                out = subprocess.run([sys.executable, __file__, "--strategy", s, "--keys",
                                      str(a.keys), "--value-bytes", str(a.value_bytes),
                                      "--seconds", str(a.seconds)],
                                     capture_output=True, text=True, check=True).stdout
                res[s].append(json.loads(out))
        med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for s, rs in res.items()}
        print(f"one copy-on-write page fault costs {cow_fault_us():.1f} us here (a 300 MB "
              f"buffer written once per page after a fork)")
        print(f"{'strategy':<10}{'records/s':>12}{'÷ none':>8}{'snapshot s':>12}"
              f"{'live MB':>9}{'peak MB':>9}{'peak ÷ live':>13}{'child copied MB':>17}"
              f"{'fork ms':>9}{'parent page faults/s':>22}")
        for s in STRATEGIES:
            m = med[s]
            print(f"{s:<10}{m['rate']:>12,.0f}{m['rate'] / med['none']['rate']:>8.2f}"
                  f"{m['duration']:>12.2f}{m['live_mb']:>9.0f}{m['peak_mb']:>9.0f}"
                  f"{m['peak_mb'] / m['live_mb']:>13.2f}{m['child_mb']:>17.0f}"
                  f"{m['fork_ms']:>9.0f}{m['faults_per_s']:>22,.0f}")
    if a.only != "strategies":
        chosen = [m for m in a.modes.split(",") if m in RUNTIME_MODES]
        modes = [m for m in RUNTIME_MODES  # each with its baseline, baselines first
                 if m in chosen or any(baseline(c) == m for c in chosen)]
        modes.sort(key=lambda m: (baseline(m) != "off", m != baseline(m)))
        if a.baseline:  # each mode with the baseline's code right after this checkout's
            modes = [x for m in modes for x in (m, m + BASE)]
        rt: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for _ in range(a.repeat):
            for m in modes:
                r = runtime(m.removesuffix(BASE), a.keys, a.value_bytes, a.records,
                            base_path if m.endswith(BASE) else PYPATH)
                rt[m].append(r)
                print(f"  {m}: {r['rate']:,.0f} records/s, task {r['task_us']:.1f} µs/record, "
                      f"worker {r['worker_us']:.1f} µs/record, {r['checkpoints']} checkpoints, "
                      f"peak {r['peak_mb']:.0f} MB, load average {os.getloadavg()[0]:.1f}",
                      file=sys.stderr, flush=True)
        med_rt = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                  for m, rs in rt.items()}
        live = med_rt["off"]["peak_mb"] if "off" in med_rt else None
        if a.baseline:
            print(f"{BASE}: the runtime of {a.baseline} (git {git_head(a.baseline)}); the "
                  f"others: this checkout's (git {git_head(ROOT)})")
        print(f"runtime, bench.jobs:large_state p=1, {a.records:,} records, measured from the "
              f"end of the state's loading (at the first record); the memory backend's "
              f"default strategy: {CheckpointSpec().snapshot_strategy}; overhead, CPU and "
              f"peak against the same backend with checkpoints off; CPU per record: the "
              f"worker's task thread, and the whole worker (its other threads and snapshot "
              f"children too); live = the memory backend's peak with checkpoints off")
        print(f"{'checkpoints every 1 s':<44}{'records/s':>11}{'overhead':>10}{'target':>8}"
              f"{'range':>16}{'task µs/rec':>13}{'worker µs/rec':>15}{'peak MB':>9}"
              f"{'÷ off':>7}{'÷ live':>8}{'target':>8}{'child MB':>10}{'load s':>8}")
        for m in modes:
            r, base = med_rt[m], med_rt[baseline(m)]
            overheads = [(1 - x["rate"] / b["rate"]) * 100
                         for x, b in zip(rt[m], rt[baseline(m)], strict=True)]
            name = m.removesuffix(BASE)
            kind, _, how = name.partition("-")
            if name in ("off", "rocksdb-off"):
                label = f"{'memory' if name == 'off' else 'rocksdb'}, off"
            elif kind == "rocksdb":
                label = f"rocksdb ({r['checkpoints']:.0f} taken)"
            else:
                label = (f"memory, {kind}, {how or 'thread'} ({r['checkpoints']:.0f} taken"
                         + (f", {r['children']:.0f} by a child" if how else "") + ")")
            label += BASE if m.endswith(BASE) else ""
            is_base = m == baseline(m)
            spread = "" if is_base else f"{min(overheads):.1f}..{max(overheads):.1f}%"
            cpu = "" if is_base else "{:+.0%}"
            print(f"{label:<44}{r['rate']:>11,.0f}{(1 - r['rate'] / base['rate']) * 100:>9.1f}%"
                  f"{'' if is_base else '<= 5%':>8}{spread:>16}"
                  f"{r['task_us']:>6.1f}{cpu.format(r['task_us'] / base['task_us'] - 1):>7}"
                  f"{r['worker_us']:>8.1f}{cpu.format(r['worker_us'] / base['worker_us'] - 1):>7}"
                  f"{r['peak_mb']:>9.0f}"
                  f"{r['peak_mb'] / base['peak_mb']:>7.2f}"
                  f"{r['peak_mb'] / live if live else float('nan'):>8.2f}"
                  f"{'' if is_base else '<= 1.3':>8}{r['child_mb']:>10.0f}{r['load_s']:>8.1f}")

    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
