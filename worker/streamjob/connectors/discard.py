"""A sink that drops records (benchmarks, dry runs). Nothing to commit, nothing to lose."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class DiscardSink:
    def create_writer(self, subtask: int, job_id: str) -> DiscardWriter:
        return DiscardWriter()

    def recover(self, job_id: str, checkpoint_id: int | None) -> None:
        pass

    def committed_after(self, job_id: str, checkpoint_id: int) -> list[str]:
        return []  # nothing to rewrite: output is not transactional

    def set_aside(self, job_id: str, checkpoint_id: int) -> str | None:
        return None


class DiscardWriter:
    def __init__(self) -> None:
        self.count = 0

    def write(self, batch: list[Any]) -> None:
        self.count += len(batch)

    def pre_commit(self, checkpoint_id: int) -> Callable[[], None]:
        return lambda: None

    def commit(self, checkpoint_id: int) -> None:
        pass

    def close(self) -> None:
        pass
