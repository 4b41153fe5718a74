"""Processes of a benchmark's ``streamjob run``: what the scripts kill and measure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_head(tree: Path) -> str:
    """The commit a checkout is at (``?`` when git cannot tell): what a baseline ran."""
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


def runtime_path(tree: Path) -> str:
    """PYTHONPATH that runs a checkout's code (the runtime, the operator, ``bench``): this
    one's, or a ``--baseline``'s."""
    base = tree.resolve()
    return os.pathsep.join([str(base / "worker"), str(base / "operator"), str(base)])


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


def descendant_workers(root: int) -> list[int]:
    """The ``streamjob worker`` processes anywhere under ``root``."""
    found, frontier = [], [root]
    while frontier:
        below = [c for pid in frontier for c in children(pid)]
        found += [pid for pid, cmd in below if " worker " in cmd]
        frontier = [pid for pid, _ in below]
    return found


def status_kb(pid: int, field: str) -> int:
    """A memory field of ``/proc/<pid>/status`` in KiB (``VmRSS``: resident now, ``VmHWM``:
    its peak); 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
