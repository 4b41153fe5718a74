#!/usr/bin/env python3
"""Nexmark on streamjob and on Apache Flink SQL, side by side in one run, every result checked.

    python bench/nexmark.py --queries q0,q1,q2 --events 2000000
    python bench/nexmark.py --queries q0,q3,q7,q8 --events 1000000 -p 1,2 --checkpoint-interval 1s

The events are generated once (``streamjob.nexmark``: the Nexmark generator, at
``--events-per-second`` of event time) into a JSON-lines file, and a prefix of
``--small-fraction`` of them into a second file. Each query then runs on both systems over
the same file, each parsing the same JSON and writing its rows as JSON lines through its own
exactly-once file sink: streamjob with ``streamjob run`` of the ``streamjob.examples.nexmark``
pipeline, Flink SQL with the Nexmark suite's SQL statement over Flink's ``filesystem``
connector (``bench/peers/nexmark_sql.py``, PyFlink installed as ``bench/peers`` does, in
``~/.cache/streamjob/peers/flink``). The rate is the marginal one, as in ``bench/peers``:
(events of the full run - events of the small run) / (job time of the full run - job time of
the small run), each system's own job time (streamjob: all subtasks running to finished and
committed; Flink: the job's net runtime), so JVM and process start-up and Flink's JIT
warm-up cancel out. CPU seconds of every process of a run give events per CPU-second on the
same marginal basis. The rows of both full runs are compared as multisets (numbers and
timestamps normalised: a timestamp text becomes epoch milliseconds, a number its exact
decimal value). The last line sums it up:

    nexmark: K/N queries match; streamjob/flink events/s ratio min A median B
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "bench" / "peers"
for _p in (ROOT / "worker", ROOT, PEERS_DIR):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import run as peers  # noqa: E402  (bench/peers/run.py: venvs, Java)

from bench.cpu import become_subreaper, children_cpu, reap_orphans  # noqa: E402
from bench.procs import runtime_path  # noqa: E402
from streamjob.examples.nexmark import QUERIES  # noqa: E402
from streamjob.nexmark import NexmarkConfig  # noqa: E402
from streamjob.nexmark.source import json_batches  # noqa: E402

RUN_TIMEOUT_S = 1800
_TS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z?$")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- events

def write_events(work: Path, events: int, small: int, eps: int) -> tuple[Path, Path, float]:
    """The full and the small (prefix) events files, and the generator's events/s."""
    full, prefix = work / "events.json", work / "events-small.json"
    config = NexmarkConfig(events_per_second=eps)
    t0 = time.perf_counter()
    n = 0
    with open(full, "w", encoding="ascii") as f, open(prefix, "w", encoding="ascii") as s:
        for batch in json_batches(events, config):
            text = "\n".join(batch) + "\n"
            f.write(text)
            if n < small:
                s.write("\n".join(batch[:small - n]) + "\n")
            n += len(batch)
    secs = time.perf_counter() - t0
    return full, prefix, events / secs


def generation_rate(events: int, eps: int) -> float:
    """Events/s of the generator alone (JSON text made, nothing written)."""
    t0 = time.perf_counter()
    for _ in json_batches(events, NexmarkConfig(events_per_second=eps)):
        pass
    return events / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- results

def _norm(value: object) -> object:
    if isinstance(value, str):
        m = _TS.match(value)
        if m:
            y, mo, d, h, mi, s, frac = m.groups()
            ms = int((frac or "0").ljust(3, "0")[:3])
            return calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s))) * 1000 \
                + ms
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | Decimal):
        d = Decimal(str(value)).normalize()
        return int(d) if d == d.to_integral_value() else d
    return value


def read_rows(folder: Path) -> Counter[tuple]:
    """Committed rows of a JSON-lines output folder, normalised, as a multiset."""
    rows: Counter[tuple] = Counter()
    for part in sorted(folder.glob("part-*")):
        with open(part, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line, parse_float=Decimal)
                    rows[tuple(sorted((k, _norm(v)) for k, v in row.items()))] += 1
    return rows


def compare(a: Counter[tuple], b: Counter[tuple]) -> str:
    if a == b:
        return ""
    only_a, only_b = a - b, b - a
    example = next(iter(only_a or only_b))
    return (f"{sum(only_a.values())} rows only in streamjob, {sum(only_b.values())} only in "
            f"flink (e.g. {dict(example)})")


NOT_COMPARED = {
    "q12": "not compared (processing time); every bid counted once per bidder",
}


