"""Checkpoint storage on the S3 API (MinIO, AWS S3 and compatible servers).

``S3Storage.from_uri("s3://bucket/prefix")`` takes the endpoint and credentials from the
variables the S3 ecosystem already uses:

- ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), e.g. ``http://127.0.0.1:9000``;
  default ``https://s3.amazonaws.com``
- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional ``AWS_SESSION_TOKEN``
- optional ``AWS_REGION`` / ``AWS_DEFAULT_REGION``
- optional ``STREAMJOB_S3_TIMEOUT`` (seconds a call may wait for an answer, default 5)

A missing bucket is created. Objects above ``part_size`` (16 MiB) go up as multipart uploads
with parts sent in parallel. Every object carries the sha256 of its content in its user
metadata (``x-amz-meta-sha256``); ``get`` verifies it. Every failure becomes a
:class:`~streamjob.storage.StorageError` (or :class:`~streamjob.storage.NotFoundError`) whose
message names the endpoint and the key, never the credentials. Timeouts and retries are
short and bounded, so an outage fails a call within seconds instead of hanging.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable, Mapping
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from streamjob.storage import NotFoundError, StorageError

T = TypeVar("T")

MiB = 1024 * 1024
SHA256_META = "sha256"
_SHA256_HEADER = "x-amz-meta-sha256"

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}


def _reason(exc: BaseException) -> str:
    """A short, secret-free description of a transport error."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionError):
        text = str(exc)
        for known in ("Connection refused", "Name or service not known",
                      "No route to host", "Network is unreachable", "timed out"):
            if known.lower() in text.lower():
                return known.lower()
        return "cannot connect"
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection lost"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "TLS error"
    return type(exc).__name__


