"""Copy-on-write snapshots of the memory state backend (``spec.checkpoint.snapshotStrategy:
fork``, off by default): at the barrier the worker forks; the child, whose memory is the
state as it was at the barrier, encodes and writes the state file while the parent goes on
processing (the way Redis persists).

Why: the default (``thread``) encodes a frozen copy on an upload thread, which holds the GIL
for as long as encoding takes (about 1 CPU-second per million keys), so processing slows down
by that much each interval. A child has an interpreter of its own and can run on another
core. What a child costs instead (measured in docs/benchmarks.md): the fork, a page fault and
a 4 KiB copy for each page the parent writes while the child lives, and the pages the child
copies itself because reading an object writes its reference count (CPython).

Protocol (pipes only; msgpack, never pickle):

1. Parent, on the task's thread at the barrier: ``gc.freeze()`` (its collector then leaves
   the objects it shares with the child alone), a 0600 spool file in ``$TMPDIR`` that is
   unlinked at once (both processes write and read it by descriptor, so it disappears with
   them even after a SIGKILL), ``fork``.
2. Child: dies with its parent (``PR_SET_PDEATHSIG``), closes every inherited descriptor but
   its two pipes and the spool file (it never touches the parent's sockets, storage clients
   or threads), disables its collector, writes the key-group sections, then reads the
   operator state (complete only once the sink has staged its epoch) from the control pipe
   up to EOF, appends it, sends the handle (sizes, crc32s, sha256, key-group index) on the
   result pipe and leaves with ``os._exit``. Past its deadline it gives up on its own.
3. Parent, on an upload thread (:meth:`ForkedSnapshot.upload`, the asynchronous part of the
   memory backend's snapshot strategy, ``memory_snapshot.py``): sends the operator state,
   reads the handle, reaps the child, then uploads the spool file with the storage client
   every other upload uses. Every wait has the checkpoint's deadline; a child past it is
   killed and reaped and the checkpoint declined. One child per worker process at a time
   (:func:`choose`): a snapshot due while one runs is encoded on a thread as usual.
"""

from __future__ import annotations

import ctypes
import gc
import os
import select
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import msgpack

from streamjob import faults, state
from streamjob.storage import Storage

STRATEGIES = ("thread", "fork")
# Below this many keys a thread encodes in milliseconds and a fork costs more than it saves.
MIN_KEYS = 10_000
RESULT_LIMIT = 16 << 20  # a handle is a few KB per thousand key groups
_PR_SET_PDEATHSIG = 1
try:  # resolved in the parent: the child must not dlopen (another thread may hold its lock)
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the child still ends at its deadline
    _prctl = None


class SnapshotChildError(RuntimeError):
    """A snapshot child failed, was killed or ran past its deadline: the checkpoint is
    declined."""


def choose(strategy: str, keys: int, child_running: bool) -> str:
    """How to take one snapshot of the memory backend: ``fork`` only when the job asks for
    it, the state is big enough to be worth a fork, and no other child of this process runs
    (two children would each copy the pages the parent writes)."""
    if strategy == "fork" and keys >= MIN_KEYS and not child_running:
        return "fork"
    return "thread"


_lock = threading.Lock()
_running: ForkedSnapshot | None = None  # the one snapshot child of this process


def running() -> bool:
    """Whether a snapshot child of this process is alive; one left past its deadline by an
    owner that went away is killed and reaped here, so it never blocks the next one."""
    with _lock:
        child = _running
    if child is not None and time.monotonic() > child.deadline + 5.0:
        child.discard()
        return False
    return child is not None


