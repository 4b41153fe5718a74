"""bench/cpu.py's tree_cpu: the CPU of a process and of its descendants alive now (what
bench/throughput.py reads when a job starts running). No timings are asserted."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.cpu import tree_cpu

BUSY_CHILD = """
import sys, time
while time.process_time() < 0.3:
    pass
print("spent", flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")
def test_tree_cpu_counts_the_cpu_of_a_grandchild():
    before = tree_cpu(os.getpid())
    # A shell between us and the busy process: a grandchild, as a job's workers are.
    child = subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{BUSY_CHILD}'"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "spent"
        deadline = time.monotonic() + 30
        while tree_cpu(os.getpid()) - before < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)  # /proc counts in clock ticks: wait for the last ones
        assert tree_cpu(os.getpid()) - before >= 0.25
        assert tree_cpu(child.pid) >= 0.25
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_tree_cpu_of_a_process_that_is_gone_is_zero():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    assert tree_cpu(child.pid) == 0.0
