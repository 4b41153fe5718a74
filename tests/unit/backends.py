"""Both keyed state backends for the state unit tests: a module that imports
``each_backend`` runs every one of its tests on ``memory`` and on ``rocksdb``, building its
backends with :func:`new_backend`."""

from __future__ import annotations

import pytest

from streamjob.operators import KeyedStateBackend

_current: dict = {"kind": "memory", "dir": None, "opened": []}


@pytest.fixture(params=["memory", "rocksdb"], autouse=True)
def each_backend(request, tmp_path_factory):
    _current.update(kind=request.param, dir=tmp_path_factory.mktemp("state"), opened=[])
    yield request.param
    for backend in _current["opened"]:
        backend.close()
    _current.update(kind="memory", opened=[])


def kind() -> str:
    return _current["kind"]


def memory_only(why: str) -> None:
    """Skip on rocksdb: the test is about the memory backend's own snapshot code."""
    if kind() != "memory":
        pytest.skip(f"memory backend only: {why}")


def new_backend(track_changes: bool = False, key_groups: range = range(128),
                max_parallelism: int = 128, **options) -> KeyedStateBackend:
    """A backend of the kind under test (``options``: the rocksdb backend's)."""
    if _current["kind"] == "memory":
        backend = KeyedStateBackend(track_changes=track_changes)
        backend.key_groups, backend.max_parallelism = key_groups, max_parallelism
        return backend
    from streamjob.rocksdb_backend import RocksDBKeyedStateBackend

    n = len(_current["opened"])
    backend = RocksDBKeyedStateBackend(str(_current["dir"] / f"b{n}"), key_groups,
                                       max_parallelism, block_cache_mb=8, write_buffer_mb=4,
                                       **options)
    _current["opened"].append(backend)
    return backend


def as_stored(value):
    """``value`` as the backend under test gives it back from a snapshot: rocksdb stores
    msgpack, which turns tuples into lists (as a restore on the memory backend does)."""
    if _current["kind"] == "memory":
        return value
    import msgpack

    return msgpack.unpackb(msgpack.packb(value), strict_map_key=False)
