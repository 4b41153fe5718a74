"""Issue 11, item 5: when the worker's watchdog ends the process (pure decision logic)."""

from __future__ import annotations

import socket

from streamjob.worker import Watchdog, cancel_timeout


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