class ForkedSnapshot:
    """One snapshot child: started at the barrier, finished (or discarded) exactly once."""

    def __init__(self, pid: int, control: int, result: int, fd: int, deadline: float):
        self.pid, self.control, self.result = pid, control, result
        self.fd, self.deadline = fd, deadline  # the spool file (unlinked)
        self.copied_bytes = 0  # what the child copied (its private dirty memory)
        self._done = threading.Lock()  # finish/discard: whoever takes it reaps the child
        self._reaped = False

    @classmethod
    def start(cls, view: Callable[[], dict[str, tuple[Any, ...]]],
              kg_of: Callable[[Any], int], deadline: float) -> ForkedSnapshot:
        """Fork a child that encodes ``view()`` (called in the child). ``deadline`` is on
        ``time.monotonic()``. Raises OSError if no child could be started (the caller then
        encodes on a thread)."""
        global _running
        fd, path = tempfile.mkstemp(prefix="streamjob-snapshot-")  # 0600, $TMPDIR or /tmp
        os.unlink(path)
        control_r, control_w = os.pipe()
        result_r, result_w = os.pipe()
        parent = os.getpid()
        gc.freeze()
        try:
            pid = os.fork()
        except OSError:
            gc.unfreeze()
            for f in (fd, control_r, control_w, result_r, result_w):
                os.close(f)
            raise
        if pid == 0:
            _child(parent, fd, control_r, result_w, view, kg_of, deadline)
        for f in (control_r, result_w):
            os.close(f)
        os.set_blocking(control_w, False)
        child = cls(pid, control_w, result_r, fd, deadline)
        with _lock:
            _running = child
        return child

    def finish(self, operator_state: dict[str, Any]) -> dict[str, Any]:
        """On an upload thread: give the child the operator state, wait for its handle and
        reap it. The state file is then complete (the caller uploads it from
        :meth:`open_file`, then calls :meth:`remove_file`).
        Raises :class:`SnapshotChildError` after killing and reaping the child."""
        with self._done:
            if self._reaped:
                raise SnapshotChildError("the snapshot child was discarded")
            try:
                faults.point("worker.snapshot-child-running")
                _write_all(self.control, msgpack.packb(operator_state, use_bin_type=True),
                           self.deadline)
                os.close(self.control)
                self.control = -1
                raw = _read_all(self.result, self.deadline, RESULT_LIMIT)
                status = self._reap()
                try:
                    message = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                except (ValueError, msgpack.UnpackException):
                    message = None
                if not isinstance(message, dict) or status != 0:
                    why = message.get("error") if isinstance(message, dict) else None
                    raise SnapshotChildError(f"snapshot child {self.pid} ended with status "
                                             f"{status}: {why or 'no handle'}")
                if "error" in message:
                    raise SnapshotChildError(f"snapshot child failed: {message['error']}")
                self.copied_bytes = int(message.get("copied_bytes", 0))
                return message["handle"]
            except BaseException:
                self._kill_and_reap()
                self.remove_file()
                raise
            finally:
                self._close()

    def upload(self, storage: Storage, key: str,
               operator_state: dict[str, Any]) -> dict[str, Any]:
        """On an upload thread: :meth:`finish`, then the child's state file to ``key``; the
        handle. The spool file is gone afterwards, whatever happened."""
        try:
            handle = self.finish(operator_state)
            with self.open_file() as f:
                state.upload_file(storage, key, f)
        finally:
            self.remove_file()
        handle["key"] = key
        return handle

    def cancel(self) -> None:
        """From any thread: stop the child now (its owner's :meth:`finish` then fails fast
        and reaps it)."""
        if not self._reaped:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def discard(self) -> None:
        """Kill and reap a child whose snapshot will not be finished; remove its file."""
        with self._done:
            if self._reaped:
                return
            self._kill_and_reap()
            self.remove_file()
            self._close()

    def open_file(self) -> BinaryIO:
        """The child's state file, for reading from its start (a file object of its own)."""
        f = os.fdopen(os.dup(self.fd), "rb")
        f.seek(0)
        return f

    def remove_file(self) -> None:
        """Close the spool file (it has no name: closing frees it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- internals ----------------------------------------------------------------------

    def _reap(self) -> int:
        """The child's exit status once it is gone (it closed its result pipe: it is
        exiting); killed if it is still there at the deadline."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            pidfd = -1
        try:
            if pidfd >= 0:
                ready, _, _ = select.select([pidfd], [], [],
                                            max(0.0, self.deadline - time.monotonic()))
                if not ready:
                    os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)  # returns: the child exited or was killed
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        self._reaped = True
        return os.waitstatus_to_exitcode(status)

    def _kill_and_reap(self) -> None:
        if self._reaped:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)  # a SIGKILLed child exits at once
        except ChildProcessError:
            pass
        self._reaped = True

    def _close(self) -> None:
        global _running
        for fd in (self.control, self.result):
            if fd >= 0:
                os.close(fd)
        self.control = self.result = -1
        with _lock:
            if _running is self:
                _running = None
                gc.unfreeze()


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SnapshotChildError("snapshot child did not take its operator state in "
                                     "time")
        _, ready, _ = select.select([], [fd], [], left)
        if ready:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise SnapshotChildError("snapshot child is gone") from None


def _read_all(fd: int, deadline: float, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SnapshotChildError("snapshot child did not finish before the checkpoint "
                                     "timeout")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise SnapshotChildError(f"snapshot child sent more than {limit} bytes")
        chunks.append(chunk)


# -- the child --------------------------------------------------------------------------

def _child(parent: int, fd: int, control: int, result: int,
           view: Callable[[], dict[str, tuple[Any, ...]]], kg_of: Callable[[Any], int],
           deadline: float) -> NoReturn:
    """Never returns: encodes, reports, ``os._exit`` (no atexit handler, no finalizer, no
    flush of the parent's buffers runs here)."""
    code = 1
    try:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        try:  # the parent's signal handlers and asyncio wake-up pipe are not ours
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
        except ValueError:  # forked from a thread other than the main one
            pass
        gc.disable()
        _close_inherited(keep={0, 1, 2, fd, control, result})
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            handle = state.encode_snapshot_to(
                out, view(), lambda: _operator_state(control, deadline), kg_of)
        message: dict[str, Any] = {"handle": handle, "copied_bytes": _private_dirty()}
        code = 0
    except BaseException as err:  # noqa: BLE001 - reported to the parent, then exit
        message = {"error": f"{type(err).__name__}: {err}"}
    try:
        data = memoryview(msgpack.packb(message, use_bin_type=True))
        while data:
            data = data[os.write(result, data):]
    finally:
        os._exit(code)


def _close_inherited(keep: set[int]) -> None:
    top = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536
    low = 0
    for fd in [*sorted(keep), top]:
        if low < fd:  # never an empty range: CPython 3.11 turns (n, n) into "all from n"
            os.closerange(low, fd)
        low = fd + 1


def _operator_state(control: int, deadline: float) -> dict[str, Any] | None:
    """In the child: the operator state the parent sends (EOF: the parent gave up)."""
    raw = _read_all(control, deadline, 1 << 62)
    if not raw:
        raise SnapshotChildError("the parent sent no operator state")
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def _private_dirty() -> int:
    """Bytes this process has copied from its parent (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
