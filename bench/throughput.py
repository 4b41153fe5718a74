"""Throughput of the keyed running count, side by side with the plain-Python floors.

    python bench/throughput.py [--records N] [--repeat K] [--words W] [--scaling-only]
                               [--baseline DIR] [--marginal N]
    python bench/throughput.py --many-keys [--records N] [--repeat K] [--words W] [--baseline DIR]

Configurations (each run checked, a wrong result stops the benchmark):

* floors, measured in this run: a plain Python dict count over the same records (word
  formatted per record, as the source does), and the same loop also writing one
  ``<word> <count>`` line per record to a buffered file (the floor for a job with output);
* streamjob with the discard sink (``bench.jobs:keyed_count``: the count alone; checked by
  reading the final checkpoint's counts) and with the real transactional file sink
  (``streamjob.examples.wordcount:build``: one committed line per record; checked line by
  line: no duplicate, no gap), at p = 1 and p = 2, checkpoints off and every 1 s.

Records/s is measured by the coordinator from "all subtasks running" to "finished and
committed" (process start-up excluded, final checkpoint and commit included). Records per
CPU-second count the CPU time of every process of the job (supervisor, coordinator, workers,
all threads) over the same span: what they had used when the job's status first shows it
running (read from /proc, the status polled every 10 ms) is subtracted from their total. (A
start-up run subtracted instead left the start-up's CPU, 2-3 s of imports that vary with the
load, in the difference of two noisy figures.) The floors' is their own process time. On a
machine shared with other users, wall-clock rates move with the load from minute to minute;
CPU-second rates much less, so the ratios to the floors are taken on them.
Runs are interleaved so that the load hits every configuration alike; the median of K runs
is reported. ``--scaling-only`` runs the floors and the file sink at p = 1 and p = 2 with
checkpoints every 1 s, the configurations of the scaling target. With ``--baseline DIR``
each streamjob configuration also runs on that checkout's runtime (``... @base``), right
after this one's in every round, and the scaling is printed for both. With ``--marginal N``
each streamjob configuration also runs over the first N records in every round, and the
rates of the records beyond them are printed as well (``(records - N) / (time - time of
the short run)``, the same for CPU time; the warm rate ``bench/peers`` and
``bench/nexmark.py`` report): what the flow's start, the final checkpoint and commit, and
a tail where one worker has finished before the other cost is left out.

``--many-keys`` is the 1 M keys target: the same job over ``--words`` keys (1,000,000 by
default then), the file sink at p = 1 on the memory state backend with checkpoints off, every
1 s (full snapshots, the default), and every 1 s incremental, beside the floors at the same
key count. The worker's resident memory is followed all along (``VmRSS`` when the job runs,
before any state; ``VmHWM``, its peak, polled every 10 ms): the *live state* is the peak of
the run without checkpoints above that start, and the peak during checkpoints is compared
with it the same way (peak − start, a ratio; the target is 1.3). The live state so measured
holds more than the counts (the sink's and the channels' buffers, the allocator's free
lists), so the peak is also put beside the dict floor's counts of the same keys (the growth
of its process's ``VmRSS``): the state itself, as a plain dict.
With ``--baseline DIR`` (another checkout: ``git worktree add --detach DIR REV``) each of
the three configurations also runs on that checkout's runtime (``... @base``), right after
this one's in every round, its ratios against its own run without checkpoints: a change
measured before and after, side by side.

Scaling: p = 2 / p = 1 in records/s (the target), and what the CPU per record allows on two
otherwise idle cores, 2 x (records per CPU-second at p = 2) / (at p = 1): on a shared machine
the second does not depend on how much of the two cores other users left to the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker"), str(ROOT)]

from bench.cpu import become_subreaper, children_cpu, reap_orphans, tree_cpu  # noqa: E402
from bench.procs import descendant_workers, git_head, runtime_path, status_kb  # noqa: E402
from streamjob import state  # noqa: E402
from streamjob.checkpoints import latest_completed  # noqa: E402
from streamjob.examples.wordcount import MULTIPLIER, check_output, expected_counts  # noqa: E402
from streamjob.storage import LocalStorage  # noqa: E402

PYPATH = runtime_path(ROOT)  # this checkout's code
PIPELINES = {"discard": "bench.jobs:keyed_count", "file": "streamjob.examples.wordcount:build"}


Rates = tuple[float, float]  # records/s, records per CPU-second
BASE = " @base"  # a configuration run with the --baseline checkout's runtime
DICT_RSS: list[int] = []  # VmRSS growth (bytes) of each dict floor's counts, once all are in


def dict_floor(records: int, words: int, _folder: str) -> Rates:
    counts: dict[str, int] = {}
    rss0 = status_kb(os.getpid(), "VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    for g in range(records):
        w = f"w{((g * MULTIPLIER) & 0xFFFFFFFF) % words}"
        counts[w] = counts.get(w, 0) + 1
    rates = records / (time.perf_counter() - t0), records / (time.process_time() - c0)
    if len(counts) != min(records, words):
        raise SystemExit(f"the dict floor counted {len(counts)} keys")
    DICT_RSS.append((status_kb(os.getpid(), "VmRSS") - rss0) * 1024)
    return rates


def dict_file_floor(records: int, words: int, folder: str) -> Rates:
    """The dict count writing one ``<word> <count>`` line per record, 1 MB buffered."""
    counts: dict[str, int] = {}
    with open(Path(folder, "floor.txt"), "w", buffering=1 << 20) as f:
        write = f.write
        t0, c0 = time.perf_counter(), time.process_time()
        for g in range(records):
            w = f"w{((g * MULTIPLIER) & 0xFFFFFFFF) % words}"
            n = counts[w] = counts.get(w, 0) + 1
            write(f"{w} {n}\n")
        f.flush()
        return records / (time.perf_counter() - t0), records / (time.process_time() - c0)


def final_counts(ckpt: Path) -> Counter[str]:
    """The running counts held by the job's last completed checkpoint."""
    storage = LocalStorage(ckpt)
    (job_id,) = [p.name for p in ckpt.iterdir() if p.is_dir()]
    body = latest_completed(storage, job_id)
    counts: Counter[str] = Counter()
    for task in body["tasks"].values():
        for handle in task["subtasks"]:
            for _name, _kind, entries, _deleted in state.read_keyed_state(
                    storage, handle, range(body["max_parallelism"])):
                counts.update(entries)
    return counts


