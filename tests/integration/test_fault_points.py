"""Kill a process at each named protocol point (``streamjob.faults``), or break storage, and
check the committed output exactly: no gap, no duplicate, a stop that was acknowledged stays
stopped.

Every test first proves that its fault fired (a marker file in ``STREAMJOB_FAULTS_DIR``): a
point missing from the code fails the test with "never fired", it is not skipped.

Pipelines: ``streamjob.examples.wordcount`` (keyed count) and ``streamjob.examples.lastn``
(list- and dict-valued state mutated in place: catches a snapshot or a restore that shares
live state).
"""

from __future__ import annotations

import http.client
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import assert_exactly_once

pytestmark = pytest.mark.integration

RECORDS, WORDS = 120_000, 500     # wordcount
LRECORDS, KEYS = 100_000, 256     # lastn
RATE = 30_000                     # records/s: each job runs for a few seconds
SP_RATE = 12_000                  # slower where a savepoint request must find it running
LASTN = "streamjob.examples.lastn:build"


# -- helpers ---------------------------------------------------------------------------------

def fault_env(tmp_path: Path, rule: str) -> dict[str, str]:
    return {"STREAMJOB_FAULTS": rule, "STREAMJOB_FAULTS_DIR": str(tmp_path / "faults")}


def fired(tmp_path: Path, index: int = 0) -> int:
    from streamjob import faults

    folder = tmp_path / "faults"
    return faults.fired(folder, index) if folder.is_dir() else 0


def assert_fired(tmp_path: Path, point: str, job, index: int = 0) -> None:
    assert fired(tmp_path, index) >= 1, (
        f"fault point {point!r} never fired (no marker in {tmp_path / 'faults'}): the point "
        f"is missing from the code or was never reached.\n{job.output()[-3000:]}")


def finish(job, tmp_path: Path, point: str, timeout: float = 240) -> dict[str, Any]:
    """Wait for the run to end; it must end with exit 0. Says whether the fault fired."""
    code = job.wait(timeout)
    assert code == 0, (f"streamjob run exited {code} (fault {point!r} fired "
                       f"{fired(tmp_path)} time(s)):\n{job.output()[-3000:]}")
    return job.status()


def running_with_checkpoint(s: dict) -> bool:
    return s.get("state") == "RUNNING" and s.get("last_checkpoint") is not None


def assert_lastn_exact(folder: Path, records: int, positions: dict[int, int] | None = None,
                       what: str = "") -> dict[str, Any]:
    from streamjob.examples.lastn import check_output

    result = check_output(str(folder), records, KEYS, positions=positions)
    assert result["duplicates"] == result["missing"] == result["unexpected"] == 0, \
        f"{what}: {result}"
    return result


def wordcount_check_at(folder: Path, records: int, words: int,
                       positions: dict[int, int]) -> dict[str, Any]:
    """Like ``wordcount.check_output`` for the records read up to source ``positions``."""
    from collections import Counter

    from streamjob.examples.lastn import consumed
    from streamjob.examples.wordcount import word_of

    word = word_of(words)
    counts = Counter(word(g) for g in range(records) if consumed(g, positions))
    expected = {f"{w} {i}" for w, n in counts.items() for i in range(1, n + 1)}
    seen: Counter[str] = Counter()
    for part in sorted(folder.glob("part-*")):
        seen.update(line.rstrip("\n") for line in part.read_text().splitlines())
    return {"lines": sum(seen.values()),
            "duplicates": sum(c - 1 for c in seen.values() if c > 1),
            "missing": len(expected - seen.keys()),
            "unexpected": len(seen.keys() - expected)}


def savepoint_cmd(job, stop: bool) -> tuple[str | None, str]:
    """A savepoint of the running job (``--stop``: and stop it) through its coordinator API,
    as ``streamjob savepoint`` asks for it (not asserted): its URI, or None and why not.
    From this process: a CLI process took 5 s to start on a loaded machine, enough for the
    job to finish before the request."""
    from streamjob.cli import local_api, take_savepoint
    from streamjob.manifest import ManifestError

    try:
        base, token = local_api(job.name, job.cwd)
        result = take_savepoint(base, token, stop)
    except (ManifestError, OSError, http.client.HTTPException, ValueError) as err:
        return None, f"no savepoint: {err!r}"
    return result["uri"], f"savepoint {result['uri']}"


def storage_of(job):
    from streamjob.storage import LocalStorage

    return LocalStorage(job.checkpoints())


def savepoint_positions(job, uri: str) -> dict[int, int]:
    """Source positions (split -> records read) recorded in a savepoint."""
    from streamjob import checkpoints as ckpt
    from streamjob import state

    storage = storage_of(job)
    _, body = ckpt.resolve_savepoint(storage, uri)
    positions: dict[int, int] = {}
    for task in body["tasks"].values():
        for handle in task["subtasks"]:
            for split, pos in state.read_operator_state(storage, handle).get("splits",
                                                                             {}).items():
                positions[int(split)] = int(pos)
    assert positions, f"savepoint {uri} records no source positions"
    return positions