def check_reference(query: str, rows: Counter[tuple], events: Path) -> str:
    """A query run on streamjob only (q12), checked against its plain-Python reference over
    the events file in what is deterministic (the bids per bidder). ""
    if it holds, else what differs."""
    from streamjob.examples.nexmark.queries import q12_totals

    with open(events, encoding="ascii") as f:
        want = QUERIES[query].reference([json.loads(line) for line in f])
    got = [{k: _norm(v) for k, v in r} for r in rows.elements()]
    if not QUERIES[query].deterministic:
        got = q12_totals(got)

    def multiset(dicts: list[dict]) -> Counter[tuple]:
        return Counter(tuple(sorted((k, _norm(v)) for k, v in d.items())) for d in dicts)

    return compare(multiset(got), multiset(want)).replace("flink", "the reference")


# ----------------------------------------------------------------------------- systems

@dataclass
class Run:
    job: float
    cpu: float
    error: str = ""


class System:
    name = ""

    def command(self, query: str, events: Path, out: Path, p: int, ckpt_ms: int,
                work: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def job_seconds(self, work: Path, wall: float) -> float | None:
        raise NotImplementedError

    def run(self, query: str, events: Path, p: int, ckpt_ms: int, work: Path) -> Run:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        argv, env = self.command(query, events, work / "out", p, ckpt_ms, work)
        reap_orphans()
        cpu0 = children_cpu()
        t0 = time.perf_counter()
        with open(work / "log.txt", "wb") as out:
            proc = subprocess.Popen(argv, cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **env}, start_new_session=True)
        try:
            rc = proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            peers.stop_group(proc)
            rc = -1
        wall = time.perf_counter() - t0
        peers.stop_group(proc)
        reap_orphans()
        cpu = children_cpu() - cpu0
        if rc != 0:
            tail = (work / "log.txt").read_text(errors="replace").strip().splitlines()[-3:]
            return Run(wall, cpu, f"{self.name} exit code {rc}: {' | '.join(tail)[-400:]}")
        job = self.job_seconds(work, wall)
        return Run(wall if job is None else job, cpu)


