"""Framing on TCP channels and the control connection.

Every frame is ``u32 length (little endian) | u8 kind | payload`` where length counts the
payload only. Payloads are msgpack: no JSON on the data path, never pickle.

* DATA: a batch (msgpack array of records; tuples come back as tuples)
* BARRIER: ``[checkpoint_id, kind]`` (0 checkpoint, 1 savepoint, 2 final checkpoint)
* HELLO: ``[attempt, task_index, channel, token]``, the first frame of a data channel (``channel``:
  its place in the target subtask's input gate, the edge's first channel + the sender's subtask)
  (the job's worker token: other processes cannot feed records into a job)
* CONTROL: a msgpack map with a ``type`` field (coordinator <-> worker)
* WATERMARK: the sender's event-time watermark in ms (an int; ``inf`` at end of input), in
  order with the DATA frames: no record with event time <= it follows on this channel

Authentication comes first on every listening port (coordinator control port, worker data
port): the first frame must be a HELLO of at most ``STREAMJOB_HELLO_MAX_BYTES`` (4 KiB)
that arrives whole within ``STREAMJOB_HELLO_TIMEOUT`` seconds (10); a larger declared length
is refused before its body is read. At most ``STREAMJOB_MAX_PENDING`` (64) connections per
port may be waiting for their HELLO; a new one beyond that closes the oldest. Only after the
token matched are frames up to ``STREAMJOB_MAX_FRAME`` bytes (256 MiB) read. So an
unauthenticated peer costs a few KiB for a few seconds, and malformed input costs one log
line (``read_control_hello``, ``read_data_hello``, ``decode_data``).

A control connection waits for the next message without a timeout (the other side may
have nothing to say for a long time), so its socket ends it when the peer is gone without a
word (its host died, the network dropped it): ``watch_peer`` turns on TCP keepalive and a
``TCP_USER_TIMEOUT``, both ``PEER_TIMEOUT`` seconds (30). The kernel answers them, so a busy
peer process is never taken for a dead one. Data channels need no such thing: a lost worker
is noticed on its control connection, and the cancel that follows closes its channels.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import msgpack

DATA, BARRIER, HELLO, CONTROL, WATERMARK = 1, 2, 3, 4, 5
HEADER = struct.Struct("<IB")

log = logging.getLogger("streamjob.wire")

PEER_TIMEOUT = 30  # seconds without an answer from the peer's host: the connection is dead


def watch_peer(writer: asyncio.StreamWriter, timeout: int = PEER_TIMEOUT) -> None:
    """End the connection when the peer's host stops answering (see the module doc): idle,
    keepalive probes from ``timeout / 3`` seconds on; with data unacknowledged, after
    ``timeout`` seconds (``TCP_USER_TIMEOUT``)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    idle = max(1, timeout // 3)
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", idle),
                        ("TCP_KEEPCNT", max(1, (timeout - idle) // idle)),
                        ("TCP_USER_TIMEOUT", timeout * 1000)):
        if hasattr(socket, name):  # Linux has them all; elsewhere the system defaults
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass


def setting(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be above 0")
    return value


# Frames after authentication (a batch, an ACK with its state handles).
MAX_FRAME = int(setting("STREAMJOB_MAX_FRAME", 256 * 1024 * 1024))
# The first frame of any connection, before the token was checked.
HELLO_MAX_BYTES = int(setting("STREAMJOB_HELLO_MAX_BYTES", 4096))
HELLO_TIMEOUT = setting("STREAMJOB_HELLO_TIMEOUT", 10.0)
# Connections of one listening port still waiting for their HELLO.
MAX_PENDING = int(setting("STREAMJOB_MAX_PENDING", 64))


class ProtocolError(ConnectionError):
    pass


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_batch(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, use_list=False, strict_map_key=False)


def unpack_control(payload: bytes) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=False)
    except Exception as err:  # noqa: BLE001 - msgpack raises several types on bad input
        raise ProtocolError(f"undecodable control frame: {_why(err)}") from None
    if not isinstance(msg, dict) or "type" not in msg:
        raise ProtocolError("control frame without a type")
    return msg


async def read_frame(reader: asyncio.StreamReader,
                     max_bytes: int | None = None) -> tuple[int, bytes]:
    limit = MAX_FRAME if max_bytes is None else max_bytes
    header = await reader.readexactly(HEADER.size)
    length, kind = HEADER.unpack(header)
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes is above the {limit} limit")
    return kind, await reader.readexactly(length)


def _why(err: BaseException) -> str:
    return (f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)[:200]


# -- authentication first ------------------------------------------------------------------

# Listening address -> connections of that listener waiting for their HELLO (oldest first).
_pending: dict[Any, dict[asyncio.StreamWriter, None]] = {}


async def read_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     max_bytes: int | None = None, timeout: float | None = None,
                     max_pending: int | None = None) -> tuple[int, bytes]:
    """The first frame of a connection, read before anything else is trusted: at most
    ``max_bytes``, whole within ``timeout`` seconds, while at most ``max_pending``
    connections of the same listening port wait for theirs (a new one closes the oldest).
    Raises ``ProtocolError`` (a ``ConnectionError``) or ``IncompleteReadError``."""
    max_bytes = HELLO_MAX_BYTES if max_bytes is None else max_bytes
    timeout = HELLO_TIMEOUT if timeout is None else timeout
    max_pending = MAX_PENDING if max_pending is None else max_pending
    port = writer.get_extra_info("sockname")
    waiting = _pending.setdefault(port, {})
    while len(waiting) >= max_pending:
        oldest = next(iter(waiting))
        del waiting[oldest]
        oldest.close()
    waiting[writer] = None
    try:
        async with asyncio.timeout(timeout):
            return await read_frame(reader, max_bytes)
    except TimeoutError:
        raise ProtocolError(f"no HELLO within {timeout:g} s") from None
    finally:
        waiting.pop(writer, None)
        if not waiting:
            _pending.pop(port, None)


def _token_ok(presented: Any, token: str | None) -> bool:
    if not token:
        return True  # no token configured: the port accepts any peer (size limits still hold)
    return hmac.compare_digest(str(presented).encode(), token.encode())


async def _accept(what: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  parse: Callable[[int, bytes], Any]) -> Any | None:
    peer = writer.get_extra_info("peername")
    try:
        kind, payload = await read_hello(reader, writer)
        return parse(kind, payload)
    except asyncio.IncompleteReadError:
        # Closed by the peer (a port probe) or by us (over ``max_pending``): not an error.
        log.debug("a %s connection from %s closed before its HELLO", what, peer)
        writer.close()
        return None
    except (ConnectionError, OSError) as err:
        reason = str(err)
    except Exception as err:  # noqa: BLE001 - malformed input: one line, no traceback
        reason = f"malformed HELLO ({_why(err)})"
    log.warning("refused a %s connection from %s: %s", what, peer, reason)
    writer.close()
    return None


async def read_control_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             token: str | None, parallelism: int) -> dict[str, Any] | None:
    """A worker's HELLO on the coordinator's control port (``None``: refused, logged in one
    line, connection closed)."""
    def parse(kind: int, payload: bytes) -> dict[str, Any]:
        if kind != CONTROL:
            raise ProtocolError("the first frame is not a HELLO")
        hello = unpack_control(payload)
        if hello["type"] != "HELLO":
            raise ProtocolError("the first frame is not a HELLO")
        if not _token_ok(hello.get("token", ""), token):
            raise ProtocolError("wrong or missing token")
        index = hello.get("worker")
        if type(index) is not int or not 0 <= index < parallelism:
            raise ProtocolError(f"no worker {index!r} in a job of parallelism {parallelism}")
        if type(hello.get("port")) is not int:
            raise ProtocolError("HELLO without a data port")
        return hello

    return await _accept("worker", reader, writer, parse)