class Memory(NamedTuple):
    """A worker's resident memory in one run (KiB): when the job ran, and its peak; and the
    number of checkpoints the run completed (its final one's id)."""

    start: int
    peak: int
    checkpoints: int


def run_job(sink: str, records: int, words: int, p: int, checkpoints: bool,
            incremental: bool = False, pypath: str = PYPATH) -> tuple[float, float, Memory]:
    """Records/s, records per CPU-second (from running to the end) and the first worker's
    memory of one checked run, with the runtime found on ``pypath`` (this checkout's)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "out")
        manifest = {
            "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": "bench"},
            "spec": {"pipeline": PIPELINES[sink], "parallelism": p,
                     "args": {"records": records, "words": words, "output": str(out)},
                     "checkpoint": {"enabled": checkpoints, "interval": "1s",
                                    "incremental": incremental},
                     "storage": f"file://{tmp}/ckpt"},
        }
        path = Path(tmp, "job.yaml")
        path.write_text(yaml.safe_dump(manifest))
        env = dict(os.environ, PYTHONPATH=pypath)
        status_file = Path(tmp, ".streamjob/runs/bench/status.json")
        reap_orphans()
        cpu0 = children_cpu()
        run = subprocess.Popen([sys.executable, "-m", "streamjob", "run", "-q", str(path)],
                               cwd=tmp, env=env, stderr=subprocess.DEVNULL)
        at_running, worker, start, peak = None, None, 0, 0
        while run.poll() is None:
            if at_running is None and _running(status_file):
                at_running = tree_cpu(run.pid)
                worker = min(descendant_workers(run.pid), default=None)
                start = status_kb(worker, "VmRSS") if worker else 0
            if worker is not None:
                peak = max(peak, status_kb(worker, "VmHWM"))
            time.sleep(0.01)
        reap_orphans()
        if run.returncode != 0:
            raise SystemExit(f"streamjob run failed ({sink}, p={p}): exit code {run.returncode}")
        if at_running is None:
            raise SystemExit(f"the job ended before it was seen running ({sink}, p={p}): "
                             "run more records")
        cpu = children_cpu() - cpu0 - at_running
        status = json.loads(status_file.read_text())
        rate = records / (status["finished_at"] - status["running_since"])
        if sink == "file":
            got = check_output(str(out), records, words)
            if got["lines"] != records or got["duplicates"] or got["missing"] \
                    or got["unexpected"]:
                raise SystemExit(f"wrong output ({sink}, p={p}): {got}")
        elif final_counts(Path(tmp, "ckpt")) != expected_counts(records, words):
            raise SystemExit(f"wrong final counts in the last checkpoint ({sink}, p={p})")
        if worker is None or not start or not peak:
            raise SystemExit(f"no worker memory seen ({sink}, p={p})")
        last = status.get("last_checkpoint") or {}
        return rate, records / max(cpu, 1e-3), Memory(start, peak, int(last.get("id", 0)))


def _running(status_file: Path) -> bool:
    try:
        return json.loads(status_file.read_text()).get("running_since") is not None
    except (OSError, ValueError):  # not written yet, or being replaced
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=3_000_000)
    ap.add_argument("--words", type=int, default=None,
                    help="distinct keys (10,000; 1,000,000 with --many-keys)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scaling-only", action="store_true",
                    help="only the floors and the file sink at p=1 and p=2, checkpoints 1s")
    ap.add_argument("--many-keys", action="store_true",
                    help="the 1 M keys target: floors and the file sink at p=1, checkpoints "
                         "off, 1s and 1s incremental, with the worker's peak RSS")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout (git worktree add DIR REV) whose runtime runs "
                         "each streamjob configuration as well, alternating with this one")
    ap.add_argument("--marginal", type=int, default=0, metavar="N",
                    help="also run each streamjob configuration over the first N records "
                         "and print the rates of the records beyond them")
    args = ap.parse_args()
    if not 0 <= args.marginal < args.records:
        ap.error("--marginal takes fewer records than --records")
    if args.marginal and args.many_keys:
        ap.error("--marginal goes with the 10,000-key configurations, not --many-keys")
    become_subreaper()
    if args.baseline and not (args.baseline / "worker" / "streamjob").is_dir():
        ap.error(f"--baseline {args.baseline}: not a streamjob checkout")
    if args.many_keys:
        many_keys(args.records, args.words or 1_000_000, args.repeat, args.baseline)
        return
    args.words = args.words or 10_000
    trees = {"": PYPATH} | ({BASE: runtime_path(args.baseline)} if args.baseline else {})
    configs = [(s, p, c, t) for s in ("discard", "file") for p in (1, 2) for c in (False, True)
               if not args.scaling_only or (s == "file" and c) for t in trees]
    floors = {"dict": dict_floor, "dict+file": dict_file_floor}
    results: dict[object, list[Rates]] = {c: [] for c in [*floors, *configs]}
    short: dict[object, list[Rates]] = {c: [] for c in configs}  # --marginal's runs
    load0 = os.getloadavg()[0]
    for _ in range(args.repeat):
        for name, floor in floors.items():
            with tempfile.TemporaryDirectory() as tmp:
                results[name].append(floor(args.records, args.words, tmp))
        for s, p, c, t in configs:
            results[(s, p, c, t)].append(
                run_job(s, args.records, args.words, p, c, pypath=trees[t])[:2])
            if args.marginal:
                short[(s, p, c, t)].append(
                    run_job(s, args.marginal, args.words, p, c, pypath=trees[t])[:2])
    wall = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    print(f"keyed running count, {args.records:,} records, {args.words:,} keys, median of "
          f"{args.repeat}; {os.cpu_count()} cores, load average {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end (shared machine: records/s move with the load, "
          f"records per CPU-second much less; ratios are on the latter)")
    print(f"{'configuration':<44}{'records/s':>12}{'per worker':>12}{'rec/CPU-s':>12}"
          f"{'÷ dict':>8}{'÷ dict+file':>13}")
    labels = {"dict": "floor: plain Python dict count",
              "dict+file": "floor: dict count + line to a buffered file"}
    rows = [(labels[n], n, 1) for n in floors] + [
        (f"streamjob {s} sink, p={p}, checkpoints {'1s' if c else 'off'}{t}", (s, p, c, t), p)
        for s, p, c, t in configs]
    for label, key, p in rows:
        print(f"{label:<44}{wall[key]:>12,.0f}{wall[key] / p:>12,.0f}{cpu[key]:>12,.0f}"
              f"{cpu[key] / cpu['dict']:>8.2f}{cpu[key] / cpu['dict+file']:>13.2f}")
    if args.baseline:
        print(f"{BASE.strip()}: the runtime of {args.baseline} (git "
              f"{git_head(args.baseline)}); the others: this checkout's (git {git_head(ROOT)})")
    for t in trees:
        print_targets(wall, cpu, t)
        if args.marginal:
            print_marginal(results, short, args.records, args.marginal, t)
        key = ("file", 1, True, t)
        print(f"target{t}: file sink p=1, checkpoints 1s: {wall[key]:,.0f} records/s per "
              f"worker (target 1,000,000); dict+file floor of this run "
              f"{wall['dict+file']:,.0f} records/s; per CPU-second {cpu[key]:,.0f} = "
              f"{cpu[key] / cpu['dict+file']:.2f}x the floor's {cpu['dict+file']:,.0f}")


def print_targets(wall: dict[Any, float], cpu: dict[Any, float], tree: str) -> None:
    """Checkpoint overhead and p=2 / p=1 scaling of one runtime's configurations (``tree``:
    this checkout's, or BASE) from the medians of their rates."""
    for s in ("discard", "file"):
        for p in (1, 2):
            on, off = (s, p, True, tree), (s, p, False, tree)
            if off in cpu:
                print(f"checkpoint overhead{tree}, {s} sink, p={p} (1 s interval): CPU per "
                      f"record {(cpu[off] / cpu[on] - 1) * 100:+.1f} %, records/s "
                      f"{(1 - wall[on] / wall[off]) * 100:+.1f} %")
    print_scaling(wall, cpu, tree)


