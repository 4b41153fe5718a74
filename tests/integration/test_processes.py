"""The coordinator and workers started as separate commands (as the operator does in pods),
with Prometheus metrics scraped from each."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import PYPATH, assert_exactly_once

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_coordinator_and_workers_as_commands_expose_metrics(tmp_path: Path):
    records, words = 150_000, 400
    manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                "metadata": {"name": "pods"},
                "spec": {"pipeline": "streamjob.examples.wordcount:build", "parallelism": 2,
                         "args": {"records": records, "words": words, "rate": 40_000,
                                  "output": str(tmp_path / "out")},
                         "checkpoint": {"interval": "300ms"},
                         "storage": f"file://{tmp_path / 'ck'}"}}
    env = dict(os.environ, PYTHONPATH=PYPATH, STREAMJOB_MANIFEST=yaml.safe_dump(manifest),
               STREAMJOB_API_TOKEN="t0ken")
    port, api, cm = free_port(), free_port(), free_port()
    wm = [free_port(), free_port()]
    coord = subprocess.Popen([sys.executable, "-m", "streamjob", "coordinator", "--job-id",
                              "uid-1234", "--port", str(port), "--api-port", str(api),
                              "--metrics-port", str(cm)], env=env, cwd=tmp_path)
    workers = [subprocess.Popen([sys.executable, "-m", "streamjob", "worker", "--coordinator",
                                 f"127.0.0.1:{port}", "--index", str(i), "--metrics-port",
                                 str(wm[i])], env=env, cwd=tmp_path) for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        seen_records = 0.0
        while time.monotonic() < deadline and seen_records < records / 4:
            time.sleep(0.3)
            try:
                seen_records = metric(scrape(wm[0]), "streamjob_records_in", task="t0")
            except OSError:
                continue
        assert seen_records > 0
        coord_metrics = ""
        while time.monotonic() < deadline:
            coord_metrics = scrape(cm)
            if metric(coord_metrics, "streamjob_last_completed_checkpoint_id") >= 1:
                break
            time.sleep(0.2)
        assert metric(coord_metrics, "streamjob_last_completed_checkpoint_id") >= 1
        assert metric(coord_metrics, "streamjob_checkpoint_duration_seconds_count") >= 1
        assert metric(coord_metrics, "streamjob_running_subtasks") == 2
        assert coord.wait(120) == 0
        for w in workers:
            assert w.wait(30) == 0
    finally:
        for p in [coord, *workers]:
            if p.poll() is None:
                p.kill()
    assert_exactly_once(tmp_path / "out", records, words)
    assert any((tmp_path / "ck" / "uid-1234").iterdir())


def test_coordinator_refuses_workers_without_the_job_token(tmp_path: Path):
    from streamjob import wire

    manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                "metadata": {"name": "tok"},
                "spec": {"pipeline": "streamjob.examples.wordcount:build", "parallelism": 2,
                         "args": {"output": str(tmp_path / "out")},
                         "storage": f"file://{tmp_path / 'ck'}"}}
    env = dict(os.environ, PYTHONPATH=PYPATH, STREAMJOB_MANIFEST=yaml.safe_dump(manifest),
               STREAMJOB_WORKER_TOKEN="s3cret")
    port = free_port()
    coord = subprocess.Popen([sys.executable, "-m", "streamjob", "coordinator", "--job-id",
                              "tok-1", "--port", str(port), "--api-port", "0"], env=env)
    try:
        def hello(worker: int, token: str) -> socket.socket:
            deadline = time.monotonic() + 30
            while True:
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            s.sendall(wire.control("HELLO", attempt=-1, worker=worker, host="127.0.0.1",
                                   port=1, pid=1, token=token))
            s.settimeout(30)
            return s

        def read_exactly(s: socket.socket, n: int) -> bytes:
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError("closed by the coordinator")
                buf += chunk
            return buf

        for token in ("wrong", ""):
            with hello(0, token) as refused:
                assert refused.recv(100) == b""  # closed, nothing sent
        # Accepted: with both workers in, the coordinator deploys to each of them.
        with hello(0, "s3cret") as w0, hello(1, "s3cret") as w1:
            for w in (w0, w1):
                length, _kind = wire.HEADER.unpack(read_exactly(w, wire.HEADER.size))
                msg = wire.unpack_control(read_exactly(w, length))
                assert msg["type"] == "DEPLOY" and msg["parallelism"] == 2, msg
    finally:
        coord.kill()
        coord.wait()


def test_coordinator_refuses_unreadable_checkpoints_unless_allowed_to_start_fresh(
        tmp_path: Path):
    """Storage holds a checkpoint of the job but none is readable: the coordinator fails with
    the reason and leaves committed output alone; ``--allow-fresh-start`` starts over."""
    from streamjob.connectors.filesink import job_token

    records, words = 30_000, 200
    manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                "metadata": {"name": "fresh"},
                "spec": {"pipeline": "streamjob.examples.wordcount:build", "parallelism": 2,
                         "args": {"records": records, "words": words, "rate": 0,
                                  "output": str(tmp_path / "out")},
                         "storage": f"file://{tmp_path / 'ck'}"}}
    env = dict(os.environ, PYTHONPATH=PYPATH, STREAMJOB_MANIFEST=yaml.safe_dump(manifest))
    (tmp_path / "ck" / "fresh-1" / "chk-3").mkdir(parents=True)
    (tmp_path / "ck" / "fresh-1" / "chk-3" / "_metadata").write_text("{not json")
    committed = tmp_path / "out" / f"part-{job_token('fresh-1')}-0-3"
    committed.parent.mkdir()
    committed.write_text("w0 1\n")

    def run(*flags: str) -> tuple[int, dict]:
        port = free_port()
        status = tmp_path / f"status{len(flags)}.json"
        coord = subprocess.Popen([sys.executable, "-m", "streamjob", "coordinator",
                                  "--job-id", "fresh-1", "--port", str(port), "--api-port",
                                  "0", "--status-file", str(status), *flags], env=env)
        workers = [subprocess.Popen([sys.executable, "-m", "streamjob", "worker",
                                     "--coordinator", f"127.0.0.1:{port}", "--index", str(i)],
                                    env=env) for i in range(2)]
        try:
            code = coord.wait(120)
        finally:
            for p in [coord, *workers]:
                if p.poll() is None:
                    p.kill()
                p.wait()
        return code, yaml.safe_load(status.read_text())

    code, status = run()
    assert code == 2 and status["state"] == "FAILED"
    assert "chk-3: fresh-1/chk-3/_metadata is corrupt" in status["message"]
    assert committed.read_text() == "w0 1\n"       # committed output untouched
    code, status = run("--allow-fresh-start")
    assert code == 0 and status["state"] == "FINISHED", status
    assert not committed.exists()                  # replaced by the replay from record 0
    assert_exactly_once(tmp_path / "out", records, words)
