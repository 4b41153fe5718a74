"""Start-up cost of streamjob's processes: CPU seconds (user + system, of the process alone)
and wall seconds of

  * ``python -c pass``: the interpreter alone, the floor under every row,
  * ``streamjob --help``, ``streamjob savepoint --help``, and ``savepoint`` /
    ``checkpoints --metadata`` that fail at once (no such job, no such checkpoint): what a
    user waits for at each call of a command that reads no manifest,
  * a worker's start before it connects: the command module, the manifest read and
    validated (pydantic), the worker module and the job's pipeline built (the wordcount),
  * the same for the coordinator (its API server is aiohttp),
  * ``import streamjob.examples.nexmark``: what every process of a Nexmark job (the
    ``streamjob run`` supervisor, the coordinator, each worker) imports to build the pipeline.

With ``--baseline DIR`` (another checkout, e.g. ``git worktree add /tmp/base main``), each
command runs in both trees, alternating, so both see the same load; the table gives the
medians and the ratio baseline ÷ this. Every run's exit code and output are checked: the two
trees must answer the same.

    python bench/startup.py [--baseline DIR] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.procs import runtime_path  # noqa: E402

BUILD = ("import sys, streamjob.cli; from streamjob import {module}; "
         "from streamjob.manifest import import_pipeline, load_manifest; "
         "import_pipeline(load_manifest(sys.argv[1]).spec)")

CASES: dict[str, list[str]] = {
    "python -c pass (the floor: no streamjob)": ["-c", "pass"],
    "streamjob --help": ["-m", "streamjob", "--help"],
    "streamjob savepoint --help": ["-m", "streamjob", "savepoint", "--help"],
    "streamjob savepoint wc (no such job)": ["-m", "streamjob", "savepoint", "wc"],
    "streamjob checkpoints --metadata (none)": ["-m", "streamjob", "checkpoints",
                                                "--metadata", "nowhere"],
    "worker start (wordcount)": ["-c", BUILD.format(module="worker"), "{tree}/examples/"
                                 "wordcount.yaml"],
    "coordinator start (wordcount)": ["-c", BUILD.format(module="coordinator"),
                                      "{tree}/examples/wordcount.yaml"],
    "import streamjob.examples.nexmark": ["-c", "import streamjob.examples.nexmark"],
}


def run_once(tree: Path, args: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """CPU seconds, wall seconds, exit code and output of one run from ``tree``."""
    env = dict(os.environ, PYTHONPATH=runtime_path(tree))
    argv = [sys.executable, *(a.replace("{tree}", str(tree)) for a in args)]
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, wall, proc.returncode, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, help="another streamjob checkout to compare with")
    ap.add_argument("--rounds", type=int, default=7, help="runs per command and tree")
    a = ap.parse_args()
    trees = {"this": ROOT}
    if a.baseline:
        if not (a.baseline / "worker" / "streamjob").is_dir():
            ap.error(f"--baseline {a.baseline}: not a streamjob checkout (no worker/streamjob)")
        trees["baseline"] = a.baseline.resolve()
    print(f"load average {os.getloadavg()[0]:.1f}; {a.rounds} rounds; "
          f"python {sys.version.split()[0]}")
    failures = 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="sj-startup-") as tmp:
        cwd = Path(tmp)
        for name, args in CASES.items():
            for tree in trees.values():  # warm-up: compile the .pyc files, fill the page cache
                run_once(tree, args, cwd)
            cpu: dict[str, list[float]] = {t: [] for t in trees}
            wall: dict[str, list[float]] = {t: [] for t in trees}
            answers: dict[str, set[tuple[int, str]]] = {t: set() for t in trees}
            for _ in range(a.rounds):
                for label, tree in trees.items():
                    c, w, rc, out = run_once(tree, args, cwd)
                    cpu[label].append(c)
                    wall[label].append(w)
                    answers[label].add((rc, out.replace(str(tree), "TREE")))
            result = "ok"
            if any(len(v) != 1 for v in answers.values()):
                result = "output differs between runs"
            elif len({frozenset(v) for v in answers.values()}) != 1:
                result = "this and baseline answer differently"
            failures += result != "ok"
            med = {t: (statistics.median(cpu[t]), statistics.median(wall[t])) for t in trees}
            rows.append((name, med, result))
    head = ["command", "CPU-s", "wall s"]
    if a.baseline:
        head += ["baseline CPU-s", "baseline wall s", "CPU ratio (baseline ÷ this)"]
    print("| " + " | ".join(head + ["result"]) + " |")
    print("|" + "---|" * (len(head) + 1))
    for name, med, result in rows:
        cells = [name, f"{med['this'][0]:.3f}", f"{med['this'][1]:.3f}"]
        if a.baseline:
            cells += [f"{med['baseline'][0]:.3f}", f"{med['baseline'][1]:.3f}",
                      f"{med['baseline'][0] / med['this'][0]:.2f}"]
        print("| " + " | ".join(cells + [result]) + " |")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
