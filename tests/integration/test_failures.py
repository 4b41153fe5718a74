"""Failure paths: checkpoint timeouts, corrupt metadata, bad manifests, failing user code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import PYPATH, assert_exactly_once

pytestmark = pytest.mark.integration

WORDS = 300


def test_checkpoint_timeout_is_aborted_counted_and_loses_nothing(run_job):
    records = 80_000
    # Alignment behind a slow keyed task takes far longer than 50 ms: every periodic
    # checkpoint times out; tolerableFailures is high so the job keeps going.
    job = run_job("tests.integration.jobs:slow_wordcount", name="slow",
                  args={"records": records, "words": WORDS, "delay": 0.005},
                  checkpoint={"timeout": "50ms", "tolerableFailures": 1000})
    job.wait_for(lambda s: s.get("failed_checkpoints", 0) >= 2, what="timed-out checkpoints")
    assert job.wait(240) == 0, job.output()
    out = job.output()
    assert "aborted: not complete within 0.05s" in out
    assert job.status()["restarts"] == 0
    assert_exactly_once(job.cwd / "output", records, WORDS)


def test_too_many_failed_checkpoints_restart_the_job_exactly_once(run_job):
    records = 60_000
    job = run_job("tests.integration.jobs:slow_wordcount", name="slow",
                  args={"records": records, "words": WORDS, "delay": 0.005},
                  checkpoint={"timeout": "50ms", "tolerableFailures": 1},
                  restart={"maxAttempts": 3})
    job.wait_for(lambda s: s.get("restarts", 0) >= 1, what="a restart after failed checkpoints")
    code = job.wait(240)
    assert "checkpoint(s) failed in a row" in job.output()
    # The final checkpoint keeps timing out too, so the job must give up; what was
    # committed before is still exact (a prefix of the updates, without duplicates).
    from streamjob.examples.wordcount import check_output

    result = check_output(str(job.cwd / "output"), records, WORDS)
    assert result["duplicates"] == 0 and result["unexpected"] == 0, result
    assert code != 0
    assert job.status()["state"] == "FAILED"


def test_corrupt_metadata_falls_back_to_the_previous_checkpoint(run_job, tmp_path: Path):
    """The newest checkpoint's ``_metadata`` is corrupt and its output not yet committed
    (the coordinator stalls after writing it, before telling the sinks, and dies there):
    the restarted coordinator skips it with a log line and restores the one before it,
    exactly once. (With its output already committed the job fails instead: see
    test_coordinator_faults.)"""
    from streamjob import faults

    records = 200_000
    job = run_job(args={"records": records, "words": WORDS, "rate": 30_000},
                  checkpoint={"retained": 3},
                  env={faults.ENV: "coordinator.after-metadata=stall:30,skip=3",
                       faults.DIR_ENV: str(tmp_path / "faults")})
    deadline = time.monotonic() + 90
    while not faults.fired(tmp_path / "faults"):
        assert time.monotonic() < deadline and job.proc.poll() is None, job.output()[-3000:]
        time.sleep(0.02)
    coordinator = job.coordinator()  # stalled: _metadata written, nothing committed yet
    try:
        chk = sorted((job.checkpoints() / job.status()["job_id"]).glob("chk-*/_metadata"),
                     key=lambda p: int(p.parent.name[4:]))
        newest = chk[-1]
        newest.write_bytes(newest.read_bytes()[:-40] + b"garbage")
    finally:
        os.kill(coordinator, signal.SIGKILL)
    bad_id, previous = (int(p.parent.name[4:]) for p in (newest, chk[-2]))
    job.wait_for(lambda s: s.get("coordinator", {}).get("pid") not in (None, coordinator)
                 and s.get("state") == "RUNNING", what="the restarted coordinator")
    assert job.status()["restored_from"] == previous
    assert job.wait() == 0, job.output()
    assert f"skipping checkpoint {bad_id}" in job.output()
    assert_exactly_once(job.cwd / "output", records, WORDS)


def test_failing_user_code_gives_up_after_max_attempts(run_job):
    job = run_job("tests.integration.jobs:failing", name="boom",
                  restart={"maxAttempts": 2, "delay": "10ms"})
    assert job.wait(120) == 1
    out = job.output()
    assert "user function failed" in out
    assert "no restart attempts left (2 allowed)" in out
    # No checkpoint ever completed, so nothing was committed (the folder may not exist).
    assert list((job.cwd / "output").glob("part-*")) == []
    status = job.status()
    assert status["state"] == "FAILED" and status["restarts"] == 3


def test_file_source_rebalance_and_sink_exactly_once(run_job, tmp_path: Path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    expected = []
    for f in range(3):
        lines = [f"file{f} line {i}" for i in range(20_000)]
        (inputs / f"{f}.txt").write_text("\n".join(lines) + "\n")
        expected += [line.upper() for line in lines]
    job = run_job("tests.integration.jobs:lines_upper", name="lines", parallelism=2,
                  args={"input": str(inputs / "*.txt")})
    assert job.wait() == 0, job.output()
    got = []
    for part in (job.cwd / "output").glob("part-*"):
        got += part.read_text().splitlines()
    assert sorted(got) == sorted(expected)


def _run_bad(tmp_path: Path, spec_changes: dict, extra: list[str] | None = None):
    manifest = {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                "metadata": {"name": "bad"},
                "spec": {"pipeline": "streamjob.examples.wordcount:build", "parallelism": 2,
                         "args": {"output": str(tmp_path / "out")},
                         "storage": f"file://{tmp_path / 'ck'}"}}
    manifest["spec"].update(spec_changes)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    env = dict(os.environ, PYTHONPATH=PYPATH)
    return subprocess.run([sys.executable, "-m", "streamjob", "run", str(path), *(extra or [])],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("change", "field"), [
    ({"paralelism": 3}, "spec.paralelism: unknown field"),
    ({"parallelism": 200}, "parallelism 200 is above maxParallelism 128"),
    ({"checkpoint": {"interval": "5 parsecs"}}, "spec.checkpoint.interval: '5 parsecs' is not"),
    ({"pipeline": "no_such_module:build"}, "spec.pipeline: cannot import module"),
    ({"checkpoint": {"mode": "twice"}}, "spec.checkpoint.mode"),
    ({"args": {"words": 0, "output": "x"}}, "spec.args"),
])
def test_bad_manifest_is_one_clear_error_and_nothing_starts(tmp_path: Path, change, field):
    started = time.time()
    result = _run_bad(tmp_path, change)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("streamjob: error")]
    assert len(errors) == 1, result.stderr
    assert field in errors[0]
    assert not (tmp_path / ".streamjob").exists()  # no run folder, so no process was started
    assert not (tmp_path / "ck").exists()
    assert time.time() - started < 60


def test_missing_savepoint_is_a_clear_error(tmp_path: Path):
    result = _run_bad(tmp_path, {}, ["--from-savepoint", str(tmp_path / "nowhere")])
    assert result.returncode == 2
    assert "no savepoint at" in result.stderr
