"""The local supervisor's pure parts and its run folder (no processes started)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from streamjob import cli, errors, local
from streamjob.manifest import ManifestError
from streamjob.storage import LocalStorage, StorageError


@pytest.mark.parametrize(("lives", "total"), [
    ([], 0),
    ([(0, 3)], 3),
    ([(2, 5)], 5),                    # a rerun: the coordinator carried 2 from before
    ([(0, 2), (0, 1)], 4),            # counts from 0 again: 2 + the coordinator restart + 1
    ([(0, 2), (2, 3)], 4),            # persisted, own restart not counted: 3 + 1
    ([(0, 2), (3, 4)], 4),            # persisted, own restart counted: 4, not 5
    ([(0, 0), (0, 0)], 1),            # either way: one coordinator restart
    ([(0, 1), None, (0, 0)], 3),      # a coordinator that died before its first status
    ([(0, 1), (2, 2), (3, 3)], 3),    # persisted and self-counting, twice
])
def test_progress_restarts_count_each_restart_once(lives, total):
    assert local.total_restarts(lives) == total


@pytest.mark.parametrize(("status", "lives", "shown"), [
    # The coordinator persists both counts: they are the whole truth (no double counting).
    ({"restarts": 3, "coordinator_restarts": 2}, [(0, 1), (1, 3)], 5),
    ({"restarts": 0, "coordinator_restarts": 1}, [(0, 0), (0, 0)], 1),
    # An older coordinator: the supervisor adds up what it saw.
    ({"restarts": 1}, [(0, 2), (0, 1)], 4),
])
def test_progress_restarts_prefer_the_coordinators_persisted_counts(status, lives, shown):
    assert local.progress_restarts(status, lives) == shown


def _manifest_file(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "wc.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "wc"},
        "spec": {"pipeline": "streamjob.examples.wordcount:build",
                 "args": {"output": str(tmp_path / "out")},
                 "storage": f"file://{tmp_path / 'ck'}"}}))
    return path


def test_api_token_is_0600_from_its_creation_even_with_umask_022(tmp_path, monkeypatch):
    """The supervisor's secret files are created owner-only: never written first (at 0644
    under umask 022) and chmod'ed after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    chmods = []
    monkeypatch.setattr(os, "chmod", lambda *a, **k: chmods.append(a))
    monkeypatch.setattr(Path, "chmod", lambda *a, **k: chmods.append(a))
    modes = {}

    def supervise(run):
        modes.update({p.name: stat.S_IMODE(p.stat().st_mode) for p in run.run_dir.iterdir()})
        return 0

    monkeypatch.setattr(local.LocalRun, "supervise", supervise)
    old = os.umask(0o022)
    try:
        assert local.run_local(str(_manifest_file(tmp_path)), {}, None, None, None) == 0
    finally:
        os.umask(old)
    assert modes["api-token"] == 0o600, modes
    assert modes["lock"] == 0o600, modes
    assert stat.S_IMODE((tmp_path / ".streamjob/runs/wc").stat().st_mode) == 0o700


def test_write_secret_replaces_an_older_world_readable_file(tmp_path):
    target = tmp_path / "api-token"
    target.write_text("old")
    target.chmod(0o644)
    local.write_secret(target, "s3cr3t")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "s3cr3t"
    assert [p.name for p in tmp_path.iterdir()] == ["api-token"]


def test_a_rerun_of_an_unfinished_run_keeps_its_job_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    ids = []

    def supervise(run):
        ids.append(run.job_id)
        return 0

    monkeypatch.setattr(local.LocalRun, "supervise", supervise)
    run_file = tmp_path / ".streamjob/runs/wc/run.json"
    manifest = str(_manifest_file(tmp_path))
    local.run_local(manifest, {}, None, None, None)
    assert json.loads(run_file.read_text())["state"] == "running"  # supervise() said nothing
    local.run_local(manifest, {}, None, None, None)  # as after a killed supervisor
    assert ids[0] == ids[1]
    info = json.loads(run_file.read_text())
    info["state"] = "finished"
    run_file.write_text(json.dumps(info))
    local.run_local(manifest, {}, None, None, None)
    assert ids[2] != ids[1] and ids[2].startswith("wc-")
    local.run_local(manifest, {}, None, str(tmp_path / "elsewhere"), None)  # other storage
    assert ids[3] != ids[2]


def test_run_folder_is_private_and_locked_for_one_supervisor(tmp_path):
    old = os.umask(0o022)
    try:
        first = local.RunFolder(tmp_path / "runs" / "wc")
        first.lock("wc")
    finally:
        os.umask(old)
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o700
    first.record({"job_id": "wc-1", "state": "running", "supervisor_pid": 4242})
    second = local.RunFolder(tmp_path / "runs" / "wc")
    with pytest.raises(ManifestError, match=r"job 'wc' is already running in this folder "
                                            r"\(streamjob run, pid 4242\)"):
        second.lock("wc")
    assert local.supervisor_running(first.path)
    first.unlock()  # as when the supervisor dies
    assert not local.supervisor_running(first.path)
    second.lock("wc")
    second.unlock()