class Streamjob(System):
    """``streamjob run`` of the tree at ``root`` (this one, or a ``--baseline`` checkout)."""

    def __init__(self, root: Path = ROOT, name: str = "streamjob"):
        self.root, self.name = root, name

    def command(self, query, events, out, p, ckpt_ms, work):
        ckpt = (f"  checkpoint:\n    enabled: true\n    interval: {ckpt_ms}ms\n" if ckpt_ms
                else "  checkpoint:\n    enabled: false\n")
        manifest = work / "job.yaml"
        manifest.write_text(
            "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\n"
            f"metadata:\n  name: nexmark-{query}\n"
            f"spec:\n  pipeline: streamjob.examples.nexmark:build\n  parallelism: {p}\n"
            f"  storage: file://{work / 'ckpt'}\n" + ckpt)
        argv = [sys.executable, "-m", "streamjob", "run", "-q", str(manifest), "-p", str(p),
                "--arg", f"query={query}", "--arg", f"input={events}",
                "--arg", f"output={out}", "--arg", f"rebalance={'true' if p > 1 else 'false'}"]
        return argv, {"PYTHONPATH": runtime_path(self.root)}

    def job_seconds(self, work, wall):
        for status in (work / ".streamjob" / "runs").glob("*/status.json"):
            try:
                st = json.loads(status.read_text())
                return float(st["finished_at"]) - float(st["running_since"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return None


class FlinkSQL(System):
    name = "flink"

    def __init__(self, root: Path):
        self.root = root

    def command(self, query, events, out, p, ckpt_ms, work):
        argv = [str(self.root / "bin" / "python"), str(PEERS_DIR / "nexmark_sql.py"),
                "--query", query, "--input", str(events), "--output", str(out),
                "--parallelism", str(p)]
        if ckpt_ms:
            argv += ["--checkpoint-ms", str(ckpt_ms), "--checkpoint-dir", str(work / "ckpt")]
        return argv, {"PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def job_seconds(self, work, wall):
        m = re.search(r"NET_RUNTIME_MS=(\d+)", (work / "log.txt").read_text(errors="replace"))
        return int(m.group(1)) / 1000 if m else None


@dataclass
class Cell:
    query: str
    p: int
    rates: dict[str, float | None] = field(default_factory=dict)
    per_cpu: dict[str, float | None] = field(default_factory=dict)
    rows: int = 0
    error: str = ""
    compared: bool = True  # False: q12 (processing time), run on streamjob only

    @property
    def ratio(self) -> float | None:
        return self.ratio_of("streamjob")

    def ratio_of(self, name: str, to: str = "flink") -> float | None:
        a, b = self.rates.get(name), self.rates.get(to)
        return a / b if a and b else None


def marginal(extra: int, big: float, small: float) -> float | None:
    return extra / (big - small) if big - small > 0.05 else None


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "n/a"
    return f"{x / 1e6:.2f} M{unit}" if x >= 1e6 else f"{x / 1e3:.0f} k{unit}"


# ----------------------------------------------------------------------------- main

def parse_interval(text: str) -> int:
    """'1s', '500ms', '0' -> milliseconds."""
    text = text.strip()
    if text in ("", "0", "off"):
        return 0
    if text.endswith("ms"):
        return int(float(text[:-2]))
    if text.endswith("s"):
        return int(float(text[:-1]) * 1000)
    return int(float(text) * 1000)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", default="q0,q1,q2",
                    help=f"comma list of {', '.join(QUERIES)}")
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--events-per-second", type=int, default=10_000,
                    help="event-time rate of the generator (sets the inter-event delay)")
    ap.add_argument("-p", "--parallelism", default="1", help="comma list, e.g. 1,2")
    ap.add_argument("--checkpoint-interval", default="0", help="e.g. 1s; 0: no checkpoints")
    ap.add_argument("--small-fraction", type=float, default=0.2)
    ap.add_argument("--systems", default="streamjob,flink")
    ap.add_argument("--peer-python", default=sys.executable)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--baseline", type=Path,
                    help="another checkout of streamjob (say `git worktree add /tmp/base "
                         "main`), run beside this one on the same events as `baseline`: "
                         "before and after a change in one run")
    a = ap.parse_args()

    queries = [q.strip() for q in a.queries.split(",") if q.strip()]
    unknown = [q for q in queries if q not in QUERIES]
    if unknown:
        ap.error(f"not implemented: {', '.join(unknown)} (implemented: {', '.join(QUERIES)})")
    ps = [int(p) for p in a.parallelism.split(",")]
    ckpt_ms = parse_interval(a.checkpoint_interval)
    small = int(a.events * a.small_fraction)
    wanted = [s.strip() for s in a.systems.split(",") if s.strip()]

    systems: dict[str, System] = {}
    versions = []
    if "streamjob" in wanted:
        systems["streamjob"] = Streamjob()
    if a.baseline:
        if not (a.baseline / "worker" / "streamjob").is_dir():
            ap.error(f"--baseline {a.baseline}: not a streamjob checkout (no worker/streamjob)")
        systems["baseline"] = Streamjob(a.baseline.resolve(), "baseline")
    if "flink" in wanted:
        if not peers.ensure_java():
            log("no Java runtime: Flink SQL is not run")
        else:
            root = peers.venv("flink", peers.FLINK_SPEC, a.peer_python)
            systems["flink"] = FlinkSQL(root)
            versions.append(f"apache-flink {peers.version_of(root, 'apache-flink')}, "
                            f"Java {peers.java_major()}")

    scratch = a.work or Path(tempfile.mkdtemp(prefix="streamjob-nexmark-"))
    scratch.mkdir(parents=True, exist_ok=True)
    log(f"machine: {peers.machine()}; load {os.getloadavg()[0]:.1f}; scratch {scratch}")
    gen_rate = generation_rate(min(a.events, 500_000), a.events_per_second)
    full, prefix, write_rate = write_events(scratch, a.events, small, a.events_per_second)
    log(f"events: {a.events:,} ({full.stat().st_size / 1e6:.0f} MB) and a prefix of {small:,}; "
        f"generator {gen_rate:,.0f} events/s alone, {write_rate:,.0f} events/s to the file")

    become_subreaper()
    t_start = time.time()
    cells: list[Cell] = []
    for q in queries:
        for p in ps:
            cell = Cell(q, p)
            cells.append(cell)
            outputs: dict[str, Counter[tuple]] = {}
            cell.compared = QUERIES[q].flink
            for name, system in systems.items():
                if not cell.compared and name != "streamjob":
                    continue  # q4, q12: see NOT_COMPARED
                work = scratch / name / f"{q}-p{p}"
                s = system.run(q, prefix, p, ckpt_ms, work / "small")
                b = system.run(q, full, p, ckpt_ms, work / "full") if not s.error else s
                if s.error or b.error:
                    cell.error = s.error or b.error
                    log(f"{q} p={p} {name}: FAILED {cell.error}")
                    continue
                cell.rates[name] = marginal(a.events - small, b.job, s.job)
                cell.per_cpu[name] = marginal(a.events - small, b.cpu, s.cpu)
                outputs[name] = read_rows(work / "full" / "out")
                log(f"{q} p={p} {name:9}: small {s.job:6.1f}s, full {b.job:6.1f}s (cpu "
                    f"{b.cpu:6.1f}s): {fmt(cell.rates[name], ' events/s')}, "
                    f"{fmt(cell.per_cpu[name], ' events/CPU-s')}, "
                    f"{sum(outputs[name].values()):,} rows")
            if not cell.compared and "streamjob" in outputs and not cell.error:
                cell.rows = sum(outputs["streamjob"].values())
                cell.error = check_reference(q, outputs["streamjob"], full)
            elif "streamjob" in outputs and "flink" in outputs and not cell.error:
                cell.rows = sum(outputs["streamjob"].values())
                cell.error = compare(outputs["streamjob"], outputs["flink"])
                if "baseline" in outputs and not cell.error:
                    cell.error = compare(outputs["baseline"], outputs["flink"]).replace(
                        "streamjob", "baseline")
            elif "streamjob" in outputs and "baseline" in outputs and not cell.error:
                cell.rows = sum(outputs["streamjob"].values())  # --systems streamjob
                cell.error = compare(outputs["streamjob"], outputs["baseline"]).replace(
                    "flink", "baseline")
            elif not cell.error:
                cell.error = "not compared (one system only)"
            verdict = "results match" if cell.compared else NOT_COMPARED[q]
            log(f"{q} p={p}: {cell.error or verdict}")

    print(f"\nMachine: {peers.machine()}; load average at end {os.getloadavg()[0]:.1f}")
    print(f"Flink: {'; '.join(versions) or 'not run'}")
    print(f"Command: {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}; wall time "
          f"{time.time() - t_start:.0f} s")
    print(f"Events: {a.events:,} at {a.events_per_second:,} events/s of event time "
          f"(marginal over a prefix of {small:,}); checkpoints "
          f"{'every ' + str(ckpt_ms) + ' ms' if ckpt_ms else 'off'}; generator alone "
          f"{gen_rate:,.0f} events/s\n")
    head = ["query", "p", "streamjob events/s", "flink events/s", "ratio",
            "streamjob events/CPU-s", "flink events/CPU-s", "rows", "results"]
    if a.baseline:
        head[5:5] = ["baseline events/s", "baseline ratio"]
        head[9:9] = ["baseline events/CPU-s", "CPU-s ratio", "baseline CPU-s ratio"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))

    def ratio(x: float | None) -> str:
        return f"{x:.2f}" if x else "n/a"

    for c in cells:
        base = [] if not a.baseline else [fmt(c.rates.get("baseline")),
                                          ratio(c.ratio_of("baseline"))]
        cpu = [] if not a.baseline else [
            fmt(c.per_cpu.get("baseline")),
            *(ratio(c.per_cpu.get(n) / c.per_cpu["flink"]
                    if c.per_cpu.get(n) and c.per_cpu.get("flink") else None)
              for n in ("streamjob", "baseline"))]
        print("| " + " | ".join([
            c.query, str(c.p), fmt(c.rates.get("streamjob")), fmt(c.rates.get("flink")),
            ratio(c.ratio), *base, fmt(c.per_cpu.get("streamjob")),
            fmt(c.per_cpu.get("flink")), *cpu, f"{c.rows:,}",
            f"DIFFER: {c.error}" if c.error
            else "results match" if c.compared else NOT_COMPARED[c.query]]) + " |")
    apart = [c for c in cells if not c.compared]
    cells = [c for c in cells if c.compared]
    matched = sum(1 for c in cells if not c.error)
    ratios = [c.ratio for c in cells if c.ratio]
    if a.work is None:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = (f"min {min(ratios):.2f} median {statistics.median(ratios):.2f}" if ratios
               else "min n/a median n/a")
    extra = "".join(f"; {c.query} p={c.p} (streamjob only): "
                    f"{fmt(c.rates.get('streamjob'), ' events/s')}, {c.rows:,} rows, "
                    f"{'checked' if not c.error else 'DIFFERS'}" for c in apart)
    print(f"nexmark: {matched}/{len(cells)} queries match; streamjob/flink events/s ratio "
          f"{summary}{extra}")
    return 0 if matched == len(cells) and not any(c.error for c in apart) else 1


if __name__ == "__main__":
    sys.exit(main())
