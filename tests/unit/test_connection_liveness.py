"""Waits on connections have an exit: a connect attempt to a host that never answers is
bounded by the caller's timeout, and a control connection whose peer vanished without a word
is ended by the kernel (keepalive, TCP_USER_TIMEOUT) instead of waiting forever."""

from __future__ import annotations

import asyncio
import socket

import pytest

from streamjob import wire
from streamjob.worker import _connect_with_retry


@pytest.fixture
def unanswered_port():
    """A port whose connection requests are never answered: a listener with a full accept
    queue drops further SYNs, as a dead host or a dropping firewall does."""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = server.getsockname()[1]
    held = []
    try:
        while True:  # fill the accept queue; the first connect that times out proves it full
            s = socket.socket()
            s.settimeout(1.0)
            held.append(s)
            try:
                s.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        yield port
    finally:
        for s in held:
            s.close()
        server.close()


def test_connecting_to_a_host_that_never_answers_fails_within_the_timeout(unanswered_port):
    async def connect() -> None:
        # Without a bound per attempt, one attempt waits out the kernel's SYN retries
        # (about two minutes): the outer wait_for would fire first.
        await asyncio.wait_for(_connect_with_retry("127.0.0.1", unanswered_port, 1.0), 60)

    with pytest.raises(ConnectionError, match=r"cannot connect to 127\.0\.0\.1:\d+ within 1s"):
        asyncio.run(connect())


def test_a_control_connection_is_ended_by_the_kernel_when_its_peer_stops_answering():
    async def options() -> dict[str, int]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            wire.watch_peer(writer, timeout=30)
            sock = writer.get_extra_info("socket")
            return {name: sock.getsockopt(level, getattr(socket, name)) for level, name in [
                (socket.SOL_SOCKET, "SO_KEEPALIVE"), (socket.IPPROTO_TCP, "TCP_KEEPIDLE"),
                (socket.IPPROTO_TCP, "TCP_KEEPINTVL"), (socket.IPPROTO_TCP, "TCP_KEEPCNT"),
                (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT")]}
        finally:
            writer.close()
            server.close()

    got = asyncio.run(options())
    # Idle: probes from 10 s on, every 10 s, 2 unanswered end it (30 s); with data
    # unacknowledged: 30 s.
    assert got == {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 10,
                   "TCP_KEEPCNT": 2, "TCP_USER_TIMEOUT": 30_000}
