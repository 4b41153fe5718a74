"""CPU time of benchmark runs: every process a run starts, all threads, even those its
leader left behind (a JVM whose Python parent exited first). On a machine shared with other
users, records per CPU-second move much less with the load than records per second."""

from __future__ import annotations

import os
import resource
import time


def become_subreaper() -> bool:
    """Make processes orphaned by a run (a JVM whose Python parent exited first, say) our
    children, so that reaping them adds their CPU time to RUSAGE_CHILDREN (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_orphans(timeout: float = 10.0) -> None:
    """Wait for every child left by a run (killed with its group just before)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def children_cpu() -> float:
    """User + system CPU seconds of every reaped descendant so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tree_cpu(root: int) -> float:
    """User + system CPU seconds so far of ``root`` and every descendant alive now (all
    their threads, ended ones included), read from /proc (Linux only)."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items()
                    if parent in frontier and pid not in tree]
        tree.update(frontier)
    return sum(used.get(pid, 0.0) for pid in tree)
