#!/usr/bin/env python3
"""Kafka -> keyed running count -> Kafka, exactly once: streamjob against Apache Flink SQL's
Kafka connector and Quix Streams, side by side in one run on one real broker.

    python bench/kafka.py                    # p = 1 and 2, all three systems
    python bench/kafka.py --records 100000 --systems streamjob,quix --parallelism 1

A real Kafka broker (scripts/kafka_server.py) is started for the run. One input topic of two
partitions holds ``--records`` words (``--words`` distinct, keyed by the word); every system
reads that same topic from the beginning and writes ``<word> <count>`` lines, keyed by word, to
a fresh output topic of its own, in Kafka transactions committed every second. A
``read_committed`` consumer watches the output: the time is from launching the system to the
last expected line being readable (so it includes start-up and the final commit); "steady"
is from the first committed line to the last. Every result is checked afterwards by reading
the whole output topic again: each word ``w`` seen n times must appear as exactly the lines
``w 1`` ... ``w n``, once each; a wrong answer is reported as FAILED, never as a rate.

Peers run in their own virtual environments under ~/.cache/streamjob/peers/ (made on first
use, as bench/peers/run.py does): PyFlink (``apache-flink``, Flink SQL's own Java operators)
with ``flink-sql-connector-kafka`` from Maven Central, and ``quixstreams`` (one process per
unit of parallelism, in one consumer group).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "bench" / "peers"
for _p in (ROOT / "scripts", ROOT / "worker", ROOT, PEERS_DIR):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import run as peers  # noqa: E402  (bench/peers/run.py: venvs, Java)
from kafka_server import KafkaServer  # noqa: E402

from bench.procs import runtime_path  # noqa: E402
from streamjob.examples.kafkawordcount import check_counts  # noqa: E402
from streamjob.examples.wordcount import word_of  # noqa: E402
from tests.kafka.topics import Topics  # noqa: E402

SYSTEMS = ("streamjob", "flink-sql", "quix")
QUIX_SPEC = "quixstreams==3.28.1"
# Flink's Kafka connector is released for Flink minor versions; Maven Central here serves it
# up to Flink 2.2, which runs on the PyFlink 2.3 of bench/peers (the connector's SQL and
# sink APIs did not change between them).
FLINK_KAFKA = ("org.apache.flink", "flink-sql-connector-kafka", "5.0.0-2.2")
PARTITIONS = 2
PYPATH = runtime_path(ROOT)  # this checkout's code


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Run:
    system: str
    parallelism: int
    records: int
    total: list[float] = field(default_factory=list)    # launch -> last line committed
    steady: list[float] = field(default_factory=list)   # first -> last line committed
    error: str = ""

    def rate(self, which: str) -> float | None:
        secs = getattr(self, which)
        if self.error or not secs:
            return None
        med = statistics.median(secs)
        return self.records / med if med > 0 else None


# ----------------------------------------------------------------------------- systems

def flink_kafka_jar() -> Path:
    """The connector jar, copied from Maven Central into the peers cache once."""
    group, artifact, version = FLINK_KAFKA
    dest = peers.CACHE / "flink-kafka"
    jar = dest / f"{artifact}-{version}.jar"
    if not jar.is_file():
        log(f"fetching {artifact}:{version} from Maven Central into {dest}")
        subprocess.run(["mvn", "-B", "-q", "dependency:copy",
                        f"-Dartifact={group}:{artifact}:{version}",
                        f"-DoutputDirectory={dest}"], check=True, cwd=tempfile.gettempdir())
    return jar


class System:
    name = ""

    def launch(self, bootstrap: str, source: str, sink: str, p: int,
               work: Path) -> list[subprocess.Popen]:
        raise NotImplementedError

    def finish(self, procs: list[subprocess.Popen], timeout: float = 120) -> str:
        """Wait for (or stop) the processes; an error message, or '' if they ended well."""
        for proc in procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return f"{self.name} did not exit within {timeout:.0f} s of its last output"
        bad = [proc.returncode for proc in procs if proc.returncode != 0]
        return f"{self.name} exited with {bad}" if bad else ""

    @staticmethod
    def _spawn(cmd: list[str], work: Path, log_name: str, env: dict | None = None):
        out = open(work / log_name, "wb")  # noqa: SIM115 - closed with the process
        try:
            return subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        finally:
            out.close()


class Streamjob(System):
    name = "streamjob"

    def launch(self, bootstrap, source, sink, p, work):
        cmd = [sys.executable, "-m", "streamjob", "run", "-q",
               str(ROOT / "examples" / "kafka-wordcount.yaml"), "-p", str(p),
               "--arg", f"brokers={bootstrap}", "--arg", f"input={source}",
               "--arg", f"output={sink}", "--arg", "bounded=true"]
        return [self._spawn(cmd, work, "streamjob.log", dict(os.environ, PYTHONPATH=PYPATH))]


class FlinkSQL(System):
    name = "flink-sql"

    def __init__(self):
        self.root = peers.venv("flink", peers.FLINK_SPEC, sys.executable)
        self.jar = flink_kafka_jar()

    def launch(self, bootstrap, source, sink, p, work):
        cmd = [str(self.root / "bin" / "python"), str(PEERS_DIR / "flink_kafka.py"),
               "--bootstrap", bootstrap, "--input", source, "--output", sink,
               "--jar", str(self.jar), "--txn-prefix", f"flink-{sink}",
               "--parallelism", str(p)]
        return [self._spawn(cmd, work, "flink.log")]


class Quix(System):
    name = "quix"

    def __init__(self):
        self.root = peers.venv("quixstreams", QUIX_SPEC, sys.executable)

    def launch(self, bootstrap, source, sink, p, work):
        group = f"quix-{sink}"
        return [self._spawn([str(self.root / "bin" / "python"), str(PEERS_DIR / "quix_job.py"),
                             "--bootstrap", bootstrap, "--input", source, "--output", sink,
                             "--group", group, "--state-dir", str(work / f"state-{i}")],
                            work, f"quix-{i}.log")
                for i in range(p)]

    def finish(self, procs, timeout=120):
        # Quix runs until stopped: it is done once its output is complete.
        for proc in procs:
            if proc.poll() is not None:
                return f"quix exited early with {proc.returncode}"
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return ""


# ----------------------------------------------------------------------------- measuring

def watch(bootstrap: str, topic: str, n: int, procs: list[subprocess.Popen],
          timeout: float) -> tuple[float | None, float | None, str]:
    """Read ``topic`` (read_committed) while the system runs until ``n`` lines are there.
    Returns (monotonic time of the first line, of the n-th line, error)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watch-{topic}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(topic, p, -2) for p in range(PARTITIONS)])
    seen, first, deadline = 0, None, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(10000, timeout=0.1)
            now = time.monotonic()
            for msg in batch:
                if msg.error() is None:
                    seen += 1
                elif msg.error().code() != KafkaError._PARTITION_EOF:
                    return first, None, f"reading {topic}: {msg.error()}"
            if seen and first is None:
                first = now
            if seen >= n:
                return first, now, ""
            if not batch and all(proc.poll() is not None for proc in procs):
                # Everything has exited: whatever is committed is readable at once.
                if not consumer.consume(10000, timeout=2.0):
                    return first, None, f"exited after {seen} of {n} lines"
        return first, None, f"{seen} of {n} lines after {timeout:.0f} s"
    finally:
        consumer.close()


