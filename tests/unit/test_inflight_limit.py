"""Issue 11, item 8: unaligned in-flight capture is bounded (declined past the limit)."""

from __future__ import annotations

import asyncio

from streamjob.channels import InputGate, Marker


def test_capture_past_the_limit_is_dropped_and_reported():
    async def main():
        gate = InputGate(2, capacity=2)
        gate.capture_limit = 10
        overflowed = []
        gate.on_capture_overflow = overflowed.append
        gate.start_capture(7, (0,))
        for _ in range(3):
            await gate.put_batch(0, [1, 2, 3])   # read ahead past capacity: captured
        assert gate.captured_records[7] == 9 and overflowed == []
        await gate.put_batch(0, [4, 5])
        assert overflowed == [7]
        assert 7 not in gate.capture and 7 not in gate.capturing
        # No longer reading ahead: the channel is back to its queue capacity.
        blocked = asyncio.ensure_future(gate.put_batch(0, [6]))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        blocked.cancel()

    asyncio.run(main())


def test_capture_within_the_limit_is_kept_until_the_barrier():
    async def main():
        gate = InputGate(2, capacity=1)
        gate.capture_limit = 100
        gate.on_capture_overflow = lambda cid: (_ for _ in ()).throw(AssertionError(cid))
        gate.start_capture(3, (1,))
        await gate.put_batch(1, ["a"])
        await gate.put_batch(1, ["b"])
        gate.put_barrier(1, Marker(3, 0))
        assert gate.take_capture(3) == {1: [["a"], ["b"]]}

    asyncio.run(main())