def _folder(tmp_path: Path, run: dict | None, status: dict | None) -> local.RunFolder:
    folder = local.RunFolder(tmp_path / ".streamjob" / "runs" / "wc")
    folder.path.mkdir(parents=True)
    if run is not None:
        (folder.path / "run.json").write_text(json.dumps(run))
    if status is not None:
        (folder.path / "status.json").write_text(json.dumps(status))
    return folder


@pytest.mark.parametrize(("run", "status", "resumable"), [
    (None, None, False),
    ({"job_id": "wc-1", "state": "running"}, None, True),
    ({"job_id": "wc-1", "state": "running"}, {"job_id": "wc-1", "state": "RUNNING"}, True),
    ({"job_id": "wc-1", "state": "running"}, {"job_id": "wc-1", "state": "RESTARTING"}, True),
    ({"job_id": "wc-1", "state": "running"}, {"job_id": "wc-1", "state": "FINISHED"}, False),
    ({"job_id": "wc-1", "state": "running"}, {"job_id": "wc-1", "state": "STOPPED"}, False),
    ({"job_id": "wc-1", "state": "running"}, {"job_id": "wc-0", "state": "FINISHED"}, True),
    ({"job_id": "wc-1", "state": "finished"}, None, False),
    ({"job_id": "wc-1", "state": "failed"}, None, False),
])
def test_only_a_run_that_never_ended_is_resumed(tmp_path, run, status, resumable):
    folder = _folder(tmp_path, run, status)
    assert (folder.previous() is not None) == resumable


def test_cleaning_removes_stale_status_and_token(tmp_path):
    folder = _folder(tmp_path, {"job_id": "wc-1", "state": "running",
                                "pids": {"coordinator": 2 ** 22 + 1, "workers": [os.getpid()]}},
                     {"job_id": "wc-1", "state": "RUNNING"})
    (folder.path / "api-token").write_text("t")
    folder.clean(folder.previous())  # our own pid is not a process of that run: not killed
    assert not (folder.path / "status.json").exists()
    assert not (folder.path / "api-token").exists()


def test_cleaning_kills_processes_left_over_from_the_run_by_their_recorded_pids(tmp_path):
    import subprocess
    import sys

    folder = _folder(tmp_path, None, None)
    manifest = str(folder.path / "job.yaml")
    # Looks like a worker of that run (its command line names the run's job.yaml) ...
    stale = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                              "streamjob", "worker", "--manifest", manifest])
    # ... and an unrelated process that got a recorded pid: left alone.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (folder.path / "run.json").write_text(json.dumps({
            "job_id": "wc-1", "state": "running",
            "pids": {"coordinator": other.pid, "workers": [stale.pid]}}))
        folder.clean(folder.previous())
        assert stale.wait(10) == -9
        assert other.poll() is None
    finally:
        for proc in (stale, other):
            proc.kill()
            proc.wait()


def test_unwritable_storage_fails_the_probe_in_one_line():
    with pytest.raises(StorageError) as err:
        local.probe_storage(LocalStorage("/proc/streamjob-probe"),
                            "file:///proc/streamjob-probe")
    assert str(err.value).startswith("storage file:///proc/streamjob-probe is not usable: ")
    assert "\n" not in str(err.value)


def test_a_writable_storage_passes_the_probe_and_keeps_nothing(tmp_path):
    local.probe_storage(LocalStorage(tmp_path), f"file://{tmp_path}")
    assert list(tmp_path.iterdir()) == []


# -- streamjob savepoint / checkpoints NAME: why there is no coordinator to talk to ----------

def test_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError, match="no local job named 'wc' was run here"):
        cli.local_api("wc")


def test_supervisor_gone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _folder(tmp_path, {"job_id": "wc-1", "state": "running", "supervisor_pid": 99},
            {"job_id": "wc-1", "state": "RUNNING", "coordinator": {"api_port": 1}})
    with pytest.raises(ManifestError) as err:
        cli.local_api("wc")
    assert str(err.value) == ("job 'wc' is not running: its streamjob run (pid 99) is gone; run "
                              "the same command again to resume wc-1 from its latest checkpoint")


