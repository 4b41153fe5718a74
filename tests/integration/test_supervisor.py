"""The local supervisor (``streamjob run``) itself: killed, run twice, workers told to stop
by someone else, storage it cannot write, and the savepoint command against such runs."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import PYPATH, assert_exactly_once, children

pytestmark = pytest.mark.integration

RECORDS, WORDS = 240_000, 500


def _streamjob(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{PYPATH}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([sys.executable, "-m", "streamjob", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("streamjob: error")]


def _gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists()
                 and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes {alive} outlived their supervisor")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_rerun_after_the_supervisor_was_killed_resumes_the_same_job_exactly_once(run_job, sig):
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 25_000})
    first = job.wait_for(lambda s: s.get("state") == "RUNNING" and
                         (s.get("last_checkpoint") or {}).get("id", 0) >= 2,
                         what="two checkpoints")
    kids = [pid for pid, _ in children(job.proc.pid)]
    run_dir = job.cwd / ".streamjob/runs" / job.name
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "api-token").stat().st_mode) == 0o600
    # SIGKILL: its children die with it (PDEATHSIG); SIGINT (Ctrl-C): it kills them and exits.
    job.proc.send_signal(sig)
    assert job.proc.wait(60) == (-9 if sig == signal.SIGKILL else 130)
    _gone(kids)
    assert json.loads((run_dir / "run.json").read_text())["state"] == "running"

    # Item 8: the savepoint command says what happened, in one line.
    result = _streamjob(job.cwd, "savepoint", job.name)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert _error_lines(result) == [
        f"streamjob: error: job '{job.name}' is not running: its streamjob run (pid "
        f"{job.proc.pid}) is gone; run the same command again to resume {first['job_id']} from "
        "its latest checkpoint"]

    again = run_job(args={"records": RECORDS, "words": WORDS, "rate": 60_000})
    s = again.wait_for(lambda s: s.get("state") == "RUNNING" and
                       s.get("coordinator", {}).get("pid") not in kids,
                       what="the resumed job running")
    assert s["job_id"] == first["job_id"]
    assert s["restored_from"] >= first["last_checkpoint"]["id"]
    assert again.wait() == 0, again.output()
    assert f"resuming the unfinished run {first['job_id']}" in again.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["state"] == "finished" and info["job_id"] == first["job_id"]

    # A finished run is over: the next run is a new job.
    third = run_job(args={"records": 1000, "words": WORDS, "rate": 0,
                          "output": str(job.cwd / "output2")})
    assert third.wait() == 0, third.output()
    assert json.loads((run_dir / "run.json").read_text())["job_id"] != first["job_id"]


def test_a_second_run_of_the_same_job_in_the_same_folder_refuses(run_job):
    job = run_job(args={"records": 150_000, "words": WORDS, "rate": 40_000})
    job.wait_for(lambda s: s.get("state") == "RUNNING", what="the job running")
    result = _streamjob(job.cwd, "run", str(job.cwd / f"{job.name}.yaml"))
    assert result.returncode == 2, result.stderr
    assert _error_lines(result) == [
        f"streamjob: error: job '{job.name}' is already running in this folder (streamjob run, "
        f"pid {job.proc.pid}); stop it first, or run from another folder"], result.stderr
    assert len(job.workers()) == 2
    assert job.wait() == 0, job.output()
    assert_exactly_once(job.cwd / "output", 150_000, WORDS)


def test_a_worker_sigtermed_while_the_job_runs_is_restarted(run_job):
    job = run_job(args={"records": 200_000, "words": WORDS, "rate": 30_000})
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint"),
                 what="a checkpoint")
    victim = job.workers()[0]
    # SIGTERM from someone else: the worker exits (0 on main at the time of writing, so the
    # supervisor took it for "told to shut down" and the job hung), though the job is not over.
    os.kill(victim, signal.SIGTERM)
    job.wait_for(lambda s: s.get("restarts", 0) >= 1 and s.get("state") == "RUNNING",
                 what="the job running again", timeout=120)
    assert job.wait() == 0, job.output()
    assert "exited with code" in job.output()
    assert_exactly_once(job.cwd / "output", 200_000, WORDS)


def test_unwritable_storage_is_one_line_and_nothing_starts(tmp_path):
    manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                "metadata": {"name": "ro"},
                "spec": {"pipeline": "streamjob.examples.wordcount:build",
                         "args": {"output": str(tmp_path / "out")},
                         "storage": "file:///proc/streamjob-checkpoints"}}
    (tmp_path / "ro.yaml").write_text(yaml.safe_dump(manifest))
    result = _streamjob(tmp_path, "run", "ro.yaml")
    assert result.returncode == 2, result.stderr
    errors = _error_lines(result)
    assert len(errors) == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert errors[0].startswith("streamjob: error: storage file:///proc/streamjob-checkpoints "
                                "is not usable: cannot write"), errors
    assert not (tmp_path / ".streamjob").exists()


@pytest.mark.parametrize(("source", "error"), [
    ("x = 1 / 0\n", "spec.pipeline: importing module 'userjob' failed: ZeroDivisionError: "
                    "division by zero (userjob.py, line 1)"),
    ("def build(args)\n", "spec.pipeline: importing module 'userjob' failed: SyntaxError: "
                          "expected ':' (userjob.py, line 1)"),
    ("def build(args):\n    raise RuntimeError('no broker')\n",
     "spec.pipeline: userjob:build(args) failed: RuntimeError: no broker (userjob.py, line 2)"),
])
def test_a_failing_pipeline_module_is_one_line_and_verbose_shows_the_traceback(
        tmp_path, source, error):
    (tmp_path / "userjob.py").write_text(source)
    manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                "metadata": {"name": "user"},
                "spec": {"pipeline": "userjob:build", "storage": f"file://{tmp_path / 'ck'}"}}
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(manifest))
    result = _streamjob(tmp_path, "run", "user.yaml")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"streamjob: error: {error}"], result.stderr
    verbose = _streamjob(tmp_path, "run", "user.yaml", "--verbose")
    assert verbose.returncode == 2
    assert "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == f"streamjob: error: {error}"
    assert not (tmp_path / ".streamjob").exists() and not (tmp_path / "ck").exists()


def test_failing_user_code_logs_one_full_traceback_per_worker(run_job):
    job = run_job("tests.integration.jobs:failing", name="boom",
                  restart={"maxAttempts": 5, "delay": "10ms"})
    assert job.wait(120) == 1
    out = job.output()
    assert "no restart attempts left (5 allowed)" in out
    # One traceback per worker process (the first failure), one line per later attempt.
    assert out.count("Traceback (most recent call last)") <= 2, out
    assert "(again, " in out
    assert len(out.splitlines()) < 80, out


def test_progress_restarts_keep_counting_across_a_coordinator_restart(run_job):
    import re

    job = run_job(args={"records": 400_000, "words": WORDS, "rate": 25_000})
    job.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint"),
                 what="a checkpoint")
    os.kill(job.workers()[0], signal.SIGKILL)
    job.wait_for(lambda s: s.get("restarts", 0) >= 1 and s.get("state") == "RUNNING",
                 what="the job restarted once")
    old = job.coordinator()
    os.kill(old, signal.SIGKILL)
    job.wait_for(lambda s: s.get("coordinator", {}).get("pid") not in (None, old)
                 and s.get("state") == "RUNNING", what="a new coordinator running")
    assert job.wait() == 0, job.output()
    after = job.output().split("the coordinator exited with code", 1)[1]
    shown = [int(n) for n in re.findall(r"restarts (\d+)", after)]
    assert shown, job.output()
    # One worker failover and one coordinator restart: 2, not 1 (the new coordinator counts
    # from 0) nor 3 (a coordinator that persists its count, added again).
    assert shown[-1] == 2, job.output()
    assert_exactly_once(job.cwd / "output", 400_000, WORDS)
