"""Framing on TCP channels and the control connection.

Every frame is ``u32 length (little endian) | u8 kind | payload`` where length counts the
payload only. Payloads are msgpack: no JSON on the data path, never pickle.

* DATA: a batch (msgpack array of records; tuples come back as tuples)
* BARRIER: ``[checkpoint_id, kind]`` (0 checkpoint, 1 savepoint, 2 final checkpoint)
* HELLO: ``[attempt, task_index, from_subtask, token]``, the first frame of a data channel
  (the job's worker token: other processes cannot feed records into a job)
* CONTROL: a msgpack map with a ``type`` field (coordinator <-> worker)
* WATERMARK: the sender's event-time watermark in ms (an int; ``inf`` at end of input), in
  order with the DATA frames: no record with event time <= it follows on this channel
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

DATA, BARRIER, HELLO, CONTROL, WATERMARK = 1, 2, 3, 4, 5
HEADER = struct.Struct("<IB")
MAX_FRAME = 256 * 1024 * 1024


class ProtocolError(ConnectionError):
    pass


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_batch(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, use_list=False, strict_map_key=False)


def unpack_control(payload: bytes) -> dict[str, Any]:
    msg = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=False)
    if not isinstance(msg, dict) or "type" not in msg:
        raise ProtocolError("control frame without a type")
    return msg


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(HEADER.size)
    length, kind = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes is above the {MAX_FRAME} limit")
    return kind, await reader.readexactly(length)


def control(msg_type: str, **fields: Any) -> bytes:
    return frame(CONTROL, pack({"type": msg_type, **fields}))
