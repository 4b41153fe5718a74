"""What the runtime expects of sources and sinks.

A source is split into *splits* with stable ids (generator ranges, files); a split's
position is its state. Split k of S belongs to subtask ``k % p``, so positions move between
subtasks on rescale without touching the records.

A transactional sink stages what it receives between checkpoint barriers and makes it
visible only when that checkpoint completes (two-phase commit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class SourceReader(Protocol):
    def poll(self, max_records: int) -> list[Any] | None:
        """Up to ``max_records`` records; [] when none right now; None when finished."""
        ...

    def positions(self) -> dict[str, Any]:
        """Position of every split this reader owns (its checkpointed state)."""
        ...

    # Optional: ``watermark(now) -> float | None`` (the reader makes watermarks itself, per
    # split, possibly ``windows.IDLE``); ``notify_checkpoint_complete(n, positions)`` (after
    # checkpoint n completed, with the positions it holds); ``close()``. A source with a
    # ``discovery_interval`` gets ``create_reader(positions, subtask, parallelism)``.


class Source(Protocol):
    rate: float  # records/s for the whole job; 0 = as fast as possible

    def split_ids(self) -> list[str]: ...

    def initial_position(self, split_id: str) -> Any: ...

    def create_reader(self, positions: dict[str, Any]) -> SourceReader: ...


class SinkWriter(Protocol):
    """``write``, ``pre_commit`` (and the function it returns) and ``close`` are called on
    one thread of the subtask's own, never on the event loop, in stream order: the batches
    written before ``pre_commit(n)`` are exactly the output of epoch n. They may block.
    ``commit`` runs on another thread, for checkpoints whose pre-commit has finished."""

    def write(self, batch: list[Any]) -> None: ...

    def pre_commit(self, checkpoint_id: int) -> Callable[[], dict[str, Any] | None]:
        """At barrier n: close what was written since the last barrier; returns the part that
        makes it durable (both run right after each other, on the sink's thread). What that
        part returns (msgpack-able, or None) goes into the subtask's snapshot n and is given
        back to ``restore`` (optional) of the writer that takes over after a restore: the
        state a sink needs to finish commits that a crash interrupted."""
        ...

    def commit(self, checkpoint_id: int) -> None:
        """Make everything staged up to checkpoint n visible (idempotent)."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    def create_writer(self, subtask: int, job_id: str) -> SinkWriter: ...

    def recover(self, job_id: str, checkpoint_id: int | None) -> None:
        """Before a restore from checkpoint n: commit what was staged up to n and drop what
        was staged after it (those records are replayed). Committed output is never
        touched."""
        ...

    def committed_after(self, job_id: str, checkpoint_id: int) -> list[str]:
        """Committed output of checkpoints after n (exists only when a newer checkpoint
        cannot be restored): a restore from n would write it again."""
        ...

    def set_aside(self, job_id: str, checkpoint_id: int) -> str | None:
        """Move the committed output of checkpoints after n out of the output, to a kept
        folder (returned); only when the user allows a restart behind committed output."""
        ...


def assign_splits(split_ids: list[str], subtask: int, parallelism: int) -> list[str]:
    return [s for k, s in enumerate(split_ids) if k % parallelism == subtask]
