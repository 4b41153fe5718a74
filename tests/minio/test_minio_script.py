"""scripts/minio up / down, as a developer or .ci/run uses them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from daemons import parse_exports

from streamjob.s3storage import S3Storage

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "minio"


def test_up_prints_exports_and_down_stops(tmp_path, minio_server):  # built by the fixture
    state = tmp_path / "state.json"
    run_env = dict(os.environ, STREAMJOB_MINIO_STATE=str(state))
    # Command substitution must not hang: the server may not keep stdout open.
    up = subprocess.run([str(SCRIPT), "up"], env=run_env, capture_output=True, text=True,
                        timeout=90)
    assert up.returncode == 0, up.stderr
    env = parse_exports(up.stdout)
    try:
        assert set(env) >= {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert env["AWS_SECRET_ACCESS_KEY"] not in up.stderr
        store = S3Storage.from_uri("s3://cli-test/x", env=env)
        store.put("k", b"v")
        assert store.get("k") == b"v"

        again = subprocess.run([str(SCRIPT), "up"], env=run_env, capture_output=True,
                               text=True, timeout=30)
        assert again.returncode == 0 and parse_exports(again.stdout) == env
        pid = __import__("json").loads(state.read_text())["pid"]
    finally:
        down = subprocess.run([str(SCRIPT), "down"], env=run_env, capture_output=True,
                              text=True, timeout=30)
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(
        f"/proc/{pid}/status").read_bytes().lower()


def test_build_is_cached(minio_server):
    started = time.monotonic()
    out = subprocess.run([str(SCRIPT), "build"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_file()
    assert time.monotonic() - started < 10
