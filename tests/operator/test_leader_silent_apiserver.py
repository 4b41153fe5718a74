"""A lease holder whose API server stops answering (connections accepted, no reply: a hung
server or a network that drops the replies) must notice that it can no longer renew and stop
acting before another replica may take the lease over; every call has a timeout."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from streamjob_operator.leader import LeaderElector


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts every connection, reads what it is sent, never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)
        for conn in held:
            conn.close()
        server.close()


def _elector(url: str) -> LeaderElector:
    config = k8s.Configuration()
    config.host = url
    return LeaderElector(k8s.ApiClient(config), "ns", "streamjob-operator", me="op-a",
                         duration=4, renew_every=1)


def test_a_lease_call_to_a_silent_api_server_fails_instead_of_waiting_forever(silent_server):
    elector = _elector(silent_server)
    outcome: list[BaseException | bool] = []
    finished = threading.Event()

    def attempt() -> None:
        try:
            outcome.append(elector.try_acquire())
        except BaseException as err:  # noqa: BLE001 - the expected timeout
            outcome.append(err)
        finished.set()

    threading.Thread(target=attempt, daemon=True).start()
    assert finished.wait(60), "try_acquire still waits for the API server"
    assert isinstance(outcome[0], Exception) and "timed out" in str(outcome[0]).lower()


def test_a_holder_that_cannot_renew_stops_acting_before_the_lease_runs_out(silent_server):
    elector = _elector(silent_server)
    elector.renewed_at = elector.clock()  # it has just renewed; now the server is silent
    lost = threading.Event()
    elector.keep(on_lost=lost.set)
    try:
        assert lost.wait(60), "the renewal waits on the silent API server forever"
    finally:
        elector._stop.set()
