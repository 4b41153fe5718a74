"""A file source: the lines of files, resumable by byte offset.

Each file is a split; its position is the byte offset of the next unread line. A record is
the line as text, or ``decode(line_bytes)`` when a ``decode`` function is given (say
``json.loads`` for JSON lines: the parse happens in the source, before ``assign_timestamps``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from typing import Any


class FileSource:
    def __init__(self, paths: str | list[str], rate: float = 0,
                 decode: Callable[[bytes], Any] | None = None):
        patterns = [paths] if isinstance(paths, str) else list(paths)
        files: list[str] = []
        for pattern in patterns:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            files += [os.path.abspath(m) for m in matches]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ValueError(f"file source: {missing[0]} does not exist")
        if not files:
            raise ValueError(f"file source: no file matches {paths!r}")
        self.files, self.rate, self.decode = files, float(rate), decode

    def split_ids(self) -> list[str]:
        return list(self.files)

    def initial_position(self, split_id: str) -> int:
        return 0

    def create_reader(self, positions: dict[str, Any]) -> FileReader:
        return FileReader(dict(sorted(positions.items())), self.decode)


class FileReader:
    def __init__(self, positions: dict[str, int],
                 decode: Callable[[bytes], Any] | None = None):
        self.pos, self.decode = positions, decode
        self.sizes = {f: os.path.getsize(f) for f in positions}

    def positions(self) -> dict[str, int]:
        return dict(self.pos)

    def poll(self, max_records: int) -> list[Any] | None:
        for path, offset in self.pos.items():
            if offset >= self.sizes[path]:
                continue
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read(max(64 * 1024, max_records * 64))
            end = chunk.rfind(b"\n")
            if end < 0:
                if offset + len(chunk) < self.sizes[path]:
                    with open(path, "rb") as f:  # one line longer than the chunk
                        f.seek(offset)
                        chunk = f.readline()
                    end = len(chunk) - 1
                else:
                    end = len(chunk) - 1  # last line without a newline
            data = chunk[: end + 1]
            lines = data.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            if len(lines) > max_records:
                lines = lines[:max_records]
                data = b"\n".join(lines) + b"\n"
            self.pos[path] = offset + len(data)
            if self.decode is not None:
                return list(map(self.decode, lines))
            return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]
        return None
