"""Item 5 of issue 12: metrics answer without a token (as Prometheus expects), so outside
Kubernetes they listen on 127.0.0.1 only. Guards the default binding of the worker's and
the coordinator's ``--metrics-port`` (``--bind`` defaults to 127.0.0.1)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.security.conftest import child_env, write_manifest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def _wait_listening(port: int, proc: subprocess.Popen, log: Path) -> list[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = _listening(port)
        if found:
            return found
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_worker_metrics_listen_on_loopback_only(worker):
    port = _free_port()
    w = worker(extra_args=("--metrics-port", str(port)))
    assert _wait_listening(port, w.proc, w.log) == ["0100007F"]  # 127.0.0.1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        assert b"streamjob_worker_index" in resp.read()


def test_coordinator_metrics_listen_on_loopback_only(tmp_path):
    port = _free_port()
    manifest = write_manifest(tmp_path, 1)
    log = tmp_path / "coordinator.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamjob", "coordinator", "--manifest", str(manifest),
         "--job-id", "sec-1", "--api-port", "0", "--metrics-port", str(port)],
        env=child_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        assert _wait_listening(port, proc, log) == ["0100007F"]
    finally:
        proc.kill()
        proc.wait()
