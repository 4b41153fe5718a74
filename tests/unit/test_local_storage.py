"""Issue 11, item 4: LocalStorage.put is durable and leaves nothing behind when it fails."""

from __future__ import annotations

import errno
import io
import os
import stat

import pytest

from streamjob import storage as storage_mod
from streamjob.storage import LocalStorage, NotFoundError, StorageError


def _tmp_files(root) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
            if f.startswith(".tmp-")]


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    s = LocalStorage(tmp_path)
    s.put("a/b", b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_mod.os, "fsync", full)
    with pytest.raises(StorageError, match="No space left"):
        s.put("a/b", b"new")
    monkeypatch.undo()
    assert _tmp_files(tmp_path) == []
    assert s.get("a/b") == b"old"


def test_a_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    s = LocalStorage(tmp_path)

    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(storage_mod.os, "replace", denied)
    with pytest.raises(StorageError):
        s.put("x", b"1")
    monkeypatch.undo()
    assert _tmp_files(tmp_path) == []
    assert s.size("x") is None


def test_put_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    s = LocalStorage(tmp_path)
    synced: list[tuple[str, bool]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(a, b):
        synced.append(("rename", False))
        real_replace(a, b)

    monkeypatch.setattr(storage_mod.os, "fsync", fsync)
    monkeypatch.setattr(storage_mod.os, "replace", replace)
    s.put("d/key", b"data")
    assert synced == [("fsync", False), ("rename", False), ("fsync", True)]


def test_bad_input_is_a_storage_error_not_a_crash(tmp_path):
    s = LocalStorage(tmp_path)
    with pytest.raises(StorageError):
        s.put("a\0b", b"x")
    with pytest.raises(StorageError):
        s.put("k", "not bytes")  # type: ignore[arg-type]
    assert _tmp_files(tmp_path) == []
    with pytest.raises(StorageError):
        s.get("a\0b")
    with pytest.raises(NotFoundError):
        s.get_range("missing", 0, 1)
    s.put("dir/file", b"x")
    with pytest.raises(StorageError):
        s.get_range("dir", 0, 1)  # a folder
    with pytest.raises(StorageError):
        s.delete("dir")            # a folder is not a key


def test_put_file_copies_a_real_file_or_a_file_object_whole_from_its_start(tmp_path):
    s = LocalStorage(tmp_path / "store")
    data = os.urandom(3 * (1 << 20) + 12345)  # several MB: more than one chunk or call
    path = tmp_path / "big.sst"
    path.write_bytes(data)
    with open(path, "rb") as f:
        f.seek(777)  # uploaded from the start whatever the position
        s.put_file("shared/big.sst", f)
    assert s.get("shared/big.sst") == data
    s.put_file("mem", io.BytesIO(b"not a real file"))
    assert s.get("mem") == b"not a real file"
