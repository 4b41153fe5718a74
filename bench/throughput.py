"""Throughput of the keyed running count, side by side with the plain-Python floors.

    python bench/throughput.py [--records N] [--repeat K] [--words W] [--scaling-only]

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
checkpoints every 1 s, the configurations of the scaling target.

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

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPATH = os.pathsep.join([str(ROOT / "worker"), str(ROOT)])  # this checkout's code
sys.path[:0] = [str(ROOT / "worker"), str(ROOT)]

from bench.cpu import become_subreaper, children_cpu, reap_orphans, tree_cpu  # noqa: E402
from streamjob import state  # noqa: E402
from streamjob.checkpoints import latest_completed  # noqa: E402
from streamjob.examples.wordcount import MULTIPLIER, check_output, expected_counts  # noqa: E402
from streamjob.storage import LocalStorage  # noqa: E402

PIPELINES = {"discard": "bench.jobs:keyed_count", "file": "streamjob.examples.wordcount:build"}


Rates = tuple[float, float]  # records/s, records per CPU-second


def dict_floor(records: int, words: int, _folder: str) -> Rates:
    counts: dict[str, int] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for g in range(records):
        w = f"w{((g * MULTIPLIER) & 0xFFFFFFFF) % words}"
        counts[w] = counts.get(w, 0) + 1
    return records / (time.perf_counter() - t0), records / (time.process_time() - c0)


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


def run_job(sink: str, records: int, words: int, p: int, checkpoints: bool) -> Rates:
    """Records/s and records per CPU-second (from running to the end) of one checked run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "out")
        manifest = {
            "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": "bench"},
            "spec": {"pipeline": PIPELINES[sink], "parallelism": p,
                     "args": {"records": records, "words": words, "output": str(out)},
                     "checkpoint": {"enabled": checkpoints, "interval": "1s"},
                     "storage": f"file://{tmp}/ckpt"},
        }
        path = Path(tmp, "job.yaml")
        path.write_text(yaml.safe_dump(manifest))
        env = dict(os.environ, PYTHONPATH=PYPATH)
        status_file = Path(tmp, ".streamjob/runs/bench/status.json")
        reap_orphans()
        cpu0 = children_cpu()
        run = subprocess.Popen([sys.executable, "-m", "streamjob", "run", "-q", str(path)],
                               cwd=tmp, env=env, stderr=subprocess.DEVNULL)
        at_running = None
        while run.poll() is None:
            if at_running is None and _running(status_file):
                at_running = tree_cpu(run.pid)
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
        return rate, records / max(cpu, 1e-3)


def _running(status_file: Path) -> bool:
    try:
        return json.loads(status_file.read_text()).get("running_since") is not None
    except (OSError, ValueError):  # not written yet, or being replaced
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=3_000_000)
    ap.add_argument("--words", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scaling-only", action="store_true",
                    help="only the floors and the file sink at p=1 and p=2, checkpoints 1s")
    args = ap.parse_args()
    become_subreaper()
    configs = [(s, p, c) for s in ("discard", "file") for p in (1, 2) for c in (False, True)
               if not args.scaling_only or (s == "file" and c)]
    floors = {"dict": dict_floor, "dict+file": dict_file_floor}
    results: dict[object, list[Rates]] = {c: [] for c in [*floors, *configs]}
    load0 = os.getloadavg()[0]
    for _ in range(args.repeat):
        for name, floor in floors.items():
            with tempfile.TemporaryDirectory() as tmp:
                results[name].append(floor(args.records, args.words, tmp))
        for s, p, c in configs:
            results[(s, p, c)].append(run_job(s, args.records, args.words, p, c))
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
        (f"streamjob {s} sink, p={p}, checkpoints {'1s' if c else 'off'}", (s, p, c), p)
        for s, p, c in configs]
    for label, key, p in rows:
        print(f"{label:<44}{wall[key]:>12,.0f}{wall[key] / p:>12,.0f}{cpu[key]:>12,.0f}"
              f"{cpu[key] / cpu['dict']:>8.2f}{cpu[key] / cpu['dict+file']:>13.2f}")
    for s in ("discard", "file"):
        for p in (1, 2):
            on, off = (s, p, True), (s, p, False)
            if off not in cpu:
                continue
            print(f"checkpoint overhead, {s} sink, p={p} (1 s interval): CPU per record "
                  f"{(cpu[off] / cpu[on] - 1) * 100:+.1f} %, records/s "
                  f"{(1 - wall[on] / wall[off]) * 100:+.1f} %")
    for s in ("discard", "file"):
        one, two = (s, 1, True), (s, 2, True)
        if one not in cpu:
            continue
        print(f"scaling p=2 / p=1, {s} sink, checkpoints 1s: records/s "
              f"{wall[two] / wall[one]:.2f}x (target 1.6x); CPU per record "
              f"{cpu[one] / cpu[two]:.2f}x that of p=1, so at most "
              f"{2 * cpu[two] / cpu[one]:.2f}x on 2 idle cores")
    key = ("file", 1, True)
    print(f"target: file sink p=1, checkpoints 1s: {wall[key]:,.0f} records/s per worker "
          f"(target 1,000,000); dict+file floor of this run {wall['dict+file']:,.0f} "
          f"records/s; per CPU-second {cpu[key]:,.0f} = {cpu[key] / cpu['dict+file']:.2f}x "
          f"the floor's {cpu['dict+file']:,.0f}")


if __name__ == "__main__":
    main()