def print_scaling(wall: dict[Any, float], cpu: dict[Any, float], tree: str,
                  how: str = "") -> None:
    """p=2 / p=1 with checkpoints every 1 s, from records/s (``wall``) and records per
    CPU-second (``cpu``) of each configuration; ``how``: which rates they are."""
    for s in ("discard", "file"):
        one, two = (s, 1, True, tree), (s, 2, True, tree)
        if one in cpu:
            print(f"scaling{tree} p=2 / p=1{how}, {s} sink, checkpoints 1s: records/s "
                  f"{wall[two] / wall[one]:.2f}x (target 1.6x); CPU per record "
                  f"{cpu[one] / cpu[two]:.2f}x that of p=1, so at most "
                  f"{2 * cpu[two] / cpu[one]:.2f}x on 2 idle cores")


def print_marginal(runs: dict[Any, list[Rates]], short: dict[Any, list[Rates]],
                   records: int, small: int, tree: str) -> None:
    """The rates of the records beyond the first ``small`` (medians of the runs' times), and
    the scaling on them."""
    def beyond(key: Any, i: int) -> float:
        long_s = statistics.median(records / r[i] for r in runs[key])
        short_s = statistics.median(small / r[i] for r in short[key])
        return (records - small) / (long_s - short_s) if long_s > short_s else float("nan")

    keys = [k for k in short if k[3] == tree]
    wall, cpu = {k: beyond(k, 0) for k in keys}, {k: beyond(k, 1) for k in keys}
    for key in keys:
        s, p, c, _ = key
        print(f"marginal{tree}, {s} sink, p={p}, checkpoints {'1s' if c else 'off'}: "
              f"{wall[key]:,.0f} records/s, {cpu[key]:,.0f} records per CPU-second "
              f"(the {records - small:,} records beyond the first {small:,})")
    print_scaling(wall, cpu, tree, " marginal")


