"""A sink that prints each record. At-least-once: after a restore, records processed since
the last checkpoint are printed again (there is nothing to roll back on a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class PrintSink:
    def create_writer(self, subtask: int, job_id: str) -> PrintWriter:
        return PrintWriter()

    def recover(self, job_id: str, checkpoint_id: int | None) -> None:
        pass

    def committed_after(self, job_id: str, checkpoint_id: int) -> list[str]:
        return []  # nothing to rewrite: output is not transactional

    def set_aside(self, job_id: str, checkpoint_id: int) -> str | None:
        return None


class PrintWriter:
    def write(self, batch: list[Any]) -> None:
        sys.stdout.write("".join(f"{r}\n" for r in batch))

    def pre_commit(self, checkpoint_id: int) -> Callable[[], None]:
        return sys.stdout.flush

    def commit(self, checkpoint_id: int) -> None:
        pass

    def close(self) -> None:
        sys.stdout.flush()
