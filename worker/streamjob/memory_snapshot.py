"""The snapshot strategy of the memory state backend (``operators.KeyedStateBackend``).

At the barrier the state is either **copied** (``KeyedStateBackend.freeze``: later updates do
not reach the copy), and the copy is encoded into a state file on an upload thread, or, with
``checkpoint.snapshotStrategy: fork`` and a state big enough, a **forked child** whose
copy-on-write memory is the copy encodes it (``forked_snapshot.py``; one child per worker at
a time, so a snapshot due while one runs is copied as usual). Either way the state file has
the format of ``state.py``, so a restore does not care which encoded it.

With ``checkpoint.incremental`` a checkpoint is a full snapshot or a **delta** (the entries
changed and the keys deleted since the last snapshot, ``freeze_delta``) on an
:class:`IncrementalChain` of files in ``<job>/shared/``. Savepoints are always full, in the
checkpoint's own folder, and leave the chain as it was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from streamjob import forked_snapshot, state
from streamjob.checkpoints import UnusableRestoreError
from streamjob.forked_snapshot import ForkedSnapshot
from streamjob.operators import KeyedStateBackend
from streamjob.snapshot_strategy import KeyedSnapshot, SnapshotLocation, holds_key_groups
from streamjob.storage import Storage

log = logging.getLogger("streamjob.task")


class IncrementalChain:
    """The files (a full snapshot, then deltas) the next incremental checkpoint of one
    subtask builds on. Read at the barrier on the task's thread and extended by each upload
    on an upload thread (one at a time, in checkpoint order); a lock keeps the two apart."""

    def __init__(self, max_deltas: int):
        self.max_deltas = max_deltas
        self.files: list[dict[str, Any]] | None = None  # None: the next one is a full one
        # Counts the times the chain was lost: a delta taken on an older epoch has lost the
        # changes its base held.
        self.epoch = 0
        self._lock = threading.Lock()

    def next(self) -> tuple[bool, int]:
        """At the barrier: (whether the next checkpoint is a delta, the epoch it builds on)."""
        with self._lock:
            delta = self.files is not None and len(self.files) <= self.max_deltas
            return delta, self.epoch

    def extend(self, delta: bool, base_epoch: int,
               write: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """On the upload thread: ``write()`` the file of a full snapshot or a delta, and
        make it the chain's last; its handle lists the files before it (``chain``) and the
        size of them all (``state_size``). If anything fails the chain is lost (the next
        checkpoint is a full one) and the error raised."""
        try:
            with self._lock:
                if delta and base_epoch != self.epoch:
                    raise RuntimeError("the incremental base of this delta was lost")
            handle = write()
        except Exception:
            with self._lock:
                self.files, self.epoch = None, self.epoch + 1
            raise
        with self._lock:
            plain = dict(handle)
            if delta:
                handle["chain"] = list(self.files)
                self.files = [*self.files, plain]
            else:
                self.files = [plain]
            handle["state_size"] = sum(h.get("size", 0) for h in self.files)
        return handle

    def continue_from(self, handle: dict[str, Any]) -> None:
        """After a restore from this subtask's own checkpoint: build deltas on its files."""
        with self._lock:
            self.files = [*handle.get("chain", []),
                          {k: v for k, v in handle.items() if k != "chain"}]


