"""Issue 11, item 8: the S3 sink streams an epoch to MinIO instead of reading it whole."""

from __future__ import annotations

import hashlib
import os
import tempfile

import pytest

from streamjob.connectors.s3sink import S3FileSink
from streamjob.s3storage import S3Storage

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def test_put_file_streams_a_multipart_upload_with_its_checksum(minio_server, bucket_uri):
    store = S3Storage.from_uri(bucket_uri, env=minio_server.env)
    data = os.urandom(40 * MiB + 5)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(123)  # put_file uploads from the start whatever the position
        store.put_file("big/file", f)
    stat = store._client.stat_object(store.bucket, store._name("big/file"))
    assert stat.etag.endswith("-3"), stat.etag
    assert store.checksum("big/file") == hashlib.sha256(data).hexdigest()
    assert store.get("big/file") == data


def test_s3_sink_stages_and_commits_an_epoch_without_reading_it_whole(minio_server,
                                                                       bucket_uri,
                                                                       monkeypatch):
    for k, v in minio_server.env.items():
        monkeypatch.setenv(k, v)
    sink = S3FileSink(f"{bucket_uri}/out")
    w = sink.create_writer(0, "job")
    lines = [f"line {i}" for i in range(200_000)]
    w.write(lines[:100_000])
    w.write(lines[100_000:])
    buf = w.buffer
    read_all = []
    real_read = buf.read
    monkeypatch.setattr(buf, "read", lambda n=-1: read_all.append(n) or real_read(n))
    w.pre_commit(1)()
    assert -1 not in read_all and None not in read_all  # only bounded reads
    w.commit(1)
    keys = sink.storage.list(f"{sink.output}/")
    assert len(keys) == 1
    assert sink.storage.get(keys[0]).decode().splitlines() == lines


def test_s3_sink_never_deletes_committed_output_and_sets_it_aside_only_when_asked(
        minio_server, bucket_uri, monkeypatch):
    for k, v in minio_server.env.items():
        monkeypatch.setenv(k, v)
    sink = S3FileSink(f"{bucket_uri}/set-aside/out")
    w = sink.create_writer(0, "job-s")
    for cid in (1, 2, 3):
        w.write([f"epoch {cid}"])
        w.pre_commit(cid)()
    w.commit(3)
    committed = sink.storage.list(f"{sink.output}/")
    assert len(committed) == 3
    sink.recover("job-s", 1)                      # a restore from 1 leaves them alone
    assert sink.storage.list(f"{sink.output}/") == committed
    assert sink.committed_after("job-s", 1) == committed[1:]
    kept = sink.set_aside("job-s", 1)
    assert kept.startswith(f"{bucket_uri}/set-aside/.out.superseded/")
    assert sink.storage.list(f"{sink.output}/") == committed[:1]
    kept_keys = sink.storage.list(kept.removeprefix(f"{sink.bucket_uri}/") + "/")
    assert sorted(sink.storage.get(k).decode() for k in kept_keys) == ["epoch 2\n",
                                                                         "epoch 3\n"]