def newest_savepoint(job, job_id: str) -> str | None:
    from streamjob import checkpoints as ckpt

    rows = [r for r in ckpt.list_savepoints(storage_of(job)) if r["job_id"] == job_id]
    return rows[-1]["uri"] if rows else None


# -- coordinator points ----------------------------------------------------------------------

def test_coordinator_killed_after_last_ack(run_job, tmp_path):
    """All acks in, ``_metadata`` not yet written: the checkpoint is not complete; the new
    coordinator restores from the one before and the sink drops what was staged for it."""
    point = "coordinator.after-last-ack"
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE},
                  env=fault_env(tmp_path, f"{point}=kill,skip=2"))
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    assert "restarting it" in job.output()
    assert s["state"] == "FINISHED" and s["coordinator_restarts"] == 1
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_coordinator_killed_after_metadata(run_job, tmp_path):
    """``_metadata`` of the 3rd checkpoint written, nobody notified: that checkpoint is
    complete; the new coordinator restores from it and the sink commits what was staged
    up to it."""
    point = "coordinator.after-metadata"
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE},
                  env=fault_env(tmp_path, f"{point}=kill,skip=2"))
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    assert s["state"] == "FINISHED"
    assert (s.get("restored_from") or 0) >= 3, \
        f"the new coordinator must restore from the checkpoint whose _metadata exists: {s}"
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_coordinator_killed_after_savepoint_metadata(run_job, tmp_path):
    """Savepoint (no stop) written, coordinator dies before answering: the job goes on from
    its checkpoints and ends with exact output; the savepoint is never a reason to stop."""
    point = "coordinator.after-savepoint-metadata"
    job = run_job(LASTN, name="lastn",
                  args={"records": LRECORDS, "keys": KEYS, "rate": SP_RATE},
                  env=fault_env(tmp_path, f"{point}=kill"))
    job.wait_for(running_with_checkpoint, what="first checkpoint")
    uri, _ = savepoint_cmd(job, stop=False)
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    assert s["state"] == "FINISHED", f"a savepoint without --stop must not stop the job: {s}"
    if uri is not None:  # answered before the crash: it must be a usable savepoint
        savepoint_positions(job, uri)
    assert_lastn_exact(job.cwd / "output", LRECORDS, what="after the crash")


def test_coordinator_killed_before_deploy_of_a_restart(run_job, tmp_path):
    """A worker dies; the coordinator dies too while about to deploy the restart: the next
    coordinator deploys from the latest completed checkpoint."""
    point = "coordinator.before-deploy"
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE},
                  env=fault_env(tmp_path, f"{point}=kill,skip=1"))
    job.wait_for(running_with_checkpoint, what="first checkpoint")
    os.kill(random.choice(job.workers()), signal.SIGKILL)
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    assert s["state"] == "FINISHED"
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_coordinator_killed_after_stop_savepoint_stays_stopped(run_job, tmp_path):
    """``savepoint --stop``; the coordinator dies right after the stop savepoint. A stop that
    was acknowledged (URI printed) stays stopped: the run ends STOPPED with exactly the output
    the savepoint covers, and resuming from it (at p=3) ends with exact output."""
    point = "coordinator.after-stop-savepoint"
    args = {"records": LRECORDS, "keys": KEYS, "rate": SP_RATE}
    job = run_job(LASTN, name="lastn", args=args, env=fault_env(tmp_path, f"{point}=kill"))
    job.wait_for(lambda s: running_with_checkpoint(s) and s.get("records_in", 0) > LRECORDS // 4,
                 what="a quarter done")
    job_id = job.status()["job_id"]
    uri, said = savepoint_cmd(job, stop=True)
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    if uri is not None:
        assert s["state"] == "STOPPED", \
            f"an acknowledged stop did not stay stopped ({said}); status {s}"
    else:
        # Not acknowledged: stopping or finishing are both allowed, never a mix.
        assert s["state"] in ("STOPPED", "FINISHED"), f"{said}; status {s}"
        if s["state"] == "FINISHED":
            assert_lastn_exact(job.cwd / "output", LRECORDS, what="stop not acknowledged")
            return
        uri = newest_savepoint(job, job_id)
        assert uri is not None, f"STOPPED without a savepoint in storage; {said}"
    assert_lastn_exact(job.cwd / "output", LRECORDS, savepoint_positions(job, uri),
                       what=f"output of the stopped job vs savepoint {uri}")
    resumed = run_job(LASTN, name="lastn2", args={**args, "rate": 0}, parallelism=3,
                      extra=["--from-savepoint", uri])
    assert resumed.wait(240) == 0, resumed.output()[-3000:]
    assert resumed.status()["state"] == "FINISHED"
    assert_lastn_exact(job.cwd / "output", LRECORDS, what="after resuming from the savepoint")


