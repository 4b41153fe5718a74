"""Throughput of the keyed count: p = 1 and p = 2, checkpoints off vs every 1 s, and a plain
Python dict count over the same records as the floor. Prints records/s and ratios.

    python bench/throughput.py [--records N] [--repeat K]

Records/s is measured by the coordinator from "all subtasks running" to "finished and
committed" (process start-up excluded, final checkpoint included). Runs are interleaved so
that machine noise hits every configuration alike; the median of K runs is reported.
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
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPATH = os.pathsep.join([str(ROOT / "worker"), str(ROOT)])  # this checkout's code
sys.path.insert(0, str(ROOT))

from streamjob.examples.wordcount import MULTIPLIER  # noqa: E402


def dict_floor(records: int, words: int) -> float:
    vocab = [f"w{i}" for i in range(words)]
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    for g in range(records):
        w = vocab[((g * MULTIPLIER) & 0xFFFFFFFF) % words]
        counts[w] = counts.get(w, 0) + 1
    return records / (time.perf_counter() - t0)


def run_job(records: int, words: int, p: int, checkpoints: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = {
            "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": "bench"},
            "spec": {"pipeline": "bench.jobs:keyed_count", "parallelism": p,
                     "args": {"records": records, "words": words},
                     "checkpoint": {"enabled": checkpoints, "interval": "1s"},
                     "storage": f"file://{tmp}/ckpt"},
        }
        path = Path(tmp, "job.yaml")
        path.write_text(yaml.safe_dump(manifest))
        env = dict(os.environ, PYTHONPATH=PYPATH)
        subprocess.run([sys.executable, "-m", "streamjob", "run", "-q", str(path)], cwd=tmp,
                       env=env, check=True, stderr=subprocess.DEVNULL)
        status = json.loads(Path(tmp, ".streamjob/runs/bench/status.json").read_text())
        return records / (status["finished_at"] - status["running_since"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=3_000_000)
    ap.add_argument("--words", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    configs = [(p, c) for p in (1, 2) for c in (False, True)]
    results: dict[object, list[float]] = {c: [] for c in configs}
    results["dict"] = []
    for _ in range(args.repeat):
        results["dict"].append(dict_floor(args.records, args.words))
        for p, c in configs:
            results[(p, c)].append(run_job(args.records, args.words, p, c))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"keyed count, {args.records:,} records, {args.words:,} keys, "
          f"median of {args.repeat}, {os.cpu_count()} cores")
    print(f"{'configuration':<34}{'records/s':>14}{'per worker':>14}{'vs dict':>10}")
    print(f"{'plain Python dict count (floor)':<34}{med['dict']:>14,.0f}{'':>14}{1.0:>10.2f}")
    for p, c in configs:
        r = med[(p, c)]
        label = f"streamjob p={p}, checkpoints {'1s' if c else 'off'}"
        print(f"{label:<34}{r:>14,.0f}{r / p:>14,.0f}{r / med['dict']:>10.2f}")
    for p in (1, 2):
        overhead = 1 - med[(p, True)] / med[(p, False)]
        print(f"checkpoint overhead at p={p} (1 s interval): {overhead * 100:+.1f} %")
    print(f"scaling p=2 / p=1 (checkpoints off): {med[(2, False)] / med[(1, False)]:.2f}x")


if __name__ == "__main__":
    main()
