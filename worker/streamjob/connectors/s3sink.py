"""The transactional file sink on S3 (MinIO): the same two-phase commit as the local one.

Between barriers, lines are buffered in a spooled temporary file (in memory up to 64 MiB,
then on disk). At barrier n the buffer is streamed (multipart, off the processing thread) to
``<out>.staging``-style keys
``<parent>/.<name>.staging/<job>/chk-<n>/part-<job>-<subtask>-<n>``; when checkpoint n
completes each staged object is copied to ``<out>/part-...`` (an object appears whole or not
at all) and the staged copy deleted. A restore from n commits what was staged up to n and
deletes what was staged after it; committed output is never touched.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from streamjob import faults
from streamjob.connectors.filesink import job_token, lines
from streamjob.storage import NotFoundError

_STAGED = re.compile(r"^chk-(\d+)/part-([0-9a-f]{8})-(\d+)-(\d+)$")
_PART = re.compile(r"^part-([0-9a-f]{8})-(\d+)-(\d+)$")


class S3FileSink:
    def __init__(self, uri: str, fmt: Callable[[Any], str] = str):
        bucket, _, path = uri.removeprefix("s3://").partition("/")
        path = path.strip("/")
        if not bucket or not path:
            raise ValueError(f"file sink {uri!r} must be s3://bucket/folder")
        parent, _, name = path.rpartition("/")
        self.uri = uri
        self.bucket_uri = f"s3://{bucket}"
        self.output = path
        self.staging = f"{parent}/.{name}.staging" if parent else f".{name}.staging"
        self.fmt = fmt
        self._storage = None

    @property
    def storage(self):
        if self._storage is None:  # created in the process that uses it (not pickled around)
            from streamjob.s3storage import S3Storage

            self._storage = S3Storage.from_uri(self.bucket_uri)
        return self._storage

    def create_writer(self, subtask: int, job_id: str) -> S3FileSinkWriter:
        return S3FileSinkWriter(self, subtask, job_token(job_id))

    def _staged(self, token: str) -> list[tuple[int, int, str]]:
        base = f"{self.staging}/{token}/"
        out = []
        for key in self.storage.list(base):
            m = _STAGED.match(key[len(base):])
            if m:
                out.append((int(m.group(1)), int(m.group(3)), key))
        return out

    def commit(self, token: str, checkpoint_id: int, subtask: int | None = None) -> int:
        moved = 0
        for n, sub, key in self._staged(token):
            if n <= checkpoint_id and (subtask is None or sub == subtask):
                name = key.rsplit("/", 1)[1]
                try:
                    self.storage.copy(key, f"{self.output}/{name}")
                except NotFoundError:
                    # Already committed (the staged copy is deleted only after the copy).
                    if self.storage.size(f"{self.output}/{name}") is None:
                        raise
                    continue
                self.storage.delete(key)
                moved += 1
                if moved == 1:
                    faults.point("sink.during-commit")
        return moved

    def recover(self, job_id: str, checkpoint_id: int | None) -> None:
        token = job_token(job_id)
        upto = checkpoint_id or 0
        self.commit(token, upto)
        for n, _sub, key in self._staged(token):
            if n > upto:
                self.storage.delete(key)

    def committed_after(self, job_id: str, checkpoint_id: int) -> list[str]:
        token = job_token(job_id)
        return [key for key in self.storage.list(f"{self.output}/")
                if (m := _PART.match(key.rsplit("/", 1)[1])) and m.group(1) == token
                and int(m.group(3)) > checkpoint_id]

    def set_aside(self, job_id: str, checkpoint_id: int) -> str | None:
        keys = self.committed_after(job_id, checkpoint_id)
        if not keys:
            return None
        parent, _, name = self.output.rpartition("/")
        kept = (f"{parent}/" if parent else "") + (
            f".{name}.superseded/{job_token(job_id)}-after-{checkpoint_id}-"
            f"{uuid.uuid4().hex[:6]}")
        for key in keys:  # copied first, deleted after: kept in one place at least
            self.storage.copy(key, f"{kept}/{key.rsplit('/', 1)[1]}")
            self.storage.delete(key)
        return f"{self.bucket_uri}/{kept}"


class S3FileSinkWriter:
    def __init__(self, sink: S3FileSink, subtask: int, token: str):
        self.sink, self.subtask, self.token = sink, subtask, token
        self.buffer: Any = None

    def write(self, batch: list[Any]) -> None:
        if self.buffer is None:
            self.buffer = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115
        if batch:
            self.buffer.write(lines(batch, self.sink.fmt).encode())

    def pre_commit(self, checkpoint_id: int) -> Callable[[], None]:
        buf, self.buffer = self.buffer, None
        if buf is None:
            return lambda: None
        key = (f"{self.sink.staging}/{self.token}/chk-{checkpoint_id}/"
               f"part-{self.token}-{self.subtask}-{checkpoint_id}")

        def finish() -> None:
            # Streamed from the spooled file (on disk past 64 MiB): an epoch's output is
            # never held in memory whole, nor copied again by the upload.
            try:
                self.sink.storage.put_file(key, buf)
            finally:
                buf.close()

        return finish

    def commit(self, checkpoint_id: int) -> None:
        self.sink.commit(self.token, checkpoint_id, self.subtask)

    def close(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None
