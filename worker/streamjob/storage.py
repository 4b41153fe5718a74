"""Checkpoint storage: a small backend interface and the local-folder backend.

Keys are ``/``-separated paths relative to the storage root that a URI names
(``file:///var/ckpt`` or ``s3://bucket/prefix``). Writes of one key are atomic: a reader
sees the whole object or nothing, which is what makes ``_metadata``-written-last a valid
completion marker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol


class StorageError(OSError):
    """Storage could not do what was asked (unreachable, denied, full)."""


class NotFoundError(StorageError):
    """The key does not exist."""


class Storage(Protocol):
    uri: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, offset: int, length: int) -> bytes: ...

    def size(self, key: str) -> int | None: ...

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (recursive), sorted."""
        ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...


class LocalStorage:
    """A folder on the local disk."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self.uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise StorageError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        """Atomic and durable (see :meth:`_write_atomically`)."""
        self._write_atomically(key, lambda f: f.write(data))

    def put_file(self, key: str, src: BinaryIO) -> None:
        """``put`` of an open file's whole content (from its start), copied in chunks."""
        def copy(f: BinaryIO) -> None:
            src.seek(0)
            try:
                fd = src.fileno()
            except (AttributeError, OSError, ValueError):  # not a real file (BytesIO...)
                shutil.copyfileobj(src, f, 1 << 20)
                return
            # A real file: the kernel copies it (sendfile), in one call that holds no GIL.
            # Copied in 1 MB chunks, each read and write had to take the GIL back, which
            # the task thread may hold for tens of ms (RocksDB's writes): a 100 MB upload
            # waited up to a second for it.
            f.flush()
            size, done = os.fstat(fd).st_size, 0
            while done < size:
                sent = os.sendfile(f.fileno(), fd, done, size - done)
                if not sent:
                    break
                done += sent

        self._write_atomically(key, copy)

    def _write_atomically(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        """A temp file in the same folder, fsynced, renamed over the key, then the folder
        fsynced (so the rename survives a power loss). A failed write leaves no temp file
        behind."""
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
            fsync_dir(path.parent)
        except (OSError, ValueError, TypeError) as err:
            raise StorageError(f"cannot write {self.uri}/{key}: {_why(err)}") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.uri}/{key} does not exist") from None
        except (OSError, ValueError) as err:
            raise StorageError(f"cannot read {self.uri}/{key}: {_why(err)}") from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise NotFoundError(f"{self.uri}/{key} does not exist") from None
        except (OSError, ValueError) as err:
            raise StorageError(f"cannot read {self.uri}/{key}: {_why(err)}") from None

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise StorageError(f"cannot stat {self.uri}/{key}: {_why(err)}") from None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        try:
            if not base.exists():
                return []
            if base.is_file():
                return [prefix]
        except (OSError, ValueError) as err:
            raise StorageError(f"cannot list {self.uri}/{prefix}: {_why(err)}") from None
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath, name)
                out.append(full.relative_to(self.root).as_posix())
        return sorted(out)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            raise StorageError(f"cannot delete {self.uri}/{key}: {_why(err)}") from None

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        try:
            if path.is_dir():
                # Rename first so that a crash mid-delete never leaves a half-deleted folder
                # that still looks like a checkpoint.
                trash = path.with_name(f".tmp-del-{uuid.uuid4().hex}")
                os.replace(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
            elif path.exists():
                path.unlink()
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            raise StorageError(f"cannot delete {self.uri}/{prefix}: {_why(err)}") from None


def _why(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def fsync_dir(path: str | Path) -> None:
    """Make the entries of a folder (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_storage(uri: str) -> Storage:
    """The backend for a storage URI: ``file://PATH`` or ``s3://bucket/prefix`` (wrapped in
    fault points when a test asks for storage faults)."""
    from streamjob import faults

    return faults.wrap(_open_backend(uri))


def _open_backend(uri: str) -> Storage:
    if uri.startswith("file://"):
        return LocalStorage(uri.removeprefix("file://") or ".")
    if uri.startswith("s3://"):
        try:
            from streamjob.s3storage import S3Storage
        except ImportError:
            raise StorageError("s3:// storage is not available in this build") from None
        return S3Storage.from_uri(uri)
    if "://" not in uri:
        return LocalStorage(uri)
    raise StorageError(f"storage URI {uri!r} must start with file:// or s3://")