def many_keys(records: int, words: int, repeat: int, baseline: Path | None = None) -> None:
    """The 1 M keys target: records per CPU-second of the file sink at p = 1 against the
    dict floor at the same key count, and the worker's peak RSS during checkpoints against
    the live state (see the module docstring). With ``baseline``, each configuration runs
    with that checkout's runtime too (``... @base``), right after this one's."""
    floors = {"dict": dict_floor, "dict+file": dict_file_floor}
    jobs = {"off": (False, False, PYPATH), "1s": (True, False, PYPATH),
            "1s incremental": (True, True, PYPATH)}
    if baseline is not None:
        base_path = runtime_path(baseline)
        jobs = {k: v for name, (on, inc, _) in jobs.items()
                for k, v in ((name, (on, inc, PYPATH)), (f"{name}{BASE}", (on, inc, base_path)))}
    rates: dict[str, list[Rates]] = {k: [] for k in [*floors, *jobs]}
    memory: dict[str, list[Memory]] = {k: [] for k in jobs}
    load0 = os.getloadavg()[0]
    for _ in range(repeat):
        for name, floor in floors.items():
            with tempfile.TemporaryDirectory() as tmp:
                rates[name].append(floor(records, words, tmp))
        for name, (on, incremental, pypath) in jobs.items():
            rate, cpu_rate, mem = run_job("file", records, words, 1, on, incremental, pypath)
            rates[name].append((rate, cpu_rate))
            memory[name].append(mem)
    wall = {k: statistics.median(r[0] for r in v) for k, v in rates.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in rates.items()}
    # State above the worker's start: the median over the runs of each configuration.
    grown = {k: statistics.median(m.peak - m.start for m in v) for k, v in memory.items()}
    peak = {k: statistics.median(m.peak for m in v) for k, v in memory.items()}
    done = {k: statistics.median(m.checkpoints for m in v) for k, v in memory.items()}
    mb = 1024  # KiB per MiB
    dict_mb = max(DICT_RSS) / 1024  # KiB (the first run: later ones reuse freed memory)
    print(f"keyed running count, {records:,} records, {words:,} keys, file sink, p=1, "
          f"memory state backend, median of {repeat}; {os.cpu_count()} cores, load average "
          f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end (ratios are on records per "
          f"CPU-second, measured side by side)")
    print(f"{'configuration':<44}{'records/s':>12}{'rec/CPU-s':>12}{'÷ dict':>8}"
          f"{'÷ dict+file':>13}{'peak RSS':>10}{'above start':>13}{'checkpoints':>13}")
    labels = {"dict": "floor: plain Python dict count",
              "dict+file": "floor: dict count + line to a buffered file"}
    for name in [*floors, *jobs]:
        label = labels.get(name, f"streamjob, checkpoints {name}")
        rss = (f"{peak[name] / mb:>8,.0f}MB{grown[name] / mb:>11,.0f}MB{done[name]:>13,.0f}"
               if name in jobs
               else f"{dict_mb / mb:>23,.0f}MB" if name == "dict"
               else "")
        print(f"{label:<44}{wall[name]:>12,.0f}{cpu[name]:>12,.0f}{cpu[name] / cpu['dict']:>8.2f}"
              f"{cpu[name] / cpu['dict+file']:>13.2f}{rss}")
    if baseline is not None:
        print(f"{BASE.strip()}: the runtime of {baseline} (git {git_head(baseline)}); its ratios "
              "are against its own run without checkpoints")
    for name in [n for n in jobs if n.startswith("1s")]:
        off = f"off{BASE}" if name.endswith(BASE) else "off"
        print(f"target: checkpoints {name}: per CPU-second {cpu[name]:,.0f} = "
              f"{cpu[name] / cpu['dict']:.2f}x the dict floor's {cpu['dict']:,.0f} at "
              f"{words:,} keys ({cpu[name] / cpu['dict+file']:.2f}x dict+file's); peak RSS "
              f"above the worker's start {grown[name] / mb:,.0f} MB = "
              f"{grown[name] / grown[off]:.2f}x the live state's {grown[off] / mb:,.0f} MB "
              f"(the worker without checkpoints; target 1.3x), {grown[name] / dict_mb:.2f}x "
              f"the plain dict's {dict_mb / mb:,.0f} MB of the same keys")


if __name__ == "__main__":
    main()