def test_job_over(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _folder(tmp_path, {"job_id": "wc-1", "state": "finished"},
            {"job_id": "wc-1", "state": "FINISHED", "coordinator": {"api_port": 1}})
    with pytest.raises(ManifestError, match="job 'wc' is FINISHED, not running"):
        cli.local_api("wc")


@pytest.mark.parametrize("status", [None, {"job_id": "wc-0", "state": "RUNNING",
                                           "coordinator": {"api_port": 1}}])
def test_coordinator_restarting_is_not_reported_as_no_such_job(tmp_path, monkeypatch, status):
    monkeypatch.chdir(tmp_path)
    folder = _folder(tmp_path, {"job_id": "wc-1", "state": "running"}, status)
    (folder.path / "api-token").write_text("t")
    folder.lock("wc")  # the supervisor is alive; its coordinator has not written a status yet
    try:
        with pytest.raises(ManifestError, match="the coordinator of job 'wc' is starting or "
                                                "restarting; try again in a few seconds"):
            cli.local_api("wc")
    finally:
        folder.unlock()


def test_savepoint_of_a_coordinator_that_does_not_answer_is_one_line(tmp_path, monkeypatch,
                                                                     capsys):
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    folder = _folder(tmp_path, {"job_id": "wc-1", "state": "running"},
                     {"job_id": "wc-1", "state": "RUNNING", "coordinator": {"api_port": port}})
    (folder.path / "api-token").write_text("t")
    folder.lock("wc")
    try:
        assert cli.main(["savepoint", "wc"]) == 2
    finally:
        folder.unlock()
    err = capsys.readouterr().err
    assert err.startswith("streamjob: error: lost the coordinator of job 'wc'")
    assert len(err.splitlines()) == 1, err


# -- flags ----------------------------------------------------------------------------------

def test_allow_fresh_start_reaches_the_coordinator_command(tmp_path, monkeypatch):
    from streamjob.manifest import parse_manifest

    assert cli.build_parser().parse_args(
        ["run", "x.yaml", "--allow-fresh-start"]).allow_fresh_start
    assert cli.build_parser().parse_args(
        ["coordinator", "--job-id", "j", "--allow-fresh-start"]).allow_fresh_start
    commands = []

    class Exited:
        pid = 1

        def __init__(self, cmd, **_kw):
            commands.append(cmd)

        def poll(self):
            return 1

    monkeypatch.setattr(local.subprocess, "Popen", Exited)
    job = parse_manifest({"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                          "metadata": {"name": "wc"}, "spec": {"pipeline": "m:build"}})
    for allow in (False, True):
        local.LocalRun(job, tmp_path, tmp_path, "wc-1", None, allow_fresh_start=allow
                       ).start_coordinator()
    assert "--allow-fresh-start" not in commands[0]
    assert commands[1][-1] == "--allow-fresh-start"


class _Proc:
    def __init__(self, pid: int, code: int | None):
        self.pid, self.returncode = pid, code

    def poll(self):
        return self.returncode


@pytest.mark.parametrize(("state", "restarted"), [
    ("RUNNING", [0, 1]), ("RESTARTING", [0, 1]), ("CREATED", [0, 1]),
    ("FINISHED", []), ("STOPPED", []), ("FAILED", []),
])
def test_a_worker_that_exits_is_restarted_unless_the_coordinator_says_the_job_is_over(
        tmp_path, state, restarted):
    from streamjob.manifest import parse_manifest

    job = parse_manifest({"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
                          "metadata": {"name": "wc"}, "spec": {"pipeline": "m:build"}})
    run = local.LocalRun(job, tmp_path, tmp_path, "wc-1", None)
    run.coordinator = _Proc(100, None)
    # Exit 0 (a worker SIGTERMed by someone) is no proof that the job is over, nor is 3.
    run.workers = {0: _Proc(101, 0), 1: _Proc(102, 3), 2: _Proc(103, None)}
    (tmp_path / "status.json").write_text(json.dumps({"state": state,
                                                      "coordinator": {"pid": 100}}))
    assert run.workers_to_restart() == restarted
    # A status of an earlier coordinator says nothing about this one.
    (tmp_path / "status.json").write_text(json.dumps({"state": "FINISHED",
                                                      "coordinator": {"pid": 99}}))
    assert run.workers_to_restart() == [0, 1]


# -- repeated failures of user code ---------------------------------------------------------

def test_a_repeated_failure_is_logged_in_full_once_then_one_line_each(caplog):
    log = logging.getLogger("test.errors")
    for _ in range(5):
        try:
            raise RuntimeError("user function failed")
        except RuntimeError as err:
            with caplog.at_level(logging.ERROR, logger="test.errors"):
                errors.log_failure(log, err, "%s failed", "t0[1]-unit-test")
    text = caplog.text
    assert text.count("Traceback (most recent call last)") == 1
    assert "t0[1]-unit-test failed: RuntimeError: user function failed (again, 5 times" in text
    assert len([r for r in caplog.records if r.exc_info]) == 1


def test_the_savepoint_command_waits_for_the_jobs_checkpoint_timeout_and_a_margin():
    from streamjob.cli import SAVEPOINT_MARGIN_S, savepoint_wait_s

    # A savepoint of GBs of state takes minutes: a fixed 120 s gave up on one that succeeded.
    assert savepoint_wait_s({"checkpoint_timeout_s": 900}) == 900 + SAVEPOINT_MARGIN_S
    # A coordinator that names no timeout has the default one (60 s).
    assert savepoint_wait_s({}) == 60 + SAVEPOINT_MARGIN_S