class S3Storage:
    """Checkpoint storage under ``s3://bucket/prefix`` (implements ``storage.Storage``)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str = "https://s3.amazonaws.com",
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        region: str | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 3.0,
        part_size: int = 16 * MiB,
        parallel_uploads: int = 4,
        create_bucket: bool = True,
    ):
        if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise StorageError(
                f"invalid S3 bucket name {bucket!r}: 3-63 characters of a-z, 0-9, '.' and '-',"
                " starting and ending with a letter or digit")
        self.bucket = bucket
        self.prefix = "/".join(p for p in prefix.split("/") if p)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint = endpoint.rstrip("/")
        self.part_size = max(int(part_size), 5 * MiB)
        self.parallel_uploads = max(1, int(parallel_uploads))
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StorageError(
                f"S3 endpoint {self.endpoint!r} must look like http://host:port or https://host")
        if parts.path not in ("", "/") or parts.query:
            raise StorageError(f"S3 endpoint {self.endpoint!r} must not have a path")
        if not access_key or not secret_key:
            raise StorageError(
                f"no credentials for S3 endpoint {self.endpoint}: set AWS_ACCESS_KEY_ID"
                " and AWS_SECRET_ACCESS_KEY")
        # Bounded everywhere: a refused connection fails in well under a second, a server
        # that stopped answering fails after `timeout` seconds (read retries are off, so a
        # slow answer is not waited for twice).
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=timeout),
            retries=urllib3.Retry(
                total=2,
                connect=2,
                read=0,
                status=2,
                other=0,
                backoff_factor=0.2,
                status_forcelist=(500, 502, 503, 504),
                allowed_methods=None,
                raise_on_status=False,
                respect_retry_after_header=False,
            ),
            maxsize=max(10, 2 * self.parallel_uploads),
            cert_reqs="CERT_REQUIRED",
        )
        try:
            self._client = Minio(
                parts.netloc,
                access_key=access_key,
                secret_key=secret_key,
                session_token=session_token,
                secure=parts.scheme == "https",
                region=region,
                http_client=http,
            )
        except ValueError as err:
            raise StorageError(f"S3 endpoint {self.endpoint!r}: {err}") from None
        if create_bucket:
            self._ensure_bucket()

    @classmethod
    def from_uri(cls, uri: str, env: Mapping[str, str] | None = None, **kwargs) -> S3Storage:
        """``s3://bucket/prefix`` with endpoint and credentials from the environment."""
        env = os.environ if env is None else env
        if not uri.startswith("s3://"):
            raise StorageError(f"storage URI {uri!r} must start with s3://")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"storage URI {uri!r} names no bucket")
        endpoint = (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
                    or "https://s3.amazonaws.com")
        if "timeout" not in kwargs and env.get("STREAMJOB_S3_TIMEOUT"):
            try:
                kwargs["timeout"] = float(env["STREAMJOB_S3_TIMEOUT"])
            except ValueError:
                raise StorageError("STREAMJOB_S3_TIMEOUT must be a number of seconds") from None
        return cls(
            bucket,
            prefix,
            endpoint=endpoint,
            access_key=env.get("AWS_ACCESS_KEY_ID"),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            **kwargs,
        )

    def __repr__(self) -> str:  # never the credentials
        return f"S3Storage({self.uri!r}, endpoint={self.endpoint!r})"

    # -- helpers ----------------------------------------------------------------------

    def _name(self, key: str) -> str:
        """Object name for a storage key (normalised like LocalStorage keys)."""
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise StorageError(f"invalid storage key {key!r}")
        if self.prefix:
            parts.insert(0, self.prefix)
        return "/".join(parts)

    def _key(self, name: str) -> str:
        if self.prefix:
            return name[len(self.prefix) + 1:]
        return name

    def _where(self, key: str | None) -> str:
        target = self.uri if not key else f"{self.uri.rstrip('/')}/{key.lstrip('/')}"
        return f"{target} (endpoint {self.endpoint})"

    def _call(self, op: str, key: str | None, fn: Callable[[], T]) -> T:
        """Run one client call; turn every failure into a clear StorageError."""
        try:
            return fn()
        except S3Error as err:
            raise self._s3_error(op, key, err) from None
        except ServerError as err:
            raise StorageError(
                f"S3 {op} of {self._where(key)} failed: server error"
                f" (HTTP {err.status_code})") from None
        except InvalidResponseError as err:
            raise StorageError(
                f"S3 {op} of {self._where(key)} failed: invalid response"
                f" (HTTP {err._code})") from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            if isinstance(err, StorageError):
                raise
            raise StorageError(
                f"S3 {op} of {self._where(key)} failed: cannot reach the endpoint"
                f" ({_reason(err)})") from None
        except MinioException as err:
            raise StorageError(
                f"S3 {op} of {self._where(key)} failed: {type(err).__name__}") from None
        except ValueError as err:  # the client's argument checks (bucket or object name)
            raise StorageError(f"S3 {op} of {self._where(key)}: {err}") from None

    def _s3_error(self, op: str, key: str | None, err: S3Error) -> StorageError:
        code = err.code or "unknown"
        if code == "AccessDenied":
            return StorageError(
                f"S3 endpoint {self.endpoint} denied {op} of {self._where(key)} (AccessDenied):"
                " wrong credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,"
                " or they lack the permission")
        if code in _CREDENTIAL_CODES:
            return StorageError(
                f"S3 endpoint {self.endpoint} rejected the credentials from AWS_ACCESS_KEY_ID"
                f" / AWS_SECRET_ACCESS_KEY ({code}) on {op} of {self._where(key)}")
        if code in _NOT_FOUND_CODES:
            return NotFoundError(f"{self._where(key)} does not exist")
        if code == "NoSuchBucket":
            return NotFoundError(f"bucket {self.bucket} does not exist at {self.endpoint}")
        message = f": {err.message}" if err.message else ""
        return StorageError(f"S3 {op} of {self._where(key)} failed: {code}{message}")

    def _ensure_bucket(self) -> None:
        def ensure() -> None:
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket)
            except S3Error as err:
                if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._call("bucket check", None, ensure)

    # -- Storage protocol -------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        data = bytes(data) if not isinstance(data, bytes) else data
        digest = hashlib.sha256(data).hexdigest()

        def upload() -> None:
            # put_object sends one PUT up to part_size and a multipart upload above it,
            # with `parallel_uploads` parts in flight; a failed multipart upload is aborted.
            self._client.put_object(
                self.bucket,
                name,
                io.BytesIO(data),
                len(data),
                metadata={SHA256_META: digest},
                part_size=self.part_size,
                num_parallel_uploads=self.parallel_uploads,
            )

        self._call("put", key, upload)

    def put_file(self, key: str, f: BinaryIO) -> None:
        """Upload an open file from its start without reading it into memory: one pass for
        the checksum, then a multipart upload that holds at most ``parallel_uploads`` parts
        of ``part_size`` in memory."""
        name = self._name(key)

        def upload() -> None:
            f.seek(0)
            h = hashlib.sha256()
            length = 0
            while chunk := f.read(MiB):
                h.update(chunk)
                length += len(chunk)
            f.seek(0)
            self._client.put_object(
                self.bucket,
                name,
                f,
                length,
                metadata={SHA256_META: h.hexdigest()},
                part_size=self.part_size,
                num_parallel_uploads=self.parallel_uploads,
            )

        self._call("put", key, upload)

    def get(self, key: str) -> bytes:
        name = self._name(key)

        def download() -> tuple[bytes, str | None]:
            resp = self._client.get_object(self.bucket, name)
            try:
                return resp.read(), resp.headers.get(_SHA256_HEADER)
            finally:
                resp.close()
                resp.release_conn()

        data, expected = self._call("get", key, download)
        if expected and hashlib.sha256(data).hexdigest() != expected.lower():
            raise StorageError(f"{self._where(key)} is corrupt: its sha256 does not match"
                               " the checksum stored with it")
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise StorageError(f"invalid range {offset}+{length} of {self._where(key)}")
        name = self._name(key)
        if length == 0:
            if self.size(key) is None:
                raise NotFoundError(f"{self._where(key)} does not exist")
            return b""

        def download() -> bytes:
            try:
                resp = self._client.get_object(self.bucket, name, offset=offset, length=length)
            except S3Error as err:
                if err.code == "InvalidRange":  # offset at or past the end
                    return b""
                raise
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call("ranged get", key, download)

    def size(self, key: str) -> int | None:
        name = self._name(key)
        try:
            stat = self._call("stat", key, lambda: self._client.stat_object(self.bucket, name))
        except NotFoundError:
            return None
        return stat.size

    def checksum(self, key: str) -> str | None:
        """The sha256 (hex) stored with the object, or None if it has none."""
        name = self._name(key)
        stat = self._call("stat", key, lambda: self._client.stat_object(self.bucket, name))
        meta = stat.metadata or {}
        for header, value in meta.items():
            if header.lower() == _SHA256_HEADER:
                return value
        return None

    def _list_names(self, name_prefix: str, key: str) -> list[str]:
        def collect() -> list[str]:
            return [
                obj.object_name
                for obj in self._client.list_objects(
                    self.bucket, prefix=name_prefix, recursive=True)
                if obj.object_name and not obj.is_dir
            ]

        return self._call("list", key, collect)

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (recursive), sorted.

        ``prefix`` names a folder (``chk-1`` lists ``chk-1/...``, never ``chk-10/...``) or
        one key, as with the local backend.
        """
        name = self._name(prefix)
        if name == self.prefix:  # the whole storage root
            root = f"{self.prefix}/" if self.prefix else ""
            return sorted(self._key(n) for n in self._list_names(root, prefix))
        under = self._list_names(name + "/", prefix)
        if under:
            return sorted(self._key(n) for n in under)
        return [self._key(name)] if self.size(prefix) is not None else []

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._call("delete", key, lambda: self._client.remove_object(self.bucket, name))

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix``.

        ``_metadata`` objects go first, so a checkpoint interrupted half-way through its
        deletion is already incomplete (ignored) rather than a damaged complete one.
        """
        keys = self.list(prefix)
        markers = [k for k in keys if k.rsplit("/", 1)[-1] == "_metadata"]
        rest = [k for k in keys if k.rsplit("/", 1)[-1] != "_metadata"]
        for batch in (markers, rest):
            if batch:
                self._remove_many(prefix, batch)

    def _remove_many(self, prefix: str, keys: list[str]) -> None:
        def remove() -> list[str]:
            errors = self._client.remove_objects(
                self.bucket, (DeleteObject(self._name(k)) for k in keys))
            return [f"{e.name}: {e.code}" for e in errors]  # consuming runs the deletes

        failed = self._call("delete", prefix, remove)
        if failed:
            shown = ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
            raise StorageError(
                f"S3 delete under {self._where(prefix)} failed for {len(failed)} objects:"
                f" {shown}")

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy (how an S3 "rename" starts; the sink deletes the source after)."""
        from minio.commonconfig import CopySource

        src_name, dst_name = self._name(src), self._name(dst)
        self._call("copy", dst, lambda: self._client.copy_object(
            self.bucket, dst_name, CopySource(self.bucket, src_name)))
