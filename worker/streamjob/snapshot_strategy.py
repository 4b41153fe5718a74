"""The snapshot strategy of a keyed state backend (Flink's ``SnapshotStrategy``): how one
subtask's keyed state becomes a snapshot, in two parts.

* **Synchronous part**, on the task's thread at the barrier:
  :meth:`SnapshotStrategy.snapshot` returns a :class:`KeyedSnapshot` that later changes of
  the state do not reach (a copy, a forked child, a RocksDB checkpoint). It must be short:
  records wait meanwhile.
* **Asynchronous part**, on an upload thread while processing goes on:
  :meth:`KeyedSnapshot.upload` writes the state file (with the operator state, complete only
  by then) and returns the handle the subtask acks. Uploads of one subtask run one at a time,
  in checkpoint order (an incremental snapshot needs its base first).

A snapshot that will not be uploaded (its checkpoint was aborted or overtaken, the job stops)
is :meth:`KeyedSnapshot.discard`-ed instead; ``upload`` releases what it holds itself,
whether it succeeds or not. Exactly one of the two runs.

One strategy per backend, chosen once when the task builds its backend:

================================  ================================================
memory backend (``thread``/``fork``)  ``memory_snapshot.MemorySnapshotStrategy``
                                  (a forked child: ``forked_snapshot.py``)
rocksdb backend                   ``rocksdb_snapshot.RocksDBSnapshotStrategy``
no keyed state                    :class:`NoKeyedState`
================================  ================================================

The same strategy reads back what it wrote (:meth:`SnapshotStrategy.restore`), one old
subtask's handle at a time, so a handle's keyed part has one home for both directions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from streamjob import state
from streamjob.checkpoints import shared_dir
from streamjob.storage import Storage


@dataclass(frozen=True)
class SnapshotLocation:
    """Where one subtask's snapshot goes (see the storage layout in docs/architecture.md)."""

    own: str            # its file in the checkpoint's (or savepoint's) own folder
    shared: str         # the same name in the job's shared folder (incremental files)
    shared_prefix: str  # the subtask's prefix in the shared folder (RocksDB SST files)

    @classmethod
    def of(cls, job_id: str, directory: str, task_id: str, subtask: int, checkpoint_id: int,
           unique: str) -> SnapshotLocation:
        """The keys of snapshot ``checkpoint_id`` of ``task_id[subtask]``, its file named
        ``<subtask>-<checkpoint id>-<unique>`` (``directory``: the checkpoint's folder)."""
        name = f"{subtask}-{checkpoint_id}-{unique}"
        shared = f"{shared_dir(job_id)}/{task_id}"
        return cls(f"{directory}/{task_id}/{name}", f"{shared}/{name}",
                   f"{shared}/{subtask}")


class KeyedSnapshot:
    """A snapshot after its synchronous part, until it is uploaded or discarded."""

    # How the keyed state is encoded: on an upload thread, or by a forked child (the ACK's
    # ``timings.snapshot``).
    encoding = "thread"
    # What :meth:`upload` wrote to storage (the ACK's ``timings.bytes``): the state file (0
    # when inline in the handle) and the files that were not in storage yet.
    uploaded_bytes = 0

    @property
    def copied_bytes(self) -> int:
        """What a forked child copied of the worker's memory (0 without a child)."""
        return 0

    def upload(self, storage: Storage, location: SnapshotLocation,
               operator_state: dict[str, Any]) -> dict[str, Any]:
        """On an upload thread: write the snapshot with ``operator_state`` and return its
        handle (what the subtask acks). Releases what the snapshot holds, whatever happens."""
        raise NotImplementedError

    def cancel(self) -> None:
        """From any thread: make an upload that runs now fail fast (its checkpoint was
        aborted). Nothing to do unless the upload waits for a child."""

    def discard(self) -> None:
        """Release a snapshot that will not be uploaded (may block briefly: call it off the
        task's thread when it can)."""


class SnapshotStrategy(Protocol):
    def snapshot(self, checkpoint_id: int, savepoint: bool) -> KeyedSnapshot:
        """The synchronous part. A savepoint is self-contained and canonical (either backend
        restores it) and leaves incremental state (chains, uploaded files) as it was."""
        ...

    def restore(self, storage: Storage, handle: dict[str, Any], key_groups: range,
                continue_chain: bool) -> None:
        """Load the key groups in ``key_groups`` from one old subtask's ``handle``.
        ``continue_chain``: the handle is this subtask's own incremental checkpoint (same
        parallelism), on which the next checkpoints may build."""
        ...

    def restored(self, storage: Storage, own_shared: str | None) -> None:
        """After every handle: ``own_shared`` is the job's shared folder when it restored
        its own checkpoint (files there need no upload again), else None."""
        ...

    def cancel_restore(self) -> None:
        """From another thread while :meth:`restore` or :meth:`restored` runs: stop soon
        (the attempt is being cancelled)."""
        ...


class OperatorStateSnapshot(KeyedSnapshot):
    """No keyed state: the operator state alone (inline in the handle when it is small)."""

    def upload(self, storage: Storage, location: SnapshotLocation,
               operator_state: dict[str, Any]) -> dict[str, Any]:
        handle = write_operator_state(storage, location.own, operator_state)
        self.uploaded_bytes = handle.get("size", 0)
        return handle


def write_operator_state(storage: Storage, key: str,
                         operator_state: dict[str, Any]) -> dict[str, Any]:
    """A state file of operator state only (no key group), or an inline handle."""
    return state.write_snapshot(storage, key, {}, operator_state, _no_key_group)


def holds_key_groups(handle: dict[str, Any]) -> bool:
    """Whether a handle of a state file in ``state.py``'s format has keyed state to restore
    (key-group sections, or an incremental chain of files that do)."""
    return bool(handle.get("key_groups") or handle.get("chain"))


def _no_key_group(key: Any) -> int:
    raise AssertionError("a state file without keyed state has no key to place")


class NoKeyedState:
    """The strategy of a task without keyed state."""

    def snapshot(self, checkpoint_id: int, savepoint: bool) -> KeyedSnapshot:
        return OperatorStateSnapshot()

    def restore(self, storage: Storage, handle: dict[str, Any], key_groups: range,
                continue_chain: bool) -> None:
        pass

    def restored(self, storage: Storage, own_shared: str | None) -> None:
        pass

    def cancel_restore(self) -> None:
        pass
