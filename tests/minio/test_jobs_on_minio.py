"""Jobs whose checkpoints, savepoints and output live in a real MinIO server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

from streamjob import checkpoints as ckpt
from streamjob.examples.wordcount import check_output, expected_counts
from streamjob.s3storage import S3Storage
from tests.integration.conftest import PYPATH, ROOT, savepoint

WORDS = 500


def fresh_bucket() -> str:
    return f"sj-{uuid.uuid4().hex[:10]}"


def committed(server, bucket: str, records: int) -> dict:
    """check_output over the part-* objects of s3://bucket/out."""
    storage = S3Storage.from_uri(f"s3://{bucket}", env=server.env)
    seen: dict[str, int] = {}
    where: dict[str, list[str]] = {}
    for key in storage.list("out/"):
        if key.rsplit("/", 1)[1].startswith("part-"):
            for line in storage.get(key).decode().splitlines():
                seen[line] = seen.get(line, 0) + 1
                where.setdefault(line, []).append(key)
    dups = [(line, where[line]) for line, c in seen.items() if c > 1]
    if dups:
        print("duplicated lines, e.g.", dups[:3], "parts:", storage.list("out/"),
              "staging:", storage.list(".out.staging/"))
    expected = {f"{w} {i}" for w, n in expected_counts(records, WORDS).items()
                for i in range(1, n + 1)}
    return {"duplicates": sum(c - 1 for c in seen.values() if c > 1),
            "missing": len(expected - seen.keys()),
            "unexpected": len(seen.keys() - expected)}


def assert_exact(result: dict) -> None:
    assert result == {"duplicates": 0, "missing": 0, "unexpected": 0}, result


def test_wordcount_on_minio_survives_a_killed_worker(run_job, minio_server):
    bucket, records = fresh_bucket(), 150_000
    job = run_job(args={"records": records, "words": WORDS, "rate": 40_000,
                        "output": f"s3://{bucket}/out"},
                  storage=f"s3://{bucket}/checkpoints", env=minio_server.env)
    job.wait_for(lambda s: s.get("last_checkpoint"), what="a checkpoint on MinIO")
    os.kill(job.workers()[0], signal.SIGKILL)
    assert job.wait() == 0, job.output()
    assert_exact(committed(minio_server, bucket, records))
    storage = S3Storage.from_uri(f"s3://{bucket}/checkpoints", env=minio_server.env)
    body = ckpt.latest_completed(storage, job.status()["job_id"])
    assert body is not None and body["kind"] == "checkpoint"
    assert minio_server.secret_key not in job.output()


def test_minio_down_for_10s_fails_checkpoints_then_recovers(run_job, fresh_minio):
    bucket, records = fresh_bucket(), 600_000
    job = run_job(args={"records": records, "words": WORDS, "rate": 40_000},
                  storage=f"s3://{bucket}/checkpoints", env=fresh_minio.env,
                  checkpoint={"interval": "500ms", "timeout": "3s", "tolerableFailures": 100})
    before = job.wait_for(lambda s: (s.get("last_checkpoint") or {}).get("id", 0) >= 2,
                          what="checkpoints before the outage")
    fresh_minio.stop()
    # Down until checkpoints have failed for it and records were processed meanwhile.
    during = job.wait_for(
        lambda s: s["failed_checkpoints"] >= before.get("failed_checkpoints", 0) + 3
        and s["records_in"] > before["records_in"], timeout=60,
        what="checkpoints failing while MinIO is down")
    fresh_minio.start()
    after = job.wait_for(lambda s: (s.get("last_checkpoint") or {}).get("id", 0)
                         > during["last_checkpoint"]["id"], timeout=90,
                         what="a checkpoint after MinIO is back")
    assert during["failed_checkpoints"] > before.get("failed_checkpoints", 0)
    assert during["records_in"] > before["records_in"]  # processing went on
    assert after["restarts"] == 0
    assert job.wait(240) == 0, job.output()
    result = check_output(str(job.cwd / "output"), records, WORDS)
    assert result["duplicates"] == result["missing"] == result["unexpected"] == 0, result