async def read_data_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          token: str | None) -> tuple[int, int, int] | None:
    """``(attempt, task_index, channel)`` of a data channel's HELLO on a worker's data
    port (``None``: refused, logged in one line, connection closed)."""
    def parse(kind: int, payload: bytes) -> tuple[int, int, int]:
        if kind != HELLO:
            raise ProtocolError("data channel did not start with HELLO")
        hello = unpack_batch(payload)
        if not isinstance(hello, tuple | list) or len(hello) != 4:
            raise ProtocolError("HELLO is not [attempt, task, channel, token]")
        attempt, task_index, sender, presented = hello
        if not _token_ok(presented, token):
            raise ProtocolError("data channel with a wrong token")
        if not all(type(v) is int and v >= 0 for v in (attempt, task_index, sender)):
            raise ProtocolError("HELLO with a bad attempt, task or channel")
        return attempt, task_index, sender

    return await _accept("data", reader, writer, parse)


def decode_data(kind: int, payload: bytes) -> tuple[int, Any]:
    """Check and decode one frame of an authenticated data channel: ``(kind, value)`` with
    a batch (list or tuple), ``(checkpoint_id, barrier_kind)`` or a watermark (a number).
    Anything else raises ``ProtocolError``: the subtask then fails loudly."""
    try:
        value = unpack_batch(payload)
    except Exception as err:  # noqa: BLE001 - msgpack raises several types on bad input
        raise ProtocolError(f"undecodable frame of kind {kind}: {_why(err)}") from None
    if kind == DATA:
        if not isinstance(value, tuple | list):
            raise ProtocolError(f"DATA frame is a {type(value).__name__}, not a batch")
    elif kind == BARRIER:
        if (not isinstance(value, tuple | list) or len(value) != 2
                or not all(type(v) is int for v in value)):
            raise ProtocolError(f"bad BARRIER frame {value!r:.80}")
        value = (value[0], value[1])
    elif kind == WATERMARK:
        if type(value) not in (int, float):
            raise ProtocolError(f"bad WATERMARK frame {value!r:.80}")
    else:
        raise ProtocolError(f"unexpected frame kind {kind} on a data channel")
    return kind, value


def control(msg_type: str, **fields: Any) -> bytes:
    return frame(CONTROL, pack({"type": msg_type, **fields}))
