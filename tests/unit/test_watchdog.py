"""Issue 11, item 5: when the worker's watchdog ends the process (pure decision logic)."""

from __future__ import annotations

import socket
import threading
import time

from streamjob.worker import Watchdog, WorkClock, cancel_timeout


def test_blocked_loop_alone_is_not_fatal_but_with_a_waiting_coordinator_it_is():
    a, b = socket.socketpair()
    try:
        w = Watchdog(0, timeout=5)
        w.ctrl = a
        w.beat = 100.0
        assert w.check(104.0) is None           # loop turned recently
        assert w.check(110.0) is None           # blocked, but nobody waits for it
        b.send(b"x")                           # e.g. a CANCEL that nobody reads
        assert "blocked" in w.check(110.0)
        assert w.check(103.0) is None           # ... unless the loop is alive
        assert a.recv(1) == b"x"
        b.close()                              # the coordinator went away
        assert w.check(110.0) is not None
    finally:
        a.close()


def test_a_cancel_that_does_not_complete_is_fatal():
    w = Watchdog(0, timeout=5)
    w.beat = 1000.0
    w.cancel_since = 990.0
    assert "cancel did not complete" in w.check(996.0)
    w.cancel_since = None
    assert w.check(996.0) is None


def test_cancel_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv("STREAMJOB_CANCEL_TIMEOUT", "7.5")
    assert cancel_timeout() == 7.5
    monkeypatch.setenv("STREAMJOB_CANCEL_TIMEOUT", "nonsense")
    assert cancel_timeout() == 30.0
    monkeypatch.delenv("STREAMJOB_CANCEL_TIMEOUT")
    assert cancel_timeout() == 30.0


def _working(clock: WorkClock, start: float, until: float, cpu_per_s: float) -> None:
    """Samples every 0.25 s from ``start`` to ``until`` of a thread that has used
    ``cpu_per_s`` seconds of CPU per second since time 0."""
    t = start
    while t <= until:
        clock.sample(t, t * cpu_per_s)
        t += 0.25


def test_a_share_of_a_core_below_one_percent_is_no_work():
    clock = Watchdog(0, timeout=30).process_work
    _working(clock, 0.0, 120.0, cpu_per_s=0.002)  # a waiting process: heartbeats, clients
    assert clock.worked_at < 120.0 - 30.0  # its quanta are further apart than the timeout
    clock = Watchdog(0, timeout=30).loop_work
    _working(clock, 0.0, 120.0, cpu_per_s=0.05)  # load 40 on 2 cores: 5 % of a core
    assert clock.worked_at > 120.0 - 30.0 / 4


def test_a_loop_held_by_a_working_batch_is_not_stuck_until_the_busy_limit():
    a, b = socket.socketpair()
    try:
        w = Watchdog(0, timeout=30)
        w.ctrl = a
        b.send(b"x")  # a TRIGGER nobody reads while the batch runs
        w.beat = 0.0
        # Load 20 on 2 cores: the batch's thread gets a tenth of a core, yet keeps working.
        _working(w.loop_work, 0.0, 200.0, cpu_per_s=0.1)
        assert w.check(200.0) is None
        _working(w.loop_work, 200.0, w.busy_limit + 1, cpu_per_s=0.1)
        assert "busy without turning" in w.check(w.busy_limit + 1)
    finally:
        a.close()
        b.close()


def test_a_loop_blocked_without_working_is_stuck_after_the_timeout_even_if_it_worked_before():
    a, b = socket.socketpair()
    try:
        w = Watchdog(0, timeout=30)
        w.ctrl = a
        b.send(b"x")
        w.beat = 0.0
        _working(w.loop_work, 0.0, 20.0, cpu_per_s=1.0)  # computes, then blocks on a socket
        w.loop_work.sample(40.0, w.loop_work.mark)
        assert w.check(49.0) is None
        assert "without doing any work" in w.check(51.0)
    finally:
        a.close()
        b.close()


def test_a_cancel_that_keeps_working_may_take_longer_than_the_timeout_but_not_forever():
    w = Watchdog(0, timeout=30)
    w.cancel_since = 0.0
    _working(w.process_work, 0.0, 120.0, cpu_per_s=0.1)  # uploads state, slowly
    assert w.check(120.0) is None
    _working(w.process_work, 120.0, w.busy_limit + 1, cpu_per_s=0.1)
    assert "cancel did not complete within 300s" in w.check(w.busy_limit + 1)


def test_cpu_clocks_tell_a_computing_thread_from_a_blocked_one():
    """The measure the watchdog samples: per-thread CPU time (the event loop's thread)."""
    stop = threading.Event()
    clocks: dict[str, int] = {}

    def compute() -> None:
        clocks["computing"] = time.pthread_getcpuclockid(threading.get_ident())
        while not stop.is_set():
            sum(range(1000))

    def block() -> None:
        clocks["blocked"] = time.pthread_getcpuclockid(threading.get_ident())
        stop.wait()

    threads = [threading.Thread(target=f, daemon=True) for f in (compute, block)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while len(clocks) < 2:
            assert time.monotonic() < deadline
            stop.wait(0.01)
        computing, blocked = WorkClock(0.05), WorkClock(0.05)
        computing.sample(0.0, time.clock_gettime(clocks["computing"]))
        blocked.sample(0.0, time.clock_gettime(clocks["blocked"]))
        while computing.worked_at < 0:  # until the computing thread shows a quantum of work
            assert time.monotonic() < deadline, "a computing thread used no CPU in 60 s"
            computing.sample(1.0, time.clock_gettime(clocks["computing"]))
        blocked.sample(1.0, time.clock_gettime(clocks["blocked"]))
        assert blocked.worked_at < 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
