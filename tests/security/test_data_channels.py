"""A data channel's HELLO names the target task and the channel of its input gate (a task may
have several input edges, each with its own channels): an authenticated peer that names a
channel no input of this attempt has, or a task without inputs, is closed before any of its
records reach a gate."""

from __future__ import annotations

import socket

import pytest

from tests.security.conftest import DATA, HELLO, WORKER_TOKEN, closed_by_peer, frame, pack

# The wordcount job at p = 2: task 0 is the source (no input gate), task 1 the keyed count
# (channels 0 and 1), task 9 does not exist.
OUT_OF_RANGE = {"channel past the gate": [1, 1, 2, WORKER_TOKEN],
                "a source task": [1, 0, 0, WORKER_TOKEN],
                "no such task": [1, 9, 0, WORKER_TOKEN]}


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_a_hello_naming_no_input_channel_is_closed(worker, tmp_path, name):
    w = worker(parallelism=2)
    downstream = socket.create_server(("127.0.0.1", 0))  # worker 1's data port: never read
    try:
        w.send("DEPLOY", attempt=1, parallelism=2, job_id="sec-1",
               storage=f"file://{tmp_path / 'ckpt'}", restore=None,
               peers=[["127.0.0.1", w.data_port], ["127.0.0.1", downstream.getsockname()[1]]])
        w.wait_for("RUNNING", timeout=60)
        peer = socket.create_connection(("127.0.0.1", w.data_port), timeout=30)
        peer.sendall(frame(HELLO, pack(OUT_OF_RANGE[name])))
        peer.sendall(frame(DATA, pack([["a", 1]])))
        assert closed_by_peer(peer, timeout=20), f"{name}: connection left open"
        peer.close()
        # The channel that does exist is still accepted (the check is not a blanket refusal).
        good = socket.create_connection(("127.0.0.1", w.data_port), timeout=30)
        good.sendall(frame(HELLO, pack([1, 1, 1, WORKER_TOKEN])))
        good.sendall(frame(DATA, pack([["a", 1]])))
        assert not closed_by_peer(good, timeout=1)
        good.close()
    finally:
        downstream.close()
    assert w.proc.poll() is None
    assert "Traceback" not in w.output()