def run_cell(system: System, topics: Topics, source: str, words: list[str], p: int,
             work: Path, timeout: float) -> tuple[float, float] | str:
    """One run: (total seconds, steady seconds), or why it failed."""
    sink = topics.create(PARTITIONS, prefix=f"out-{system.name}-p{p}")
    work.mkdir(parents=True)
    t0 = time.monotonic()
    procs = system.launch(topics.bootstrap, source, sink, p, work)
    try:
        first, last, err = watch(topics.bootstrap, sink, len(words), procs, timeout)
    finally:
        end_err = system.finish(procs)
    if err or end_err:
        tail = "\n".join(f.read_text(errors="replace")[-1500:] for f in sorted(work.glob("*.log")))
        return f"{err or end_err}\n{tail}"
    lines = topics.values(sink, lambda vs: len(vs) >= len(words), timeout=120)
    check = check_counts(lines, words)
    if check != {"lines": len(words), "duplicates": 0, "missing": 0, "unexpected": 0}:
        return f"wrong output: {check}"
    return last - t0, last - first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--words", type=int, default=10_000)
    ap.add_argument("--parallelism", default="1,2")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    wanted = [s for s in a.systems.split(",") if s]
    unknown = set(wanted) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    ps = [int(p) for p in a.parallelism.split(",")]

    systems: dict[str, System] = {"streamjob": Streamjob()}
    if "flink-sql" in wanted and peers.ensure_java():
        systems["flink-sql"] = FlinkSQL()
    if "quix" in wanted:
        systems["quix"] = Quix()
    systems = {k: v for k, v in systems.items() if k in wanted}

    runs = {(s, p): Run(s, p, a.records) for s in systems for p in ps}
    with KafkaServer() as kafka, tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        topics = Topics(kafka.bootstrap)
        source = topics.create(PARTITIONS, prefix="words")
        word = word_of(a.words)
        words = [word(g) for g in range(a.records)]
        topics.produce(source, words, keys=words)
        log(f"broker {kafka.bootstrap}: {a.records:,} words ({a.words:,} distinct) in {source}")
        for rnd in range(a.rounds):
            for p in ps:
                for name, system in systems.items():  # take turns: noise hits all alike
                    res = runs[(name, p)]
                    if res.error:
                        continue
                    work = Path(tmp, f"{name}-p{p}-r{rnd}-{uuid.uuid4().hex[:6]}")
                    got = run_cell(system, topics, source, words, p, work, a.timeout)
                    if isinstance(got, str):
                        res.error = got
                        log(f"{name} p={p}: FAILED: {got}")
                        continue
                    res.total.append(got[0])
                    res.steady.append(got[1])
                    log(f"{name} p={p} round {rnd + 1}: {got[0]:.1f} s total,"
                        f" {got[1]:.1f} s steady, output checked")
        shutil.rmtree(tmp, ignore_errors=True)

    report(runs, ps, systems, a)
    return 1 if any(r.error for r in runs.values()) else 0


