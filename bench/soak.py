"""Soak: many short local jobs under random SIGKILLs and storage outages, every output checked.

Runs ``streamjob.examples.wordcount`` (keyed count) and ``streamjob.examples.lastn`` (list- and
dict-valued state mutated in place) in the three checkpoint modes at parallelism 2, 3 and 4,
round robin in a seeded order, until ``--minutes`` are used up; ``--state-backends
memory,rocksdb`` runs every configuration on each state backend too. Across the runs it SIGKILLs
``--worker-kills`` random workers and ``--coordinator-kills`` coordinators (each kill waits
until the job runs again after the previous one, then a random 0.3-2 s), and every third run
has a storage outage (``STREAMJOB_FAULTS`` outage rules on ``storage.put``, sometimes also
``storage.get``). Storage is a local folder, and MinIO too (alternate runs) when
``AWS_ENDPOINT_URL`` is set (``eval "$(scripts/minio up)"``).

A run whose status shows no progress (state, records read, last checkpoint, coordinator) for
``--hang-seconds``, or that exceeds its time limit, is a hang: its process group is killed
and it is counted. Every finished run's committed output is checked:

- exactly-once and unaligned: no duplicate line, no gap (wordcount: a missing line; lastn: a
  record that never reached the output), no unexpected line (state that saw a record twice
  or lost one, e.g. a snapshot that shared a list with the running state);
- at-least-once, by its own rule: no gap (every record reached the output); replays are
  allowed and counted as over-counting.

Prints a table per (mode, pipeline, p). Exits 1 if an exactly-once or unaligned run had a
duplicate, gap or unexpected line, any run failed or hung; 0 otherwise.

    python bench/soak.py [--minutes 30] [--worker-kills 120] [--coordinator-kills 12] [--seed 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker"), str(ROOT)]

from bench.procs import children, runtime_path  # noqa: E402

PYPATH = runtime_path(ROOT)  # this checkout's code

MODES = ("exactly-once", "unaligned", "at-least-once")
PIPELINES = ("wordcount", "lastn")
PARALLELISMS = (2, 3, 4)
BACKENDS = ("memory", "rocksdb")
WORDS, KEYS = 500, 256


@dataclass
class Result:
    mode: str
    pipeline: str
    p: int
    backend: str
    storage: str
    worker_kills: int = 0
    coordinator_kills: int = 0
    outages: int = 0
    duplicates: int = 0
    gaps: int = 0
    unexpected: int = 0
    overcount: int = 0
    restarts: int = 0
    hung: bool = False
    failed: str = ""
    seconds: float = 0.0
    run_dir: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def bad(self) -> bool:
        wrong = self.gaps or (self.mode != "at-least-once" and (self.duplicates or
                                                                 self.unexpected))
        return bool(wrong or self.hung or self.failed)


class Run:
    """One ``streamjob run`` process tree in its own folder and process group."""

    def __init__(self, folder: Path, pipeline: str, mode: str, p: int, backend: str,
                 records: int, rate: int, storage: str, faults: str | None):
        self.folder, self.name = folder, pipeline
        folder.mkdir(parents=True)
        args: dict[str, Any] = {"records": records, "rate": rate,
                                "output": str(folder / "output")}
        args.update({"words": WORDS} if pipeline == "wordcount" else {"keys": KEYS})
        manifest = {
            "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": pipeline},
            "spec": {"pipeline": f"streamjob.examples.{pipeline}:build", "parallelism": p,
                     "args": args,
                     "checkpoint": {"interval": "500ms", "timeout": "20s", "mode": mode,
                                    "retained": 2, "tolerableFailures": 5},
                     "storage": storage,
                     # RocksDB's files in the run's folder: removed with it, never shared
                     "stateBackend": {"type": backend,
                                      "rocksdb": {"localDir": str(folder / "rocksdb")}},
                     "restartStrategy": {"type": "fixed-delay", "delay": "100ms",
                                         "maxAttempts": 1000}},
        }
        (folder / "job.yaml").write_text(yaml.safe_dump(manifest))
        env = dict(os.environ, PYTHONPATH=PYPATH)
        env.pop("STREAMJOB_FAULTS", None)
        if faults:
            env.update(STREAMJOB_FAULTS=faults, STREAMJOB_FAULTS_DIR=str(folder / "faults"))
        self.log = folder / "run.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "streamjob", "run", "-q",
                                      "job.yaml"], cwd=folder, env=env,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.folder / ".streamjob/runs" / self.name / "status.json")
                              .read_text())
        except (OSError, ValueError):
            return {}

    def workers(self) -> list[int]:
        return [pid for pid, cmd in children(self.proc.pid) if "streamjob worker" in cmd]

    def coordinator(self) -> int | None:
        pids = [pid for pid, cmd in children(self.proc.pid) if "streamjob coordinator" in cmd]
        return pids[0] if pids else None

    def kill_tree(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group, by its id
        except ProcessLookupError:
            pass
        self.proc.wait()


def progress_mark(s: dict[str, Any]) -> tuple:
    last = s.get("last_checkpoint") or {}
    return (s.get("state"), s.get("records_in"), last.get("id"),
            (s.get("coordinator") or {}).get("pid"), s.get("attempt"))


def drive(run: Run, kills: list[str], rng: random.Random, limit: float, hang_after: float,
          res: Result) -> list[str]:
    """Watch the run to its end, killing as planned; returns the kills not made."""
    start = time.monotonic()
    mark, marked = None, start
    pending = list(kills)
    next_kill: float | None = None
    since_kill: tuple | None = None   # (coordinator pid, attempt) at the last kill
    while run.proc.poll() is None:
        now = time.monotonic()
        s = run.status()
        m = progress_mark(s) if s else None
        if m != mark:
            mark, marked = m, now
        if now - marked > hang_after or now - start > limit:
            why = (f"no progress for {now - marked:.0f}s" if now - marked > hang_after
                   else f"not done after {limit:.0f}s")
            res.hung = True
            res.notes.append(f"hang: {why}; last status {json.dumps(s)[:400]}")
            run.kill_tree()
            return pending
        ident = ((s.get("coordinator") or {}).get("pid"), s.get("attempt"))
        ready = (s.get("state") == "RUNNING" and s.get("last_checkpoint") is not None
                 and ident != since_kill)
        if pending and ready:
            if next_kill is None:
                next_kill = now + rng.uniform(0.3, 2.0)
            elif now >= next_kill:
                what = pending[0]
                victim = (rng.choice(run.workers() or [None]) if what == "worker"
                          else run.coordinator())
                if victim is not None:
                    try:
                        os.kill(victim, signal.SIGKILL)
                        pending.pop(0)
                        if what == "worker":
                            res.worker_kills += 1
                        else:
                            res.coordinator_kills += 1
                        since_kill, next_kill = ident, None
                    except ProcessLookupError:
                        pass
        time.sleep(0.1)
    return pending


def check(res: Result, folder: Path, records: int) -> None:
    out = str(folder / "output")
    if res.pipeline == "wordcount":
        from streamjob.examples.wordcount import check_output

        r = check_output(out, records, WORDS)
        if res.mode == "at-least-once":
            res.gaps, res.overcount = r["missing"], r["duplicates"] + r["unexpected"]
        else:
            res.duplicates, res.gaps, res.unexpected = (r["duplicates"], r["missing"],
                                                        r["unexpected"])
    else:
        from streamjob.examples import lastn

        if res.mode == "at-least-once":
            r = lastn.check_at_least_once(out, records, KEYS)
            res.gaps, res.overcount = r["gaps"], r["overcount"]
        else:
            # Gaps are records that never reached the output; a wrong list or count after a
            # bad restore makes every later line of its key unexpected (and the expected
            # lines missing) without losing a record.
            r = lastn.check_output(out, records, KEYS)
            r["gaps"] = lastn.check_at_least_once(out, records, KEYS)["gaps"]
            res.duplicates, res.gaps, res.unexpected = (r["duplicates"], r["gaps"],
                                                        r["unexpected"])
    res.notes.append(f"output {json.dumps(r)}")


def one_run(i: int, base: Path, cfg: tuple[str, str, int, str], storage_kind: str,
            kills: list[str], outage: bool, rng: random.Random, run_seconds: float,
            hang_after: float) -> tuple[Result, list[str]]:
    mode, pipeline, p, backend = cfg
    res = Result(mode, pipeline, p, backend, storage_kind)
    rate = 20_000
    records = int(rate * run_seconds)
    folder = base / f"run-{i:04d}-{pipeline}-{mode}-p{p}-{backend}-{storage_kind}"
    storage = (f"file://{folder / 'ckpt'}" if storage_kind == "file"
               else f"s3://streamjob-soak/{base.name}/run-{i:04d}")
    faults = None
    if outage:
        seconds = rng.choice((2, 3))
        rules = [f"storage.put=outage:{seconds},skip={rng.randint(2, 12)}"]
        if rng.random() < 0.4:
            rules.append(f"storage.get=outage:{seconds}")   # restores during the outage
        faults = ";".join(rules)
        res.notes.append(f"faults {faults}")
    res.run_dir = str(folder)
    t0 = time.monotonic()
    run = Run(folder, pipeline, mode, p, backend, records, rate, storage, faults)
    left = drive(run, kills, rng, limit=max(90.0, 10 * run_seconds), hang_after=hang_after,
                 res=res)
    res.seconds = time.monotonic() - t0
    text = run.log.read_text(errors="replace")
    res.restarts = text.count(" fails over: ") + text.count("; restarting it (")
    if faults:
        from streamjob import faults as fl

        res.outages = sum(1 for k in range(len(faults.split(";")))
                          if fl.fired(folder / "faults", k))
    if left:
        res.notes.append(f"{len(left)} kill(s) not made: the job ended first")
    if res.hung:
        return res, left
    s = run.status()
    if run.proc.returncode != 0 or s.get("state") != "FINISHED":
        res.failed = f"exit {run.proc.returncode}, state {s.get('state')}: {s.get('message')}"
        res.notes.append(text[-1500:])
        return res, left
    check(res, folder, records)
    return res, left


def table(results: list[Result], with_storage: bool) -> str:
    groups: dict[tuple, list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.mode, r.pipeline, r.p, r.backend)
               + ((r.storage,) if with_storage else ())].append(r)
    head = ["mode", "pipeline", "p", "state backend", *(["storage"] if with_storage else []),
            "runs", "worker kills", "coord kills", "outages", "duplicates", "gaps",
            "unexpected", "overcount", "restarts", "failed", "hangs"]
    rows = []
    order = {m: k for k, m in enumerate(MODES)}
    for key in sorted(groups, key=lambda k: (order[k[0]], k[1], k[2], k[3:])):
        rs = groups[key]
        rows.append([*map(str, key), str(len(rs)),
                     *(str(sum(getattr(r, a) for r in rs)) for a in
                       ("worker_kills", "coordinator_kills", "outages", "duplicates", "gaps",
                        "unexpected", "overcount", "restarts")),
                     str(sum(1 for r in rs if r.failed)), str(sum(1 for r in rs if r.hung))])
    total = ["total", "", "", "", *([""] if with_storage else []), str(len(results)),
             *(str(sum(getattr(r, a) for r in results)) for a in
               ("worker_kills", "coordinator_kills", "outages", "duplicates", "gaps",
                "unexpected", "overcount", "restarts")),
             str(sum(1 for r in results if r.failed)), str(sum(1 for r in results if r.hung))]
    rows.append(total)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="time budget (default 30)")
    ap.add_argument("--worker-kills", type=int, default=120, help="SIGKILLs of workers")
    ap.add_argument("--coordinator-kills", type=int, default=12,
                    help="SIGKILLs of coordinators")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--run-seconds", type=float, default=8.0,
                    help="length of one run without faults (records = 20,000/s x this)")
    ap.add_argument("--hang-seconds", type=float, default=30.0,
                    help="no progress in status for this long = a hang")
    ap.add_argument("--max-runs", type=int, default=0, help="stop after this many runs")
    ap.add_argument("--dir", help="folder for the runs (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the folders of good runs too")
    ap.add_argument("--state-backends", default="memory",
                    help="comma-separated, of memory and rocksdb (default memory)")
    opts = ap.parse_args()
    backends = opts.state_backends.split(",")
    if set(backends) - set(BACKENDS):
        ap.error(f"--state-backends: a comma-separated list of {', '.join(BACKENDS)}")

    rng = random.Random(opts.seed)
    base = Path(opts.dir or tempfile.mkdtemp(prefix="streamjob-soak-")).absolute()
    base.mkdir(parents=True, exist_ok=True)
    storages = ["file", "s3"] if os.environ.get("AWS_ENDPOINT_URL") else ["file"]
    configs = list(itertools.product(MODES, PIPELINES, PARALLELISMS, backends))
    rng.shuffle(configs)
    deadline = time.monotonic() + opts.minutes * 60
    worker_left, coord_left = opts.worker_kills, opts.coordinator_kills
    est = opts.run_seconds + 6.0   # observed mean run time, start-up included
    results: list[Result] = []
    print(f"soak: seed {opts.seed}, {opts.minutes:g} min, {opts.worker_kills} worker kills, "
          f"{opts.coordinator_kills} coordinator kills, storage {'+'.join(storages)}, "
          f"state backends {'+'.join(backends)}, "
          f"runs in {base}", flush=True)
    for i in itertools.count():
        left_s = deadline - time.monotonic()
        if left_s < est * 0.75 or (opts.max_runs and i >= opts.max_runs):
            break
        runs_left = max(1, int(left_s / est))
        w = math.ceil(worker_left / runs_left) if worker_left else 0
        c = math.ceil(coord_left / runs_left) if coord_left else 0
        kills = ["worker"] * w + ["coordinator"] * c
        rng.shuffle(kills)
        cfg = configs[i % len(configs)]
        storage = storages[(i + i // len(configs)) % len(storages)]
        # Every third run has an outage; the pattern shifts by one each pass over the
        # configurations, so that every configuration gets its outages (not a fixed third).
        outage = (i + i // len(configs)) % 3 == 2
        res, _ = one_run(i, base, cfg, storage, kills, outage, rng, opts.run_seconds,
                         opts.hang_seconds)
        worker_left -= res.worker_kills
        coord_left -= res.coordinator_kills
        results.append(res)
        est = 0.7 * est + 0.3 * res.seconds
        verdict = ("HANG" if res.hung else "FAILED" if res.failed else
                   "BAD" if res.bad else "ok")
        print(f"run {i:3d} {res.mode:<13} {res.pipeline:<9} p={res.p} {res.backend:<7} "
              f"{res.storage:<4} "
              f"{res.seconds:5.1f}s kills w{res.worker_kills}/c{res.coordinator_kills} "
              f"outages {res.outages} restarts {res.restarts}: {verdict} "
              f"dup {res.duplicates} gaps {res.gaps} unexpected {res.unexpected} "
              f"over {res.overcount}{' ' + res.failed if res.failed else ''}", flush=True)
        if res.bad:
            for note in res.notes:
                print(f"    {note}", flush=True)
            print(f"    kept {res.run_dir}", flush=True)
        elif not opts.keep:
            shutil.rmtree(res.run_dir, ignore_errors=True)
    print()
    print(table(results, len(storages) > 1))
    bad = [r for r in results if r.bad]
    print(f"\n{len(results)} runs, {sum(r.worker_kills for r in results)} worker kills, "
          f"{sum(r.coordinator_kills for r in results)} coordinator kills, "
          f"{sum(r.outages for r in results)} outages; {len(bad)} bad run(s)"
          + (f" (folders kept under {base})" if bad else ""))
    if worker_left > 0 or coord_left > 0:
        print(f"note: time ran out with {max(0, worker_left)} worker and "
              f"{max(0, coord_left)} coordinator kills not made; raise --minutes")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
