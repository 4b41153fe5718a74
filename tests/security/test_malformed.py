"""Item 4 of issue 12: malformed input costs one log line; on an authenticated data channel
it fails the subtask loudly (FAILED with the reason, so the job restarts).

Before the fix a malformed HELLO left an unhandled-exception traceback in the log, and a
malformed frame on an authenticated data channel stopped that channel silently: the job
hung with no error."""

from __future__ import annotations

import socket

import pytest

from tests.security.conftest import (
    BARRIER,
    CONTROL,
    DATA,
    HEADER,
    HELLO,
    WATERMARK,
    WORKER_TOKEN,
    closed_by_peer,
    frame,
    pack,
)

BAD_CONTROL_HELLOS = {
    "not msgpack": frame(CONTROL, b"\xc1\xc1\xc1"),
    "not a map": frame(CONTROL, pack([1, 2, 3])),
    "no type": frame(CONTROL, pack({"worker": 0})),
    "worker not a number": frame(CONTROL, pack({"type": "HELLO", "worker": "zero",
                                                "port": 1, "token": WORKER_TOKEN})),
    "no port": frame(CONTROL, pack({"type": "HELLO", "worker": 0, "token": WORKER_TOKEN})),
    "unknown worker": frame(CONTROL, pack({"type": "HELLO", "worker": 7, "port": 1,
                                           "token": WORKER_TOKEN})),
    "wrong token": frame(CONTROL, pack({"type": "HELLO", "worker": 0, "port": 1,
                                        "token": "guess"})),
    "wrong kind": frame(DATA, pack([])),
}

BAD_DATA_HELLOS = {
    "not msgpack": frame(HELLO, b"\xc1\xc1\xc1"),
    "a number": frame(HELLO, pack(5)),
    "three fields": frame(HELLO, pack([0, 1, 1])),
    "a map": frame(HELLO, pack({"token": WORKER_TOKEN})),
    "task not a number": frame(HELLO, pack([0, "t", 1, WORKER_TOKEN])),
    "wrong token": frame(HELLO, pack([0, 1, 1, "guess"])),
    "wrong kind": frame(DATA, pack([0, 1, 1, WORKER_TOKEN])),
}


def _send_each(port: int, frames: dict[str, bytes]) -> None:
    for name, data in frames.items():
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(data)
        assert closed_by_peer(s, timeout=20), f"{name}: connection left open"
        s.close()


def _refusals(log: str) -> int:
    return sum(1 for line in log.splitlines() if "refused a" in line)


def test_malformed_worker_hellos_cost_one_log_line_each(coordinator):
    c = coordinator()
    _send_each(c.port, BAD_CONTROL_HELLOS)
    log = c.output()
    assert "Traceback" not in log, log[-3000:]
    assert _refusals(log) == len(BAD_CONTROL_HELLOS), log[-3000:]
    assert c.proc.poll() is None


def test_malformed_data_hellos_cost_one_log_line_each(worker):
    w = worker()
    _send_each(w.data_port, BAD_DATA_HELLOS)
    log = w.output()
    assert "Traceback" not in log, log[-3000:]
    assert _refusals(log) == len(BAD_DATA_HELLOS), log[-3000:]
    assert w.proc.poll() is None


BAD_FRAMES = {
    "undecodable batch": frame(DATA, b"\xc1\xc1"),
    "batch that is a number": frame(DATA, pack(3)),
    "barrier with a text id": frame(BARRIER, pack(["one", 0])),
    "watermark that is text": frame(WATERMARK, pack("late")),
    "unknown kind": HEADER.pack(1, 9) + b"\x00",
}


@pytest.mark.parametrize("bad", sorted(BAD_FRAMES))
def test_malformed_frame_on_an_authenticated_channel_fails_the_subtask(worker, tmp_path, bad):
    w = worker(parallelism=2)
    downstream = socket.create_server(("127.0.0.1", 0))  # worker 1's data port: never read
    try:
        w.send("DEPLOY", attempt=1, parallelism=2, job_id="sec-1",
               storage=f"file://{tmp_path / 'ckpt'}", restore=None,
               peers=[["127.0.0.1", w.data_port], ["127.0.0.1", downstream.getsockname()[1]]])
        w.wait_for("RUNNING", timeout=60)
        peer = socket.create_connection(("127.0.0.1", w.data_port), timeout=30)
        # Subtask 1 of the keyed task's upstream, with the job's token: authenticated.
        peer.sendall(frame(HELLO, pack([1, 1, 1, WORKER_TOKEN])))
        peer.sendall(frame(DATA, pack([["a", 1]])))  # a good batch first
        peer.sendall(BAD_FRAMES[bad])
        failed = w.wait_for("FAILED", timeout=30)
        assert "data channel from subtask 1" in failed["reason"], failed
        peer.close()
    finally:
        downstream.close()
    log = w.output()
    assert "Traceback" not in log, log[-3000:]
    assert sum("bad frame on data channel" in line for line in log.splitlines()) == 1, log
