"""A real Apache Kafka broker for development, tests, benchmarks and CI.

Kafka is assembled from its Maven Central artifacts (``org.apache.kafka:kafka_2.13`` and its
runtime dependencies, resolved by Maven from a generated pom) into a cache outside the
repository, keyed by version, so only the first run on a machine pays for the download. It
runs as one KRaft node that is both broker and controller, with the single-node settings that
transactions and consumer groups need (replication factor 1 for the internal topics).

Command line (``scripts/kafka`` calls this)::

    scripts/kafka build                 # resolve into ~/.cache/streamjob/kafka-<version>/
    eval "$(scripts/kafka up)"          # start; prints export KAFKA_BOOTSTRAP_SERVERS=...
    scripts/kafka up --address 10.0.0.5 # listen on that address instead (pods can reach it)
    scripts/kafka status                # is it up, where, which pid
    scripts/kafka down                  # stop what ``up`` started and remove its data

Python API (used by pytest fixtures and benchmarks)::

    server = KafkaServer()
    server.start()          # builds if needed, formats, waits until transactions work
    server.bootstrap        # "127.0.0.1:<port>"
    server.stop()           # graceful stop; start() again reuses port and data (a restart)
    server.kill()           # SIGKILL, for crash tests
    server.close()          # stop and remove the data folder

Topics are not created automatically (``auto.create.topics.enable=false``): a job that names a
missing topic gets an error instead of a fresh empty topic, as a production broker would do.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from daemons import (
    CACHE_ROOT,
    ServerProcess,
    cli,
    cmdline,
    down,
    exports,
    free_port,
    pid_alive,
    write_state,
)

VERSION = "4.4.0"
SCALA = "2.13"
# Kafka's POM names the logging API (slf4j 1.7 and log4j2) but no binding; the release tarball
# adds one. Take the log4j2 binding matching the log4j version Kafka resolves.
LOG4J_BINDING = ("org.apache.logging.log4j", "log4j-slf4j-impl")
MIN_JAVA = 17
# The broker is one JVM on a small shared machine: keep its heap modest.
JVM_OPTS = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true"]
READY_TOPIC = "_streamjob_ready"


class KafkaError(RuntimeError):
    """Kafka could not be built or started."""


def cache_dir(version: str = VERSION) -> Path:
    return CACHE_ROOT / f"kafka-{version}"


def libs_dir(version: str = VERSION) -> Path:
    return cache_dir(version) / "libs"


def _pom(version: str, log4j_version: str | None) -> str:
    binding = "" if log4j_version is None else f"""
    <dependency><groupId>{LOG4J_BINDING[0]}</groupId><artifactId>{LOG4J_BINDING[1]}</artifactId>
      <version>{log4j_version}</version></dependency>"""
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.streamjob</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{SCALA}</artifactId>
      <version>{version}</version></dependency>{binding}
  </dependencies>
</project>
"""


def java_binary() -> str:
    """The ``java`` to run Kafka with ($JAVA_HOME first); checks it is at least Java 17."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise KafkaError(f"Java {MIN_JAVA}+ is needed to run Kafka and `java` was not found"
                         " (install a JDK, e.g. `apt-get install openjdk-17-jre-headless`)")
    out = subprocess.run([java, "-version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=60).stdout
    major = java_major(out)
    if major is None or major < MIN_JAVA:
        raise KafkaError(f"Kafka {VERSION} needs Java {MIN_JAVA}+, `{java} -version` says:"
                         f" {out.strip().splitlines()[0] if out.strip() else '(nothing)'}")
    return java


def java_major(version_output: str) -> int | None:
    """The major version from ``java -version`` output (``"1.8.0_x"`` is 8)."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def _maven(pom_dir: Path, version: str, *goal: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaError("Maven (`mvn`) is needed to fetch Kafka's jars from Maven Central"
                         " and is not on PATH (install it, e.g. `apt-get install maven`)")
    cmd = [mvn, "-B", "-q", "-f", str(pom_dir / "pom.xml"), *goal]
    if shutil.which("nice"):
        cmd = ["nice", "-n", "10", *cmd]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)  # Maven colours even with -B
        tail = "\n".join(text.splitlines()[-25:])
        raise KafkaError(f"Maven could not resolve Kafka {version} from Maven Central"
                         f" (is the registry reachable?): `{' '.join(cmd)}` failed"
                         f" ({proc.returncode}):\n{tail}")


