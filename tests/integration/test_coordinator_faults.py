"""The coordinator under faults at its protocol points (``streamjob.faults``), with real
``streamjob run`` process trees: never lose an epoch, never hang, never undo a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamjob import checkpoints as ckpt
from streamjob import faults
from streamjob.storage import LocalStorage
from tests.integration.conftest import PYPATH, assert_exactly_once

pytestmark = pytest.mark.integration

RECORDS, WORDS = 200_000, 400


def fault_env(tmp_path: Path, rules: str, **extra: str) -> dict[str, str]:
    return {faults.ENV: rules, faults.DIR_ENV: str(tmp_path / "faults"), **extra}


def wait_fired(job, tmp_path: Path, timeout: float = 90, index: int = 0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if faults.fired(tmp_path / "faults", index):
            return
        if job.proc.poll() is not None:
            raise AssertionError(f"job ended before the fault fired:\n{job.output()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"fault {index} did not fire; status {job.status()}")


def running_with_checkpoint(n: int = 1):
    return lambda s: s.get("state") == "RUNNING" and (s.get("last_checkpoint") or {}).get(
        "id", 0) >= n


def savepoint_cli(job, stop: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamjob", "savepoint", job.name,
                           *(["--stop"] if stop else [])], cwd=job.cwd,
                          env=dict(job.env, PYTHONPATH=PYPATH), capture_output=True,
                          text=True, timeout=120)


def completed_ids(job, job_id: str) -> list[int]:
    storage = LocalStorage(job.checkpoints())
    return sorted(n for n, done in ckpt.list_checkpoint_ids(storage, job_id).items() if done)


# Kills at after-last-ack and after-metadata: test_fault_points.py.


def test_failover_while_metadata_is_written_restores_that_checkpoint(run_job, tmp_path):
    """Issue 11.1: the restore point is chosen only after the completion in flight."""
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 30_000},
                  checkpoint={"retained": 5},
                  env=fault_env(tmp_path, "storage.put:*/chk-*/_metadata=stall:3,skip=2"))
    wait_fired(job, tmp_path)
    job_id = job.status()["job_id"]
    folders = sorted(int(p.name[4:]) for p in (job.checkpoints() / job_id).glob("chk-*"))
    stalled = max(folders)
    assert stalled not in completed_ids(job, job_id)  # its _metadata is being written
    os.kill(job.workers()[0], signal.SIGKILL)
    s = job.wait_for(lambda s: s.get("attempt", 0) >= 1 and s.get("state") == "RUNNING",
                     what="the restarted attempt", timeout=90)
    assert s["restored_from"] == stalled
    storage = LocalStorage(job.checkpoints())
    body = ckpt.read_metadata(storage, ckpt.checkpoint_dir(job_id, stalled))
    from streamjob.jobstate import missing_or_short

    assert missing_or_short(ckpt.handles_of(body), storage.size) is None
    assert job.wait() == 0, job.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def committed_lines(folder: Path) -> int:
    return sum(len(part.read_text().splitlines()) for part in folder.glob("part-*"))


def test_acknowledged_stop_stays_stopped_when_the_coordinator_dies(run_job, tmp_path):
    """Issue 11.2: kill after the stop savepoint; resuming from it is exactly once.

    The first run has more input than it can read before the test ends (the stop is
    requested while it is RUNNING, however long the CLI takes on a loaded machine); the
    resumed run reads what is left of a bounded input: the records the first run committed
    (one line each) plus RECORDS more."""
    args = {"words": WORDS, "rate": 40_000}
    job = run_job(args={**args, "records": 10**9},
                  env=fault_env(tmp_path, "coordinator.after-stop-savepoint=kill"))
    job.wait_for(lambda s: s.get("records_in", 0) > RECORDS // 4, what="a quarter done")
    out = savepoint_cli(job, stop=True)
    assert out.returncode == 0, out.stderr
    uri = out.stdout.strip().splitlines()[-1]
    assert job.wait() == 0, job.output()
    assert faults.fired(tmp_path / "faults") == 1
    s = job.status()
    assert s["state"] == "STOPPED", s
    assert "not restarting it" in job.output()
    total = committed_lines(job.cwd / "output") + RECORDS
    resumed = run_job(args={**args, "records": total}, extra=["--from-savepoint", uri])
    assert resumed.wait() == 0, resumed.output()
    assert_exactly_once(job.cwd / "output", total, WORDS)


def test_stop_not_acknowledged_when_the_coordinator_dies_first(run_job, tmp_path):
    """The coordinator dies after the stop savepoint's metadata, before the stop is
    acknowledged: the CLI never answers success and the job goes on (a new coordinator runs
    it and takes a later stop). Its input outlasts the test, as above: the stop is requested
    while it is RUNNING, however long the CLI takes to start."""
    args = {"words": WORDS, "rate": 40_000}
    job = run_job(args={**args, "records": 10**9},
                  env=fault_env(tmp_path, "coordinator.after-savepoint-metadata=kill"))
    job.wait_for(running_with_checkpoint(1), what="a checkpoint")
    out = savepoint_cli(job, stop=True)
    assert out.returncode != 0, out.stdout   # never answered success
    assert faults.fired(tmp_path / "faults") == 1
    job.wait_for(lambda s: s.get("coordinator_restarts", 0) >= 1 and
                 s.get("state") == "RUNNING", what="the job going on under a new coordinator")
    out = savepoint_cli(job, stop=True)
    assert out.returncode == 0, out.stderr
    uri = out.stdout.strip().splitlines()[-1]
    assert job.wait() == 0, job.output()
    assert job.status()["state"] == "STOPPED"
    total = committed_lines(job.cwd / "output") + RECORDS
    resumed = run_job(args={**args, "records": total}, extra=["--from-savepoint", uri])
    assert resumed.wait() == 0, resumed.output()
    assert resumed.status()["state"] == "FINISHED"
    assert_exactly_once(job.cwd / "output", total, WORDS)


def test_no_readable_checkpoint_fails_clearly_and_keeps_committed_output(run_job):
    """Issue 11.3: never start from record 0 over committed output without being told."""
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 30_000},
                  checkpoint={"retained": 2})
    s = job.wait_for(running_with_checkpoint(3), what="three checkpoints")
    coordinator = job.coordinator()
    os.kill(coordinator, signal.SIGSTOP)  # freeze it: nothing completes or commits meanwhile
    try:
        output = job.cwd / "output"
        committed = {p.name: p.read_bytes() for p in output.glob("part-*")}
        assert committed
        for meta in (job.checkpoints() / s["job_id"]).glob("chk-*/_metadata"):
            meta.write_bytes(meta.read_bytes()[:-40] + b"garbage")
    finally:
        os.kill(coordinator, signal.SIGKILL)
    assert job.wait() != 0, job.output()
    status = job.status()
    assert status["state"] == "FAILED"
    assert "no retained checkpoint can be restored" in status["message"]
    assert "--allow-fresh-start" in status["message"]
    assert {p.name: p.read_bytes() for p in output.glob("part-*")} == committed


def test_worker_lost_while_deploying_starts_a_new_attempt(run_job, tmp_path):
    """Issue 11.4: the second deploy loses a worker before RUNNING; the job must not hang."""
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 30_000},
                  env=fault_env(tmp_path, "coordinator.before-deploy=stall:2,skip=1"))
    job.wait_for(running_with_checkpoint(1), what="a checkpoint")
    first, second = job.workers()[:2]
    os.kill(first, signal.SIGKILL)
    wait_fired(job, tmp_path)                  # the restart's deploy is under way
    os.kill(second, signal.SIGKILL)
    s = job.wait_for(lambda s: s.get("restarts", 0) >= 2 and s.get("state") == "RUNNING",
                     what="a new deploy attempt running", timeout=90)
    assert s["scheduler_state"] == "RUNNING"
    assert job.wait() == 0, job.output()
    assert job.status()["restarts"] >= 2
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_corrupt_state_file_never_rewrites_committed_output(run_job, tmp_path):
    """Issue 11.5 and 11.8: the newest checkpoint's state is bit-flipped after its output was
    committed. The workers detect it; the coordinator skips that checkpoint, but restoring
    the older one would write the newer one's committed output again: the job fails with
    the reason (never a hang, never a silent rewrite), committed output untouched. A rerun
    with --allow-fresh-start resumes the same job from the older checkpoint, moves the
    later committed output aside (kept) and ends exactly once."""
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 30_000},
                  checkpoint={"retained": 3},
                  env=fault_env(tmp_path, "coordinator.before-deploy=stall:2,skip=1"))
    s = job.wait_for(running_with_checkpoint(3), what="three checkpoints")
    os.kill(job.workers()[0], signal.SIGKILL)
    wait_fired(job, tmp_path)                  # restore point chosen, DEPLOY not sent yet
    newest = completed_ids(job, s["job_id"])[-1]
    files = [p for p in (job.checkpoints() / s["job_id"] / f"chk-{newest}").rglob("*")
             if p.is_file() and p.name != "_metadata"]
    victim = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF               # same size: only the workers can notice
    victim.write_bytes(bytes(data))
    output = job.cwd / "output"
    assert job.wait() == 1, job.output()
    status = job.status()
    assert status["state"] == "FAILED", status
    assert status["skipped_checkpoints"][str(newest)].startswith("restore failed:")
    assert "cannot restore without rewriting committed output" in status["message"]
    assert f"skipping checkpoint {newest}" in job.output()
    committed = {p.name: p.read_bytes() for p in output.glob("part-*")}
    assert any(p.endswith(f"-{newest}") for p in committed), sorted(committed)

    rerun = run_job(args={"records": RECORDS, "words": WORDS, "rate": 0},
                    checkpoint={"retained": 3}, extra=["--allow-fresh-start"])
    assert rerun.wait() == 0, rerun.output()
    assert rerun.status()["job_id"] == s["job_id"]
    assert "moved aside" in rerun.output()
    assert_exactly_once(output, RECORDS, WORDS)
    kept = {p.name: p.read_bytes()
            for p in (job.cwd / ".output.superseded").rglob("part-*")}
    assert kept and all(committed[name] == data for name, data in kept.items())


def test_a_deploy_that_never_reaches_running_times_out_and_retries(run_job, tmp_path):
    """Issue 11.5: DEPLOYING has a deadline (here 4 s): a frozen worker is a failure."""
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": 30_000},
                  env=fault_env(tmp_path, "coordinator.before-deploy=stall:1.5,skip=1",
                                STREAMJOB_DEPLOY_TIMEOUT="4"))
    job.wait_for(running_with_checkpoint(1), what="a checkpoint")
    first, second = job.workers()[:2]
    os.kill(first, signal.SIGKILL)
    wait_fired(job, tmp_path)
    os.kill(second, signal.SIGSTOP)            # it will never say RUNNING
    try:
        s = job.wait_for(lambda s: "every subtask to be RUNNING" in
                         ((s.get("last_failure") or {}).get("reason") or ""),
                         what="the deploy timeout", timeout=60)
        assert s["restarts"] >= 2
    finally:
        os.kill(second, signal.SIGCONT)
    assert job.wait() == 0, job.output()
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_coordinator_starting_during_a_storage_outage_waits_for_it(run_job, tmp_path):
    """A coordinator (re)started while storage is down waits for it (bounded) instead of
    failing the job: the soak found "cannot start: injected outage" here."""
    job = run_job(args={"records": 50_000, "words": WORDS, "rate": 50_000},
                  env=fault_env(tmp_path, "storage.get:*/coordinator.json=outage:3"))
    assert job.wait() == 0, job.output()
    assert faults.fired(tmp_path / "faults") == 1
    assert "cannot read the job's state in storage yet" in job.output()
    assert_exactly_once(job.cwd / "output", 50_000, WORDS)
