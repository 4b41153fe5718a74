"""The coordinator API against a real local run: fields present and consistent, sizes equal
to the bytes stored, 401 without (or with a wrong) token, savepoints, and the CLI views."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from streamjob import timeline as tl

from .conftest import PYPATH, ROOT

pytestmark = pytest.mark.integration

SPEC = yaml.safe_load((ROOT / "worker/streamjob/openapi.yaml").read_text())


def call(port: int, path: str, token: str | None, method: str = "GET", body=None):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def check_schema(instance, name: str) -> None:
    validator = pytest.importorskip("openapi_schema_validator")
    schema = {"components": SPEC["components"], "$ref": f"#/components/schemas/{name}"}
    validator.validate(instance, schema, cls=validator.OAS30Validator)


def stored_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*")
               if f.is_file() and f.name != "_metadata")


def test_api_against_a_real_run(run_job, tmp_path):
    # 15 s at full rate: it must still run when the CLI and the savepoint calls below come
    job = run_job(args={"records": 1_500_000, "words": 1000, "rate": 100_000},
                  checkpoint={"interval": "300ms", "retained": 100, "timeout": "5m"})
    status = job.wait_for(lambda s: s.get("state") == "RUNNING"
                          and (s.get("last_checkpoint") or {}).get("id", 0) >= 2,
                          what="two completed checkpoints")
    port = status["coordinator"]["api_port"]
    token = (job.cwd / ".streamjob/runs/wc/api-token").read_text().strip()

    # -- no token, wrong token: 401 and nothing else, on every route and method
    for path, method in (("/api/v1/job", "GET"), ("/api/v1/checkpoints", "GET"),
                         ("/api/v1/checkpoints/1", "GET"), ("/api/v1/savepoints", "POST"),
                         ("/api/v1/nothing", "GET")):
        for bad in (None, "wrong", token + "x", ""):
            code, body = call(port, path, bad, method, {} if method == "POST" else None)
            assert (code, body) == (401, {"error": "unauthorized",
                                           "message": "unauthorized"}), (path, bad)

    # -- job status
    code, st = call(port, "/api/v1/job", token)
    assert code == 200
    check_schema(st, "JobStatus")
    assert st["name"] == "wc" and st["parallelism"] == 2 and st["coordinator"]["api_port"] == port
    # what `streamjob savepoint` waits for (the job's checkpoint timeout and a margin)
    assert st["checkpoint_timeout_s"] == 300
    from streamjob.cli import SAVEPOINT_MARGIN_S, savepoint_wait_s
    assert savepoint_wait_s(st) == 300 + SAVEPOINT_MARGIN_S

    # -- history and per-checkpoint timings
    code, hist = call(port, "/api/v1/checkpoints", token)
    assert code == 200
    completed = [h for h in hist["checkpoints"] if h["status"] == "COMPLETED"]
    assert len(completed) >= 2
    for h in hist["checkpoints"]:
        check_schema(h, "CheckpointSummary")
        assert "timings" not in h
    for h in completed:
        code, entry = call(port, f"/api/v1/checkpoints/{h['id']}", token)
        assert code == 200
        check_schema(entry, "CheckpointDetail")
        for t in (t for subtasks in entry["timings"].values() for t in subtasks):
            check_schema(t, "SubtaskTimings")
        t0, done = entry["triggered_at"], entry["completed_at"]
        assert entry["duration_ms"] == pytest.approx((done - t0) * 1000, abs=0.1)
        assert set(entry["task_names"]) == set(entry["timings"]) == {"t0", "t1"}
        assert all(len(v) == 2 for v in entry["timings"].values())
        for subtasks in entry["timings"].values():
            for t in subtasks:
                assert t0 <= t["first_barrier"] <= t["sync_done"] <= t["ack"] <= done
                assert t["alignment_ms"] <= entry["duration_ms"]
                assert t["sync_ms"] + t["async_ms"] <= entry["duration_ms"]
                assert t["buffered_records"] >= 0 and not t["unaligned"]
        # sizes: history == sum of the subtasks' bytes == files stored next to _metadata
        folder = Path(entry["path"].removeprefix("file://"))
        assert (folder / "_metadata").is_file()
        acked = sum(t["bytes"] for s in entry["timings"].values() for t in s)
        assert entry["size_bytes"] == acked == stored_bytes(folder) > 0
        # the _metadata body draws the same timeline as the API entry
        from streamjob.checkpoints import decode_metadata

        stored = tl.entry_from_metadata(decode_metadata((folder / "_metadata").read_bytes()))
        assert tl.parse_text(tl.render_text(stored)) == tl.parse_text(tl.render_text(entry))
    assert call(port, "/api/v1/checkpoints/99999", token)[0] == 404

    # -- the CLI: table, timeline, SVG
    env = dict(os.environ, PYTHONPATH=PYPATH)
    cli = [sys.executable, "-m", "streamjob", "checkpoints", "wc"]
    out = subprocess.run(cli, cwd=job.cwd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == list(tl.TABLE_COLUMNS)
    assert {int(line.split()[0]) for line in lines[1:]} >= {h["id"] for h in completed}
    cid = completed[-1]["id"]
    svg = tmp_path / "t.svg"
    out = subprocess.run([*cli, "--id", str(cid), "--out", str(svg)], cwd=job.cwd, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert list(tl.parse_text(out.stdout)) == ["t0[0]", "t0[1]", "t1[0]", "t1[1]"]
    assert ET.parse(svg).getroot().tag.endswith("svg")

    # -- a checkpoint now, through the API: complete when answered, in the history and on disk
    last = call(port, "/api/v1/job", token)[1]["last_checkpoint"]["id"]
    code, cp = call(port, "/api/v1/checkpoints", token, "POST", {})
    assert code == 200, cp
    assert cp["id"] > last
    folder = Path(cp["path"].removeprefix("file://"))
    assert (folder / "_metadata").is_file() and cp["size_bytes"] == stored_bytes(folder) > 0
    code, entry = call(port, f"/api/v1/checkpoints/{cp['id']}", token)
    assert code == 200 and entry["kind"] == "checkpoint" and entry["status"] == "COMPLETED"
    assert call(port, "/api/v1/checkpoints", None, "POST", {})[0] == 401

    # -- a savepoint through the API
    code, sp = call(port, "/api/v1/savepoints", token, "POST", {})
    assert code == 200, sp
    folder = Path(sp["uri"].removeprefix("file://"))
    assert (folder / "_metadata").is_file()
    assert sp["size_bytes"] == stored_bytes(folder)
    code, sps = call(port, "/api/v1/savepoints", token)
    assert code == 200 and sp["id"] in [s["id"] for s in sps["savepoints"]]
    code, entry = call(port, f"/api/v1/checkpoints/{sp['id']}", token)
    assert code == 200 and entry["kind"] == "savepoint" and entry["status"] == "COMPLETED"

    assert job.wait(180) == 0


def test_task_metrics_show_a_cpu_bound_task_busy_and_its_source_backpressured(run_job):
    job = run_job("tests.integration.jobs:cpu_bound_wordcount", name="busy",
                  args={"records": 50_000_000, "words": 1000, "cost_us": 50,
                        "rate": 200_000},
                  checkpoint={"interval": "1s"})
    status = job.wait_for(lambda s: s.get("state") == "RUNNING", what="RUNNING")
    port = status["coordinator"]["api_port"]
    token = (job.cwd / ".streamjob/runs/busy/api-token").read_text().strip()
    assert call(port, "/api/v1/tasks", None)[0] == 401
    assert call(port, "/api/v1/tasks?window=soon", token)[0] == 400

    def measured():
        # The spinning task is busy nearly all the time; its source, which could read 200k/s,
        # waits for room downstream most of the time. (Polled until a window shows it: on a
        # loaded machine a window may also hold a checkpoint or a scheduling hiccup.)
        code, body = call(port, "/api/v1/tasks?window=3", token)
        assert code == 200
        source, counting = body["tasks"]
        if len(counting["subtasks"]) < 2 or counting["busy_ratio"] < 0.8 or \
                min(s["busy_ratio"] for s in counting["subtasks"]) < 0.6 or \
                source["backpressured_ratio"] < 0.5 or source["backlog_growth_per_s"] is None:
            return None  # (no growth yet: the window does not span two reports)
        return body

    deadline = time.monotonic() + 90
    body = None
    while body is None:
        assert time.monotonic() < deadline, call(port, "/api/v1/tasks?window=3", token)
        body = measured()
        if body is None:
            time.sleep(0.5)  # polling for a condition, not synchronisation
    check_schema(body, "TaskMetrics")
    assert body["window_s"] == 3 and body["state"] == "RUNNING" and not body["restoring"]
    source, counting = body["tasks"]
    assert [t["id"] for t in body["tasks"]] == ["t0", "t1"]
    assert counting["inputs"] == ["t0"] and source["inputs"] == []
    assert "Spin" in counting["name"]
    assert source["busy_ratio"] < 0.4, source
    assert all(s["idle_ratio"] < 0.4 for s in counting["subtasks"]), counting
    assert source["backlog"] > 0 and counting["backlog"] is None
    assert source["backlog_growth_per_s"] > 0  # it reads well below 200k/s
    # Records flow at a rate the spin allows (50 us each: at most ~20k/s per subtask).
    assert 100 < counting["records_in_per_s"] <= 2 * 20_000 * 1.2, counting
    assert source["records_out_per_s"] > 100
    assert call(port, "/api/v1/tasks?window=100000", token)[1]["window_s"] == 300