# -- worker and sink points ------------------------------------------------------------------

def test_sink_killed_during_commit(run_job, tmp_path):
    """A worker dies half-way through committing checkpoint n's files: the restore finishes
    that commit (idempotently), nothing twice, nothing lost."""
    point = "sink.during-commit"
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE},
                  env=fault_env(tmp_path, f"{point}=kill,skip=2"))
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    assert s["state"] == "FINISHED" and s["restarts"] >= 1, s
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


def test_worker_killed_during_restore(run_job, tmp_path):
    """A worker dies while loading its state (here: restoring a savepoint at p=2 from p=2):
    the next attempt restores again from the same point."""
    point = "worker.during-restore"
    args = {"records": LRECORDS, "keys": KEYS, "rate": SP_RATE}
    first = run_job(LASTN, name="lastn", args=args)
    first.wait_for(lambda s: running_with_checkpoint(s) and
                   s.get("records_in", 0) > LRECORDS // 3, what="a third done")
    uri, said = savepoint_cmd(first, stop=True)
    assert uri is not None, said
    assert first.wait() == 0, first.output()[-3000:]
    job = run_job(LASTN, name="lastn2", args={**args, "rate": RATE},
                  extra=["--from-savepoint", uri],
                  env=fault_env(tmp_path, f"{point}=kill"))
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    assert s["state"] == "FINISHED" and s["restarts"] >= 1, s
    assert_lastn_exact(job.cwd / "output", LRECORDS, what="after a kill during restore")


def test_worker_killed_after_snapshot_upload(run_job, tmp_path):
    """State uploaded, ack never sent: the checkpoint never completes (aborted), the job
    restores from the previous one; in-place list/dict state must come back as it was."""
    point = "worker.after-snapshot-upload"
    job = run_job(LASTN, name="lastn", args={"records": LRECORDS, "keys": KEYS, "rate": RATE},
                  env=fault_env(tmp_path, f"{point}=kill,skip=2"))
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    assert s["state"] == "FINISHED" and s["restarts"] >= 1, s
    assert_lastn_exact(job.cwd / "output", LRECORDS, what="after a kill after upload")


def test_sink_killed_after_pre_commit(run_job, tmp_path):
    """Files of checkpoint n staged (pre-commit), worker dies before acking: the restore
    drops what was staged after the restored checkpoint; replayed records appear once."""
    point = "sink.after-pre-commit"
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE}, parallelism=3,
                  env=fault_env(tmp_path, f"{point}=kill,skip=2"))
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    assert s["state"] == "FINISHED" and s["restarts"] >= 1, s
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)


# -- storage faults --------------------------------------------------------------------------

def test_metadata_write_fails_checkpoint_fails_job_goes_on(run_job, tmp_path):
    """Writing one ``_metadata`` fails: that checkpoint fails (tolerated), the job neither
    restarts nor loses its staged output; later checkpoints cover it."""
    point = "storage.put:*/_metadata"
    job = run_job(args={"records": RECORDS, "words": WORDS, "rate": RATE},
                  checkpoint={"tolerableFailures": 3},
                  env=fault_env(tmp_path, f"{point}=fail,skip=1"))
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    assert s["state"] == "FINISHED"
    assert s["restarts"] == 0, f"a tolerated checkpoint failure restarted the job: {s}"
    assert_exactly_once(job.cwd / "output", RECORDS, WORDS)
    assert s["failed_checkpoints"] >= 1, \
        f"the checkpoint whose _metadata could not be written is not counted as failed: {s}"


def test_storage_outage_of_3s_while_running(run_job, tmp_path):
    """Every put fails for 3 s (all processes): checkpoints fail meanwhile, processing goes
    on, checkpoints complete again afterwards, output exact."""
    point = "storage.put"
    records = 150_000
    job = run_job(LASTN, name="lastn", args={"records": records, "keys": KEYS, "rate": 20_000},
                  checkpoint={"tolerableFailures": 100},
                  env=fault_env(tmp_path, f"{point}=outage:3,skip=3"))
    s = finish(job, tmp_path, point)
    assert_fired(tmp_path, point, job)
    started = float((tmp_path / "faults" / "rule0-0").read_text())
    assert s["state"] == "FINISHED"
    assert s["failed_checkpoints"] >= 1, s
    assert s["last_checkpoint"]["completed_at"] > started + 3, \
        f"no checkpoint completed after the outage: {s}"
    assert_lastn_exact(job.cwd / "output", records, what="after a storage outage")