def test_minio_killed_during_upload_partial_checkpoint_is_ignored(run_job, fresh_minio):
    bucket, records = fresh_bucket(), 300_000
    job = run_job(args={"records": records, "words": WORDS, "rate": 50_000},
                  storage=f"s3://{bucket}/checkpoints", env=fresh_minio.env,
                  checkpoint={"interval": "200ms", "timeout": "5s", "tolerableFailures": 100})
    before = job.wait_for(lambda s: (s.get("last_checkpoint") or {}).get("id", 0) >= 2,
                          what="checkpoints")
    fresh_minio.kill()  # mid-run: some checkpoint is uploading now
    os.kill(job.workers()[1], signal.SIGKILL)  # and a failure needs a restore meanwhile
    job.wait_for(lambda s: s.get("restarts", 0) >= 1, what="the failover with MinIO down")
    fresh_minio.start()
    assert job.wait(240) == 0, job.output()
    storage = S3Storage.from_uri(f"s3://{bucket}/checkpoints", env=fresh_minio.env)
    status = job.status()
    ids = ckpt.list_checkpoint_ids(storage, status["job_id"])
    # The restore used a completed checkpoint, at least as new as the last one seen before
    # the kill; checkpoints that were uploading when MinIO died left no _metadata behind.
    assert status["state"] == "FINISHED" and status["restarts"] >= 1, status
    assert status["restored_from"] >= before["last_checkpoint"]["id"]
    assert ids and all(ids.values()), ids  # no partial checkpoint left behind
    result = check_output(str(job.cwd / "output"), records, WORDS)
    assert result["duplicates"] == result["missing"] == result["unexpected"] == 0, result


def _run(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamjob", "run", *args], cwd=cwd,
                          env=dict(os.environ, **env, PYTHONPATH=PYPATH),
                          capture_output=True, text=True, timeout=120)


def test_wrong_credentials_or_unreachable_endpoint_is_one_clear_error(minio_server, tmp_path):
    manifest = ROOT / "examples" / "wordcount.yaml"
    bad = dict(minio_server.env, AWS_SECRET_ACCESS_KEY="not-the-secret-" + uuid.uuid4().hex)
    result = _run([str(manifest), "--checkpoint-dir", f"s3://{fresh_bucket()}/c"], bad, tmp_path)
    assert result.returncode == 2
    assert minio_server.endpoint in result.stderr
    assert bad["AWS_SECRET_ACCESS_KEY"] not in result.stderr + result.stdout
    assert not (tmp_path / ".streamjob").exists()

    nowhere = dict(minio_server.env, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    result = _run([str(manifest), "--checkpoint-dir", f"s3://{fresh_bucket()}/c"], nowhere,
                  tmp_path)
    assert result.returncode == 2
    assert "127.0.0.1:9" in result.stderr
    assert not (tmp_path / ".streamjob").exists()


def test_rescale_2_to_4_to_3_through_savepoints_on_minio(run_job, minio_server):
    bucket, records = fresh_bucket(), 240_000
    common = {"storage": f"s3://{bucket}/checkpoints", "env": minio_server.env}
    args = {"records": records, "words": WORDS, "rate": 50_000,
            "output": f"s3://{bucket}/out"}
    job = run_job(args=args, parallelism=2, **common)
    job.wait_for(lambda s: s.get("records_in", 0) > records // 4, what="a quarter")
    uri = savepoint(job, stop=True)
    assert uri.startswith(f"s3://{bucket}/checkpoints/") and "/savepoints/sp-" in uri
    assert job.wait() == 0, job.output()
    job4 = run_job(args=args, parallelism=4, extra=["--from-savepoint", uri], **common)
    job4.wait_for(lambda s: s.get("state") == "RUNNING" and s.get("last_checkpoint"),
                  what="p=4 running with a checkpoint")
    uri2 = savepoint(job4, stop=True)
    assert job4.wait() == 0, job4.output()
    job3 = run_job(args=args, parallelism=3, extra=["--from-savepoint", uri2], **common)
    assert job3.wait() == 0, job3.output()
    result = committed(minio_server, bucket, records)
    if result["duplicates"]:
        print("URI2", uri2, "JOB4", job4.status(), job4.output()[-4000:])
    assert_exact(result)


@pytest.mark.parametrize("missing", ["sp-999"])
def test_missing_savepoint_on_minio_is_a_clear_error(minio_server, tmp_path, missing):
    bucket = fresh_bucket()
    uri = f"s3://{bucket}/c/job/savepoints/{missing}"
    result = _run([str(ROOT / "examples" / "wordcount.yaml"), "--checkpoint-dir",
                   f"s3://{bucket}/c", "--from-savepoint", uri], minio_server.env, tmp_path)
    assert result.returncode == 2
    assert "no savepoint at" in result.stderr
