"""S3Storage against the real MinIO server: no mock of S3 anywhere."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from streamjob.s3storage import S3Storage
from streamjob.storage import NotFoundError, StorageError, open_storage

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
def store(minio_server, bucket_uri) -> S3Storage:
    return S3Storage.from_uri(bucket_uri, env=minio_server.env)


def test_round_trip_with_checksum(store):
    store.put("chk-1/_metadata", b"hello")
    assert store.get("chk-1/_metadata") == b"hello"
    assert store.size("chk-1/_metadata") == 5
    assert store.checksum("chk-1/_metadata") == hashlib.sha256(b"hello").hexdigest()
    store.put("chk-1/_metadata", b"")  # overwrite, empty object
    assert store.get("chk-1/_metadata") == b""
    assert store.size("chk-1/_metadata") == 0


def test_missing_keys(store):
    with pytest.raises(NotFoundError) as info:
        store.get("nope/key")
    assert "nope/key" in str(info.value) and store.endpoint in str(info.value)
    with pytest.raises(NotFoundError):
        store.get_range("nope/key", 0, 10)
    assert store.size("nope/key") is None
    assert store.list("nope") == []
    store.delete("nope/key")  # deleting what is not there is fine
    store.delete_prefix("nope")


def test_invalid_key(store):
    with pytest.raises(StorageError):
        store.put("a/../b", b"x")


def test_ranged_read(store):
    data = os.urandom(MiB + 17)
    store.put("op/0-abc", data)
    assert store.get_range("op/0-abc", 0, 10) == data[:10]
    assert store.get_range("op/0-abc", 4096, 100_000) == data[4096:104_096]
    assert store.get_range("op/0-abc", len(data) - 5, 100) == data[-5:]  # past the end
    assert store.get_range("op/0-abc", len(data), 10) == b""
    assert store.get_range("op/0-abc", 12, 0) == b""


def test_list_and_delete_prefix(store):
    keys = [
        "job/chk-1/_metadata",
        "job/chk-1/map/0-a",
        "job/chk-1/map/1-b",
        "job/chk-10/_metadata",
        "job/chk-10/map/0-c",
        "job/savepoints/sp-1/_metadata",
        "other",
    ]
    for k in reversed(keys):
        store.put(k, k.encode())
    assert store.list("") == sorted(keys)
    assert store.list("job") == sorted(keys[:-1])
    # A folder, not a string prefix: chk-1 never lists chk-10.
    assert store.list("job/chk-1") == keys[:3]
    assert store.list("job/chk-1/") == keys[:3]
    assert store.list("job/chk-1/map/0-a") == ["job/chk-1/map/0-a"]
    store.delete_prefix("job/chk-1")
    assert store.list("job/chk-1") == []
    assert store.list("") == sorted(keys[3:])
    store.delete("other")
    assert store.list("") == keys[3:6]


def test_prefixes_are_isolated(minio_server, bucket_uri, store):
    other = S3Storage.from_uri(bucket_uri + "-other", env=minio_server.env)
    store.put("k", b"1")
    other.put("k", b"2")
    assert store.get("k") == b"1" and other.get("k") == b"2"
    assert store.list("") == ["k"] and other.list("") == ["k"]


def test_large_object_is_multipart(store):
    data = os.urandom(40 * MiB + 123)  # 16 + 16 + 8 MiB parts, uploaded in parallel
    store.put("big/state", data)
    stat = store._client.stat_object(store.bucket, store._name("big/state"))
    assert stat.etag.endswith("-3"), stat.etag  # S3's mark of a 3-part upload
    assert store.size("big/state") == len(data)
    assert store.checksum("big/state") == hashlib.sha256(data).hexdigest()
    assert store.get("big/state") == data
    assert store.get_range("big/state", 16 * MiB - 10, 20) == data[16 * MiB - 10 : 16 * MiB + 10]


def test_corrupt_object_is_detected(store):
    store.put("x", b"good")
    # Write through the raw client with a checksum that does not match the content.
    import io

    store._client.put_object(store.bucket, store._name("x"), io.BytesIO(b"evil"), 4,
                             metadata={"sha256": hashlib.sha256(b"good").hexdigest()})
    with pytest.raises(StorageError, match="corrupt"):
        store.get("x")


def test_missing_bucket_is_created(minio_server, bucket_uri):
    bucket = bucket_uri.removeprefix("s3://").split("/")[0]
    store = S3Storage.from_uri(bucket_uri, env=minio_server.env)
    assert store._client.bucket_exists(bucket)
    store.put("a", b"b")
    # A second storage on the existing bucket works as well.
    assert S3Storage.from_uri(bucket_uri, env=minio_server.env).get("a") == b"b"


def test_open_storage_s3_uses_environment(minio_server, bucket_uri, monkeypatch):
    for k, v in minio_server.env.items():
        monkeypatch.setenv(k, v)
    store = open_storage(bucket_uri)
    assert isinstance(store, S3Storage)
    assert store.uri == bucket_uri
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_wrong_credentials_give_one_clear_error(minio_server, bucket_uri):
    secret = "wrong-" + "s3cr3t" * 5
    env = dict(minio_server.env, AWS_SECRET_ACCESS_KEY=secret)
    with pytest.raises(StorageError) as info:
        S3Storage.from_uri(bucket_uri, env=env)
    msg = str(info.value)
    assert "credentials" in msg and minio_server.endpoint in msg, msg
    assert secret not in msg and minio_server.secret_key not in msg
    assert minio_server.access_key not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__
    # Unknown access key as well.
    env = dict(minio_server.env, AWS_ACCESS_KEY_ID="nobody")
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY"):
        S3Storage.from_uri(bucket_uri, env=env)


def test_missing_credentials(minio_server, bucket_uri):
    env = {"AWS_ENDPOINT_URL": minio_server.endpoint}
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID"):
        S3Storage.from_uri(bucket_uri, env=env)


def test_unreachable_endpoint_fails_fast(minio_server, bucket_uri):
    from daemons import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    env = dict(minio_server.env, AWS_ENDPOINT_URL=endpoint)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        S3Storage.from_uri(bucket_uri, env=env)
    assert time.monotonic() - started < 5
    msg = str(info.value)
    assert endpoint in msg and "cannot reach" in msg, msg
    assert minio_server.secret_key not in msg


def test_repr_has_no_secret(store, minio_server):
    assert minio_server.secret_key not in repr(store)
    assert minio_server.secret_key not in repr(minio_server)


def test_outage_fails_fast_and_recovers(fresh_minio, bucket_uri):
    store = S3Storage.from_uri(bucket_uri, env=fresh_minio.env)
    store.put("chk-1/_metadata", b"before")
    port = fresh_minio.port

    stopped_at = time.monotonic()
    fresh_minio.stop()
    for call in (
        lambda: store.put("chk-2/_metadata", b"during"),
        lambda: store.put("chk-2/big", os.urandom(20 * MiB)),
        lambda: store.get("chk-1/_metadata"),
        lambda: store.list("chk-1"),
    ):
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            call()
        assert time.monotonic() - started < 5, "an outage must fail a call within seconds"
        assert fresh_minio.endpoint in str(info.value)
        assert fresh_minio.secret_key not in str(info.value)

    time.sleep(max(0.0, 10 - (time.monotonic() - stopped_at)))  # down for 10 s
    fresh_minio.start()
    assert fresh_minio.port == port
    # The same storage object works again; data written before the outage is still there.
    assert store.get("chk-1/_metadata") == b"before"
    store.put("chk-2/_metadata", b"after")
    assert store.list("") == ["chk-1/_metadata", "chk-2/_metadata"]


def test_hung_server_fails_within_the_timeout(fresh_minio, bucket_uri):
    env = dict(fresh_minio.env, STREAMJOB_S3_TIMEOUT="2")
    store = S3Storage.from_uri(bucket_uri, env=env)
    store.put("a", b"1")
    fresh_minio.pause()
    try:
        for call in (lambda: store.get("a"), lambda: store.put("b", b"2")):
            started = time.monotonic()
            with pytest.raises(StorageError, match="timed out"):
                call()
            assert time.monotonic() - started < 5
    finally:
        fresh_minio.resume()
    assert store.get("a") == b"1"


def test_invalid_bucket_name(minio_server):
    with pytest.raises(StorageError, match="invalid S3 bucket name"):
        S3Storage.from_uri("s3://Bad_Bucket/x", env=minio_server.env)
    with pytest.raises(StorageError, match="names no bucket"):
        S3Storage.from_uri("s3:///x", env=minio_server.env)


def test_killed_server_keeps_completed_objects(fresh_minio, bucket_uri):
    store = S3Storage.from_uri(bucket_uri, env=fresh_minio.env)
    store.put("a", b"1" * 1000)
    fresh_minio.kill()
    with pytest.raises(StorageError):
        store.get("a")
    fresh_minio.start()
    assert store.get("a") == b"1" * 1000
