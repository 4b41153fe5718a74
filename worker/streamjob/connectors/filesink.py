"""A transactional file sink (two-phase commit).

Records are written as lines to an in-progress file. At barrier n the file is closed and
moved to ``<output>.staging/<job>/chk-<n>/`` (pre-commit, fsynced before the subtask acks).
When checkpoint n completes, every staged file up to n is renamed into the output folder as
``part-<job>-<subtask>-<n>``: only then can a reader see it. A restore from checkpoint n
commits what was staged up to n and deletes what was staged after it, so replayed records
appear exactly once. Committed parts are never deleted or rewritten.

Renames within one file system are atomic, so a part file is either whole or absent.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from streamjob import faults

_STAGED = re.compile(r"^chk-(\d+)$")
_PART = re.compile(r"^part-([0-9a-f]{8})-(\d+)-(\d+)$")


def job_token(job_id: str) -> str:
    return hashlib.sha1(job_id.encode()).hexdigest()[:8]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lines(batch: list[Any], fmt: Callable[[Any], str]) -> str:
    """The text of a non-empty batch, one line per record. Records that are already
    strings are joined as they are (one C call, about 5x cheaper than formatting each)."""
    if fmt is str:
        try:
            return "\n".join(batch) + "\n"
        except TypeError:  # not all strings: format each
            return "".join([f"{r}\n" for r in batch])
    return "".join([f"{fmt(r)}\n" for r in batch])


class FileSink:
    """``FileSink("out")`` writes to a local folder, ``FileSink("s3://bucket/out")`` to S3."""

    def __new__(cls, path: str, fmt: Callable[[Any], str] = str):
        if str(path).startswith("s3://"):
            from streamjob.connectors.s3sink import S3FileSink

            return S3FileSink(path, fmt)
        return super().__new__(cls)

    def __init__(self, path: str, fmt: Callable[[Any], str] = str):
        self.output = Path(path).absolute()
        self.staging = self.output.with_name(f".{self.output.name}.staging")
        self.fmt = fmt

    def create_writer(self, subtask: int, job_id: str) -> FileSinkWriter:
        return FileSinkWriter(self, subtask, job_token(job_id))

    def _staged_dirs(self, token: str) -> dict[int, Path]:
        base = self.staging / token
        if not base.is_dir():
            return {}
        return {int(m.group(1)): p for p in base.iterdir() if (m := _STAGED.match(p.name))}

    def commit(self, token: str, checkpoint_id: int, subtask: int | None = None) -> int:
        """Rename staged files of checkpoints <= n into the output folder; returns how many.

        A staging folder that commit leaves empty is removed (by whichever subtask empties
        it), so the staging area holds only what is not committed yet and the cost of a
        commit stays flat however many checkpoints the job has taken."""
        self.output.mkdir(parents=True, exist_ok=True)
        moved = 0
        for n, folder in sorted(self._staged_dirs(token).items()):
            if n > checkpoint_id:
                continue
            try:
                names = sorted(os.listdir(folder))
            except FileNotFoundError:
                continue  # emptied and removed by another subtask meanwhile
            for name in names:
                m = _PART.match(name)
                if m and (subtask is None or int(m.group(2)) == subtask):
                    try:
                        os.replace(folder / name, self.output / name)
                    except FileNotFoundError:
                        continue  # committed meanwhile (idempotent)
                    moved += 1
                    if moved == 1:
                        faults.point("sink.during-commit")
            if subtask is None:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                try:
                    folder.rmdir()  # only if empty: other subtasks' files stay staged
                except OSError:
                    pass
        if moved:
            _fsync_dir(self.output)
        return moved

    def recover(self, job_id: str, checkpoint_id: int | None) -> None:
        token = job_token(job_id)
        upto = checkpoint_id or 0
        self.commit(token, upto)
        for n, folder in self._staged_dirs(token).items():
            if n > upto:
                shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.staging / token / "inprogress", ignore_errors=True)

    def _parts_after(self, job_id: str, checkpoint_id: int) -> list[Path]:
        token = job_token(job_id)
        if not self.output.is_dir():
            return []
        return sorted(f for f in self.output.iterdir()
                      if (m := _PART.match(f.name)) and m.group(1) == token
                      and int(m.group(3)) > checkpoint_id)

    def committed_after(self, job_id: str, checkpoint_id: int) -> list[str]:
        return [str(f) for f in self._parts_after(job_id, checkpoint_id)]

    def set_aside(self, job_id: str, checkpoint_id: int) -> str | None:
        parts = self._parts_after(job_id, checkpoint_id)
        if not parts:
            return None
        kept = self.output.with_name(f".{self.output.name}.superseded") / (
            f"{job_token(job_id)}-after-{checkpoint_id}-{uuid.uuid4().hex[:6]}")
        kept.mkdir(parents=True)
        for f in parts:
            os.replace(f, kept / f.name)
        _fsync_dir(kept)
        _fsync_dir(self.output)
        return str(kept)


class FileSinkWriter:
    def __init__(self, sink: FileSink, subtask: int, token: str):
        self.sink, self.subtask, self.token = sink, subtask, token
        self.inprogress_dir = sink.staging / token / "inprogress"
        self.file: TextIO | None = None
        self.path: Path | None = None
        self.fmt = sink.fmt

    def write(self, batch: list[Any]) -> None:
        if self.file is None:
            self.inprogress_dir.mkdir(parents=True, exist_ok=True)
            self.path = self.inprogress_dir / f"{self.subtask}-{uuid.uuid4().hex}"
            self.file = open(self.path, "w", encoding="utf-8", buffering=1 << 20)  # noqa: SIM115
        if batch:
            self.file.write(lines(batch, self.fmt))

    def pre_commit(self, checkpoint_id: int) -> Callable[[], None]:
        f, path = self.file, self.path
        self.file = self.path = None
        if f is None:
            return lambda: None
        target_dir = self.sink.staging / self.token / f"chk-{checkpoint_id}"
        name = f"part-{self.token}-{self.subtask}-{checkpoint_id}"

        def finish() -> None:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            for attempt in range(3):
                target_dir.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(path, target_dir / name)
                    break
                except FileNotFoundError:
                    # A commit removed the (then empty) folder between mkdir and rename.
                    if attempt == 2 or not path.exists():
                        raise
            _fsync_dir(target_dir)

        return finish

    def commit(self, checkpoint_id: int) -> None:
        self.sink.commit(self.token, checkpoint_id, self.subtask)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
