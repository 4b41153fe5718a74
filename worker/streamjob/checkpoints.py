"""CheckpointCoordinator's pure parts: when to trigger, what `_metadata` holds, how to find
the checkpoint to restore.

Storage layout (keys relative to the storage root)::

    <job-id>/chk-<n>/_metadata                      written last: no _metadata, not complete
    <job-id>/chk-<n>/<task>/<subtask>-<uuid>          state files
    <job-id>/savepoints/sp-<name>/_metadata           self-contained, survives the job

``_metadata`` is JSON: ``{"body": {...}, "sha256": hex}`` where the hash covers the canonical
JSON of the body; it is versioned by ``body.format``/``body.version`` and never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from streamjob.storage import NotFoundError, Storage, StorageError

FORMAT = "streamjob-checkpoint"
VERSION = 1
METADATA = "_metadata"
_CHK = re.compile(r"^chk-(\d+)$")

log = logging.getLogger("streamjob.checkpoints")


class CorruptMetadataError(ValueError):
    pass


class UnusableRestoreError(StorageError):
    """The savepoint to start from does not exist or does not fit the job: retrying cannot
    help (unlike storage that is down for a moment)."""


def encode_metadata(body: dict[str, Any]) -> bytes:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps({"body": body, "sha256": digest}, sort_keys=True, indent=1).encode()


def decode_metadata(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        body, digest = doc["body"], doc["sha256"]
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptMetadataError(f"not a checkpoint metadata document ({err})") from None
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    if hashlib.sha256(canonical.encode()).hexdigest() != digest:
        raise CorruptMetadataError("checksum mismatch")
    if body.get("format") != FORMAT or body.get("version") != VERSION:
        raise CorruptMetadataError(
            f"format {body.get('format')!r} version {body.get('version')!r} is not "
            f"{FORMAT} {VERSION}")
    return body


def checkpoint_dir(job_id: str, checkpoint_id: int) -> str:
    return f"{job_id}/chk-{checkpoint_id}"


def list_checkpoint_ids(storage: Storage, job_id: str) -> dict[int, bool]:
    """Every checkpoint folder of the job: id -> whether it has ``_metadata``."""
    found: dict[int, bool] = {}
    for key in storage.list(f"{job_id}/"):
        parts = key.split("/")
        if len(parts) >= 3 and (m := _CHK.match(parts[1])):
            n = int(m.group(1))
            found[n] = found.get(n, False) or parts[2] == METADATA and len(parts) == 3
    return found


def read_metadata(storage: Storage, path: str) -> dict[str, Any]:
    """The body of ``<path>/_metadata`` (a checkpoint or savepoint folder)."""
    return decode_metadata(storage.get(f"{path.rstrip('/')}/{METADATA}"))


def latest_completed(storage: Storage, job_id: str) -> dict[str, Any] | None:
    """The newest checkpoint whose ``_metadata`` is present and intact; corrupt ones are
    skipped with a log line naming them."""
    ids = list_checkpoint_ids(storage, job_id)
    for n in sorted((n for n, done in ids.items() if done), reverse=True):
        path = checkpoint_dir(job_id, n)
        try:
            return read_metadata(storage, path)
        except CorruptMetadataError as err:
            log.warning("skipping checkpoint %d: %s/_metadata is corrupt (%s); trying the one "
                        "before it", n, path, err)
        except NotFoundError:
            continue
    return None


def savepoint_path(job_id: str, name: str) -> str:
    return f"{job_id}/savepoints/sp-{name}"


def resolve_savepoint(storage: Storage, uri_or_path: str) -> tuple[str, dict[str, Any]]:
    """(path relative to the storage root, metadata body) of a savepoint or checkpoint."""
    path = uri_or_path
    root = storage.uri.rstrip("/")
    if path.startswith(root + "/"):
        path = path[len(root) + 1:]
    elif "://" in path:
        raise UnusableRestoreError(f"savepoint {uri_or_path} is not under the job's storage "
                                   f"{root}")
    path = path.rstrip("/").removesuffix("/" + METADATA)
    try:
        return path, read_metadata(storage, path)
    except NotFoundError:
        raise UnusableRestoreError(f"no savepoint at {root}/{path} (its _metadata does not "
                                   "exist)") from None


def check_compatible(body: dict[str, Any], max_parallelism: int) -> None:
    """Key groups are fixed by maxParallelism: state taken with another m cannot be split."""
    if body.get("max_parallelism") != max_parallelism:
        raise UnusableRestoreError(
            f"cannot restore checkpoint {body.get('checkpoint_id')}: it was taken with "
            f"maxParallelism {body.get('max_parallelism')}, the job has {max_parallelism}; "
            "keep maxParallelism unchanged for the life of the state")


@dataclass(frozen=True)
class TriggerState:
    now: float
    last_trigger: float | None
    last_completion: float | None
    in_flight: int
    all_running: bool


def should_trigger(state: TriggerState, interval: float, min_pause: float,
                   max_concurrent: int) -> bool:
    """Checkpoint n+1 starts when the interval has passed since the last trigger, fewer than
    ``maxConcurrent`` are in flight, ``minPause`` has passed since the last completion, and
    every subtask is running. One global decision, never per subtask."""
    if not state.all_running or state.in_flight >= max_concurrent:
        return False
    if state.last_trigger is not None and state.now - state.last_trigger < interval:
        return False
    if state.last_completion is not None and state.now - state.last_completion < min_pause:
        return False
    return True


def handles_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [h for t in body.get("tasks", {}).values() for h in t["subtasks"]]


def state_files(handle: dict[str, Any]) -> list[dict[str, Any]]:
    """The files one subtask handle needs, each ``{"key", "size", ...}``: its own file, the
    chain of an incremental one, the files of a rocksdb checkpoint (SST files in
    ``<job>/shared/``, its small files in the checkpoint's folder)."""
    parts = [p for p in [*handle.get("chain", []), handle] if "key" in p]
    return parts + list(handle.get("rocksdb", {}).get("files", []))


def handle_keys(handle: dict[str, Any]) -> set[str]:
    """The state files one subtask handle needs (see :func:`state_files`)."""
    return {part["key"] for part in state_files(handle)}


def referenced_keys(body: dict[str, Any]) -> set[str]:
    """Every state file a checkpoint needs."""
    return set().union(*(handle_keys(h) for h in handles_of(body)))


def shared_dir(job_id: str) -> str:
    return f"{job_id}/shared"


def superseded_deletions(keys: list[str], keep: str | None = None) -> list[str]:
    """Of the keys under an earlier job id (an operator revision this job replaced), the
    folders nobody can restore from any more: its checkpoint folders and its shared
    (incremental) files. Its savepoints stay (they outlive jobs, users list them), and so does
    ``keep``, the savepoint or checkpoint this job started from (with the shared files an
    incremental checkpoint may need)."""
    folders = []
    keep_parts = keep.strip("/").split("/") if keep else []
    for key in keys:
        parts = key.split("/")
        if len(parts) < 3 or not (_CHK.match(parts[1]) or parts[1] == "shared"):
            continue
        folder = "/".join(parts[:2])
        kept_checkpoint = len(keep_parts) > 1 and bool(_CHK.match(keep_parts[1]))
        if keep_parts[:1] == parts[:1] and (keep_parts[1:2] == parts[1:2]
                                            or parts[1] == "shared" and kept_checkpoint):
            continue
        if folder not in folders:
            folders.append(folder)
    return folders


def list_savepoints(storage: Storage) -> list[dict[str, Any]]:
    """Every savepoint under the storage root (any job, running or deleted), oldest first:
    path, job, id, completed time, size in bytes, parallelism."""
    found = []
    for key in storage.list(""):
        parts = key.split("/")
        if len(parts) == 4 and parts[1] == "savepoints" and parts[3] == METADATA:
            path = "/".join(parts[:3])
            try:
                body = read_metadata(storage, path)
            except (CorruptMetadataError, StorageError) as err:
                log.warning("savepoint %s is unreadable: %s", path, err)
                continue
            found.append({"uri": f"{storage.uri.rstrip('/')}/{path}", "job_id": body["job_id"],
                          "id": body["checkpoint_id"], "completed_at": body["completed_at"],
                          "size_bytes": body["size_bytes"],
                          "parallelism": body["parallelism"]})
    return sorted(found, key=lambda s: s["completed_at"])