def report(runs: dict, ps: list[int], systems: dict, a) -> None:
    print(f"Kafka -> keyed running count -> Kafka, exactly once, {a.records:,} records,"
          f" {a.words:,} words, {PARTITIONS} partitions, median of {a.rounds},"
          f" {os.cpu_count()} cores; records/s (total incl. start-up | steady)")
    versions = {"flink-sql": f"{peers.FLINK_SPEC} + {FLINK_KAFKA[1]} {FLINK_KAFKA[2]}",
                "quix": QUIX_SPEC}
    for name in systems:
        if name in versions:
            print(f"  {name}: {versions[name]}")
    print(f"{'system':<12}{'p':>3}{'total':>12}{'steady':>12}   ours/theirs (total | steady)")
    for p in ps:
        ours = runs.get(("streamjob", p))
        for name in systems:
            r = runs[(name, p)]
            if r.error:
                print(f"{name:<12}{p:>3}   FAILED: {r.error.splitlines()[0]}")
                continue
            tot, st = r.rate("total"), r.rate("steady")
            ratio = ""
            if ours and name != "streamjob" and ours.rate("total") and tot and st:
                ratio = (f"   {ours.rate('total') / tot:.2f}x | "
                         f"{(ours.rate('steady') or 0) / st:.2f}x")
            print(f"{name:<12}{p:>3}{tot or 0:>12,.0f}{st or 0:>12,.0f}{ratio}")


if __name__ == "__main__":
    sys.exit(main())
