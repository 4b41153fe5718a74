"""What a worker pod needs for the job's state backend (pure; see docs/operator.md).

``spec.stateBackend.type: rocksdb`` keeps keyed state in RocksDB files under
``rocksdb.localDir``. In a pod that directory is an ``emptyDir`` of its own (the root
filesystem is read-only), and the container's memory must hold RocksDB's block cache and
write buffers on top of the Python process.
"""

from __future__ import annotations

import posixpath

from kubernetes.utils import parse_quantity

from streamjob.manifest import StreamJob

#: the one writable path every pod has (an emptyDir; also $HOME)
TMP = "/tmp"

#: directories an emptyDir must not cover: the kernel's, the OS's, the image's venv
PROTECTED = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/opt/streamjob", "/proc",
             "/run", "/sbin", "/sys", "/usr")

#: a worker process without state: CPython, the runtime, network buffers (measured ~120 MiB
#: RSS on this project's jobs; twice that leaves room for in-flight records)
WORKER_BASE_MIB = 256

#: ``writeBufferMB`` is the budget of the runtime's write buffer manager (all memtables of a
#: worker); counted twice: the manager flushes when it is reached but does not stall writes,
#: and a memtable being flushed stays in memory beside the one that fills
WRITE_BUFFERS = 2

MIB = 1 << 20


def uses_rocksdb(job: StreamJob) -> bool:
    return job.spec.state_backend.type == "rocksdb"


def local_dir(job: StreamJob) -> str:
    """``localDir`` normalised (``/tmp/x/`` and ``/tmp//x`` are the mount path ``/tmp/x``)."""
    return posixpath.normpath(job.spec.state_backend.rocksdb.local_dir)


def local_dir_problem(job: StreamJob) -> str | None:
    """Why ``localDir`` cannot be a volume in a pod (or None): a mount there would hide
    the system or the image's Python."""
    if not uses_rocksdb(job):
        return None
    path = local_dir(job)
    for protected in PROTECTED:
        if path == protected or path.startswith(protected + "/") or \
                protected.startswith(path.rstrip("/") + "/"):
            return (f"spec.stateBackend.rocksdb.localDir {path!r} would hide {protected} in "
                    "the pods; use a directory such as /tmp/streamjob-state or /var/lib/state")
    return None


def memory_floor_mib(job: StreamJob) -> int:
    """The least memory a worker pod of a rocksdb job needs: the Python process, the block
    cache and the write buffers. The runtime shares one cache and one write buffer budget
    among all databases of a worker and keeps indexes and filters in the cache, so this does
    not grow with the state or the number of keyed operators."""
    rocks = job.spec.state_backend.rocksdb
    return WORKER_BASE_MIB + rocks.block_cache_mb + WRITE_BUFFERS * rocks.write_buffer_mb


def memory_problem(job: StreamJob) -> str | None:
    """Why ``spec.resources.memory`` is too small for the rocksdb backend (or None)."""
    res = job.spec.resources
    if not uses_rocksdb(job) or res is None or res.memory is None:
        return None
    have = parse_quantity(res.memory)
    floor = memory_floor_mib(job)
    if have < floor * MIB:
        rocks = job.spec.state_backend.rocksdb
        return (f"spec.resources.memory {res.memory} is below what a rocksdb worker needs: "
                f"{floor}Mi = {WORKER_BASE_MIB}Mi for the process + blockCacheMB "
                f"{rocks.block_cache_mb} + {WRITE_BUFFERS} x writeBufferMB "
                f"{rocks.write_buffer_mb}")
    return None


def problem(job: StreamJob) -> str | None:
    """Why the job's state backend cannot run in pods as specified (or None)."""
    return local_dir_problem(job) or memory_problem(job)
