"""The snapshot strategy of the RocksDB state backend (``rocksdb_backend.py``, whose
docstring says why it works so).

* **Checkpoint.** Synchronous part: the cache's dirty entries into RocksDB; the RocksDB
  ``Checkpoint`` (flush + hard links) on local disk is made on a thread of its own.
  Asynchronous part: once it is made, a state file of the operator state only
  (``key_groups`` empty), whose handle carries the database under ``rocksdb``: the SST
  files not in storage yet go to the job's shared folder, the small files to the
  checkpoint's own folder.
* **Savepoint.** Canonical: the same synchronous part, then the checkpoint is read in key
  order one key group at a time into a state file of ``state.py``'s format (the memory
  backend's), so either backend restores it.
* **Restore** takes both: a ``rocksdb`` handle is opened (or clipped, or copied from, after a
  rescale) as the database; a canonical one is bulk loaded into it (its bytes never
  decoded).
"""

from __future__ import annotations

from typing import Any

from streamjob import state
from streamjob.rocksdb_backend import LocalCheckpoint, RocksDBKeyedStateBackend
from streamjob.snapshot_strategy import (
    KeyedSnapshot,
    SnapshotLocation,
    holds_key_groups,
    write_operator_state,
)
from streamjob.storage import Storage


class RocksDBSnapshotStrategy:
    def __init__(self, backend: RocksDBKeyedStateBackend):
        self.backend = backend
        self._restoring: list[dict[str, Any]] = []  # ``rocksdb`` handles, until restored()

    def snapshot(self, checkpoint_id: int, savepoint: bool) -> KeyedSnapshot:
        if savepoint:
            return RocksDBSavepoint(self.backend, self.backend.savepoint())
        return RocksDBCheckpoint(self.backend, self.backend.checkpoint(checkpoint_id))

    def restore(self, storage: Storage, handle: dict[str, Any], key_groups: range,
                continue_chain: bool) -> None:
        if "rocksdb" in handle:
            self._restoring.append(handle["rocksdb"])  # opened together (a rescale merges)
        elif holds_key_groups(handle):  # a savepoint, or a checkpoint of the memory backend
            self.backend.load_state_file(storage, handle, key_groups)  # bulk, never decoded

    def restored(self, storage: Storage, own_shared: str | None) -> None:
        parts, self._restoring = self._restoring, []
        if parts:
            # Its own checkpoint: the SST files in its shared folder are reused.
            self.backend.restore(storage, parts, own_shared)
        else:
            self.backend.restored()  # after loading a savepoint (or a memory checkpoint)

    def cancel_restore(self) -> None:
        self.backend.cancelled = True  # the restore stops at its next file


class RocksDBCheckpoint(KeyedSnapshot):
    def __init__(self, backend: RocksDBKeyedStateBackend, local: LocalCheckpoint):
        self.backend, self.local = backend, local
        self._released = False

    def upload(self, storage: Storage, location: SnapshotLocation,
               operator_state: dict[str, Any]) -> dict[str, Any]:
        # The local checkpoint stays: the backend keeps its newest ones (local recovery).
        self._released = True
        handle = write_operator_state(storage, location.own, operator_state)
        handle["rocksdb"] = self.backend.upload(storage, self.local, f"{location.own}-rocksdb",
                                                location.shared_prefix)
        self.uploaded_bytes = handle.get("size", 0) + handle["rocksdb"]["uploaded"]
        return handle

    def discard(self) -> None:
        if not self._released:
            self._released = True
            self.backend.drop_local(self.local)


class RocksDBSavepoint(RocksDBCheckpoint):
    def upload(self, storage: Storage, location: SnapshotLocation,
               operator_state: dict[str, Any]) -> dict[str, Any]:
        self._released = True  # savepoint_sections removes the checkpoint once read
        handle = state.write_snapshot_sections(
            storage, location.own, self.backend.savepoint_sections(self.local),
            operator_state)
        self.uploaded_bytes = handle.get("size", 0)
        return handle
