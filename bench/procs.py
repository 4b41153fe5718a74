"""Processes of a benchmark's ``streamjob run``: what the scripts kill and measure."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> list[tuple[int, str]]:
    """The direct children of ``pid``: (pid, command line)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                    out.append((int(entry), cmd.decode()))
            except (OSError, ValueError, IndexError):
                pass
    return out