def build(version: str = VERSION, *, quiet: bool = False) -> Path:
    """Resolve Kafka's jars into the cache unless they are there; return the libs folder."""
    libs = libs_dir(version)
    if (libs / ".complete").is_file():
        return libs
    target = cache_dir(version)
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:  # one build per version, across processes
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (libs / ".complete").is_file():
            return libs
        if not quiet:
            print(f"resolving Kafka {version} from Maven Central into {target} (first run only)",
                  file=sys.stderr, flush=True)
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target))
        try:
            out = staging / "libs"
            # First pass finds the log4j version Kafka brings; the second adds its slf4j binding.
            (staging / "pom.xml").write_text(_pom(version, None))
            _maven(staging, version, "dependency:copy-dependencies", "-DincludeScope=runtime",
                   f"-DoutputDirectory={out}")
            log4j = next((m.group(1) for p in out.glob("log4j-api-*.jar")
                          if (m := re.fullmatch(r"log4j-api-(.+)\.jar", p.name))), None)
            if log4j is not None:
                (staging / "pom.xml").write_text(_pom(version, log4j))
                _maven(staging, version, "dependency:copy-dependencies", "-DincludeScope=runtime",
                       f"-DoutputDirectory={out}")
            if not (out / f"kafka_{SCALA}-{version}.jar").is_file():
                raise KafkaError(f"Maven produced no kafka_{SCALA}-{version}.jar in {out}")
            (out / ".complete").write_text("\n".join(sorted(p.name for p in out.glob("*.jar"))))
            shutil.rmtree(libs, ignore_errors=True)
            os.replace(out, libs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not quiet:
            print(f"Kafka {version} ready in {libs} ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    return libs


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64, not starting with '-' (as
    Kafka's ``Uuid.randomUuid`` makes them, so the id is never mistaken for a flag)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def broker_properties(*, address: str, port: int, controller_port: int,
                      data_dir: Path) -> dict[str, str]:
    """Settings of one combined broker+controller node for a single-machine cluster."""
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://{address}:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{address}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "logs"),
        "metadata.log.dir": str(data_dir / "metadata"),
        # One node: every internal topic has one replica, and transactions need only it.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Consumer groups form at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "log.retention.hours": "24",
    }


def _properties_text(props: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in props.items())


LOG4J2_CONFIG = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server
logger.server.level = INFO
logger.coord.name = org.apache.kafka.coordinator
logger.coord.level = INFO
# The transaction coordinator's markers (tests look for markers it skipped after a crash)
logger.txn.name = kafka.coordinator.transaction
logger.txn.level = INFO
"""


class KafkaServer(ServerProcess):
    """One Kafka node (broker + KRaft controller) on 127.0.0.1, or on ``address`` (e.g. the
    cluster node's address, which pods and this machine both reach).

    ``stop()`` then ``start()`` brings the broker back on the same port with the same data
    (a broker restart); ``close()`` also removes the data folder when this object made it.
    """

    stop_grace = 30.0  # a controlled shutdown writes its metadata snapshot

    def __init__(self, data_dir: str | Path | None = None, *, port: int | None = None,
                 address: str = "127.0.0.1", log_path: str | Path | None = None):
        super().__init__(data_dir, port=port, address=address, prefix="streamjob-kafka-")
        self.controller_port: int | None = None
        self.log_path = Path(log_path) if log_path else self.data_dir / "server.log"

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise KafkaError("the broker has not been started yet")
        return f"{self.address}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap}

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 120.0, *, detach: bool = False) -> KafkaServer:
        """Start (building and formatting first if needed); return once a transactional
        producer can initialise, write and commit."""
        if self.running():
            return self
        java = java_binary()
        libs = build()
        restart = self.port is not None and self.controller_port is not None

        def spawn() -> None:
            if not restart:  # a restart keeps both ports, so clients find the broker again
                self.controller_port = free_port("127.0.0.1")
            self._spawn(java, libs, timeout, detach)

        self._start_on_a_port(spawn, KafkaError)
        return self

    def _config_dir(self) -> Path:
        return self.data_dir / "config"

    def _spawn(self, java: str, libs: Path, timeout: float, detach: bool) -> None:
        cfg = self._config_dir()
        cfg.mkdir(parents=True, exist_ok=True)
        props = broker_properties(address=self.address, port=self.port,
                                  controller_port=self.controller_port, data_dir=self.data_dir)
        (cfg / "server.properties").write_text(_properties_text(props))
        (cfg / "log4j2.properties").write_text(LOG4J2_CONFIG)
        base = [java, *JVM_OPTS, f"-Dlog4j2.configurationFile={cfg / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.data_dir}", "-cp", f"{libs}/*"]
        if not (self.data_dir / "metadata" / "meta.properties").exists():
            fmt = subprocess.run(
                [*base, "kafka.tools.StorageTool", "format", "--cluster-id", new_cluster_id(),
                 "--config", str(cfg / "server.properties"), "--ignore-formatted"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
            if fmt.returncode != 0:
                raise KafkaError(f"formatting the KRaft log dir {self.data_dir} failed:\n"
                                 f"{fmt.stdout[-3000:]}")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [*base, "kafka.Kafka", str(cfg / "server.properties")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=detach)
        finally:
            log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._port_open():
            self._check_alive()
            if time.monotonic() > deadline:
                raise KafkaError(f"Kafka did not open {self.bootstrap} in {timeout:.0f} s;"
                                 f" log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.1)
        try:
            probe_transactions(self.bootstrap, deadline - time.monotonic())
        except KafkaError as err:
            self._check_alive()
            raise KafkaError(f"{err}; log {self.log_path}:\n{self.log_tail()}") from None
        self._check_alive()  # the answers came from our broker, not one that holds the port

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise KafkaError(
                f"Kafka exited during start-up (code {self.proc and self.proc.returncode});"
                f" log {self.log_path}:\n{self.log_tail()}")

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            return s.connect_ex((self.address, self.port)) == 0

    def close(self) -> None:
        """Stop and remove the data folder if this object created it."""
        self.stop()
        if self._own_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"KafkaServer(bootstrap={self.address}:{self.port}, data_dir={self.data_dir})"


def probe_transactions(bootstrap: str, timeout: float) -> None:
    """Wait until the broker serves a whole transaction: create the probe topic, then
    ``init_transactions``, produce one record and commit (this needs the transaction
    coordinator and its state topic, the last part of a broker to come up)."""
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    deadline = time.monotonic() + max(timeout, 1.0)
    last = "no answer"
    while time.monotonic() < deadline:
        left = max(deadline - time.monotonic(), 1.0)
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            if READY_TOPIC not in admin.list_topics(timeout=min(left, 10)).topics:
                fut = admin.create_topics([NewTopic(READY_TOPIC, 1, 1)])[READY_TOPIC]
                with contextlib.suppress(KafkaException):  # already exists: fine
                    fut.result(timeout=min(left, 30))
            producer = Producer({"bootstrap.servers": bootstrap,
                                 "transactional.id": "streamjob-ready-probe",
                                 "transaction.timeout.ms": 60000,
                                 # "coordinator loading" retries are expected here: quiet
                                 "log_level": 3})
            producer.init_transactions(min(left, 30))
            producer.begin_transaction()
            producer.produce(READY_TOPIC, b"ready")
            producer.commit_transaction(min(left, 30))
            return
        except KafkaException as err:
            last = str(err)
        time.sleep(0.5)
    raise KafkaError(f"Kafka on {bootstrap} did not commit a transaction in"
                     f" {timeout:.0f} s (last error: {last})")


def kafka_session() -> Iterator[KafkaServer]:
    """Generator for a pytest fixture: one started broker, closed at the end."""
    yield from KafkaServer.session()


# -- command line (scripts/kafka) ---------------------------------------------------------

def run_dir() -> Path:
    return Path(os.environ.get("STREAMJOB_KAFKA_DIR") or CACHE_ROOT / "run" / "kafka")


def state_file() -> Path:
    return Path(os.environ.get("STREAMJOB_KAFKA_STATE") or CACHE_ROOT / "run" / "kafka.json")


def _pid_is_kafka(pid: int) -> bool:
    return b"kafka.Kafka" in cmdline(pid)


def _live_state() -> dict | None:
    """The state ``up`` recorded, if its broker is still running."""
    path = state_file()
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    if pid_alive(state["pid"]) and _pid_is_kafka(state["pid"]):
        return state
    return None


def cmd_build(_args) -> int:
    java_binary()
    print(build())
    return 0


def cmd_up(args) -> int:
    state = _live_state()
    if state is not None:
        if args.address and args.address != state["address"]:
            raise KafkaError(f"Kafka is already up on {state['env']['KAFKA_BOOTSTRAP_SERVERS']};"
                             f" `scripts/kafka down` first to move it to {args.address}")
        print(f"Kafka already up (pid {state['pid']})", file=sys.stderr)
        sys.stdout.write(exports(state["env"]))
        return 0
    path = state_file()
    if path.exists():  # left over from a broker that is gone: clear it away
        old = json.loads(path.read_text())
        shutil.rmtree(old["data_dir"], ignore_errors=True)
        path.unlink()
    data_dir = run_dir()
    shutil.rmtree(data_dir, ignore_errors=True)
    server = KafkaServer(data_dir, port=args.port, address=args.address or "127.0.0.1")
    server.start(timeout=args.timeout, detach=True)
    write_state(path, {"pid": server.pid, "address": server.address, "data_dir": str(data_dir),
                       "log": str(server.log_path), "env": server.env})
    print(f"Kafka {VERSION} up on {server.bootstrap} (pid {server.pid}, data {data_dir},"
          f" log {server.log_path})", file=sys.stderr)
    sys.stdout.write(exports(server.env))
    return 0


def cmd_status(_args) -> int:
    state = _live_state()
    if state is None:
        print("Kafka is not up")
        return 1
    print(f"Kafka {VERSION} up on {state['env']['KAFKA_BOOTSTRAP_SERVERS']}"
          f" (pid {state['pid']}, data {state['data_dir']}, log {state['log']})")
    return 0


def cmd_down(_args) -> int:
    down(state_file(), "Kafka", _pid_is_kafka, grace=30)
    return 0


def _more_options(sub, up) -> None:
    up.add_argument("--address", default=os.environ.get("STREAMJOB_KAFKA_ADDRESS"),
                    help="address to listen on and advertise (default 127.0.0.1)")
    sub.add_parser("status", help="say whether the broker `up` started is running (exit 1 if not)")


def main(argv: list[str] | None = None) -> int:
    return cli("scripts/kafka", __doc__.split("\n")[0],
               f"resolve kafka_{SCALA}:{VERSION} into {cache_dir()}",
               "start (KRaft, one node); print export lines to eval", 120.0,
               {"build": cmd_build, "up": cmd_up, "status": cmd_status, "down": cmd_down},
               KafkaError, argv, extra=_more_options)


if __name__ == "__main__":
    sys.exit(main())
