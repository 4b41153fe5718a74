"""End-to-end latency of committed output vs the checkpoint interval.

    python bench/latency.py                                  # 0.2, 0.5, 1, 2 s; ~6 minutes
    python bench/latency.py --intervals 0.5,1 --rate 50000 --seconds 10 --rounds 1

The job is the wordcount with timestamps (``bench.jobs:stamped_count``, p = 1 unless ``-p``,
into the transactional file sink) at a steady ``--rate`` well below what the machine can
process, bounded to ``rate * seconds`` records. Every checkpoint interval runs in every round,
the intervals taking turns, so that the load of other users of the machine hits them alike.

How a record is timed (all clocks are the one wall clock of this machine):

  * emitted: the source stamps each record with ``time.time()`` as it makes it (the
    generator makes a record at the moment the job reads it, so this is its arrival);
  * written: the file sink appends ``time.time()`` to the line as it writes it into its
    in-progress file (on the sink's thread): processing latency = written - emitted;
  * visible: a reader in this process lists the output folder every ``--poll-ms`` and notes
    when each committed ``part-*`` file first appears (the sink renames a file into the
    folder when its checkpoint completes): committed latency = visible - emitted. The
    resolution is the poll period plus how late the reader's thread wakes on a loaded
    machine; the table shows that lag against the file's ctime (the kernel's time of the
    rename, from a clock that ticks every few ms, so the lag shown is up to one tick high).

"actual" is the mean time between two checkpoints' completions in a run (median over the
runs): the next checkpoint is triggered once the interval has passed since the last trigger
and the last one has completed (one at a time, as Flink's default). "checkpoint p50" is the
median duration of the run's checkpoints (trigger to completed, as the coordinator reports
it in the local run's status file, sampled every 50 ms); "then
renamed p50" the median time from a checkpoint's completion to its part file's ctime (the
coordinator writes the checkpoint's metadata, tells the workers, and each sink renames its
staged file; up to one clock tick low). A last table splits the commit path per checkpoint:
from its trigger to the last record its part file holds (the source's cut: the barrier
follows that record), from there to the checkpoint's completion, to the rename, to the reader,
and the whole path from the cut to the reader (median and mean). A file's records were emitted
evenly over the interval before its cut, so the median record waits about half the interval
plus the *mean* of that path (not its median: a few slow checkpoints delay every record of
their files).

Only whole part files are counted: those whose records were all emitted after the first
``--warmup`` seconds (start-up, first checkpoint) and before the last ``interval + 1`` seconds
(committed by the final checkpoint at the end of input, not by the periodic ones). A window
that cut a file would count part of an interval: half an interval's records at the end of
the window all wait more than half the interval, which moved the median of a 2 s interval
by 60 ms in a 20 s run (``whole_files``). Every run's committed output is checked: each word's lines
``w 1`` ... ``w n`` exactly once, ``n`` its number of records. Expected: processing well
under the interval; committed ≈ half the interval (the wait for the next barrier) + the
checkpoint's duration and commit; p99 ≈ the interval + that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker"), str(ROOT)]

from bench.procs import runtime_path  # noqa: E402
from streamjob.examples.wordcount import expected_counts  # noqa: E402

PYPATH = runtime_path(ROOT)  # this checkout's code

RUN_TIMEOUT_S = 600


@dataclass
class Samples:
    """Per-record latencies (seconds) of one interval, pooled over the rounds."""

    processing: list[float] = field(default_factory=list)
    committed: list[float] = field(default_factory=list)
    reader_lag: list[float] = field(default_factory=list)  # per file: seen - ctime
    checkpoint_ms: list[float] = field(default_factory=list)  # completed checkpoints' durations
    renamed_after: list[float] = field(default_factory=list)  # part's ctime - its completion
    spacing: list[float] = field(default_factory=list)  # per run: mean s between completions
    # per part file of a checkpoint: its last record's emission (the cut) against the
    # checkpoint's trigger and completion
    trigger_to_cut: list[float] = field(default_factory=list)
    cut_to_completed: list[float] = field(default_factory=list)
    cut_to_seen: list[float] = field(default_factory=list)
    files: int = 0
    errors: list[str] = field(default_factory=list)


class FolderWatch:
    """Notes when each ``part-*`` file first appears in a folder (a thread polling it), and
    the duration of each completed checkpoint the local run's status file reports."""

    STATUS_EVERY_S = 0.05

    def __init__(self, folder: Path, status: Path, period_s: float):
        self.folder, self.status, self.period_s = folder, status, period_s
        self.seen: dict[str, float] = {}
        self.ctime: dict[str, float] = {}
        self.checkpoints: dict[int, tuple[float, float]] = {}  # id -> (duration ms, completed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FolderWatch:
        self._thread.start()
        return self

    def scan(self) -> None:
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        now = time.time()
        for e in entries:
            if e.name.startswith("part-") and e.name not in self.seen:
                self.seen[e.name] = now
                try:
                    self.ctime[e.name] = e.stat().st_ctime_ns / 1e9
                except FileNotFoundError:
                    pass

    def read_status(self) -> None:
        try:
            last = json.loads(self.status.read_text()).get("last_checkpoint") or {}
            self.checkpoints[int(last["id"])] = (float(last["duration_ms"]),
                                                 float(last["completed_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not written yet, or being replaced

    def _run(self) -> None:
        next_status = 0.0
        while not self._stop.is_set():
            self.scan()
            if time.monotonic() >= next_status:
                self.read_status()
                next_status = time.monotonic() + self.STATUS_EVERY_S
            time.sleep(self.period_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.scan()


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def check(lines: Counter[tuple[str, int]], records: int, words: int) -> str:
    """Empty when the committed lines are exactly ``w 1`` ... ``w n`` once each."""
    dup = sum(c - 1 for c in lines.values() if c > 1)
    want = {(w, i) for w, n in expected_counts(records, words).items() for i in range(1, n + 1)}
    missing, extra = len(want - lines.keys()), len(lines.keys() - want)
    if dup or missing or extra:
        return f"{dup} duplicate, {missing} missing, {extra} unexpected lines"
    return ""


Row = tuple[float, float, float]  # a record's emitted, written and visible times


def whole_files(files: dict[str, list[Row]], lo: float, hi: float) -> list[Row]:
    """The records of the part files whose every record was emitted within ``[lo, hi]``.

    A file holds the records of one whole checkpoint interval (between two barriers), whose
    waits for the commit are spread evenly from nothing to the interval; a part of a file
    is not (its later records wait less), so counting one would skew the percentiles."""
    return [r for rows in files.values() if rows
            and lo <= min(r[0] for r in rows) and max(r[0] for r in rows) <= hi
            for r in rows]


def run(interval: float, a: argparse.Namespace, work: Path, into: Samples) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    records = int(a.rate * a.seconds)
    out = work / "out"
    manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                "metadata": {"name": "latency"},
                "spec": {"pipeline": "bench.jobs:stamped_count", "parallelism": a.parallelism,
                         "args": {"records": records, "words": a.words, "rate": a.rate,
                                  "output": str(out)},
                         "checkpoint": {"interval": f"{round(interval * 1000)}ms"},
                         "storage": f"file://{work / 'ckpt'}"}}
    (work / "job.yaml").write_text(yaml.safe_dump(manifest))
    status = work / ".streamjob" / "runs" / "latency" / "status.json"
    watch = FolderWatch(out, status, a.poll_ms / 1000).start()
    proc = subprocess.Popen([sys.executable, "-m", "streamjob", "run", "-q", "job.yaml"],
                            cwd=work, env=dict(os.environ, PYTHONPATH=PYPATH),
                            stdout=subprocess.DEVNULL, stderr=open(work / "stderr.log", "wb"))
    try:
        rc = proc.wait(RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "timeout"
    finally:
        watch.stop()
    if rc != 0:
        tail = (work / "stderr.log").read_text(errors="replace").strip().splitlines()[-1:]
        into.errors.append(f"interval {interval}s: exit {rc}: {' '.join(tail)}")
        return

    files: dict[str, list[Row]] = {}
    lines: Counter[tuple[str, int]] = Counter()
    for name, visible in watch.seen.items():
        last = 0.0  # the last record the file holds: emitted just before the barrier
        rows = files[name] = []
        with open(out / name, encoding="utf-8") as f:
            for line in f:
                w, n, emitted, written = line.split()
                lines[(w, int(n))] += 1
                rows.append((float(emitted), float(written), visible))
                last = max(last, float(emitted))
        if name in watch.ctime:
            into.reader_lag.append(visible - watch.ctime[name])
            checkpoint = watch.checkpoints.get(int(name.rsplit("-", 1)[1]))
            if checkpoint:
                duration_ms, completed = checkpoint
                into.renamed_after.append(watch.ctime[name] - completed)
                into.trigger_to_cut.append(last - (completed - duration_ms / 1000))
                into.cut_to_completed.append(completed - last)
                into.cut_to_seen.append(visible - last)
    into.files += len(watch.seen)
    into.checkpoint_ms += [d for d, _ in watch.checkpoints.values()]
    ids = sorted(watch.checkpoints)
    if len(ids) >= 2:
        into.spacing.append((watch.checkpoints[ids[-1]][1] - watch.checkpoints[ids[0]][1])
                            / (ids[-1] - ids[0]))
    error = check(lines, records, a.words)
    if error:
        into.errors.append(f"interval {interval}s: {error}")
        return
    stamps = [r[0] for rows in files.values() for r in rows]
    counted = whole_files(files, min(stamps) + a.warmup, max(stamps) - interval - 1.0)
    processing = [w - e for e, w, _ in counted]
    committed = [v - e for e, _, v in counted]
    into.processing += processing
    into.committed += committed
    if committed:
        print(f"  committed p50 {ms(statistics.median(committed))} p99 "
              f"{ms(quantile(committed, .99))} ms, processing p99 "
              f"{ms(quantile(processing, .99))} ms, {len(watch.checkpoints)} checkpoints "
              f"seen, load average {os.getloadavg()[0]:.1f}", flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}" if seconds < 0.1 else f"{seconds * 1000:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intervals", default="0.2,0.5,1,2",
                    help="checkpoint intervals in seconds, comma-separated")
    ap.add_argument("--rate", type=float, default=20_000, help="records/s (steady)")
    ap.add_argument("--seconds", type=float, default=20, help="length of each run")
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="seconds at the start of each run not counted")
    ap.add_argument("--words", type=int, default=1000)
    ap.add_argument("-p", "--parallelism", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--poll-ms", type=float, default=2.0,
                    help="how often the reader lists the output folder")
    a = ap.parse_args()
    intervals = [float(x) for x in a.intervals.split(",")]

    load0 = os.getloadavg()[0]
    samples = {i: Samples() for i in intervals}
    tmp = Path(tempfile.mkdtemp(prefix="sj-latency-"))
    try:
        for r in range(a.rounds):
            for interval in intervals:
                print(f"round {r + 1}/{a.rounds}: checkpoint every {interval:g} s ...",
                      flush=True)
                run(interval, a, tmp / f"r{r}-{interval:g}", samples[interval])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()[0]

    print(f"latency of the keyed running count into the transactional file sink, "
          f"p={a.parallelism}, {a.rate:,.0f} records/s for {a.seconds:g} s per run, "
          f"{a.words:,} keys, {a.rounds} round(s); {os.cpu_count()} cores, load average "
          f"{load0:.1f} at start, {load1:.1f} at end; times in ms, from the source's stamp")
    head = (f"{'interval':>8}  {'actual':>6}  {'records':>9}  {'processing p50':>14}  {'p99':>6}  "
            f"{'committed p50':>13}  {'p99':>6}  {'max':>6}  {'p50 ÷ interval':>14}  "
            f"{'p50 - interval/2':>16}  {'checkpoint p50':>14}  {'then renamed p50':>16}  "
            f"{'reader lag p50':>14}  "
            f"{'p99':>5}  result")
    print(head)
    failed = False
    for interval in intervals:
        s = samples[interval]
        if s.errors or not s.committed:
            failed = True
            print(f"{interval:>7g}s  FAILED: {'; '.join(s.errors) or 'no records measured'}")
            continue
        p50 = statistics.median(s.committed)
        spacing = f"{statistics.median(s.spacing):.2f}s" if s.spacing else "-"
        print(f"{interval:>7g}s  {spacing:>6}  {len(s.committed):>9,}  "
              f"{ms(statistics.median(s.processing)):>14}  "
              f"{ms(quantile(s.processing, .99)):>6}  {ms(p50):>13}  "
              f"{ms(quantile(s.committed, .99)):>6}  {ms(max(s.committed)):>6}  "
              f"{p50 / interval:>14.2f}  {ms(p50 - interval / 2):>16}  "
              f"{ms(statistics.median(s.checkpoint_ms) / 1000) if s.checkpoint_ms else '-':>14}"
              f"  {ms(statistics.median(s.renamed_after)) if s.renamed_after else '-':>16}"
              f"  {ms(statistics.median(s.reader_lag)):>14}  {ms(quantile(s.reader_lag, .99)):>5}"
              f"  exactly once ({s.files} files)")
    print("per checkpoint, medians in ms: trigger -> last record before the barrier (the "
          "source's cut) -> checkpoint completed -> part file renamed -> seen by the reader")
    for interval in intervals:
        s = samples[interval]
        if s.trigger_to_cut:
            print(f"{interval:>7g}s  {ms(statistics.median(s.trigger_to_cut))} -> "
                  f"{ms(statistics.median(s.cut_to_completed))} -> "
                  f"{ms(statistics.median(s.renamed_after))} -> "
                  f"{ms(statistics.median(s.reader_lag))}; cut -> seen: median "
                  f"{ms(statistics.median(s.cut_to_seen))}, mean "
                  f"{ms(statistics.fmean(s.cut_to_seen))} ({len(s.trigger_to_cut)} checkpoints)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
