"""Real coordinator and worker processes on loopback, attacked from the test process.

Children import the same ``streamjob`` as this process (so a run with ``PYTHONPATH`` pointing
at an older checkout tests that checkout: the way to see each test fail before its fix).
Memory is read from ``/proc/<pid>/status``: ``VmHWM`` (peak resident set) catches a buffer
that was allocated and freed again before we looked.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

import streamjob

ROOT = Path(__file__).resolve().parents[2]
PYPATH = os.pathsep.join([str(Path(streamjob.__file__).resolve().parents[1]),
                          str(ROOT / "operator"), str(ROOT)])
HEADER = struct.Struct("<IB")
DATA, BARRIER, HELLO, CONTROL, WATERMARK = 1, 2, 3, 4, 5
WORKER_TOKEN = "worker-token-for-tests"
API_TOKEN = "api-token-for-tests"
MiB = 1024 * 1024


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def read_frame(sock: socket.socket) -> tuple[int, Any]:
    length, kind = HEADER.unpack(recv_exactly(sock, HEADER.size))
    return kind, msgpack.unpackb(recv_exactly(sock, length), raw=False, strict_map_key=False)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the other side closed ``sock`` (EOF or reset) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return False
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionError, OSError):
            return True


def count_open(socks: list[socket.socket], timeout: float) -> int:
    """How many of ``socks`` the server still holds after waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    open_ = list(socks)
    while open_ and time.monotonic() < deadline:
        ready, _, _ = select.select(open_, [], [], max(0.0, deadline - time.monotonic()))
        for s in ready:
            try:
                data = s.recv(65536)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                open_.remove(s)
    return len(open_)


def blast(address: tuple[str, int], head: bytes, body_bytes: int) -> str:
    """Send ``head`` then ``body_bytes`` zeros (or until the server hangs up); then wait for
    the server to close. Returns what the server answered (``b''`` decoded) or how it ended."""
    sock = socket.create_connection(address, timeout=120)
    chunk = bytes(MiB)
    sent = 0
    try:
        sock.sendall(head)
        while sent < body_bytes:
            sock.sendall(chunk[:min(MiB, body_bytes - sent)])
            sent += min(MiB, body_bytes - sent)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except (ConnectionError, OSError):
        pass
    sock.close()
    return f"sent {sent // MiB} MiB; answer {answer[:80]!r}"


def write_manifest(folder: Path, parallelism: int) -> Path:
    manifest = folder / "job.yaml"
    manifest.write_text(json.dumps({
        "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
        "metadata": {"name": "sec"},
        "spec": {"pipeline": "streamjob.examples.wordcount:build",
                 "args": {"records": 10_000_000, "words": 100, "rate": 1000,
                          "output": str(folder / "out")},
                 "parallelism": parallelism,
                 "checkpoint": {"interval": "1h"},
                 "storage": f"file://{folder / 'ckpt'}"}}))
    return manifest


def child_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=PYPATH, STREAMJOB_WORKER_TOKEN=WORKER_TOKEN,
                STREAMJOB_LOG="INFO", **extra)


class Coordinator:
    def __init__(self, folder: Path, parallelism: int, env: dict[str, str]):
        self.folder = folder
        manifest = write_manifest(folder, parallelism)
        (folder / "api-token").write_text(API_TOKEN)
        self.status_file = folder / "status.json"
        self.log = folder / "coordinator.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamjob", "coordinator", "--manifest", str(manifest),
             "--job-id", "sec-1", "--status-file", str(self.status_file), "--api-port", "0",
             "--api-token-file", str(folder / "api-token")],
            env=child_env(**env), stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status = json.loads(self.status_file.read_text())
                if status["coordinator"]["pid"] == self.proc.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        else:
            raise AssertionError("the coordinator did not start")
        self.pid = self.proc.pid
        self.port = status["coordinator"]["port"]
        self.api_port = status["coordinator"]["api_port"]

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class FakeCoordinator:
    """Plays the coordinator for one real worker process: gets its HELLO (pid, data port)
    and can send it control messages."""

    def __init__(self, folder: Path, parallelism: int, env: dict[str, str],
                 extra_args: tuple[str, ...] = ()):
        self.folder = folder
        self.manifest = write_manifest(folder, parallelism)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.log = folder / "worker.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamjob", "worker", "--manifest", str(self.manifest),
             "--coordinator", f"127.0.0.1:{self.listener.getsockname()[1]}", "--index", "0",
             *extra_args],
            env=child_env(**env), stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        self.listener.settimeout(60)
        self.control, _ = self.listener.accept()
        self.control.settimeout(60)
        kind, hello = read_frame(self.control)
        assert kind == CONTROL and hello["type"] == "HELLO", hello
        self.pid, self.data_port = hello["pid"], hello["port"]
        assert self.pid == self.proc.pid

    def send(self, msg_type: str, **fields: Any) -> None:
        self.control.sendall(frame(CONTROL, pack({"type": msg_type, **fields})))

    def wait_for(self, msg_type: str, timeout: float) -> dict[str, Any]:
        self.control.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, msg = read_frame(self.control)
            except TimeoutError:
                break
            if msg["type"] == msg_type:
                return msg
        raise AssertionError(f"no {msg_type} from the worker within {timeout} s; log:\n"
                             + self.output()[-3000:])

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.control.close()
        self.listener.close()


@pytest.fixture
def coordinator(tmp_path):
    started = []

    def start(parallelism: int = 2, **env: str) -> Coordinator:
        c = Coordinator(tmp_path, parallelism, env)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


@pytest.fixture
def worker(tmp_path):
    started = []

    def start(parallelism: int = 2, extra_args: tuple[str, ...] = (), **env: str):
        w = FakeCoordinator(tmp_path, parallelism, env, extra_args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