class MemorySnapshotStrategy:
    def __init__(self, backend: KeyedStateBackend, kg_of: Callable[[Any], int], name: str,
                 incremental: bool = False, max_deltas: int = 10, encoding: str = "thread",
                 child_timeout: float = 60.0):
        self.backend, self.kg_of, self.name = backend, kg_of, name
        self.chain = IncrementalChain(max_deltas) if incremental else None
        # ``thread`` or ``fork`` (forked_snapshot.STRATEGIES); a child must be done within
        # the checkpoint timeout.
        self.encoding, self.child_timeout = encoding, child_timeout

    def snapshot(self, checkpoint_id: int, savepoint: bool) -> KeyedSnapshot:
        chain = None if savepoint else self.chain
        delta, base_epoch = chain.next() if chain is not None else (False, 0)
        backend = self.backend
        child = None
        if forked_snapshot.choose(self.encoding, backend.num_keys(),
                                  forked_snapshot.running()) == "fork":
            child = self._fork(checkpoint_id, delta, savepoint)
        if child is not None:
            frozen = {}
        elif delta:
            frozen = backend.freeze_delta()
        else:
            frozen = backend.freeze(reset_changes=not savepoint)
        return MemorySnapshot(frozen, child, self.kg_of, chain, delta, base_epoch)

    def _fork(self, checkpoint_id: int, delta: bool, savepoint: bool) -> ForkedSnapshot | None:
        """Start a child that encodes the keyed state as it is now (the delta since the
        last snapshot if ``delta``); None if no child could be started."""
        backend = self.backend
        view = backend.freeze_delta if delta else backend.tables_as_they_are
        try:
            child = ForkedSnapshot.start(view, self.kg_of,
                                         time.monotonic() + self.child_timeout)
        except OSError as err:
            log.warning("%s: no snapshot child for checkpoint %d (%s): encoding on a thread",
                        self.name, checkpoint_id, err)
            return None
        if backend.dirty is not None and not savepoint:
            backend.dirty = set()  # what changed so far is the child's (as freeze() does)
        log.info("%s: snapshot child %d encodes checkpoint %d", self.name, child.pid,
                 checkpoint_id)
        return child

    def restore(self, storage: Storage, handle: dict[str, Any], key_groups: range,
                continue_chain: bool) -> None:
        if continue_chain and self.chain is not None:
            self.chain.continue_from(handle)
        if "rocksdb" in handle:
            raise UnusableRestoreError(
                f"{self.name}: checkpoint {handle['rocksdb'].get('checkpoint_id', '')} was "
                "taken on the rocksdb state backend and the job now runs on memory: switch "
                "backends through a savepoint")
        if holds_key_groups(handle):
            for name, kind, entries, deleted in state.read_keyed_state(storage, handle,
                                                                       key_groups):
                self.backend.load(name, kind, entries, deleted)

    def restored(self, storage: Storage, own_shared: str | None) -> None:
        pass

    def cancel_restore(self) -> None:
        pass  # the runner waits for it to end: no database is closed under it


class MemorySnapshot(KeyedSnapshot):
    """A copy of the memory backend (``frozen``), or a forked child that encodes it."""

    def __init__(self, frozen: dict[str, tuple[Any, ...]], child: ForkedSnapshot | None,
                 kg_of: Callable[[Any], int], chain: IncrementalChain | None, delta: bool,
                 base_epoch: int):
        self.frozen, self.child, self.kg_of = frozen, child, kg_of
        self.chain, self.delta, self.base_epoch = chain, delta, base_epoch
        self.encoding = "thread" if child is None else "fork"

    @property
    def copied_bytes(self) -> int:
        return 0 if self.child is None else self.child.copied_bytes

    def upload(self, storage: Storage, location: SnapshotLocation,
               operator_state: dict[str, Any]) -> dict[str, Any]:
        try:
            if self.chain is None:
                handle = self._write(storage, location.own, operator_state)
            else:
                handle = self.chain.extend(self.delta, self.base_epoch, lambda: self._write(
                    storage, location.shared, operator_state))
        finally:
            self.discard()  # a child not finished (a lost base): killed and reaped
        self.uploaded_bytes = handle.get("size", 0)
        return handle

    def _write(self, storage: Storage, key: str,
               operator_state: dict[str, Any]) -> dict[str, Any]:
        if self.child is not None:
            return self.child.upload(storage, key, operator_state)
        # Handed over (this snapshot is written once): each table is freed once grouped.
        frozen, self.frozen = self.frozen, {}
        return state.write_snapshot(storage, key, frozen, operator_state, self.kg_of,
                                    release=True)

    def cancel(self) -> None:
        if self.child is not None:
            self.child.cancel()

    def discard(self) -> None:
        self.frozen = {}
        if self.child is not None:
            self.child.discard()  # a no-op once finished
